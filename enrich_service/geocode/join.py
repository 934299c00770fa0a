"""Geocode a batch of address records, then tag the places found with the boundary layers: one call.

Records arrive as columns (from JSON records, an Arrow/CSV table or NDJSON lines); the answer is the geocode
columns (lon, lat, match, score, matched_address, reason) followed by the same layer columns, flags and error
column as /v1/pip, built by the shared encoders (io/results.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..engine.rules import (
    RULE_AMBIGUOUS,
    RULE_BELOW_MIN_MATCH,
    RULE_NONE,
    RULE_NOT_GEOCODED,
    RULE_OTHER_CITY,
    RULE_OUTSIDE,
    RULE_OUTSIDE_CITY,
)
from ..engine.tagger import TagResult
from ..errors import InvalidInput, NotReady
from ..index import ServiceIndex
from ..io import json_body, results, tables
from ..io.dates import parse_dates
from ..points import WGS84, PointBatch, Prepared, prepare
from ..server.observability import GEOCODES
from . import support as support_mod
from .matcher import LEVELS, OTHER_CITY_FACTOR, Geocoded, Geocoder
from .normalize import city_name
from .words import SAN_DIEGO_PLACES

ZIP_LAYER = "zip"
COLLISION_PREFIX = results.COLLISION_PREFIX  # the `prefix` option's default: result columns never replace inputs
check_prefix = results.check_prefix
TAGGED_LEVELS = LEVELS[:-1]  # "exact" ... "zip": what min_match may name
# min_match -> the levels coarser than it
COARSER = {level: list(LEVELS[i + 1:-1]) for i, level in enumerate(TAGGED_LEVELS)}

CITY_LIMITS = "city_limits"
# A city field naming San Diego or one of its communities: the reference covers it. Any other name is flagged.
CITY_NAMES = SAN_DIEGO_PLACES


@dataclass(frozen=True)
class AddressColumns:
    """Which input columns hold the id, the address and the optional parts (query parameters of bulk requests)."""

    id: str = "id"
    address: str = "address"
    city: str = "city"
    zip: str = "zip"
    lon: str = "lon"  # an earlier geocode the record carries, checked for the known bad cases
    lat: str = "lat"
    date: str | None = None  # tables: the record's date column (JSON records: their "date" key)


@dataclass
class Records:
    ids: Any  # list or Arrow array: passed through to the encoder
    addresses: list
    cities: list | None = None
    zips: list | None = None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    dates: np.ndarray | None = None  # datetime64[D]: each record tagged with the layer versions in force that day
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)
    untagged: set[int] = field(default_factory=set)  # rows whose date is unreadable: geocoded, never tagged

    def __len__(self) -> int:
        return len(self.addresses)


@dataclass
class Joined:
    geocoded: Geocoded
    prepared: Prepared  # the geocoded lon/lat as the encoders expect them, with every flag
    result: TagResult
    candidates: dict[str, dict[int, str]] = field(default_factory=dict)  # layer -> row -> "3;9" (ambiguous rows)


def geocoder_of(index: ServiceIndex) -> Geocoder:
    geocoder = index.geocoder
    if geocoder is None:
        raise NotReady("the geocoder has no reference loaded (set ENRICH_REFERENCE_DIR to the folder of the "
                       "address reference CSVs and reload)")
    return geocoder


def records_from_json(records: object, cols: AddressColumns = AddressColumns()) -> Records:
    if not isinstance(records, list):
        raise InvalidInput("records must be a list of {id, address, city?, zip?} objects", field="records")
    errors: dict[int, tuple[str, str]] = {}
    rows = []
    for i, r in enumerate(records):
        if isinstance(r, dict):
            rows.append(r)
        else:
            rows.append({})
            errors[i] = ("records", "each record must be an object with id and address")
    ids = [r.get(cols.id) for r in rows]
    json_body.check_ids(ids, errors)
    has = lambda key: any(key in r for r in rows)  # noqa: E731
    x = y = None
    if has(cols.lon) or has(cols.lat):
        x = json_body.numbers([r.get(cols.lon) for r in rows])
        y = json_body.numbers([r.get(cols.lat) for r in rows])
    cities = _checked([r.get(cols.city) for r in rows], (str,), cols.city, "text", errors) \
        if has(cols.city) else None
    zips = _checked([r.get(cols.zip) for r in rows], (str, int), cols.zip, "text or a number", errors) \
        if has(cols.zip) else None
    date_key = cols.date or "date"
    dates = parse_dates([r.get(date_key) for r in rows], date_key, errors) if has(date_key) else None
    return Records(ids=ids, addresses=[r.get(cols.address) for r in rows], cities=cities, zips=zips, x=x, y=y,
                   dates=dates, errors=errors, untagged=_field_rows(errors, date_key))


def _checked(values: list, types: tuple, name: str, what: str, errors: dict[int, tuple[str, str]]) -> list:
    """Optional record fields of the wrong type: reported on that row and left out; the address still geocodes."""
    for i, v in enumerate(values):
        if v is not None and (v.__class__ not in types):
            errors.setdefault(i, (name, f"must be {what}, got {type(v).__name__}"))
            values[i] = None
    return values


def records_from_table(table: pa.Table, cols: AddressColumns) -> Records:
    names = table.column_names
    if cols.address not in names:
        raise InvalidInput(f"column {cols.address!r} not in the body (columns: {names}); name the address column "
                           f"with address_col", field=cols.address)

    def text(name: str) -> list | None:
        if name not in names:
            return None
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
            col = col.cast(pa.string())  # a CSV zip column arrives as integers
        return col.to_pylist()

    errors: dict[int, tuple[str, str]] = {}
    x = y = None
    if cols.lon in names and cols.lat in names:  # only checked for flags: their own problems are not errors
        x, y = tables.coordinate(table, cols.lon, {}), tables.coordinate(table, cols.lat, {})
    dates = None
    if cols.date:
        if cols.date not in names:
            raise InvalidInput(f"date column {cols.date!r} not in the body (columns: {names})", field=cols.date)
        col = table.column(cols.date)
        if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
            dates = col.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")
        else:
            dates = parse_dates(col.to_pylist(), cols.date, errors)
    addresses = table.column(cols.address).to_pylist()
    # Without an id column, a record's id is its row number (as `errors[].row`), as for points (io/tables.py).
    ids = table.column(cols.id) if cols.id in names else pa.array(np.arange(table.num_rows))
    return Records(ids=ids, addresses=addresses,
                   cities=text(cols.city), zips=text(cols.zip), x=x, y=y, dates=dates, errors=errors,
                   untagged=_field_rows(errors, cols.date))


def _field_rows(errors: dict[int, tuple[str, str]], name: str | None) -> set[int]:
    return {row for row, (field_name, _) in errors.items() if field_name == name} if name else set()


def check_min_match(value: object) -> str | None:
    """The coarsest match level a caller accepts: coarser matches keep their point and level, never a tag."""
    if value is None or value == "":
        return None
    if value not in TAGGED_LEVELS:
        raise InvalidInput(f"min_match must be one of {', '.join(TAGGED_LEVELS)} (got {value!r})",
                           field="min_match")
    return value


def geocode_join(index: ServiceIndex, records: Records, layers: list[str], as_of=None,
                 nearest_within_m: float | None = None, use_cache: bool = True,
                 min_match: str | None = None, geocoder: Geocoder | None = None) -> Joined:
    """`geocoder`: another reference than the index's (the accuracy evaluation holds points back)."""
    geocoder = geocoder or geocoder_of(index)
    index.store.check_layers(layers)
    min_match = check_min_match(min_match)
    geocoded = geocoder.geocode(records.addresses, records.zips, use_cache=use_cache)
    valid = geocoded.match != "none"
    lon = np.where(valid, geocoded.lon, np.nan)
    lat = np.where(valid, geocoded.lat, np.nan)
    extra = [CITY_LIMITS] if CITY_LIMITS in index.store.versions and CITY_LIMITS not in layers else []
    tag = valid
    if records.untagged:  # which version to tag with is unknown: no tags rather than the newest version's
        tag = valid.copy()
        tag[np.fromiter(records.untagged, dtype=np.int64)] = False
    result = index.engine.tag(lon, lat, tag, layers + extra, as_of, records.dates, nearest_within_m)
    if result.row_errors:  # a date before a layer's first version: the row's error says so, no tag, no rule
        tag = tag.copy()
        tag[np.fromiter(result.row_errors, dtype=np.int64)] = False
    flags = dict(geocoded.flags)
    outside_city = np.zeros(len(valid), dtype=bool)
    if CITY_LIMITS in result.layers:
        outside_city = tag & (result.layers[CITY_LIMITS].codes < 0)
        _add_flag(flags, outside_city, "outside_city_limits")
    if extra:
        result = TagResult(layers={k: v for k, v in result.layers.items() if k != CITY_LIMITS},
                           row_errors=result.row_errors,
                           default_versions={k: v for k, v in result.default_versions.items() if k != CITY_LIMITS})
    if records.x is not None and records.y is not None:
        given = prepare(PointBatch(ids=None, x=records.x, y=records.y), WGS84)
        for row, flag in given.flags.items():  # the record's own coordinates: city centroid, 0/0, swapped
            flags[row] = f"{flags[row]},input_{flag.replace(',', ',input_')}" if row in flags else \
                f"input_{flag.replace(',', ',input_')}"
    if records.cities is not None:
        other = _flag_cities(flags, records.cities)
        if other:  # the reference is San Diego's: a same-named street here is a guess for another city's address
            rows = np.array(other)
            geocoded.score[rows] = np.round(geocoded.score[rows] * OTHER_CITY_FACTOR, 3)
    candidates = apply_rule(index, geocoder, geocoded, result, lon, lat, tag, flags, layers, as_of, records.dates,
                            nearest_within_m, min_match, outside_city)
    prepared = Prepared(lon=lon, lat=lat, valid=valid, errors=dict(records.errors), flags=flags)
    levels, counts = np.unique(geocoded.match.astype(str), return_counts=True)
    for level, count in zip(levels.tolist(), counts.tolist()):
        GEOCODES.labels(level).inc(count)
    return Joined(geocoded, prepared, result, candidates)


