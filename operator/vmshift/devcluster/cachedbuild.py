"""Build a directory once into the cache, safely under concurrent runs.

Talks to the file system only; runs what its caller's ``build`` runs. The one helper for every
build output cached under ``~/.cache/vmshift/<thing>/<key>/``: a build writes into a scratch
directory beside the target, and only a finished build is renamed into place, so a reader never
sees half an output and a crashed build leaves nothing that looks complete. An exclusive lock on
``<key>.lock`` beside the target makes concurrent runs (two pytest processes, a test and ``make``)
build once: the second waits, then finds the target and returns it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmshift.devcluster.binaries import cache_root


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target`` (a directory), calling ``build(scratch)`` first when it does not exist yet.

    ``build`` fills the empty directory ``scratch`` with what ``target`` must hold; on success the
    scratch directory is renamed to ``target`` atomically, on an exception it is removed and the
    exception propagates (``target`` stays absent, so the next run builds again).
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(scratch)
            scratch.chmod(0o755)
            scratch.rename(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass(frozen=True)
class CachedBinary:
    """One program built from source into ``~/.cache/vmshift/<name>/<version>/<name>``.

    Lookup order: ``$<override>`` (a path to a binary you already have), then the cache; when
    neither exists, :meth:`ensure` builds it once with :func:`build_once`.
    """

    name: str
    version: str
    override: str
    #: What the build costs, said before it starts ("about a minute on 2 cores").
    cost: str

    @property
    def build_dir(self) -> Path:
        return cache_root() / self.name / self.version

    @property
    def cached(self) -> Path:
        return self.build_dir / self.name

    def find(self) -> Path | None:
        """The usable binary in lookup order, or None."""
        given = os.environ.get(self.override)
        for path in ([Path(given)] if given else []) + [self.cached]:
            if path.is_file() and os.access(path, os.X_OK):
                return path
        return None

    def ensure(self, build: Callable[[Path], None], log: Callable[[str], None] = _stderr) -> Path:
        """The binary, built first when it is found nowhere: ``build(scratch)`` writes
        ``scratch/<name>``."""
        found = self.find()
        if found is not None:
            return found
        if self.build_dir.is_dir():  # left by a build that never finished (older layouts kept a lock here)
            shutil.rmtree(self.build_dir)
        started = time.monotonic()
        log(f"building {self.name} {self.version} from the Go module proxy ({self.cost})")
        build_once(self.build_dir, build)
        log(f"built {self.name} {self.version} in {time.monotonic() - started:.0f}s: {self.cached}")
        return self.cached
