"""The Python client for the enrichment service: DataFrame in, DataFrame out.

    from enrich_service.client import EnrichClient
    client = EnrichClient("http://127.0.0.1:8080", retries=4)
    tagged = client.tag(df, lon="lng", lat="lat", layers=["council_district", "zip"])
    tagged = client.tag(gdf)                       # a GeoDataFrame in any CRS: points from its geometry
    places = client.geocode(df, address="address", zip="zip")  # a GeoDataFrame of points (EPSG:4326) and tags
    tagged.attrs["enrich_layers"]   # {"council_district": {"version": "2021", "sha256": ...}, ...}

`tag()` answers the input frame (same kind, same index, same order, geometry kept) plus, per layer, `<layer>` and
`<layer>_rule` (and `<layer>_version` when a date column is given), then `enrich_flags` and `error` (the service's
`flags`, renamed: a column named like a DataFrame attribute, `df.flags`, would be shadowed by it). A row the service
could not tag (missing or out-of-range coordinates...) has `error` set and null layers; the other rows are still
answered.

Large frames go in chunks of `chunk_rows` (with a progress bar when there is more than one), every chunk from the
layer set of the first. The rules are the DAG's: a part the service finds too large (413) is sent again in halves;
what a retry can fix (connection refused, timeout, 5xx, 503 while layers load, a replica serving another layer set)
raises `ServiceUnavailable` and is retried `retries` times with exponential backoff (default 0: in the DAGs,
Airflow's task retries do it); what it cannot (4xx: unknown layer, bad CRS...) raises `RequestRejected` at once,
with the service's message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson

if TYPE_CHECKING:  # pandas and pyarrow are imported when used: `import enrich_service.client` stays cheap.
    import subprocess

    import pandas as pd
    import pyarrow as pa

ARROW = "application/vnd.apache.arrow.stream"
API_KEY_HEADER = "X-API-Key"


class ClientError(Exception):
    """Base class: anything the client raises about the service."""

    def __init__(self, message: str, status: int | None = None, detail: dict | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail or {}


class ServiceUnavailable(ClientError):
    """The service could not be reached or failed (connection error, timeout, 5xx): retrying may help."""


class RequestRejected(ClientError):
    """The service refused the request (4xx): retrying the same request will not help."""


class LayersVersionMismatch(ServiceUnavailable):
    """The replica that answered serves another layer set than the one asked for (X-Enrich-Expect-Layers, 409):
    retrying helps once the replicas have converged, or lands on one that serves the expected set."""


EXPECT_LAYERS_HEADER = "X-Enrich-Expect-Layers"


# A result column named like a DataFrame attribute gets this in front in the frames tag() and geocode() answer, as a
# result column named like an input column does in the service's tables (its `prefix` option).
FRAME_PREFIX = "enrich_"
CHUNK_ROWS = 200_000
BODY_PART_BYTES = 1 << 20


def body_parts(body: bytes | memoryview | Any) -> tuple[list[memoryview], dict[str, str]]:
    """A request body as 1 MB views with its Content-Length header, for httpx's `content` and `headers`.

    httpcore sends a bytes body as `buffer = buffer[sent:]` after each socket send, copying the rest every time:
    quadratic in the body's size (docs/engine.md). Parts bound each copy to 1 MB, and a list (not a
    generator) is sent again as it is when a request is retried. Accepts bytes, a memoryview, a pyarrow Buffer, or a
    list of them (an Arrow stream's parts, arrow_stream.stream_parts), sent in order."""
    pieces = body if isinstance(body, list) else [body]
    parts: list[memoryview] = []
    for piece in pieces:
        view = memoryview(piece).cast("B")
        parts.extend(view[i:i + BODY_PART_BYTES] for i in range(0, len(view), BODY_PART_BYTES))
    return parts, {"content-length": str(sum(len(part) for part in parts))}


def read_answer(response: httpx.Response) -> bytes | bytearray:
    """A streamed response's body, read into one buffer of its Content-Length as the socket reads arrive: httpx's
    read() keeps each 64 KB read, then joins them into a new bytes object, a second copy of a large answer in fresh
    memory (docs/engine.md). Without a Content-Length (or with a Content-Encoding to undo), httpx reads it."""
    size = response.headers.get("content-length", "")
    if not size.isdigit() or response.headers.get("content-encoding", "identity") != "identity":
        return response.read()
    buffer = bytearray(int(size))
    view = memoryview(buffer)
    at = 0
    for chunk in response.iter_raw():  # h11 holds the server to its Content-Length: no more, no less arrives
        view[at:at + len(chunk)] = chunk
        at += len(chunk)
    return buffer


class EnrichClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 300.0,
                 transport: httpx.BaseTransport | None = None, *, retries: int = 0, retry_delay: float = 1.0,
                 max_retry_delay: float = 60.0):
        """retries: how often a request that failed for a reason a retry can fix (ServiceUnavailable) is sent again,
        waiting retry_delay, then twice as long each time, at most max_retry_delay."""
        self.base_url = base_url.rstrip("/")
        self.retries, self.retry_delay, self.max_retry_delay = retries, retry_delay, max_retry_delay
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))
        # The layer set (sha256) that answered the last tagging request: X-Enrich-Layers-Sha256.
        self.last_layers_sha256: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EnrichClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EnrichClient({self.base_url!r})"

    # ---- routes ---------------------------------------------------------------------------------------------

    def layers(self) -> dict:
        """GET /v1/layers: layers, versions, effective dates, sources and sha256."""
        return orjson.loads(self._request("GET", "/v1/layers")[1])

    def ready(self) -> bool:
        """True when /readyz answers 200 (layers loaded); False when it answers 503 or cannot be reached."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def reload(self) -> dict:
        """POST /v1/admin/reload (needs the admin API key): rebuild the index from the layer files and swap it in."""
        return orjson.loads(self._request("POST", "/v1/admin/reload")[1])

    def tag(self, df: pd.DataFrame, *, lon: str | None = None, lat: str | None = None, id: str | None = None,
            date: str | None = None, layers: Iterable[str] | str | None = None, as_of: str | None = None,
            crs: str | None = None, nearest_within_m: float | None = None,
            transport: Literal["arrow", "json"] = "arrow", chunk_rows: int | None = CHUNK_ROWS,
            progress: bool | None = None) -> pd.DataFrame:
        """Tag every row of `df`; returns a copy of `df` (a GeoDataFrame stays one, geometry and CRS kept) with the
        result columns appended (replacing any of the same name). The points: the `lon`/`lat` columns (default
        lon, lat), or a GeoDataFrame's point geometry in its own CRS (none set: EPSG:4326). `id` names a column
        echoed back as `id` by the service (default: the row position, which is what the answer is aligned on either
        way). Results come back in input order."""
        import numpy as np
        import pandas as pd

        if transport not in ("arrow", "json"):
            raise ValueError(f"transport must be 'arrow' or 'json', not {transport!r}")
        transport = transport if len(df) else "arrow"
        x, y, crs, empty = _frame_points(df, lon, lat, crs)
        date = date or ("date" if "date" in df.columns else None)  # the service's default date column
        for name in (id, date):
            if name is not None and name not in df.columns:
                raise KeyError(f"column {name!r} not in the frame (columns: {list(df.columns)})")
        if transport == "arrow":
            import pyarrow as pa

            table = pa.table({
                "id": pa.array(df[id].to_numpy(), from_pandas=True) if id else pa.array(range(len(df)), pa.int64()),
                "lon": pa.array(x, from_pandas=True),
                "lat": pa.array(y, from_pandas=True),
                **({"date": pa.array(_iso_dates(df[date]), pa.string())} if date else {}),
            })
            if empty.any():  # POINT EMPTY: that row's error says so, rather than "lon: missing"
                from .io.coordinates import with_geometry

                table = with_geometry(table, "lon", "lat",
                                      errors={int(i): ("geometry", "empty") for i in np.flatnonzero(empty)})
            if not len(df):  # the service refuses an empty body: one row without a point gives the columns
                table = pa.table({name: pa.nulls(1, pa.int64() if name == "id" else col.type)
                                  for name, col in zip(table.column_names, table.columns)})
            params = _params(layers=_layer_list(layers), as_of=as_of, crs=crs, nearest_within_m=nearest_within_m,
                             date_col="date" if date else None)
            answer, used = self._post_in_chunks("/v1/pip", table, params, chunk_rows, progress)
            answer = answer.slice(0, len(df))
            results = plain_columns(answer.drop_columns(["id", "lon", "lat"] + (["date"] if date else [])))
            results = results.to_pandas()
        else:
            results, used = self._tag_json(df, x, y, id, date, layers, as_of, crs, nearest_within_m)
        if len(results) != len(df):
            raise ClientError(f"the service answered {len(results)} rows for {len(df)}")
        results.columns = _frame_names(list(results.columns), (), list(used))
        results.index = df.index
        out = df.drop(columns=[c for c in results.columns if c in df.columns])
        out = pd.concat([out, results], axis=1)
        out.attrs["enrich_layers"] = used
        return out

    def geocode(self, df: pd.DataFrame, *, address: str = "address", city: str | None = None,
                zip: str | None = None, date: str | None = None, layers: Iterable[str] | str | None = None,
                as_of: str | None = None, min_match: str | None = None, chunk_rows: int | None = CHUNK_ROWS,
                progress: bool | None = None):
        """Geocode the `address` column (with `city` and `zip` when given) and tag the places found: a
        GeoDataFrame of `df`'s columns, then lon, lat, match, score, matched_address, reason, the layer columns,
        enrich_flags and error; its geometry the points found (EPSG:4326, None where nothing was). As in the
        service's tables, a result column named like one of `df`'s gets the prefix `enrich_`: your `zip` stays,
        the zip layer's answer is `enrich_zip`."""
        import geopandas as gpd
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import shapely

        date = date or ("date" if "date" in df.columns else None)  # the service's default date column
        for name in (address, city, zip, date):
            if name is not None and name not in df.columns:
                raise KeyError(f"column {name!r} not in the frame (columns: {list(df.columns)})")
        # Request columns under names no result has, so the answer's columns come back as the service names them.
        cols = {"__id": pa.array(range(len(df)), pa.int64()), "__address": _texts(df[address])}
        if city:
            cols["__city"] = _texts(df[city])
        if zip:
            cols["__zip"] = _texts(df[zip])
        if date:
            cols["__date"] = pa.array(_iso_dates(df[date]), pa.string())
        table = pa.table(cols)
        params = _params(layers=_layer_list(layers), as_of=as_of, min_match=min_match, id_col="__id",
                         address_col="__address", city_col="__city", zip_col="__zip",
                         date_col="__date" if date else None)
        answer, used = self._post_in_chunks("/v1/geocode-join", table, params, chunk_rows, progress)
        if answer.num_rows != len(df):
            raise ClientError(f"the service answered {answer.num_rows} rows for {len(df)}")
        results = plain_columns(answer.drop_columns(table.column_names)).to_pandas()
        lon, lat = results["lon"].to_numpy(dtype=float), results["lat"].to_numpy(dtype=float)
        results.columns = _frame_names(list(results.columns), [str(c) for c in df.columns], list(used))
        results.index = df.index
        found = np.isfinite(lon) & np.isfinite(lat)
        points = np.full(len(df), None, dtype=object)
        points[found] = shapely.points(lon[found], lat[found])
        geometry = _frame_names(["geometry"], [str(c) for c in df.columns] + list(results.columns), [])[0]
        out = gpd.GeoDataFrame(pd.concat([pd.DataFrame(df), results], axis=1),
                               geometry=gpd.GeoSeries(points, index=df.index, crs="EPSG:4326", name=geometry))
        out.attrs["enrich_layers"] = used
        return out

    def tag_table(self, table: pa.Table, *, layers: Iterable[str] | str | None = None, as_of: str | None = None,
                  crs: str | None = None, nearest_within_m: float | None = None, id_col: str = "id",
                  lon_col: str = "lon", lat_col: str = "lat", date_col: str | None = None,
                  date_format: str | None = None, expect_layers: str | None = None, prefix: str | None = None) -> tuple[pa.Table, dict]:
        """The Arrow path without pandas: POST the table as an Arrow IPC stream; returns (the table the service
        answers: the input columns plus the result columns, layer keys dictionary-encoded; layers used).
        A table over the service's ENRICH_MAX_BATCH or ENRICH_MAX_BODY_BYTES (413) is sent in halves.
        expect_layers: the layer set (sha256) every part must be answered from; another raises LayersVersionMismatch."""
        params = _params(layers=_layer_list(layers), as_of=as_of, crs=crs, nearest_within_m=nearest_within_m,
                         id_col=id_col, lon_col=lon_col, lat_col=lat_col, date_col=date_col,
                         date_format=date_format, prefix=prefix)
        return self._post_arrow_in_parts("/v1/pip", table, params, expect_layers)

    def geocode_table(self, table: pa.Table, *, layers: Iterable[str] | str | None = None,
                      as_of: str | None = None, min_match: str | None = None, id_col: str = "id",
                      address_col: str = "address", city_col: str = "city", zip_col: str = "zip",
                      date_col: str | None = None, prefix: str | None = None,
                      expect_layers: str | None = None) -> tuple[pa.Table, dict]:
        """POST /v1/geocode-join with the table as an Arrow IPC stream; returns (the input columns plus the geocode
        and layer columns, colliding result names prefixed; layers used). Sent in halves on a 413, like tag_table."""
        params = _params(layers=_layer_list(layers), as_of=as_of, min_match=min_match, id_col=id_col,
                         address_col=address_col, city_col=city_col, zip_col=zip_col, date_col=date_col,
                         prefix=prefix)
        return self._post_arrow_in_parts("/v1/geocode-join", table, params, expect_layers)

    def _post_in_chunks(self, path: str, table: pa.Table, params: dict, chunk_rows: int | None,
                        progress: bool | None, expect_layers: str | None = None) -> tuple[pa.Table, dict]:
        """POST the table `chunk_rows` rows at a time (each in halves on a 413), every chunk answered from the layer
        set of the first (X-Enrich-Expect-Layers); a progress bar when there is more than one chunk."""
        import pyarrow as pa

        n = table.num_rows
        if not chunk_rows or n <= chunk_rows:
            return self._post_arrow_in_parts(path, table, params, expect_layers)
        from rich.progress import Progress

        answers: list[pa.Table] = []
        used: dict = {}
        with Progress(disable=progress is False, transient=True) as bar:
            task = bar.add_task(path, total=n)
            for start in range(0, n, chunk_rows):
                answer, part_used = self._post_arrow_in_parts(path, table.slice(start, chunk_rows), params,
                                                              expect_layers)
                expect_layers = expect_layers or self.last_layers_sha256
                answers.append(plain_columns(answer))  # dictionaries differ from chunk to chunk
                used = merge_layers_used(used, part_used)
                bar.advance(task, answer.num_rows)
        return pa.concat_tables(answers, promote_options="permissive"), used

    def _post_arrow_in_parts(self, path: str, table: pa.Table, params: dict,
                             expect_layers: str | None) -> tuple[pa.Table, dict]:
        """POST the table to `path`; a part the service finds too large (413) is sent again in halves."""
        import pyarrow as pa

        parts = [table]
        answers: list = []
        used: dict = {}
        while parts:
            part = parts.pop(0)
            try:
                answer, part_used = self._post_arrow(path, part, params, expect_layers)
            except RequestRejected as exc:
                if exc.status != 413 or part.num_rows < 2:
                    raise
                half = part.num_rows // 2
                parts[:0] = [part.slice(0, half), part.slice(half)]
                continue
            answers.append(answer)
            used = merge_layers_used(used, part_used)
        return (answers[0] if len(answers) == 1 else pa.concat_tables(answers)), used

    def _post_arrow(self, path: str, table: pa.Table, params: dict,
                    expect_layers: str | None = None) -> tuple[pa.Table, dict]:
        import json

        import pyarrow as pa
        import pyarrow.ipc as ipc

        from .io.arrow_stream import stream_parts

        parts, length = body_parts(stream_parts(table))  # the table's own columns, not a copy of them
        headers = {"content-type": ARROW, "accept": ARROW, **length}
        if expect_layers:
            headers[EXPECT_LAYERS_HEADER] = expect_layers
        r, body = self._request("POST", path, params=params, content=parts, headers=headers)
        served = r.headers.get("x-enrich-layers-sha256")
        if expect_layers and served != expect_layers:  # a service too old to check the header itself
            raise LayersVersionMismatch(f"answered from layer set {served}, expected {expect_layers}", 409)
        self.last_layers_sha256 = served
        try:
            answer = ipc.open_stream(pa.py_buffer(body)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise ClientError(f"the service's answer is not an Arrow stream: {exc}", r.status_code) from None
        return answer, json.loads(r.headers.get("x-enrich-layers", "{}"))

    # ---- internals ------------------------------------------------------------------------------------------

    def _tag_json(self, df, xs, ys, id, date, layers, as_of, crs, nearest_within_m):
        import numpy as np
        import pandas as pd

        # Points as columns and the answer as columns (shape=columns): no object per row on either side. NaN is not
        # JSON: orjson writes it as null, and the service reports the row as missing.
        points: dict[str, Any] = {"id": df[id].tolist() if id else np.arange(len(df)),
                                  "lon": np.ascontiguousarray(xs, dtype=np.float64),
                                  "lat": np.ascontiguousarray(ys, dtype=np.float64)}
        if date:
            points["date"] = _iso_dates(df[date])
        request = {"points": points, **_params(layers=_layer_list(layers), as_of=as_of, crs=crs,
                                               nearest_within_m=nearest_within_m)}
        parts, length = body_parts(orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY))
        _, answer = self._request("POST", "/v1/pip", params={"shape": "columns"}, content=parts,
                                  headers={"content-type": "application/json", **length})
        doc = orjson.loads(answer)
        results = pd.DataFrame(doc["results"])
        return results.drop(columns=["id"], errors="ignore"), doc.get("layers", {})

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, bytes | bytearray]:
        """The response (its headers) and its body (read_answer), retried as the client is configured."""
        if not self.retries:
            return self._request_once(method, path, **kwargs)
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        for attempt in Retrying(stop=stop_after_attempt(self.retries + 1), reraise=True,
                                wait=wait_exponential(multiplier=self.retry_delay, max=self.max_retry_delay),
                                retry=retry_if_exception_type(ServiceUnavailable)):
            with attempt:
                return self._request_once(method, path, **kwargs)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _request_once(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, bytes | bytearray]:
        try:
            with self._http.stream(method, path, **kwargs) as r:
                body = read_answer(r) if r.status_code < 400 else r.read()
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"{method} {self.base_url}{path}: timed out ({exc})") from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"{method} {self.base_url}{path}: cannot reach the service ({exc})") from exc
        if r.status_code < 400:
            return r, body
        try:
            detail = r.json()
        except ValueError:
            detail = {"detail": r.text[:500]}
        message = f"{method} {self.base_url}{path}: {r.status_code} {detail.get('detail', '')}".rstrip()
        if detail.get("field"):
            message += f" (field: {detail['field']})"
        if r.status_code >= 500 or r.status_code in (408, 429):
            raise ServiceUnavailable(message, r.status_code, detail)
        if r.status_code == 409 and detail.get("code") == "layers_version_mismatch":
            raise LayersVersionMismatch(message, r.status_code, detail)
        raise RequestRejected(message, r.status_code, detail)


