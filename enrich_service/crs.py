"""The coordinate reference systems the service computes in, defined once."""

from __future__ import annotations

from pyproj import CRS, Transformer

WGS84 = CRS.from_epsg(4326)
# Metric CRS for areas and nearest distances: UTM zone 11N covers San Diego with < 0.1% scale error.
METRIC = CRS.from_epsg(32611)
TO_METRIC = Transformer.from_crs(WGS84, METRIC, always_xy=True)
