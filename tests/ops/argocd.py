"""Runs the Argo CD health scripts the way Argo CD does: Lua 5.1, the object as global ``obj``."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import lupa.lua51 as lua
import yaml

from vmshift.gitops import ARGOCD_CM, health_key

REPO = Path(__file__).resolve().parents[2]


@cache
def scripts() -> dict[str, str]:
    """The shipped argocd-cm patch's data: key -> Lua source."""
    return dict(yaml.safe_load((REPO / ARGOCD_CM).read_text())["data"])


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, Mapping):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)  # Argo CD hands numbers to Lua as float64
    raise TypeError(f"cannot pass {type(value).__name__} to Lua")


def health(obj: Mapping[str, Any]) -> dict[str, str]:
    """What Argo CD's health check for ``obj``'s kind answers: {"status": ..., "message": ...}."""
    script = scripts()[health_key(str(obj["kind"]))]
    runtime = lua.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(script)
    return {"status": str(result["status"]), "message": str(result["message"] or "")}
