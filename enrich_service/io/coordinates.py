"""Where a table's coordinates are, and what they look like: the coordinate columns found by their usual names when
the request does not name them, and State Plane feet recognised when they are sent as if they were degrees."""

from __future__ import annotations

from functools import cache

import numpy as np
import pyarrow as pa
from pyproj import Transformer

from ..errors import InvalidInput
from .geojson import geometry_columns

# The names spreadsheets and GIS exports use, matched case-insensitively; the first list is x, the second y.
LON_NAMES = ("lon", "lng", "long", "longitude", "x")
LAT_NAMES = ("lat", "latitude", "y")


def find_column(names: list[str], usual: tuple[str, ...], option: str) -> str:
    """The one column of `names` whose lower-cased name is among `usual`; a clear 4xx naming the option when none
    or several are."""
    found = [name for name in names if name.strip().lower() in usual]
    if len(found) == 1:
        return found[0]
    if not found:
        shown = names if len(names) <= 30 else names[:30] + ["..."]
        raise InvalidInput(f"no coordinate column found among {shown}: none is named {', '.join(usual)} (any "
                           f"case); name it with {option}", field=option)
    raise InvalidInput(f"several columns could hold the coordinates: {', '.join(map(repr, found))}; choose one "
                       f"with {option}", field=option)


def coordinate_columns(names: list[str], lon_col: str | None, lat_col: str | None) -> tuple[str, str]:
    """(lon column, lat column): each as the request names it, else `lon`/`lat` exactly (the documented default,
    even beside an `x`), else found among the usual names."""
    lon = lon_col or ("lon" if "lon" in names else find_column(names, LON_NAMES, "lon_col"))
    lat = lat_col or ("lat" if "lat" in names else find_column(names, LAT_NAMES, "lat_col"))
    return lon, lat


def table_coordinates(table: pa.Table, lon_col: str | None, lat_col: str | None) -> tuple[str, str]:
    """A table body's coordinate columns: as named; for a GeoJSON body, its geometry; else by the usual names."""
    if not (lon_col or lat_col):
        geometry = geometry_columns(table)
        if geometry:
            return geometry
    return coordinate_columns(table.column_names, lon_col, lat_col)


# San Diego County with a margin, in degrees: where State Plane feet sent by mistake would land.
_SAN_DIEGO = (-118.0, 32.3, -115.8, 33.8)
STATE_PLANE = "EPSG:2230"
STATE_PLANE_HINT = f"the numbers look like State Plane feet: send crs={STATE_PLANE}"


@cache
def _from_state_plane() -> Transformer:
    return Transformer.from_crs(STATE_PLANE, "EPSG:4326", always_xy=True)


def looks_like_state_plane(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row: would (x, y), read as EPSG:2230 feet, fall in San Diego County? (Degrees are never that large.)"""
    # Zone 6's false origin is 6,561,667 / 1,640,417 ft: anything within a few hundred miles of it is in the
    # millions, far beyond any degree; only those rows are transformed.
    rough = np.isfinite(x) & np.isfinite(y) & (np.abs(x) > 1e5) & (np.abs(y) > 1e5)
    out = np.zeros(len(x), dtype=bool)
    if rough.any():
        lon, lat = _from_state_plane().transform(x[rough], y[rough])
        w, s, e, n = _SAN_DIEGO
        out[rough] = (lon >= w) & (lon <= e) & (lat >= s) & (lat <= n)
    return out
