"""Boundary layers: the manifest, where files come from, reading and repairing geometry, versions by date."""
