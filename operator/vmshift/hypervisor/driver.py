"""The guest driver interface: what an agent asks of the thing that really runs its guests.

Types only: no I/O. Two drivers implement ``GuestDriver``: ``simulated`` (the sparse-memory guest
of guest.py, the default) and ``qemu`` (``vmshift.hypervisor.qemu.driver``: one QEMU process per
guest, driven through QMP). The agent keeps everything else: the HTTP API, capacity, tickets, the
processor compatibility check (done before a driver is asked), storage checks, sensors and the
migration records the operator reads. A driver only runs guests and moves their state.

Life cycle: ``define`` → ``start`` → (``stop`` → ``start``)* → ``delete``; ``save`` parks a running
guest (its state kept, nothing executing) and ``restore`` runs it again, on this host or, for a
quick migration, on the host that ``prepare_incoming`` made ready with ``restore_from`` set.

Live migration, both sides: the target's agent calls ``prepare_incoming`` (it defines the guest,
paused and waiting, and returns where the source must send), the source's agent passes that
``IncomingEndpoint`` to ``migrate`` with the policy's ``MigrationParameters`` and polls
``progress`` (which the agent turns into MigrationStatus rounds, remaining, dirty rate, throughput,
expected downtime); ``cancel`` stops a transfer before its commit point and leaves the guest running
on the source; ``switch_to_postcopy`` is the policy ladder's last step when post-copy is allowed,
``allow_downtime`` its Quick step (the transfer may pause the guest long enough to send the rest).
When ``progress`` says ``Completed``, the guest runs on the target and the source's copy is
released with ``delete``; on ``Failed`` or ``Cancelled`` the source's guest runs and the target's
agent calls ``abort_incoming``.

How the simulated driver will implement it (today's behaviour, unchanged, behind this interface):
``define/start/stop/delete/save/restore`` are ``Guest``'s methods as host.py calls them now;
``describe`` is ``Guest.info()`` with the archspec model as the CPU model; ``cpu_models`` lists
archspec's microarchitectures. Its data plane is the agent's own migration stream: ``migrate``
starts ``SourceMigration`` (pre-copy rounds of pages over the ticketed TCP stream, the switchover
and its digest check), the endpoint is the agent's migration port with the one-time ticket,
``prepare_incoming`` is the ``TargetMigration`` reservation, ``progress`` reads its
``MigrationRecord`` and ``cancel`` is ``SourceMigration.cancel``; post-copy is not offered
(``switch_to_postcopy`` raises ``DriverError``). The QEMU driver's data plane is QEMU's own
migration stream between the two QEMU processes: the endpoint is the address the target QEMU
listens on, and QEMU's measured downtime is the final status's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from vmshift.hypervisor.protocol import VmDefinition, VmState


class DriverError(Exception):
    """A driver could not do what was asked; the message names the guest and what a person can do."""


class TransferPhase(StrEnum):
    """Where a driver's memory transfer is (QEMU's query-migrate status, reduced to what agents need)."""

    Setup = "Setup"
    Active = "Active"  # pre-copy rounds
    PostCopy = "PostCopy"  # the guest runs on the target and pulls the pages it still lacks
    Completed = "Completed"  # the guest runs on the target
    Failed = "Failed"  # the guest runs on the source
    Cancelled = "Cancelled"  # the guest runs on the source
    #: Post-copy lost its target (its QEMU or the link died): the guest ran on the target and its memory
    #: is split between the hosts, so it runs nowhere; the source's QEMU keeps its part, paused.
    PostCopyPaused = "PostCopyPaused"


@dataclass(frozen=True)
class CpuModelOffer:
    """One CPU model the driver can give a guest: its name as the driver spells it, and whether this
    host can run it as it is (QEMU's ``query-cpu-definitions`` ``unavailable-features`` empty)."""

    name: str
    usable: bool
    unavailable_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class CpuChoice:
    """The CPU a guest starts with: ``model`` as the driver spells it; ``features`` as archspec names
    them (what the agent's compatibility check compares, fixed for the guest's lifetime)."""

    model: str
    features: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DiskDescription:
    name: str
    path: Path | None  # the image file, when the driver keeps one
    volume: str | None  # the shared volume it lives on


@dataclass(frozen=True)
class GuestDescription:
    """What ``describe`` reports about one guest."""

    vm_id: str
    state: VmState
    cpu_model: str
    features: frozenset[str]
    cpus: int
    memory_mib: int
    disks: tuple[DiskDescription, ...] = ()
    #: Driver-specific facts worth showing a person (the QEMU process id, its accelerator, ...).
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MigrationParameters:
    """The policy's knobs for one live migration (None: the driver's default)."""

    downtime_limit_ms: float | None = None
    bandwidth_mbps: float | None = None  # None or 0: unlimited
    auto_converge: bool = False
    #: The auto-converge throttle: first step, increment and ceiling, in percent (QEMU: 1 to 99).
    throttle_initial_percent: float | None = None
    throttle_step_percent: float | None = None
    throttle_max_percent: float | None = None
    postcopy_allowed: bool = False
    #: Stop before the switchover (the guest already paused) until ``continue_switchover``: the caller's go.
    pause_before_switchover: bool = False


@dataclass(frozen=True)
class IncomingEndpoint:
    """Where a source sends a guest's state: an address the target's driver listens on."""

    host: str
    port: int


@dataclass(frozen=True)
class SavedState:
    """A guest's saved execution state, in a file a target can read (on a shared volume for a move)."""

    path: Path
    size_bytes: int
    cpu: CpuChoice  # what the guest ran with: a restore elsewhere must give it the same


@dataclass(frozen=True)
class TransferProgress:
    """One look at a transfer, in the units of the agent's MigrationStatus."""

    phase: TransferPhase
    rounds: int = 0  # completed passes over dirty memory (QEMU: dirty-sync-count)
    transferred_mib: float = 0.0
    remaining_mib: float = 0.0
    total_mib: float = 0.0
    dirty_rate_mib_ps: float = 0.0
    throughput_mbps: float = 0.0
    expected_downtime_ms: float | None = None
    throttle_percent: float = 0.0
    #: Set once the transfer completed: the pause the guest saw, as the driver measured it.
    downtime_ms: float | None = None
    duration_ms: float | None = None
    error: str | None = None
    #: The guest is paused on the source while the last of its state crosses (QEMU: ``device``,
    #: ``pre-switchover``): the switchover is under way.
    switching_over: bool = False
    #: The switchover waits for ``continue_switchover`` (QEMU: ``pre-switchover``): the guest is paused.
    held: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in (TransferPhase.Completed, TransferPhase.Failed, TransferPhase.Cancelled,
                              TransferPhase.PostCopyPaused)


class GuestDriver(Protocol):
    """What an agent's guest model must do; every method raises DriverError when it cannot."""

    name: str

    async def cpu_models(self) -> list[CpuModelOffer]:
        """Every CPU model this host's driver can offer a guest."""
        ...

    async def define(self, vm_id: str, definition: VmDefinition) -> GuestDescription: ...

    async def start(self, vm_id: str, cpu: CpuChoice) -> GuestDescription:
        """Boot the guest (fresh memory) with this CPU."""
        ...

    async def stop(self, vm_id: str) -> GuestDescription:
        """Power the guest off: its memory is gone, its disks stay."""
        ...

    async def delete(self, vm_id: str) -> None:
        """Forget the guest (stopping it first); its disks on shared volumes stay."""
        ...

    async def describe(self, vm_id: str) -> GuestDescription: ...

    def beat(self, vm_id: str) -> tuple[int, str] | None:
        """The guest's last heartbeat (its counter) and memory checksum, read without waiting (None: none yet)."""
        ...

    def last_words(self, vm_id: str) -> str:
        """The end of what the guest printed besides its heartbeat (an oops, a panic), for a log line."""
        ...

    def exited(self, vm_id: str) -> bool:
        """True when the guest's process ended without this driver stopping it (a crash, a kill)."""
        ...

    async def close(self) -> None:
        """Stop every guest this driver runs (the agent is stopping)."""
        ...

    async def save(self, vm_id: str, state_file: Path) -> SavedState:
        """Stop the guest executing and write its whole state to ``state_file``."""
        ...

    async def restore(self, vm_id: str, saved: SavedState) -> GuestDescription:
        """Run a guest defined here from a saved state (on this host, or on a quick migration's target)."""
        ...

    async def prepare_incoming(self, vm_id: str, definition: VmDefinition, cpu: CpuChoice,
                               parameters: MigrationParameters) -> IncomingEndpoint:
        """Make this host ready to receive the guest live; nothing runs here until the transfer completes."""
        ...

    async def abort_incoming(self, vm_id: str) -> None:
        """Discard a guest that was being received (the source keeps running it)."""
        ...

    async def migrate(self, vm_id: str, endpoint: IncomingEndpoint, parameters: MigrationParameters) -> None:
        """Start the live transfer to ``endpoint`` and return; follow it with ``progress``."""
        ...

    async def progress(self, vm_id: str) -> TransferProgress: ...

    async def switch_to_postcopy(self, vm_id: str) -> None:
        """Run the guest on the target now and let it pull the rest (only when post-copy was allowed)."""
        ...

    async def allow_downtime(self, vm_id: str, downtime_ms: float) -> None:
        """Let the transfer under way pause the guest for up to ``downtime_ms`` to finish: the ladder's
        Quick step when pre-copy does not converge (the guest arrives running, after that pause)."""
        ...

    async def continue_switchover(self, vm_id: str) -> None:
        """Go on with a switchover held by ``pause_before_switchover`` (progress says ``held``)."""
        ...

    async def cancel(self, vm_id: str) -> TransferProgress:
        """Stop the transfer before it completes; the guest keeps running on the source."""
        ...
