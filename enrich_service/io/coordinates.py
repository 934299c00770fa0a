"""Where a table's coordinates are: the columns the request names, a GeoJSON body's geometry, or else the columns
found by their usual names (Latitude, Longitude, lng, x, y, ... in any case)."""

from __future__ import annotations

import pyarrow as pa

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
