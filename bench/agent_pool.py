"""The agent subprocesses a migration bench runs (``migration.py``, ``migration_qemu.py``): started with
one token into one work directory, stopped together, and the ids the bench gives its VMs and migrations."""

from __future__ import annotations

from pathlib import Path

from vmshift.hypervisor.launcher import AgentConfig, AgentProcess, start_agent

TOKEN = "bench-token"


class AgentPool:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.agents: list[AgentProcess] = []
        self.counter = 0

    def launch(self, config: AgentConfig) -> AgentProcess:
        agent = start_agent(config, TOKEN, self.workdir)
        self.agents.append(agent)
        return agent

    def stop_all(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.agents.clear()

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"
