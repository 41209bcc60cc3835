"""``vmshift agent --driver``: simulated by default (its host says so), qemu only with its directories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vmshift.hypervisor.host import HostConfig, HypervisorHost
from vmshift.hypervisor.launcher import AgentConfig


def _agent(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    token = tmp_path / "token"
    token.write_text("t0ken")
    return subprocess.run([sys.executable, "-m", "vmshift.cli.main", "agent", "--name", "h1", "--cpu-model",
                           "icelake", "--token-file", str(token), *extra], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_default_driver_is_the_simulated_one_and_the_host_says_so() -> None:
    info = HypervisorHost(HostConfig(name="h1", cpu_model="icelake", cores=4, memory_mib=4096,
                                     bandwidth_mbps=1000)).host_info()
    assert (info.driver, info.accelerator, info.cpu_models) == ("simulated", None, [])
    assert "--driver" not in AgentConfig(name="h1").argv(Path("t"), Path("r"))


def test_the_qemu_driver_needs_its_directories(tmp_path: Path) -> None:
    done = _agent(tmp_path, "--driver", "qemu", "--shared-dir", str(tmp_path))
    assert done.returncode == 2
    assert "--driver qemu needs --driver-dir and --shared-dir" in done.stderr


def test_an_unknown_driver_is_refused_by_name(tmp_path: Path) -> None:
    done = _agent(tmp_path, "--driver", "xen")
    assert done.returncode == 2
    assert "invalid choice: 'xen'" in done.stderr


def test_a_qemu_agents_command_line_names_its_driver_and_directories(tmp_path: Path) -> None:
    config = AgentConfig(name="q1", driver="qemu", accel="tcg", driver_dir=tmp_path / "g", shared_dir=tmp_path / "s")
    argv = config.argv(tmp_path / "token", tmp_path / "ready")
    joined = " ".join(argv)
    assert f"--driver qemu --accel tcg --driver-dir {tmp_path / 'g'} --shared-dir {tmp_path / 's'}" in joined
    assert "--qemu-switchover-hold-seconds" not in joined  # no hold unless asked
    held = " ".join(AgentConfig(name="q1", driver="qemu", qemu_switchover_hold_seconds=2).argv(tmp_path / "t",
                                                                                               tmp_path / "r"))
    assert held.endswith("--qemu-switchover-hold-seconds 2"), held
