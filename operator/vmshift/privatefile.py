"""Writing a file only its owner may read (tokens, private keys), without a moment in which others can.

File system only. ``write_text().chmod(0o600)`` leaves the file readable by everyone between the
two calls (and for good if the process dies in between); here the file is created with mode 0600
(the umask can only narrow it), filled, flushed, and renamed over the target, so readers see the
old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

MODE = 0o600


def write_private(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data``, readable and writable by the owner only."""
    content = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
