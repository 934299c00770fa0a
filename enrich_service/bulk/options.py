"""The request options (layers, as_of, crs, nearest_within_m) of every route, read from a JSON body or a query string
the same way, every problem naming its field; their limits, each one constant; and the documented query parameter
(Param) that routes and bulk operations declare theirs with."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyproj import CRS

from ..engine.tagger import MAX_NEAREST_M
from ..errors import InvalidInput, PayloadTooLarge
from ..index import ServiceIndex
from ..io.dates import parse_date
from ..io.json_body import OPTIONS
from ..io.params import Param
from ..points import parse_crs
from ..settings import Settings

MAX_LAYERS = 100  # names per request, and characters per name: every message that names them stays readable
MAX_LAYER_NAME_CHARS = 100


@dataclass(frozen=True)
class Options:
    layers: list[str]
    as_of: dt.date | None
    crs: CRS
    nearest_within_m: float | None


@dataclass(frozen=True)
class QueryOptions:
    """The options as a query string gives them (text, None where absent), parsed when the route needs them: a JSON
    body's own options come first (merge_options)."""

    given: dict[str, str | None]

    def parsed(self, settings: Settings) -> Options:
        return parse_options(self.given, settings)

    def only(self, names: tuple[str, ...]) -> dict[str, str | None]:
        return {name: self.given.get(name) for name in names}


OPTION_PARAMS = {param.name: param for param in (
    Param("layers", "Comma-separated layer names (default: ENRICH_DEFAULT_LAYERS)"),
    Param("as_of", "YYYY-MM-DD: the layer versions in force that day", {"type": "string", "format": "date"}),
    Param("crs", "CRS of the coordinates, e.g. EPSG:2230; default EPSG:4326"),
    Param("nearest_within_m", "Outside every polygon: the nearest within this many metres",
          {"type": "number", "minimum": 0, "maximum": MAX_NEAREST_M}),
)}
assert tuple(OPTION_PARAMS) == OPTIONS


def check_options_usable(index: ServiceIndex, opts: Options) -> None:
    """Everything about the options that can fail, checked before any answer starts (a streamed answer cannot
    turn into a 4xx once its status line is out): the layers exist, each has a version in force on as_of."""
    index.store.check_layers(opts.layers)
    for name in opts.layers:
        index.store.version_on(name, opts.as_of)


def parse_options(raw: dict, settings: Settings) -> Options:
    """Options from a JSON body or from query parameters; every problem names its field."""
    layers = raw.get("layers")
    if layers is None or layers == "":
        layers = list(settings.default_layers)
    elif isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    elif not (isinstance(layers, list) and all(name.__class__ is str for name in layers)):
        raise InvalidInput("layers must be a list of layer names (or a comma-separated string)", field="layers")
    if not layers:
        raise InvalidInput("layers is empty; name at least one layer", field="layers")
    if len(layers) > MAX_LAYERS or max(map(len, layers)) > MAX_LAYER_NAME_CHARS:
        raise InvalidInput(f"layers: at most {MAX_LAYERS} names of at most {MAX_LAYER_NAME_CHARS} characters",
                           field="layers")
    nearest = raw.get("nearest_within_m")
    if isinstance(nearest, bool):
        raise InvalidInput("nearest_within_m must be a number of metres, not true/false", field="nearest_within_m")
    if nearest is not None and nearest != "":
        try:
            nearest = float(nearest)
        except (TypeError, ValueError):
            raise InvalidInput(f"nearest_within_m {nearest!r} is not a number", field="nearest_within_m") from None
        if not 0 <= nearest <= MAX_NEAREST_M:  # also refuses NaN
            raise InvalidInput(f"nearest_within_m must be between 0 and {MAX_NEAREST_M:g} metres",
                               field="nearest_within_m")
    else:
        nearest = None
    crs = raw.get("crs")
    if crs is not None and (isinstance(crs, bool) or not isinstance(crs, (str, int))):
        raise InvalidInput("crs must be a string such as 'EPSG:2230' or an EPSG number", field="crs")
    as_of = raw.get("as_of")
    if as_of is not None and not isinstance(as_of, (str, dt.date)):
        raise InvalidInput("as_of must be a date string YYYY-MM-DD", field="as_of")
    return Options(layers=list(dict.fromkeys(layers)), as_of=parse_date(as_of, "as_of"),
                   crs=parse_crs(crs), nearest_within_m=nearest)


def merge_options(body: dict, query: dict, settings: Settings, normalise: dict | None = None) -> dict:
    """A JSON body's options, each one it leaves out taken from the query string. Given in both with different
    values, the request is refused naming the option: silently preferring one answers a question not asked.
    Values are compared as read (`layers=a,b` is ["a", "b"]; 2230 is EPSG:2230); `normalise` reads options
    parse_options does not know (name -> function)."""
    merged = {}
    for name in query:
        in_body, in_query = body.get(name), query[name]
        if in_body is None or in_body == "" or in_query is None or in_query == "":
            merged[name] = in_query if in_body is None or in_body == "" else in_body
            continue
        read = (normalise or {}).get(name) or (lambda v, n=name: getattr(parse_options({n: v}, settings), n))
        if read(in_body) != read(in_query):
            raise InvalidInput(f"{name} is given in both the body ({_shown(in_body)}) and the query string "
                               f"({_shown(in_query)}) with different values; give it once", field=name)
        merged[name] = in_body
    return merged


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_batch_size(n: int, settings: Settings, field: str = "points", noun: str = "point") -> None:
    if n == 0:
        raise InvalidInput(f"{field} is empty: send at least one {noun}", field=field)
    if n > settings.max_batch:
        raise PayloadTooLarge(f"{n} rows exceed the batch limit of {settings.max_batch} "
                              f"(ENRICH_MAX_BATCH); split the batch", field=field)
