"""Engine: tags lon/lat columns with every requested layer, choosing each point's layer version by its date.

Per layer version it asks the grid fast path first and sends the points the grid cannot certify to the exact path,
so answers are the exact path's by construction (tests/test_engine.py holds both to that).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..crs import TO_METRIC
from ..errors import InvalidInput
from ..layers.store import LayerStore, LayerVersion
from .exact import ExactIndex
from .rules import RULE_NAMES, RULE_NEAREST

log = logging.getLogger(__name__)

MAX_NEAREST_M = 5_000.0


@dataclass
class LayerTags:
    """One layer's answer for a batch. `codes` index `dictionary` (the keys of every version used, concatenated),
    -1 where no feature answers; Arrow sends them as a dictionary array, JSON looks them up."""

    layer: str
    codes: np.ndarray  # int32
    dictionary: np.ndarray  # object: keys
    labels: np.ndarray  # object: a label per dictionary entry
    fields: list[dict]  # extra properties per dictionary entry
    rule: np.ndarray  # int8, rules.RULE_*
    version: np.ndarray | None  # object per point (only when points carry dates)
    distance_m: np.ndarray | None  # float64 (only with nearest_within_m)
    used: list[dict] = field(default_factory=list)  # [{"version", "sha256", "points"}]

    def keys(self) -> np.ndarray:
        return np.concatenate([self.dictionary.astype(object), np.array([None], dtype=object)])[self.codes]

    def rule_names(self) -> np.ndarray:
        return RULE_NAMES[self.rule]


@dataclass
class TagResult:
    layers: dict[str, LayerTags]
    row_errors: dict[int, tuple[str, str]]  # rows whose date has no version in force
    default_versions: dict[str, LayerVersion]  # the version for the request's as_of, per layer

    def layers_used(self) -> dict[str, dict]:
        return {
            name: {"version": self.default_versions[name].version, "sha256": self.default_versions[name].source.sha256,
                   "versions_used": tags.used}
            for name, tags in self.layers.items()
        }


def row_days(dates: np.ndarray, as_of: dt.date | None) -> np.ndarray:
    """Each row's day for choosing its version: its own date, else the request's as_of (else NaT: the newest)."""
    days = dates.copy()
    if as_of is not None:
        days[np.isnat(days)] = np.datetime64(as_of, "D")
    return days


@dataclass(frozen=True)
class _Catalog:
    offsets: np.ndarray
    dictionary: np.ndarray
    labels: np.ndarray
    fields: list


class Engine:
    """The indexes of every version of every layer in a LayerStore. Immutable: a reload builds a new Engine."""

    def __init__(self, store: LayerStore, grid_cells: int = 2048, use_grid: bool = True,
                 cache_dir: Path | None = None):
        t0 = time.perf_counter()
        self.store = store
        self.exact: dict[tuple[str, int], ExactIndex] = {}
        self.grid: dict = {}
        if use_grid:
            from .grid import GridIndex  # numba: loaded only when the fast path is on
        for name, versions in store.versions.items():
            for i, version in enumerate(versions):
                self.exact[name, i] = ExactIndex(version, cache_dir)
                if use_grid:
                    self.grid[name, i] = GridIndex.build(version, cells=grid_cells, cache_dir=cache_dir)
        # Per layer, all versions' features end to end (codes index into these): built once, not per request.
        self._catalog = {
            name: _Catalog(offsets=np.cumsum([0] + [v.n_features for v in versions]),
                           dictionary=np.concatenate([v.keys for v in versions]),
                           labels=np.concatenate([v.labels for v in versions]),
                           fields=[f for v in versions for f in v.fields])
            for name, versions in store.versions.items()}
        self.build_seconds = time.perf_counter() - t0
        log.info("indexes built in %.2fs (grid: %s)", self.build_seconds, use_grid)

    def tag_version(self, layer: str, i: int, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grid = self.grid.get((layer, i))
        if grid is None:
            return self.exact[layer, i].tag(lon, lat)
        feature, rule, undecided = grid.lookup(lon, lat)
        if undecided.any():
            idx = np.flatnonzero(undecided)
            feature[idx], rule[idx] = self.exact[layer, i].tag(lon[idx], lat[idx])
        return feature, rule

    def tag(
        self,
        lon: np.ndarray,
        lat: np.ndarray,
        valid: np.ndarray,
        layers: list[str],
        as_of: dt.date | None = None,
        dates: np.ndarray | None = None,
        nearest_within_m: float | None = None,
    ) -> TagResult:
        self.store.check_layers(layers)
        if nearest_within_m is not None and not (0 <= nearest_within_m <= MAX_NEAREST_M):
            raise InvalidInput(f"nearest_within_m must be between 0 and {MAX_NEAREST_M:g} metres",
                               field="nearest_within_m")
        n = len(lon)
        default_versions = {name: self.store.version_on(name, as_of) for name in layers}
        row_errors: dict[int, tuple[str, str]] = {}
        metric = _Metric(lon, lat)
        out: dict[str, LayerTags] = {}
        # Read once for every layer: on a single lookup each numpy call costs more than the grid's answer.
        all_valid = bool(valid.all())
        n_valid = n if all_valid else int(valid.sum())

        for name in layers:
            versions = self.store.versions[name]
            catalog = self._catalog[name]
            default_i = versions.index(default_versions[name])
            vidx: np.ndarray | None = None  # None: every row on the default version
            if dates is not None:
                vidx = self.store.version_index(name, row_days(dates, as_of))
                for row in np.flatnonzero((vidx < 0) & valid):
                    row_errors.setdefault(int(row), (
                        "date", f"{dates[row]} is before the first version of {name} "
                                f"(in force from {versions[0].effective_from.isoformat()})"))
            offsets = catalog.offsets
            distance = np.full(n, np.nan) if nearest_within_m is not None else None
            used = []
            groups: Iterable = ()
            if dates is None and nearest_within_m is None and ((name, default_i) in self.grid or all_valid):
                # The common case, one version for every row: no gather/scatter of 1M-row columns. Invalid rows
                # carry NaN coordinates, which the grid answers with "no feature"; they are masked anyway.
                i = default_i
                codes, rule = self.tag_version(name, i, lon, lat)
                if offsets[i]:
                    if n == 1:  # a single lookup: the ufunc's set-up costs more than the point
                        if codes[0] >= 0:
                            codes[0] += offsets[i]
                    else:
                        np.add(codes, np.int32(offsets[i]), out=codes, where=codes >= 0)
                if not all_valid:
                    codes[~valid] = -1
                    rule[~valid] = 0
                v = versions[i]
                used.append({"version": v.version, "sha256": v.source.sha256, "points": n_valid})
            else:
                codes = np.full(n, -1, dtype=np.int32)
                rule = np.zeros(n, dtype=np.int8)
                if vidx is None:
                    vidx = np.full(n, default_i, dtype=np.int32)
                groups = np.unique(vidx[valid & (vidx >= 0)])
            for i in groups:
                rows = np.flatnonzero(valid & (vidx == i))
                feature, r = self.tag_version(name, int(i), lon[rows], lat[rows])
                if distance is not None and nearest_within_m is not None:
                    _fill_nearest(self.exact[name, int(i)], metric, rows, feature, r, distance, nearest_within_m)
                codes[rows] = np.where(feature >= 0, feature + offsets[i], -1)
                rule[rows] = r
                v = versions[int(i)]
                used.append({"version": v.version, "sha256": v.source.sha256, "points": int(len(rows))})
            version_col = None
            if dates is not None and vidx is not None:
                names = np.array([v.version for v in versions] + [None], dtype=object)
                version_col = names[np.where(valid & (vidx >= 0), vidx, -1)]
            out[name] = LayerTags(
                layer=name, codes=codes, dictionary=catalog.dictionary, labels=catalog.labels, fields=catalog.fields,
                rule=rule,
                version=version_col, distance_m=distance, used=used)
        return TagResult(layers=out, row_errors=row_errors, default_versions=default_versions)


class _Metric:
    """The batch's points in the metric CRS, projected on first use (only a nearest search needs them)."""

    def __init__(self, lon: np.ndarray, lat: np.ndarray):
        self.lon, self.lat = lon, lat
        self._xy: tuple[np.ndarray, np.ndarray] | None = None

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        if self._xy is None:
            x, y = TO_METRIC.transform(self.lon, self.lat)
            self._xy = (np.asarray(x), np.asarray(y))
        return self._xy


def _fill_nearest(index: ExactIndex, metric: _Metric, rows: np.ndarray, feature: np.ndarray, rule: np.ndarray,
                  distance: np.ndarray, within_m: float) -> None:
    """The `rows` of one version group: a row no polygon holds takes the nearest feature within `within_m` metres;
    a row inside a polygon is 0 m away; one with no feature within reach stays NaN (it was reported as 0 m)."""
    miss = np.flatnonzero(feature < 0)
    if len(miss):
        mrows = rows[miss]
        xm, ym = metric.xy()
        nf, nd = index.nearest(metric.lon[mrows], metric.lat[mrows], xm[mrows], ym[mrows], within_m)
        hit = nf >= 0
        feature[miss[hit]] = nf[hit]
        rule[miss[hit]] = RULE_NEAREST
        distance[mrows[hit]] = np.round(nd[hit], 2)
    # Inside a polygon: 0 m away, in every group (not only those with a miss).
    distance[rows[(rule != RULE_NEAREST) & (feature >= 0)]] = 0.0
