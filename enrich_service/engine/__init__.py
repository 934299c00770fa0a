"""Point-in-polygon: the R-tree exact path (source of truth), the grid fast path that must agree with it, and the
one rule for edges and overlaps (rules.py)."""
