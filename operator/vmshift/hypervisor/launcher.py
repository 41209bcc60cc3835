"""Start and stop ``vmshift agent`` subprocesses for tests, the demo and end-to-end runs.

Owns processes only: each agent runs in its own process group, reports its ports through a
ready-file, and is killed when this process exits (atexit) or when its parent dies
(``--exit-with-parent``). Talks to agents only by signals; use HypervisorClient for the API.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from vmshift.hypervisor.client import HypervisorClient
from vmshift.privatefile import write_private

_LIVE: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class AgentConfig:
    """The command line of one agent (ports 0: the OS picks free ones)."""

    name: str
    cpu_model: str = "icelake"
    cores: int = 32
    memory_mib: int = 262144
    bandwidth_mbps: float = 10000.0
    shared_volumes: tuple[str, ...] = ()
    passthrough_luns: tuple[str, ...] = ()
    listen: str = "127.0.0.1"
    api_port: int = 0
    migration_port: int = 0
    #: The migration port peers are told to dial (0: the bound one); a proxy in front of the listener.
    advertise_migration_port: int = 0
    reservation_seconds: float = 30.0
    log_level: str = "INFO"
    #: simulated, or qemu (then ``shared_dir`` is every host's shared volumes' directory, and the
    #: guests' files go to ``driver_dir``, by default a directory beside the agent's log).
    driver: str = "simulated"
    driver_dir: Path | None = None
    shared_dir: Path | None = None
    accel: str = "auto"
    qemu_switchover_hold_seconds: float = 0.0

    def argv(self, token_file: Path, ready_file: Path) -> list[str]:
        args = [
            sys.executable, "-m", "vmshift.cli.main", "agent",
            "--name", self.name, "--cpu-model", self.cpu_model, "--cores", str(self.cores),
            "--memory-mib", str(self.memory_mib), "--bandwidth-mbps", f"{self.bandwidth_mbps:g}",
            "--token-file", str(token_file), "--listen", self.listen, "--api-port", str(self.api_port),
            "--migration-port", str(self.migration_port),
            "--advertise-migration-port", str(self.advertise_migration_port), "--ready-file", str(ready_file),
            "--reservation-seconds", f"{self.reservation_seconds:g}", "--log-level", self.log_level,
            "--exit-with-parent",
        ]
        for volume in self.shared_volumes:
            args += ["--shared-volume", volume]
        if self.driver != "simulated":
            args += ["--driver", self.driver, "--accel", self.accel]
            if self.driver_dir is not None:
                args += ["--driver-dir", str(self.driver_dir)]
            if self.shared_dir is not None:
                args += ["--shared-dir", str(self.shared_dir)]
            if self.qemu_switchover_hold_seconds:
                args += ["--qemu-switchover-hold-seconds", f"{self.qemu_switchover_hold_seconds:g}"]
        for lun in self.passthrough_luns:
            args += ["--passthrough-lun", lun]
        return args


class AgentStartError(RuntimeError):
    """The agent did not come up; the message carries the end of its log."""


@dataclass
class AgentProcess:
    """A running agent subprocess."""

    config: AgentConfig
    token: str
    process: subprocess.Popen[bytes]
    api_port: int
    migration_port: int
    boot_id: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def endpoint(self) -> str:
        host = "127.0.0.1" if self.config.listen in ("0.0.0.0", "::") else self.config.listen
        return f"http://{host}:{self.api_port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def client(self, timeout_seconds: float = 10.0) -> HypervisorClient:
        return HypervisorClient(self.endpoint, self.token, timeout_seconds=timeout_seconds)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_seconds: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if it lingers; the exit code (None if it had to be killed)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        _LIVE.pop(self.process.pid, None)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the agent's whole process group (a host losing power) and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        _LIVE.pop(self.process.pid, None)


def start_agent(config: AgentConfig, token: str | None, workdir: Path, *,
                ready_timeout_seconds: float = 60.0) -> AgentProcess:
    """Start ``vmshift agent`` and wait (with a deadline) until its ready-file names its ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    if config.driver != "simulated":
        config = replace(config, driver_dir=config.driver_dir or workdir / f"{config.name}.guests",
                         shared_dir=config.shared_dir or workdir / "shared")
        # QEMU's accelerator probe and CPU model query run before the agent is ready.
        ready_timeout_seconds = max(ready_timeout_seconds, 300.0)
    token = token or secrets.token_urlsafe(24)
    token_file = workdir / f"{config.name}.token"
    write_private(token_file, token)
    ready_file = workdir / f"{config.name}.ready.json"
    ready_file.unlink(missing_ok=True)
    log_path = workdir / f"{config.name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(config.argv(token_file, ready_file), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _LIVE[process.pid] = process
    deadline = time.monotonic() + ready_timeout_seconds
    while True:
        if ready_file.exists():
            try:
                ready = json.loads(ready_file.read_text())
                break
            except ValueError:
                pass  # being written: the agent renames it into place, but be tolerant
        if process.poll() is not None:
            _LIVE.pop(process.pid, None)
            raise AgentStartError(f"agent {config.name} exited with {process.returncode} before it was ready:\n"
                                  + _tail(log_path))
        if time.monotonic() > deadline:
            agent = AgentProcess(config, token, process, 0, 0, "", log_path)
            agent.kill()
            raise AgentStartError(f"agent {config.name} was not ready within {ready_timeout_seconds:g} s:\n"
                                  + _tail(log_path))
        time.sleep(0.02)
    return AgentProcess(config, token, process, int(ready["apiPort"]), int(ready["migrationPort"]),
                        str(ready["bootId"]), log_path)


async def start_agent_async(config: AgentConfig, token: str | None, workdir: Path, *,
                            ready_timeout_seconds: float = 60.0) -> AgentProcess:
    """start_agent() without blocking the event loop while the agent comes up."""
    return await asyncio.to_thread(start_agent, config, token, workdir,
                                   ready_timeout_seconds=ready_timeout_seconds)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@atexit.register
def _kill_leftovers() -> None:
    for pid, process in list(_LIVE.items()):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _LIVE.pop(pid, None)
