"""How often a layer tag that geocode-join gives is wrong, per match level, on real addresses with known coordinates.

The truth of each record is the layer key of its true coordinates (the same engine, the same rule). Truth sets:
- the parking meters' hundred blocks ("1000 FIRST AVE" as the meters write it, and "1000 block of FIRST AVE" as
  police records do), with each meter's coordinates;
- address points held back from the reference (one in ten): with number and ZIP; as a police hundred block ("4600
  block of Gardena Avenue") with ZIP; the street and ZIP alone (street level); the street alone, no ZIP; the ZIP alone (zip level);
- transit stops named for an intersection ("Garnet Av & Cass St"), at the stop's coordinates.
Used by bench/geocode.py (the table in docs/geocode.md) and tests/test_geocode_tagging.py (the < 1 in 100 floor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .evaluate import holdout_mask, read_meters, read_stops
from .join import Records, geocode_join
from .matcher import LEVELS, Geocoder
from .reference import ReferenceFiles, load_reference, read_points

LAYERS = ["council_district", "neighborhood", "zip"]
# Truth records whose coordinates contradict their address (checked by hand), left out of the counts.
BAD_TRUTH = {
    "2300 THIRTIETH ST": "meters at -117.1573, 32.7153 (downtown, East Village); the 2300 block of 30th St is in "
                         "Golden Hill / North Park, 3 km away",
}


@dataclass
class TagCheck:
    name: str
    match: np.ndarray  # level per record
    given: dict[str, np.ndarray]  # layer -> key given (None where null)
    truth: dict[str, np.ndarray]  # layer -> key at the true coordinates
    rule: dict[str, np.ndarray]

    def rows(self) -> list[dict]:
        out = []
        for level in [lv for lv in LEVELS if (self.match == lv).any()] + ["all"]:
            at = self.match == level if level != "all" else np.ones(len(self.match), dtype=bool)
            row = {"set": self.name, "level": level, "n": int(at.sum())}
            for layer in self.given:
                given = at & (self.given[layer] != None)  # noqa: E711 - object arrays
                wrong = given & (self.given[layer] != self.truth[layer])
                row[f"{layer}_tagged"] = round(float(given.sum() / max(at.sum(), 1)), 4)
                row[f"{layer}_given"] = int(given.sum())
                row[f"{layer}_wrong"] = int(wrong.sum())
            out.append(row)
        return out

    def wrong_share(self, layer: str, level: str | None = None) -> float:
        at = self.match == level if level else np.ones(len(self.match), dtype=bool)
        given = at & (self.given[layer] != None)  # noqa: E711
        return float((given & (self.given[layer] != self.truth[layer])).sum() / max(given.sum(), 1))


def check(index, name: str, addresses: list, zips: list | None, lon: np.ndarray, lat: np.ndarray,
          geocoder: Geocoder | None = None, layers: list[str] = LAYERS) -> TagCheck:
    joined = geocode_join(index, Records(ids=None, addresses=addresses, zips=zips), layers, use_cache=False,
                          geocoder=geocoder)
    truth = index.engine.tag(np.asarray(lon, float), np.asarray(lat, float), np.ones(len(lon), dtype=bool), layers)
    return TagCheck(name=name, match=joined.geocoded.match.astype(str),
                    given={k: joined.result.layers[k].keys() for k in layers},
                    truth={k: truth.layers[k].keys() for k in layers},
                    rule={k: joined.result.layers[k].rule_names() for k in layers})


def truth_sets(index, files: ReferenceFiles, meters_csv: Path, stops_geojson: Path) -> list[TagCheck]:
    out = []
    m = read_meters(meters_csv)
    m = m[~m["sub_area"].isin(BAD_TRUTH)]
    lon, lat = m["lng"].to_numpy(float), m["lat"].to_numpy(float)
    out.append(check(index, "parking meters, as written", m["sub_area"].tolist(), None, lon, lat))
    police = []
    for text in m["sub_area"].tolist():
        number, _, street = text.strip().partition(" ")
        police.append(f"{int(number) // 100 * 100} block of {street}" if number.isdigit() else text)
    out.append(check(index, "parking meters, police blocks", police, None, lon, lat))

    points = read_points(files.points.path)
    held = holdout_mask(points)
    serving = index.geocoder
    geocoder = Geocoder(load_reference(files, serving.ref.zips, keep_points=~held), outside_zips=serving.outside_zips)
    test = points[held & points["housenumber"].str.fullmatch(r"\d+").to_numpy()]
    lon, lat = test["lon"].astype(float).to_numpy(), test["lat"].astype(float).to_numpy()
    zips = test["postcode"].tolist()
    out.append(check(index, "held-back points, number + ZIP",
                     [f"{h} {s}" for h, s in zip(test["housenumber"], test["street"])], zips, lon, lat, geocoder))
    blocks = [f"{int(h) // 100 * 100} block of {s}" for h, s in zip(test["housenumber"], test["street"])]
    out.append(check(index, "held-back points, police block + ZIP", blocks, zips, lon, lat, geocoder))
    out.append(check(index, "held-back points, street + ZIP", test["street"].tolist(), zips, lon, lat, geocoder))
    out.append(check(index, "held-back points, street only", test["street"].tolist(), None, lon, lat, geocoder))
    out.append(check(index, "held-back points, ZIP only", [""] * len(test), zips, lon, lat, geocoder))

    stops = read_stops(stops_geojson)
    out.append(check(index, "transit stops (intersections)", stops["name"].tolist(), None,
                     stops["lon"].to_numpy(float), stops["lat"].to_numpy(float)))
    return out