def apply_rule(index: ServiceIndex, geocoder: Geocoder, geocoded: Geocoded, result: TagResult, lon: np.ndarray,
               lat: np.ndarray, tag: np.ndarray, flags: dict[int, str], layers: list[str], as_of, dates,
               nearest_within_m, min_match: str | None, outside_city: np.ndarray) -> dict[str, dict[int, str]]:
    """Keep a layer key only where every location consistent with the match lies in one polygon (support.py);
    elsewhere null, with the rule saying why and, when ambiguous, the candidate keys."""
    n = len(geocoded)
    level = geocoded.match.astype(str)
    support = geocoded.support if geocoded.support is not None else np.full(n, None, dtype=object)
    other = np.zeros(n, dtype=bool)
    for row, text in flags.items():
        if "other_city" in text.split(","):
            other[row] = True
    below = np.zeros(n, dtype=bool)
    if min_match is not None:
        below = np.isin(level, COARSER[min_match])
    judged = tag & ~other & ~below
    is_point = np.fromiter((s is None for s in support), dtype=bool, count=n)
    point_rows = np.flatnonzero(judged & is_point)
    extent_rows = np.flatnonzero(judged & ~is_point).tolist()
    ring = None
    if len(point_rows):  # the point and 8 points around it, tagged by the engine with the same rule
        m = len(point_rows)
        ring = index.engine.tag(
            (lon[point_rows][:, None] + support_mod.OFFSET_LON).ravel(),
            (lat[point_rows][:, None] + support_mod.OFFSET_LAT).ravel(), np.ones(m * 8, dtype=bool), layers, as_of,
            None if dates is None else np.repeat(dates[point_rows], 8), nearest_within_m)
    zip_versions = index.store.versions.get(ZIP_LAYER)
    zip_version = zip_versions[-1] if zip_versions else None
    out: dict[str, dict[int, str]] = {}
    for name in layers:
        tags = result.layers[name]
        codes, rule = tags.codes.copy(), tags.rule.copy()
        at_point = tags.codes  # each row's own point, tagged
        cands: dict[int, str] = {}
        versions = index.store.versions[name]
        offsets = np.cumsum([0] + [v.n_features for v in versions])
        if ring is not None:
            around = ring.layers[name].codes.reshape(-1, 8)
            centre = codes[point_rows]
            split = ~(around == centre[:, None]).all(axis=1)
            for k in np.flatnonzero(split).tolist():
                keys = {tags.dictionary[c] for c in (centre[k], *around[k].tolist()) if c >= 0}
                cands[int(point_rows[k])] = ";".join(sorted(map(str, keys)))
            codes[point_rows[split]] = -1
            rule[point_rows[split]] = RULE_AMBIGUOUS
        if extent_rows:
            default_i = versions.index(index.store.version_on(name, as_of))
            if dates is None:
                vidx = np.full(n, default_i, dtype=np.int64)
            else:
                days = dates.copy()
                if as_of is not None:
                    days[np.isnat(days)] = np.datetime64(as_of, "D")
                vidx = index.store.version_index(name, days)
            by_version: dict[int, dict] = {}
            for row in extent_rows:
                i = int(vidx[row])
                if i >= 0:  # (before the layer's first version: the engine reported it)
                    by_version.setdefault(i, {}).setdefault(support[row], []).append(row)
            for i, groups in by_version.items():
                supports = list(groups)
                got = geocoder.extents.verdicts(index.engine, name, versions[i], int(offsets[i]), supports,
                                                zip_version)
                for s, (code, r, keys) in zip(supports, got):
                    rows_ = np.asarray(groups[s], dtype=np.int64)
                    # The answer's own point is one of the locations consistent with it: a key it contradicts is
                    # never given ("5300 block of Orange Ave" placed at the end of a segment holding 5380-5398).
                    own = at_point[rows_]
                    ok = own == code if code >= 0 else np.zeros(len(rows_), dtype=bool)
                    codes[rows_] = np.where(ok, code, -1)
                    rule[rows_] = np.where(ok, r, RULE_AMBIGUOUS if code >= 0 else r)
                    if code < 0 and r != RULE_AMBIGUOUS:
                        continue
                    # (A street found by a similar name: its point is on another street, no candidate at all.)
                    mine = s[0] != "unknown"
                    for row, c, fine in zip(rows_.tolist(), own.tolist(), ok.tolist()):
                        if fine:
                            continue
                        found = set(keys) | {str(tags.dictionary[x]) for x in (c if mine else -1, code) if x >= 0}
                        if found:
                            cands[row] = ";".join(sorted(found))
        missing = (codes < 0) & (rule != RULE_AMBIGUOUS)
        rule[missing & tag] = RULE_OUTSIDE
        rule[missing & tag & outside_city] = RULE_OUTSIDE_CITY
        rule[level == "none"] = RULE_NOT_GEOCODED
        codes[other | below] = -1
        rule[other] = RULE_OTHER_CITY
        rule[below & ~other] = RULE_BELOW_MIN_MATCH
        # A row whose date is unusable: which version applies is unknown, so no key and no rule (`error` says why).
        untagged = (level != "none") & ~tag
        codes[untagged] = -1
        rule[untagged] = RULE_NONE
        for row in np.flatnonzero(other | below | untagged).tolist():
            cands.pop(row, None)
        tags.codes, tags.rule = codes, rule
        if tags.distance_m is not None:  # nothing found: no distance either
            tags.distance_m = np.where(codes >= 0, tags.distance_m, np.nan)
        out[name] = cands
    return out


