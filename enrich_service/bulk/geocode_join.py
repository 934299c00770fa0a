"""Geocode-join: address records (JSON, a table, NDJSON lines) geocoded, and the places found tagged with every
requested layer in the same call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import pyarrow as pa

from ..engine.tagger import TagResult
from ..errors import InvalidInput
from ..geocode import join
from ..geocode.compose import joined_text
from ..geocode.join import AddressColumns, Joined, Records
from ..index import ServiceIndex
from ..io import json_body, json_rows, results
from ..io.params import Param
from ..io.tables import with_local_days
from ..settings import Settings
from .operation import DATE_COL, ID_COL, PREFIX, BulkOperation, BulkParams, read_columns, read_prefix
from .options import Options, check_batch_size, merge_options, parse_options

REFERENCE_HEADER = "X-Enrich-Geocode-Reference"
MIN_MATCH = Param("min_match", f"The coarsest match level to tag ({', '.join(join.TAGGED_LEVELS)}): coarser "
                               f"matches keep their point and level, their layer keys are null with rule "
                               f"below_min_match")
OPTIONS = ("layers", "as_of", "nearest_within_m")
BODY_KEYS = ("records", *OPTIONS, MIN_MATCH.name)


@dataclass(frozen=True)
class AddressParams(BulkParams[AddressColumns]):
    min_match: str | None = None


def geocode_join(index: ServiceIndex, records: Records, opts: Options, min_match: str | None = None) -> Joined:
    return join.geocode_join(index, records, opts.layers, opts.as_of, opts.nearest_within_m, min_match=min_match)


class GeocodeJoin(BulkOperation[AddressParams, Records, Joined]):
    options = OPTIONS
    row_noun = "record"
    params = (
        ID_COL,
        Param("address_col", "Bulk bodies: the address column, or several comma-separated (`number,street,unit`), "
                             "joined with spaces in that order", default="address"),
        Param("city_col", "Bulk bodies: the city column (optional)", default="city"),
        Param("zip_col", "Bulk bodies: the ZIP column (optional)", default="zip"),
        Param("lon_col", "Bulk bodies: earlier longitude to check (optional)", default="lon"),
        Param("lat_col", "Bulk bodies: earlier latitude to check (optional)", default="lat"),
        DATE_COL,
        MIN_MATCH,
        PREFIX,
    )

    def check_ready(self, index: ServiceIndex) -> None:
        join.geocoder_of(index)  # 503 before reading a large body when there is no reference

    def read_params(self, query: Mapping[str, str | None]) -> AddressParams:
        prefix = read_prefix(query)
        return AddressParams(columns=read_columns(AddressColumns, query), prefix=prefix,
                             min_match=join.check_min_match(query[MIN_MATCH.name]))

    def from_json(self, body: bytes, params: AddressParams, query_options: dict[str, str | None],
                  settings: Settings) -> tuple[Options, AddressParams, Records]:
        doc = json_body.loads(body)
        if not isinstance(doc, dict):
            raise InvalidInput("body must be a JSON object with a `records` list", field="body")
        json_body.check_keys(doc, BODY_KEYS)
        merged = merge_options(doc, {**query_options, MIN_MATCH.name: params.min_match}, settings,
                               normalise={MIN_MATCH.name: join.check_min_match})
        opts = parse_options(merged, settings)
        params = replace(params, min_match=join.check_min_match(merged[MIN_MATCH.name]))
        records = doc.get("records")
        if records is None:
            raise InvalidInput("records is missing", field="records")
        if isinstance(records, list):
            check_batch_size(len(records), settings, field="records", noun=self.row_noun)
        if isinstance(records, list):
            records = _joined_records(records, params.columns.address)
        return opts, params, join.records_from_json(records, params.columns)

    def reads(self, params: AddressParams) -> tuple[str | None, ...]:
        cols = params.columns
        return cols.address, cols.city, cols.zip, cols.lon, cols.lat, cols.date

    def from_table(self, table: pa.Table, params: AddressParams) -> Records:
        table = _joined_column(table, params.columns.address)
        return join.records_from_table(with_local_days(table, params.columns.date), params.columns)

    def from_lines(self, docs: list, params: AddressParams) -> Records:
        return join.records_from_json(_joined_records(docs, params.columns.address), params.columns)

    def run(self, index: ServiceIndex, data: Records, opts: Options, params: AddressParams) -> Joined:
        return geocode_join(index, data, opts, params.min_match)

    def result_of(self, out: Joined) -> TagResult:
        return out.result

    def stream_headers(self, index: ServiceIndex) -> dict[str, str]:
        return {REFERENCE_HEADER: join.reference_header(index)}

    def encode_json(self, index: ServiceIndex, data: Records, out: Joined) -> bytes:
        rows = join.rows(data.ids, out)
        return json_body.dumps({"results": rows, "count": len(rows), "layers": out.result.layers_used(),
                                "geocode_reference": join.reference_header(index),
                                "errors": results.error_list(data.ids, out.prepared, out.result)})

    def encode_json_columns(self, index: ServiceIndex, data: Records, out: Joined) -> bytes:
        ids = results.id_list(data.ids, len(data.addresses))
        # The table answer's columns (the same names and values as the rows), the ids as the body sent them.
        answered = join.answer_table(pa.table({"id": pa.nulls(len(ids))}), None, out)
        rest = json_body.dumps({"count": len(ids), "layers": out.result.layers_used(),
                                "geocode_reference": join.reference_header(index),
                                "errors": results.error_list(data.ids, out.prepared, out.result)})
        columns = [("id", ids)] + [(name, answered.column(name)) for name in answered.column_names[1:]]
        return json_rows.json_columns(columns, head=b'{"results":', tail=b"," + rest[1:])

    def encode_lines(self, index: ServiceIndex, data: Records, out: Joined) -> bytes:
        return b"".join(json_body.dumps(row) + b"\n" for row in join.rows(data.ids, out))

    def answer_table(self, table: pa.Table | None, data: Records, out: Joined, prefix: str) -> pa.Table:
        return join.answer_table(table, data.ids, out, prefix)

    def answer_points(self, table: pa.Table | None, answer: pa.Table, params: AddressParams) -> tuple[str, str]:
        first = table.num_columns if table is not None else 1  # the geocode's lon, lat: the first columns appended
        return answer.column_names[first], answer.column_names[first + 1]


def address_parts(address_col: str, names: list[str] | None = None) -> list[str] | None:
    """The columns of an `address_col` naming several (comma-separated), each checked against `names` when
    given (422 on address_col naming the unknown one); None when it names one column, or a column of that name."""
    if "," not in address_col or (names is not None and address_col in names):
        return None
    parts = [name.strip() for name in address_col.split(",") if name.strip()]
    for name in parts:
        if names is not None and name not in names:
            raise InvalidInput(f"address_col names column {name!r}, which is not in the body (columns: "
                               f"{', '.join(names)[:300]})", field="address_col")
    return parts


def _joined_column(table: pa.Table, address_col: str) -> pa.Table:
    """The table with a column named `address_col` joining its parts' text by single spaces, blank parts left out
    (as the CLI's --address-col a,b,c); the answer is built from the body's own table, without it."""
    parts = address_parts(address_col, table.column_names)
    if parts is None:
        return table
    return table.append_column(address_col, joined_text(table, parts))


def _joined_records(records: list, address_col: str) -> list:
    """JSON records with `address_col` (several comma-separated keys) set to their values joined by spaces; a key
    that no record has: 422 on address_col."""
    parts = address_parts(address_col)
    if parts is None or not records:
        return records
    dicts = [r for r in records if isinstance(r, dict)]
    if dicts and any(address_col in r for r in dicts):
        return records
    present = {key for r in dicts for key in r}
    address_parts(address_col, sorted(present))  # names the key no record has
    out = []
    for r in records:
        if isinstance(r, dict):
            words = [str(r[k]).strip() for k in parts if r.get(k) is not None and str(r[k]).strip()]
            r = {**r, address_col: " ".join(words) or None}
        out.append(r)
    return out


GEOCODE_JOIN = GeocodeJoin()
