"""The edge and overlap rule, in one place. Every point gets exactly one answer per layer, the same every time.

1. A feature *covers* a point when the point is in its interior or on its boundary (PostGIS ST_Covers).
2. Among the features covering a point, one holding it in its interior beats one it only touches: a point on a
   polygon's edge that lies inside an overlapping neighbour belongs to the neighbour.
3. Remaining ties (a point on an edge shared by two districts; a point inside two overlapping planning areas) go
   to the feature with the smaller area (the more specific polygon), then the lower key, then file order: a
   feature's `rank` in LayerVersion. No point covered by some feature is ever left without an answer. (Areas are
   taken in UTM 11N; on these layers they order features as PostGIS's ST_Area on geography does, which
   tests/test_rule_truth.py uses as the independent truth.)
4. A point no feature covers has none (null), unless the request gives `nearest_within_m`: then the nearest feature
   within that distance answers, with the distance reported.

The `<layer>_rule` column says what decided each answer (RULE_NAMES): null when one feature held the point in its
interior, "edge" when the point lies on the boundary of the winning feature, "overlap" when two or more features
held it in their interiors, "nearest" when it came from nearest_within_m.
"""

import numpy as np

RULE_NONE = np.int8(0)
RULE_EDGE = np.int8(1)
RULE_OVERLAP = np.int8(2)
RULE_NEAREST = np.int8(3)

# Geocode answers only (enrich_service/geocode/support.py): why a key is null, or that the match cannot support one.
RULE_AMBIGUOUS = np.int8(4)  # the locations consistent with the match lie in more than one polygon
RULE_OUTSIDE = np.int8(5)  # in no polygon of the layer
RULE_OUTSIDE_CITY = np.int8(6)  # in no polygon, and outside the city limits
RULE_NOT_GEOCODED = np.int8(7)  # the address was not found (match "none")
RULE_OTHER_CITY = np.int8(8)  # the address names another city: the San Diego layers say nothing about it
RULE_BELOW_MIN_MATCH = np.int8(9)  # the match is coarser than the request's min_match

RULE_NAMES = np.array([None, "edge", "overlap", "nearest", "ambiguous", "outside", "outside_city", "not_geocoded",
                       "other_city", "below_min_match"], dtype=object)



def winners(point: np.ndarray, inside: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Steps 2 and 3 over (point, feature) candidate pairs that cover their point: the index of each point's winning
    pair. Interior beats boundary, then the lower rank (smaller area, lower key, file order)."""
    order = np.lexsort((rank, ~inside, point))
    first = np.ones(len(order), dtype=bool)
    first[1:] = point[order][1:] != point[order][:-1]
    return order[first]