class LocalService:
    """A service of one's own on loopback, for scripts, benchmarks and notebooks: `enrich-service serve` in a child
    process on a free port, stopped on exit (SIGTERM, then SIGKILL after `stop_timeout`).

        with LocalService({"ENRICH_BOUNDARY_DIR": "../shared/data/boundaries"}) as svc:
            EnrichClient(svc.url).tag(df, lon="lng", lat="lat")

    `env` is added to this process's environment; `log` (a path) receives the service's output."""

    def __init__(self, env: dict[str, str] | None = None, *, port: int | None = None, log: str | None = None,
                 ready_timeout: float = 120.0, stop_timeout: float = 30.0):
        self.env, self.port, self.log = dict(env or {}), port, log
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> LocalService:
        import os
        import socket
        import subprocess
        import sys
        import time

        if self.port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        out = open(self.log, "ab") if self.log else None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "enrich_service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "warning"], env={**os.environ, **self.env}, stdout=out, stderr=out)
        finally:
            if out:
                out.close()
        deadline = time.monotonic() + self.ready_timeout
        proc = self.proc
        with EnrichClient(self.url, timeout=2) as probe:
            while not probe.ready():
                if proc.poll() is not None:
                    where = f" (see {self.log})" if self.log else ""
                    raise ServiceUnavailable(f"enrich-service exited with {proc.returncode} while starting{where}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServiceUnavailable(f"enrich-service was not ready within {self.ready_timeout:.0f} s")
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def merge_layers_used(a: dict, b: dict) -> dict:
    """Two answers' X-Enrich-Layers as one: the same version and sha256 per layer (else the service reloaded in
    between: ClientError), points per version added up."""
    out = {name: {**u, "versions_used": [dict(v) for v in u.get("versions_used", [])]} for name, u in a.items()}
    for name, u in b.items():
        if name not in out:
            out[name] = {**u, "versions_used": [dict(v) for v in u.get("versions_used", [])]}
            continue
        mine = out[name]
        if (mine.get("version"), mine.get("sha256")) != (u.get("version"), u.get("sha256")):
            raise ClientError(f"{name}: answers tagged with different layers ({mine.get('version')} "
                              f"{str(mine.get('sha256'))[:12]} and {u.get('version')} {str(u.get('sha256'))[:12]}): "
                              "the service reloaded in between; send the batch again")
        known = {v["version"]: v for v in mine["versions_used"]}
        for v in u.get("versions_used", []):
            if v["version"] in known:
                known[v["version"]]["points"] = known[v["version"]].get("points", 0) + v.get("points", 0)
            else:
                mine["versions_used"].append(dict(v))
    return out


def plain_columns(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns (layer keys, rules) as plain strings: concatenable across batches, CSV-writable."""
    import pyarrow as pa

    cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.table(cols, names=table.column_names)


def _frame_points(df: pd.DataFrame, lon: str | None, lat: str | None, crs: str | None):
    """(x, y, crs) of the frame's points: its lon/lat columns, or a GeoDataFrame's point geometry (its CRS sent as
    `crs`, or the points turned to EPSG:4326 when the CRS has no code the service could be told)."""
    import sys

    import numpy as np
    import pandas as pd

    gpd = sys.modules.get("geopandas")  # a GeoDataFrame means geopandas is imported already
    if gpd is not None and isinstance(df, gpd.GeoDataFrame) and lon is None and lat is None:
        import shapely

        geometry = df.geometry
        if crs is None and geometry.crs is not None:
            code = geometry.crs.to_epsg()
            if code:
                crs = f"EPSG:{code}"
            else:
                geometry = geometry.to_crs("EPSG:4326")
        geoms = np.asarray(geometry.values, dtype=object)
        other = ~shapely.is_missing(geoms) & (shapely.get_type_id(geoms) != 0)
        empty = (shapely.get_type_id(geoms) == 0) & shapely.is_empty(geoms)
        if other.any():
            kinds = sorted(set(shapely.get_type_id(geoms[other]).tolist()))
            names = ", ".join(shapely.GeometryType(k).name.title() for k in kinds)
            raise ValueError(f"tag() takes points: {int(other.sum())} rows hold {names}; pass "
                             "gdf.set_geometry(gdf.representative_point()) or name lon/lat columns")
        x, y = np.full(len(geoms), np.nan), np.full(len(geoms), np.nan)
        ok = (shapely.get_type_id(geoms) == 0) & ~empty
        x[ok], y[ok] = shapely.get_x(geoms[ok]), shapely.get_y(geoms[ok])
        return x, y, crs, empty
    from .io.coordinates import coordinate_columns

    lon, lat = coordinate_columns([str(c) for c in df.columns], lon, lat)  # lng, Longitude, x...: as the service
    for name in (lon, lat):
        if name not in df.columns:
            raise KeyError(f"column {name!r} not in the frame (columns: {list(df.columns)})")
    x = pd.to_numeric(df[lon], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(df[lat], errors="coerce").to_numpy(dtype=float)
    return x, y, crs, np.zeros(len(df), dtype=bool)


def _frame_names(names: list[str], taken, layers: list[str]) -> list[str]:
    """Result column names for a DataFrame: a name taken by a column of `taken`, or by a DataFrame attribute
    (`flags`), gets FRAME_PREFIX in front, with its layer's companions (the service's rule, io.results.append_results)."""
    import pandas as pd
    import pyarrow as pa

    from .io.results import append_results

    taken = list(dict.fromkeys([*taken, *(n for n in names if hasattr(pd.DataFrame, n))]))
    empty = pa.table([pa.nulls(0)] * len(taken), names=taken)
    out = append_results(empty, [(n, pa.nulls(0)) for n in names], layers, FRAME_PREFIX)
    return out.column_names[len(taken):]


def _texts(series: pd.Series) -> pa.Array:
    """A column of addresses, cities or ZIPs as text (None where missing); whole numbers without a '.0'."""
    import pandas as pd
    import pyarrow as pa

    if pd.api.types.is_float_dtype(series) and (series.dropna() % 1 == 0).all():
        series = series.astype("Int64")
    return pa.array([None if pd.isna(v) else str(v) for v in series], pa.string())


def _layer_list(layers: Iterable[str] | str | None) -> str | None:
    if layers is None:
        return None
    return layers if isinstance(layers, str) else ",".join(layers)


def _params(**kwargs: Any) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


def _iso_dates(series: pd.Series) -> list:
    """Dates as YYYY-MM-DD strings (None where missing), whatever the column holds: dates, timestamps, text. A
    timestamp with a zone gives its San Diego day, as the service reads one (the layers' dates are local days)."""
    import pandas as pd

    from .io.dates import LOCAL_TZ

    def local(v):
        return v.tz_convert(LOCAL_TZ) if getattr(v, "tzinfo", None) is not None else v

    try:
        parsed = pd.to_datetime(series, errors="coerce")
        if parsed.isna().sum() > series.isna().sum():  # a value unread: maybe zones that differ from row to row
            raise ValueError("unread values")
    except ValueError:  # pandas refuses to mix zones in one column: one value at a time
        parsed = [pd.to_datetime(v, errors="coerce") for v in series]
    else:
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            parsed = parsed.dt.tz_convert(LOCAL_TZ)
        text = parsed.dt.strftime("%Y-%m-%d")
        return text.astype(object).where(text.notna(), None).tolist()
    return [None if pd.isna(v) else local(v).strftime("%Y-%m-%d") for v in parsed]
