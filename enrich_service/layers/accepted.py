"""The accepted layer set: the files that last passed validation, kept by sha256, and the one record (accepted.json)
that says which set every worker and every replica serves.

A start or reload that passes validation copies its files here (files/<sha256>/<name>) and replaces accepted.json
atomically. A worker that starts (a restart after kill -9, a new replica) loads these copies, never the files in
ENRICH_BOUNDARY_DIR, which may have been changed or refused since; workers follow accepted.json (reload.follow), so a
reload accepted by one worker of one replica reaches every worker of every replica that shares the folder.
A refused set is written to refused.json (what and why) and never to accepted.json: it stays refused until the file
is fixed and a reload accepts it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..errors import LayerSourceError
from .sources import sha256_of

log = logging.getLogger(__name__)

ACCEPTED = "accepted.json"
REFUSED = "refused.json"


def set_sha256(files: dict[str, str]) -> str:
    """One sha256 naming a whole layer set: over its files' names and sha256s, in name order."""
    text = "\n".join(f"{name} {sha}" for name, sha in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class AcceptedSet:
    sha256: str  # set_sha256(files)
    files: dict[str, str]  # file name -> sha256
    accepted_at: str
    previous: str | None = None  # the set it replaced

    def as_dict(self) -> dict:
        return {"sha256": self.sha256, "files": self.files, "accepted_at": self.accepted_at,
                "previous": self.previous}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class AcceptedStore:
    """The folder holding accepted.json, refused.json and the accepted files (shared by the replicas)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _ensure(self) -> None:
        (self.root / "files").mkdir(parents=True, exist_ok=True)

    def folder_of(self, sha256: str) -> Path:
        return self.root / "files" / sha256

    def read(self) -> AcceptedSet | None:
        try:
            raw = orjson.loads((self.root / ACCEPTED).read_bytes())
            return AcceptedSet(sha256=raw["sha256"], files=dict(raw["files"]), accepted_at=raw["accepted_at"],
                               previous=raw.get("previous"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s is unreadable (%s): treated as no accepted set", self.root / ACCEPTED, exc)
            return None

    def stamp(self) -> tuple[int, int] | None:
        """(mtime_ns, size) of accepted.json: followers read it only when this changes."""
        try:
            st = (self.root / ACCEPTED).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def paths(self, accepted: AcceptedSet) -> dict[str, Path] | None:
        """Each accepted file's kept copy, or None when one is missing (the folder was pruned or wiped)."""
        out = {name: self.folder_of(sha) / name for name, sha in accepted.files.items()}
        return out if all(p.is_file() for p in out.values()) else None

    def record(self, files: dict[str, tuple[Path, str]]) -> AcceptedSet:
        """Keep a copy of each file (name -> (path, sha256)) and make this set the accepted one."""
        self._ensure()
        for name, (path, sha) in files.items():
            dest = self.folder_of(sha) / name
            if dest.is_file():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
            os.close(fd)
            try:
                shutil.copyfile(path, tmp)
                if sha256_of(Path(tmp)) != sha:  # rewritten since it was validated: that is not what passed
                    raise LayerSourceError(f"{name} changed while it was being accepted; reload again")
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        shas = {name: sha for name, (_, sha) in files.items()}
        before = self.read()
        accepted = AcceptedSet(sha256=set_sha256(shas), files=shas,
                               accepted_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               previous=before.sha256 if before and before.sha256 != set_sha256(shas)
                               else (before.previous if before else None))
        if before is None or before.sha256 != accepted.sha256:
            _write_atomic(self.root / ACCEPTED, orjson.dumps(accepted.as_dict(), option=orjson.OPT_INDENT_2))
            log.warning("layer set %s accepted (was %s)", accepted.sha256[:12],
                        before.sha256[:12] if before else "none")
            self._prune(keep=set(shas.values()) | set((before.files if before else {}).values()))
            return accepted
        return before

    def _prune(self, keep: set[str]) -> None:
        """Copies of files in neither the accepted set nor the one before it (a rollback target) are removed."""
        for folder in (self.root / "files").iterdir():
            if folder.name not in keep and not folder.name.startswith("."):
                shutil.rmtree(folder, ignore_errors=True)

    def record_refusal(self, files: dict[str, str], check: str, reason: str) -> None:
        self._ensure()
        refused = self.refused()
        refused[set_sha256(files)] = {"files": files, "check": check, "reason": reason,
                                      "refused_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        _write_atomic(self.root / REFUSED, orjson.dumps(dict(list(refused.items())[-20:]),
                                                        option=orjson.OPT_INDENT_2))

    def refused(self) -> dict:
        try:
            return orjson.loads((self.root / REFUSED).read_bytes())
        except (OSError, ValueError):
            return {}
