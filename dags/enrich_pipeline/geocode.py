"""Address-only datasets: the address composed from the spec's columns, one batch geocoded and tagged through
POST /v1/geocode-join (Arrow), the geocode columns published beside the layers, the quality gate's share tagged per
match level, and the report's match quality.

Police records split the address: street_no (a hundred block, 0 at intersections), street_dir, street_name,
street_type and the same for the cross street. `compose` turns a row into what the geocoder reads:
"5500 block of VALERIO TRAIL", "IMPERIAL AVENUE & VIEWCREST DR".
"""

from __future__ import annotations

from pathlib import Path

from .extract import ROW
from .payloads import BatchResult, MatchLevel, QualityStats
from .spec import DatasetSpec

# Request columns (named so that no result column collides with them).
ADDRESS, CITY, ZIP, DATE = "__address", "__city", "__zip", "__date"
# Published geocode columns, and per published layer `<column>_rule` and `<column>_candidates`.
GEOCODE_COLUMNS = {"match": "geocode_match", "score": "geocode_score", "matched_address": "geocode_matched_address",
                   "reason": "geocode_reason"}
MATCH_LEVELS = ("exact", "interpolated", "intersection", "hundred_block", "street", "zip", "none")


def compose(spec: DatasetSpec, table) -> list[str]:
    """One address text per row, from the spec's address columns."""
    from enrich_service.geocode.compose import compose_columns

    a = spec.address
    assert a is not None  # only address specs come here
    return compose_columns(table, a.number, a.street, a.cross_street or [], a.number_is_block)


