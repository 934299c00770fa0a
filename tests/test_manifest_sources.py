"""Every download URL in boundaries/manifest.yaml is paired with the sha256 of the file that URL serves.

Offline (CI has no internet, only package registries) the URL itself cannot be fetched, so what is checked is:
- the manifest's sha256 is the sha256 of the local copy in ../shared/data (SOURCES.md documents those files as the
  city's and the Census' publications of the same name, as found in public repositories);
- the URL serves that kind of file: its file name is the local file's, or a name listed in PORTAL_NAMES with the
  reason, and the same format (a .zip URL cannot serve a GeoJSON: that was the `zip` layer's statewide TIGER URL
  paired with the county GeoJSON's sha256, refused at download, and the service never became ready);
- the host is the documented publisher of that layer.
A version whose file no URL serves (a derived extract) has no `url`: it is read from ENRICH_BOUNDARY_DIR only, and
the manifest says where it was derived from.

With ENRICH_CHECK_URLS=1 (a machine with internet) each URL is downloaded and its sha256 compared as well.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from enrich_service.layers.manifest import FileSpec
from enrich_service.layers.sources import LayerSourceError, resolve, sha256_of

from .conftest import BOUNDARIES, REPO, _free_port

pytestmark = pytest.mark.data

MANIFEST = yaml.safe_load((REPO / "boundaries" / "manifest.yaml").read_text())
PUBLISHERS = {"seshat.datasd.org": "City of San Diego open data portal", "www2.census.gov": "US Census Bureau"}
# URL file name -> local file name, where the portal names the same file differently, and why
PORTAL_NAMES = {
    "council_districts_datasd.geojson": ("council_districts_2021_datasd.geojson",
                                         "the portal's current districts are the 2021 lines; kept locally by year"),
    "san_diego_boundary_datasd.geojson": ("san_diego_city_boundary.geojson", "the city limits, renamed locally"),
}


def versions():
    for layer, spec in MANIFEST["layers"].items():
        for v in spec["versions"]:
            yield pytest.param(layer, v, id=f"{layer}-{v['version']}")




@pytest.mark.parametrize("layer,version", versions())
def test_each_url_is_paired_with_the_sha256_of_the_file_it_serves(layer, version):
    local = BOUNDARIES / version["file"]
    assert sha256_of(local) == version["sha256"], f"{layer} {version['version']}: the manifest pins another file"
    url = version.get("url")
    if url is None:
        # No URL serves this file: the manifest must say so (and where it came from), and it is read from a folder.
        text = (REPO / "boundaries" / "manifest.yaml").read_text()
        block = text[text.index(f"file: {version['file']}"):][:800].split("sha256:")[0]
        assert "No `url`" in block, f"{layer} {version['version']}: no url and no word on why"
        return
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc in PUBLISHERS, url
    name = PurePosixPath(parts.path).name
    expected = PORTAL_NAMES.get(name, (name, ""))[0]
    assert expected == version["file"], (
        f"{layer} {version['version']}: {url} serves {name}, not {version['file']} (sha256 {version['sha256'][:12]}…)")
    assert PurePosixPath(name).suffix == PurePosixPath(version["file"]).suffix


def test_the_statewide_tiger_file_is_not_paired_with_the_county_extract():
    """The found defect, as data: this pairing is exactly what the check above refuses."""
    zcta = MANIFEST["layers"]["zip"]["versions"][0]
    assert zcta.get("url") != "https://www2.census.gov/geo/tiger/TIGER2010/ZCTA5/2010/tl_2010_06_zcta510.zip"
    bad = {**zcta, "url": "https://www2.census.gov/geo/tiger/TIGER2010/ZCTA5/2010/tl_2010_06_zcta510.zip"}
    with pytest.raises(AssertionError, match="serves tl_2010_06_zcta510.zip, not sd_county_zcta2010.geojson"):
        test_each_url_is_paired_with_the_sha256_of_the_file_it_serves("zip", bad)


@pytest.mark.skipif(os.environ.get("ENRICH_CHECK_URLS") != "1",
                    reason="downloads each manifest URL: needs internet (CI has only package registries); "
                           "set ENRICH_CHECK_URLS=1")
@pytest.mark.parametrize("layer,version", versions())
def test_each_url_serves_its_sha256_online(layer, version):
    import httpx

    if not version.get("url"):
        pytest.skip("no url")
    h = hashlib.sha256()
    with httpx.stream("GET", version["url"], follow_redirects=True, timeout=120) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            h.update(chunk)
    assert h.hexdigest() == version["sha256"], f"{version['url']} now serves another file"


def test_a_layer_that_cannot_be_downloaded_names_the_url_and_the_folder_setting(tmp_path):
    """Offline without ENRICH_BOUNDARY_DIR, the refusal says both where it tried and what to set instead."""
    url = f"http://127.0.0.1:{_free_port()}/council_districts_datasd.geojson"
    spec = FileSpec("council_districts_2021_datasd.geojson", "0" * 64, url)
    with pytest.raises(LayerSourceError) as refused:
        resolve(spec, None, tmp_path)
    assert url in str(refused.value) and "ENRICH_BOUNDARY_DIR" in str(refused.value)
    with pytest.raises(LayerSourceError, match="ENRICH_BOUNDARY_DIR"):
        resolve(FileSpec("sd_county_zcta2010.geojson", "0" * 64), None, tmp_path)
    assert list(tmp_path.rglob("*")) == [tmp_path / ("0" * 64)]  # no partial file left behind
