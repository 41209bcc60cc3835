"""The agent's token file is never readable by others, not even for a moment (umask 0, and no chmod after)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmshift.hypervisor.launcher import AgentConfig, start_agent
from vmshift.privatefile import write_private


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: a file gets exactly the mode it is created with."""
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_agent_token_file_is_created_private(open_umask: None, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher that dies between writing and chmod-ing must not leave a world-readable token: with
    chmod doing nothing, the file must still be 0600 (it is created so, not narrowed afterwards)."""
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    agent = start_agent(AgentConfig(name="private-token"), "s3cret-token-value", tmp_path)
    try:
        token_file = tmp_path / "private-token.token"
        assert token_file.read_text() == "s3cret-token-value"
        assert _mode(token_file) == 0o600, oct(_mode(token_file))
        assert agent.alive
    finally:
        agent.stop()


def test_write_private_replaces_atomically_and_leaves_no_temporary(open_umask: None, tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    key.write_text("old")
    key.chmod(0o644)
    write_private(key, b"new secret")
    assert key.read_bytes() == b"new secret" and _mode(key) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin.key"]