def request_table(spec: DatasetSpec, extract_path: Path, batch: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    a = spec.address
    assert a is not None  # only address specs come here
    names = [ROW, *(c for c in (a.number, *a.street, *a.cross_street, a.city, a.zip) if c)]
    if spec.as_of_column:
        names.append(spec.as_of_column)
    part = pq.ParquetFile(extract_path).read_row_group(batch, columns=list(dict.fromkeys(names)))
    cols = {"id": part.column(ROW), ADDRESS: pa.array(compose(spec, part), pa.string())}
    if a.city:
        cols[CITY] = part.column(a.city).cast(pa.string())
    if a.zip:
        cols[ZIP] = part.column(a.zip).cast(pa.string())
    if spec.as_of_column:
        cols[DATE] = part.column(spec.as_of_column)
    return pa.table(cols)


def enrich_batch(spec: DatasetSpec, extract_path: Path, work: Path, batch: int, client) -> BatchResult:
    """Geocode and tag batch `batch`; writes batches/batch-NNNNN.parquet (source_row + result columns)."""
    from .enrich import check_pinned, pinned_layers, write_batch_result

    req = request_table(spec, extract_path, batch)
    expected = pinned_layers(work)  # one layer set for the whole run, as for coordinates (enrich.check_pinned)
    answer, used = client.geocode_table(req, layers=spec.request_layers, as_of=spec.as_of,
                                        min_match=spec.address.min_match if spec.address else None, id_col="id", address_col=ADDRESS,
                                        city_col=CITY, zip_col=ZIP, date_col=DATE if spec.as_of_column else None,
                                        expect_layers=expected)
    return write_batch_result(work, batch, req, answer, used, check_pinned(work, batch, expected,
                                                                          client.last_layers_sha256))


def assemble_columns(spec: DatasetSpec, results, put) -> None:
    """The geocode columns and each published layer's rule and candidates, into the enriched table."""
    for name, column in GEOCODE_COLUMNS.items():
        put(column, results.column(name))
    for layer, column in spec.layers.items():
        for suffix in ("_rule", "_candidates"):
            if f"{layer}{suffix}" in results.column_names:
                put(f"{column}{suffix}", results.column(f"{layer}{suffix}"))


def point(results):
    """The geocoded point (EPSG:4326), NaN where nothing was found."""
    lon = results.column("lon").to_numpy(zero_copy_only=False).astype(float, copy=True)
    lat = results.column("lat").to_numpy(zero_copy_only=False).astype(float, copy=True)
    return lon, lat


# ---- quality gate ------------------------------------------------------------------------------------------------

def match_quality(levels: list, keys: list, rules: list) -> list[MatchLevel]:
    """Per match level: rows, tagged (a key given), ambiguous, other nulls; with shares of the level's rows."""
    out: list[MatchLevel] = []
    total = len(levels) or 1
    for level in MATCH_LEVELS:
        at = [i for i, lv in enumerate(levels) if lv == level]
        if not at:
            continue
        tagged = sum(1 for i in at if keys[i] is not None)
        ambiguous = sum(1 for i in at if keys[i] is None and rules[i] == "ambiguous")
        out.append({"level": level, "rows": len(at), "share": round(len(at) / total, 4), "tagged": tagged,
                    "tagged_share": round(tagged / len(at), 4), "ambiguous": ambiguous,
                    "untagged_other": len(at) - tagged - ambiguous})
    return out


def measure(spec: DatasetSpec, table) -> tuple[list[MatchLevel], float]:
    """Per match level, the rows carrying a `quality.layer` key; and the share of all rows that do."""
    column = spec.layers.get(spec.quality.layer, spec.quality.layer)
    rule = f"{column}_rule" if f"{column}_rule" in table.column_names else None
    keys = table.column(column).to_pylist() if column in table.column_names else [None] * table.num_rows
    rules = table.column(rule).to_pylist() if rule else [None] * table.num_rows
    levels = table.column(GEOCODE_COLUMNS["match"]).to_pylist()
    by_level = match_quality(levels, keys, rules)
    tagged = sum(r["tagged"] for r in by_level)
    return by_level, round(tagged / table.num_rows, 4) if table.num_rows else 0.0


def problems(spec: DatasetSpec, stats: QualityStats) -> list[str]:
    out = []
    floors = spec.quality.min_tagged_share
    for row in stats.get("match_levels", []):
        floor = floors.get(row["level"])
        if floor is not None and row["tagged_share"] < floor:
            out.append(f"{row['tagged']} of {row['rows']} {row['level']} matches carry a {spec.quality.layer} "
                       f"({row['tagged_share']:.2%} < the floor {floor:.2%})")
    if "all" in floors and stats.get("tagged_share", 1.0) < floors["all"]:
        out.append(f"{stats['tagged_share']:.2%} of rows carry a {spec.quality.layer} (< the floor "
                   f"{floors['all']:.2%})")
    return out


# ---- report ------------------------------------------------------------------------------------------------------

def report_quality(spec: DatasetSpec, read_columns) -> list[MatchLevel]:
    """Match quality of the published rows for the report's first layer; `read_columns(names)` -> {name: list}."""
    assert spec.report is not None
    column = spec.layers[spec.report.by[0]]
    cols = read_columns([GEOCODE_COLUMNS["match"], column, f"{column}_rule"])
    return match_quality(cols[GEOCODE_COLUMNS["match"]], cols[column], cols[f"{column}_rule"])


def quality_html(rows: list[MatchLevel], layer: str) -> str:
    import html

    title = html.escape(layer.replace("_", " "))
    out = [f"<h3>Match quality ({title})</h3><table border='1' cellpadding='3' style='border-collapse:collapse'>"
           f"<tr><th>match</th><th>rows</th><th>share</th><th>tagged</th><th>ambiguous</th><th>not tagged, other"
           f"</th></tr>"]
    out += [f"<tr><td>{html.escape(r['level'])}</td><td align='right'>{r['rows']:,}</td>"
            f"<td align='right'>{r['share']:.1%}</td><td align='right'>{r['tagged']:,} ({r['tagged_share']:.1%})"
            f"</td><td align='right'>{r['ambiguous']:,}</td><td align='right'>{r['untagged_other']:,}</td></tr>"
            for r in rows]
    out.append("</table><p>A district is given only where every location the match allows lies in one district; "
               "'ambiguous' rows could be in more than one; 'none' rows were not found.</p>")
    return "".join(out)
