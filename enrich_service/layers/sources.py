"""Where a layer file comes from: the configured folder, or a download into the cache checked against its sha256."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import LayerSourceError
from .manifest import FileSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedFile:
    path: Path
    origin: str  # "dir" (ENRICH_BOUNDARY_DIR), "cache" (downloaded earlier) or "download" (fetched now)
    sha256: str
    sha256_matches_manifest: bool

    def describe(self) -> dict:
        return {"path": str(self.path), "origin": self.origin, "sha256": self.sha256,
                "sha256_matches_manifest": self.sha256_matches_manifest}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve(spec: FileSpec, folder: Path | None, cache_dir: Path,
            setting: str = "ENRICH_BOUNDARY_DIR") -> ResolvedFile:
    """Find `spec`'s file: in `folder` when one is configured (used as is, its sha256 reported), else in the cache,
    else download it from the manifest URL. A downloaded or cached file whose sha256 differs is refused. `setting`
    names the folder's environment variable in errors: what to set when a file can be neither found nor fetched."""
    if folder is not None:
        path = Path(folder) / spec.file
        if not path.is_file():
            raise LayerSourceError(f"{spec.file} not found in {folder} ({setting})")
        digest = sha256_of(path)
        if digest != spec.sha256:
            log.warning("%s: sha256 %s differs from the manifest's %s; using the local file", path, digest, spec.sha256)
        return ResolvedFile(path, "dir", digest, digest == spec.sha256)

    cached = Path(cache_dir) / spec.sha256 / spec.file
    if cached.is_file() and sha256_of(cached) == spec.sha256:
        return ResolvedFile(cached, "cache", spec.sha256, True)
    if not spec.url:
        raise LayerSourceError(f"{spec.file}: no folder configured and the manifest has no URL to download it from; "
                               f"set {setting} to a folder that holds it")
    _download(spec, spec.url, cached, setting)
    return ResolvedFile(cached, "download", spec.sha256, True)


def _download(spec: FileSpec, url: str, dest: Path, setting: str) -> None:
    import httpx  # only when downloading: a start from local files is spared its import (and rich's, click's)

    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from %s", spec.file, url)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, httpx.stream("GET", url, follow_redirects=True, timeout=60) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes():
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != spec.sha256:
            raise LayerSourceError(
                f"{spec.file} downloaded from {url} has sha256 {h.hexdigest()}, the manifest pins {spec.sha256}; "
                "refusing it (update the manifest after checking the new file)"
            )
        os.replace(tmp, dest)
    except httpx.HTTPError as exc:
        raise LayerSourceError(f"cannot download {spec.file} from {url}: {exc}; "
                               f"or set {setting} to a folder that holds it") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