def _add_flag(flags: dict[int, str], mask: np.ndarray, flag: str) -> None:
    for i in np.flatnonzero(mask).tolist():
        flags[i] = f"{flags[i]},{flag}" if i in flags else flag


def _flag_cities(flags: dict[int, str], cities: list) -> list[int]:
    """Flag (and return) the rows whose city is given and is not San Diego (or a San Diego community): the city is
    read as in the address text ("San Diego, CA 92110", "Rancho Peñasquitos")."""
    verdict: dict = {}
    rows = []
    for i, city in enumerate(cities):
        if city is None or city == "":
            continue
        other = verdict.get(city)
        if other is None:
            other = verdict[city] = not (isinstance(city, str) and city_name(city) in CITY_NAMES)
        if other:
            flags[i] = f"{flags[i]},other_city" if i in flags else "other_city"
            rows.append(i)
    return rows


# ---- answers ----------------------------------------------------------------------------------------------------

def geocode_lists(joined: Joined) -> list[tuple[str, list]]:
    g = joined.geocoded
    n = len(g)
    return [("lon", results.none_for_nan(joined.prepared.lon)), ("lat", results.none_for_nan(joined.prepared.lat)),
            ("match", g.match.tolist()), ("score", g.score.tolist()), ("matched_address", g.matched),
            ("reason", results.sparse_list(n, g.reason))]


