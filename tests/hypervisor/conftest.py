"""Fixtures for the hypervisor tests: real ``vmshift agent`` subprocesses on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.hypervisor.helpers import Clients
from vmshift.hypervisor.launcher import AgentConfig, AgentProcess, start_agent

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="session")
def agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agents")


@pytest.fixture
def spawn(agent_dir: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents for one test; each is stopped (or was killed by the test) at its end."""
    started: list[AgentProcess] = []

    def _spawn(name: str, **config: object) -> AgentProcess:
        agent = start_agent(AgentConfig(name=name, **config), TOKEN, agent_dir)  # type: ignore[arg-type]
        started.append(agent)
        return agent

    yield _spawn
    for agent in started:
        agent.stop()


@pytest.fixture(scope="module")
def pair(agent_dir: Path, request: pytest.FixtureRequest) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    """Two icelake hosts that share volume csv1 and LUN lun7, for the tests of one module."""
    prefix = request.module.__name__.rsplit(".", 1)[-1].replace("test_", "")[:12]
    common = {"shared_volumes": ("csv1",), "passthrough_luns": ("lun7",), "bandwidth_mbps": 10000.0}
    first = start_agent(AgentConfig(name=f"{prefix}-h1", **common), TOKEN, agent_dir)  # type: ignore[arg-type]
    second = start_agent(AgentConfig(name=f"{prefix}-h2", **common), TOKEN, agent_dir)  # type: ignore[arg-type]
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
async def clients(pair: tuple[AgentProcess, AgentProcess]) -> AsyncIterator[Clients]:
    """Clients of the module's two agents."""
    async with pair[0].client() as first, pair[1].client() as second:
        yield first, second
