"""A program built from source into the cache: found there or via its override, else built once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmshift.devcluster.cachedbuild import CachedBinary


def _executable(path: Path) -> None:
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_a_missing_binary_is_built_once_and_then_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSHIFT_CACHE", str(tmp_path))
    monkeypatch.delenv("VMSHIFT_TOOL", raising=False)
    tool = CachedBinary("tool", "v1", "VMSHIFT_TOOL", "no time")
    # an earlier build that never finished left its directory (older layouts put a lock there)
    tool.build_dir.mkdir(parents=True)
    (tool.build_dir / "build.lock").write_text("")
    builds: list[Path] = []

    def build(out: Path) -> None:
        builds.append(out)
        _executable(out / "tool")

    lines: list[str] = []
    assert tool.find() is None
    assert tool.ensure(build, lines.append) == tool.cached == tmp_path / "tool" / "v1" / "tool"
    assert tool.ensure(build, lines.append) == tool.cached
    assert len(builds) == 1 and os.access(tool.cached, os.X_OK)
    assert lines[0] == "building tool v1 from the Go module proxy (no time)"


def test_the_override_wins_and_nothing_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSHIFT_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "my-tool"
    _executable(mine)
    monkeypatch.setenv("VMSHIFT_TOOL", str(mine))

    def build(out: Path) -> None:
        raise AssertionError("nothing to build")

    assert CachedBinary("tool", "v1", "VMSHIFT_TOOL", "no time").ensure(build) == mine