def geocode_arrays(joined: Joined) -> list[tuple[str, pa.Array]]:
    g = joined.geocoded
    n = len(g)
    return [("lon", pa.array(joined.prepared.lon, from_pandas=True)),
            ("lat", pa.array(joined.prepared.lat, from_pandas=True)),
            ("match", pa.array(g.match, type=pa.string()).dictionary_encode()), ("score", pa.array(g.score)),
            ("matched_address", pa.array(g.matched, type=pa.string())),
            ("reason", results.sparse_arrow(n, g.reason))]


def rows(ids: Any, joined: Joined) -> list[dict]:
    """One dict per record, in input order: id, the geocode, the layer tags, flags, error."""
    if ids is None:
        ids = [None] * len(joined.geocoded)
    elif not isinstance(ids, list):
        ids = ids.to_pylist()
    columns = [("id", ids)] + geocode_lists(joined) + _with_candidates(
        results.result_lists(joined.prepared, joined.result), joined, lambda n, c: results.sparse_list(n, c))
    names = [name for name, _ in columns]
    return [dict(zip(names, values)) for values in zip(*(values for _, values in columns))]


def _with_candidates(columns: list[tuple], joined: Joined, make) -> list[tuple]:
    """`<layer>_candidates` after each `<layer>_rule`: the keys an ambiguous match could have, ';'-joined."""
    out = []
    n = len(joined.geocoded)
    for name, values in columns:
        out.append((name, values))
        layer = name[:-5] if name.endswith("_rule") else None
        if layer in joined.candidates:
            out.append((f"{layer}_candidates", make(n, joined.candidates[layer])))
    return out


def answer_table(table: pa.Table | None, ids: Any, joined: Joined, prefix: str = COLLISION_PREFIX) -> pa.Table:
    """The input table, untouched, with the geocode columns, then the layer columns, appended (results.append_results:
    a result column named like an input column gets `prefix` in front)."""
    if table is None:
        table = pa.table({"id": results.id_column(ids if ids is not None else [None] * len(joined.geocoded))})
    columns = geocode_arrays(joined) + _with_candidates(
        results.result_arrays(joined.prepared, joined.result), joined, results.sparse_arrow)
    return results.append_results(table, columns, joined.result.layers, prefix)


def reference_header(index: ServiceIndex) -> str:
    return geocoder_of(index).sha256
