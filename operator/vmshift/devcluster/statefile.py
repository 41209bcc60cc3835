"""A dataclass that records a running thing in ``<dir>/state.json``, replaced atomically."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Self


class StateFile:
    """Mixin for a dataclass with a ``dir`` field: load it from, and save it to, ``dir/state.json``."""

    dir: str

    @classmethod
    def load(cls, directory: Path) -> Self | None:
        """The state saved in ``directory``, or None when it is missing or unreadable."""
        try:
            fields: dict[str, Any] = json.loads((directory / "state.json").read_text())
            return cls(**fields)
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        path = Path(self.dir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))  # type: ignore[call-overload]
        tmp.replace(path)
