"""What an agent's host is (its command line as a HostConfig) and how it refuses a request (ApiError).

Plain data, no I/O: shared by host.py, qemuhost.py, the server and the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vmshift.hypervisor.protocol import ErrorCode


class ApiError(Exception):
    """A refused request: HTTP status, a code from ErrorCode, and a message to act on."""

    def __init__(self, status: int, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = str(code)
        self.message = message


@dataclass(frozen=True)
class HostConfig:
    """What a host is: set on the command line of ``vmshift agent``."""

    name: str
    cpu_model: str
    cores: int
    memory_mib: int
    bandwidth_mbps: float
    shared_volumes: tuple[str, ...] = ()
    passthrough_luns: tuple[str, ...] = ()
    advertise_host: str = "127.0.0.1"
    #: The migration port other agents dial (0: the port the listener is bound to). Differs when a
    #: proxy, a NAT or a Service sits between agents.
    advertise_migration_port: int = 0
    reservation_seconds: float = 30.0
    fans: int = 4
    power_supplies: int = 2
    #: How long, and how many, tombstones of VMs that migrated away are kept (GET /v1/vms/{id} says
    #: MigratedAway for them); older or more are forgotten.
    tombstone_seconds: float = 3600.0
    max_tombstones: int = 1000
    #: What runs the guests: "simulated" (guest.py) or "qemu" (real guests, qemuhost.py).
    driver: str = "simulated"
    #: QEMU driver: where guests' consoles, monitors and local disks go.
    driver_dir: Path | None = None
    #: QEMU driver: the directory standing for the cluster shared volumes (a subdirectory per volume).
    shared_dir: Path | None = None
    #: QEMU driver: kvm, tcg, or auto (KVM when a probe guest boots under it).
    accel: str = "auto"
    #: QEMU driver: hold a converged live migration's switchover for the operator's go at most this long
    #: (QEMU's pause-before-switchover), 0: never. The guest is already paused while it waits, so every
    #: second of it is downtime; off by default (see migration/qemu_source.py).
    qemu_switchover_hold_seconds: float = 0.0
