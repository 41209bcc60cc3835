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
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


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
