"""A switchover goes first on its agent (``migration/priority.py``): the gate that holds other migrations'
page frames, the non-blocking read of the answer, and the source's PREPARE/READY section against a
scripted target on a real loopback socket: the order of the frames, the gate held only from PREPARE to
the answer, and the cancel and abort paths that leave the guest running on its source."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import pytest

from tests.hypervisor.helpers import poll
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.guest import Guest, GuestMemory
from vmshift.hypervisor.migration import priority
from vmshift.hypervisor.migration.host import MigrationHost
from vmshift.hypervisor.migration.priority import SwitchoverGate, read_frame_spinning
from vmshift.hypervisor.migration.source import SourceMigration
from vmshift.hypervisor.migration.stream import FrameStream, Received, StreamClosed
from vmshift.hypervisor.migration.streamrate import StreamRates
from vmshift.hypervisor.migration.target import TargetMigration
from vmshift.hypervisor.migration.wire import (
    MAGIC,
    MAX_PAGES_BODY,
    Abort,
    Frame,
    Hello,
    PrepareSwitchover,
    ProtocolError,
    ReadyForSwitchover,
    Resumed,
    Switchover,
    Welcome,
    decode,
    encode,
    pages_prefix,
)
from vmshift.hypervisor.protocol import MigrationRequest, MigrationTarget, VmDefinition, VmState
from vmshift.hypervisor.ratelimit import TokenBucket

pytestmark = pytest.mark.timeout(60)


# -- the gate ------------------------------------------------------------------------------------------


async def test_bulk_work_waits_while_a_switchover_holds_the_gate_and_goes_on_when_it_ends() -> None:
    gate = SwitchoverGate()
    await asyncio.wait_for(gate.wait(), 0.1)  # open: no wait
    held = gate.hold()
    waiting = asyncio.create_task(gate.wait())
    await asyncio.sleep(0.02)
    assert gate.closed and not waiting.done()
    second = gate.hold()  # two switchovers at once: open only when both are over
    held.release()
    await asyncio.sleep(0.01)
    assert not waiting.done()
    second.release()
    second.release()  # idempotent
    await asyncio.wait_for(waiting, 0.5)
    assert not gate.closed


async def test_a_hold_ends_by_itself_when_its_lease_runs_out() -> None:
    """A peer that vanishes mid-switchover stalls the agent's other copies for the lease, not for ever."""
    gate = SwitchoverGate()
    gate.hold(lease_seconds=0.05)
    await asyncio.wait_for(gate.wait(), 1.0)
    assert not gate.closed


async def test_the_garbage_collector_waits_while_the_gate_is_held_and_its_state_is_restored() -> None:
    gate = SwitchoverGate()
    assert gc.isenabled()
    held = gate.hold()
    assert not gc.isenabled()
    held.release()
    assert gc.isenabled()
    gc.disable()  # somebody else turned it off: the gate leaves it off
    try:
        gate.hold().release()
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- reading the answer without the event loop --------------------------------------------------------


async def test_poll_frame_takes_a_frame_only_once_all_of_it_arrived_and_consumes_nothing_before() -> None:
    left, right = socket.socketpair()
    reader = FrameStream(right)
    frames = encode(ReadyForSwitchover()) + encode(Resumed(digest="00ff", heartbeat=7))
    assert reader.poll_frame(MAX_PAGES_BODY) is None
    left.sendall(frames[:5])  # part of a header
    await asyncio.sleep(0.01)
    assert reader.poll_frame(MAX_PAGES_BODY) is None
    left.sendall(frames[5:len(encode(ReadyForSwitchover())) + 10])  # the first frame and part of the second
    await asyncio.sleep(0.01)
    first = reader.poll_frame(MAX_PAGES_BODY)
    assert first is not None and first.kind == Frame.READY
    assert reader.poll_frame(MAX_PAGES_BODY) is None
    left.sendall(frames[len(encode(ReadyForSwitchover())) + 10:])
    second = await reader.read_frame(1.0, MAX_PAGES_BODY)  # the ordinary read goes on where the poll stopped
    assert decode(second.kind, second.body) == Resumed(digest="00ff", heartbeat=7)
    left.sendall(bytes([99, 0, 0, 0, 0, 0, 0, 0]))
    await asyncio.sleep(0.01)
    with pytest.raises(ProtocolError, match="unknown frame type 99"):
        reader.poll_frame(MAX_PAGES_BODY)
    left.close()
    reader.close()


async def test_the_spinning_read_takes_what_arrived_and_awaits_what_comes_after_the_spin() -> None:
    left, right = socket.socketpair()
    reader = FrameStream(right)
    left.sendall(encode(ReadyForSwitchover()))
    await asyncio.sleep(0.01)
    assert (await read_frame_spinning(reader, 1.0, MAX_PAGES_BODY, spin_seconds=0.001)).kind == Frame.READY
    asyncio.get_running_loop().call_later(0.05, left.sendall, encode(Resumed()))
    assert (await read_frame_spinning(reader, 1.0, MAX_PAGES_BODY, spin_seconds=0.001)).kind == Frame.RESUMED
    left.close()
    reader.close()


async def test_the_spin_stops_at_once_when_another_process_had_the_cpu_between_two_polls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a busy host the spin would only spend CPU time the scheduler then makes the agent wait for."""
    left, right = socket.socketpair()
    reader = FrameStream(right)
    polls = 0
    real_poll = reader.poll_frame

    def counted(max_body: int) -> Received | None:
        nonlocal polls
        polls += 1
        return real_poll(max_body)

    clock = iter(range(1000))
    monkeypatch.setattr(reader, "poll_frame", counted)
    monkeypatch.setattr(priority.time, "perf_counter", lambda: next(clock) * 0.001)  # 1 ms between two looks
    asyncio.get_running_loop().call_later(0.05, left.sendall, encode(Resumed()))
    assert (await read_frame_spinning(reader, 1.0, MAX_PAGES_BODY, spin_seconds=10.0)).kind == Frame.RESUMED
    assert polls == 1, "the spin went on after another process had the CPU"
    left.close()
    reader.close()


# -- the source's switchover against a scripted target ----------------------------------------------------


@dataclass
class FakeHost:
    """The part of an agent a SourceMigration reaches (``MigrationHost``)."""

    egress: TokenBucket = field(default_factory=lambda: TokenBucket.mbps(0))
    ingress: TokenBucket = field(default_factory=lambda: TokenBucket.mbps(0))
    migration_port: int = 1
    switchover_gate: SwitchoverGate = field(default_factory=SwitchoverGate)
    stream_rates: StreamRates = field(default_factory=StreamRates)
    released: list[str] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def release_source_vm(self, guest: Guest) -> None:
        self.released.append(guest.vm_id)
        guest.release(VmState.MigratedAway)

    def discard_incoming(self, guest: Guest) -> None:
        raise AssertionError("a source never discards an incoming guest")

    def activate_incoming(self, guest: Guest, state: VmState) -> None:
        raise AssertionError("a source never activates an incoming guest")

    def migration_ended(self, migration: object) -> None:
        self.ended.set()

    def find_incoming(self, migration_id: str) -> None:
        return None


Script = Callable[[FrameStream, FakeHost, SourceMigration], Awaitable[None]]


@pytest.fixture
async def listener() -> AsyncIterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    yield server
    server.close()


async def run_source(listener: socket.socket, script: Script, offer_prepare: bool = True,
                     egress_mbps: float = 0) -> tuple[SourceMigration, FakeHost, list[Frame]]:
    """A source migration of a 1 MiB idle guest to a scripted target that answers WELCOME, reads up to the
    source's PREPARE, then runs ``script``; (the migration once over, its host, the frames the target read)."""
    host = FakeHost(egress=TokenBucket.mbps(egress_mbps))
    guest = Guest("v-1", VmDefinition(name="v-1", cpus=1, memory_mib=1))
    guest.start(frozenset())
    port = listener.getsockname()[1]
    request = MigrationRequest(migration_id="m-1", vm_id="v-1", target=MigrationTarget(
        host="127.0.0.1", port=port, ticket="t", bandwidth_mbps=0))
    source = SourceMigration(cast(MigrationHost, host), guest, request, bandwidth_mbps=0)
    seen: list[Frame] = []

    async def target() -> None:
        sock, _ = await asyncio.get_running_loop().sock_accept(listener)
        stream = FrameStream(sock)
        try:
            assert bytes(await stream.read_exactly(len(MAGIC), 5.0)) == MAGIC
            seen.append(Frame((await stream.read_frame(5.0, MAX_PAGES_BODY)).kind))  # HELLO
            await stream.send_message(Welcome(resolve_port=port, prepare=offer_prepare))
            while not seen or seen[-1] not in (Frame.PREPARE, Frame.SWITCHOVER):
                seen.append(Frame((await stream.read_frame(5.0, MAX_PAGES_BODY)).kind))
            await script(stream, host, source)
            with contextlib.suppress(StreamClosed):  # the rest, until the source closes the stream
                while True:
                    seen.append(Frame((await stream.read_frame(5.0, MAX_PAGES_BODY)).kind))
        finally:
            stream.close()

    serving = asyncio.create_task(target())
    source.start()
    await asyncio.wait_for(host.ended.wait(), 30)
    await asyncio.wait_for(serving, 10)
    return source, host, seen


async def test_the_source_announces_its_switchover_holds_its_agent_from_prepare_to_resumed_then_commits(
        listener: socket.socket) -> None:
    states: list[tuple[str, bool, VmState]] = []

    async def target(stream: FrameStream, host: FakeHost, source: SourceMigration) -> None:
        states.append(("prepare", host.switchover_gate.closed, source.guest.state))
        await stream.send_message(ReadyForSwitchover())
        while (frame := await stream.read_frame(5.0, MAX_PAGES_BODY)).kind != Frame.SWITCHOVER:
            assert frame.kind == Frame.PAGES and frame.flags
        switchover = decode(frame.kind, frame.body)
        assert isinstance(switchover, Switchover)
        states.append(("switchover", host.switchover_gate.closed, source.guest.state))
        await stream.send_message(Resumed(digest=switchover.digest))

    source, host, seen = await run_source(listener, target)
    assert seen[0] == Frame.HELLO and seen[-1] == Frame.FINISHED and Frame.PREPARE in seen
    assert states == [("prepare", True, VmState.Running), ("switchover", True, VmState.Paused)], \
        "the gate closes at PREPARE, before the pause; the guest pauses only after READY"
    assert source.record.phase is MigrationPhase.Succeeded and source.record.committed
    assert host.released == ["v-1"] and source.record.downtime_ms is not None
    assert not host.switchover_gate.closed and gc.isenabled()


async def test_the_final_pages_take_the_whole_link_not_the_share_the_others_left_this_migration(
        listener: socket.socket) -> None:
    """Eight migrations share a 2000 Mbit/s link, so each is shaped to a share; at the switchover the others' bulk
    waits at the gate, so what this one still owes its share drains at the link's rate, not the share's."""
    share = 1_000_000.0  # bytes per second
    owed = 512 * 1024  # half a second at the share, 2 ms at the link

    async def target(stream: FrameStream, host: FakeHost, source: SourceMigration) -> None:
        source.bucket.set_rate(share)
        source.bucket.reserve(source.bucket.tokens + owed)  # its last round went out just now
        await stream.send_message(ReadyForSwitchover())
        while (await stream.read_frame(5.0, MAX_PAGES_BODY)).kind != Frame.SWITCHOVER:
            pass
        await stream.send_message(Resumed())

    source, _host, _seen = await run_source(listener, target, egress_mbps=2000)
    assert source.record.phase is MigrationPhase.Succeeded and source.record.downtime_ms is not None
    assert source.record.downtime_ms < 200, f"the final pages waited {source.record.downtime_ms:.0f} ms for the share"


async def test_a_target_that_does_not_offer_prepare_gets_the_switchover_without_it(listener: socket.socket) -> None:
    """An agent of an earlier release (its WELCOME says nothing of prepare) never sees a frame it does not know."""

    async def target(stream: FrameStream, host: FakeHost, source: SourceMigration) -> None:
        await stream.send_message(Resumed())  # the SWITCHOVER was the last frame read

    source, host, seen = await run_source(listener, target, offer_prepare=False)
    assert Frame.PREPARE not in seen and Frame.SWITCHOVER in seen
    assert source.record.phase is MigrationPhase.Succeeded and not host.switchover_gate.closed


async def test_a_cancel_while_the_source_waits_for_ready_leaves_the_guest_running_and_the_gate_open(
        listener: socket.socket) -> None:
    async def target(stream: FrameStream, host: FakeHost, source: SourceMigration) -> None:
        assert source.cancel(FailureReason.Cancelled, "cancelled by the test")
        await asyncio.sleep(5)  # never READY

    source, host, _seen = await run_source(listener, target)
    assert source.record.phase is MigrationPhase.Cancelled, source.record.failure
    assert source.guest.state is VmState.Running and not source.record.committed and host.released == []
    assert not host.switchover_gate.closed and gc.isenabled()


async def test_a_target_that_aborts_instead_of_resuming_leaves_the_guest_running_on_its_source(
        listener: socket.socket) -> None:
    async def target(stream: FrameStream, host: FakeHost, source: SourceMigration) -> None:
        await stream.send_message(ReadyForSwitchover())
        while (await stream.read_frame(5.0, MAX_PAGES_BODY)).kind != Frame.SWITCHOVER:
            pass
        await stream.send_message(Abort(reason=FailureReason.MemoryMismatch.value, message="digest mismatch"))

    source, host, _seen = await run_source(listener, target)
    assert source.record.phase is MigrationPhase.Failed and source.record.failure is not None
    assert source.record.failure.reason is FailureReason.MemoryMismatch, source.record.failure
    assert source.guest.state is VmState.Running and not source.record.committed and host.released == []
    assert not host.switchover_gate.closed and gc.isenabled()


async def test_a_migration_sends_no_page_frame_while_another_switchover_holds_its_agent(
        listener: socket.socket) -> None:
    """The bulk copy waits at the gate (its guest runs on) and goes on once the gate opens."""
    waited: list[bool] = []

    async def target(stream: FrameStream, host: FakeHost, source: SourceMigration) -> None:
        await stream.send_message(Resumed())

    # Another switchover closes the gate just as this migration starts its first round.
    original = SourceMigration._send_pages

    async def gated(self: SourceMigration, round_index: int, pages: range | list[int], final: bool = False) -> float:
        if round_index == 0:
            held = self.host.switchover_gate.hold(lease_seconds=5)
            before = self.record.pages_sent
            sending = asyncio.create_task(original(self, round_index, pages, final))
            await asyncio.sleep(0.2)
            waited.append(self.record.pages_sent == before and not sending.done())
            held.release()
            return await sending
        return await original(self, round_index, pages, final)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SourceMigration, "_send_pages", gated)
        source, _host, _seen = await run_source(listener, target, offer_prepare=False)
    assert waited == [True], "a page frame went out while another switchover held the agent"
    assert source.record.phase is MigrationPhase.Succeeded


# -- the target's side ------------------------------------------------------------------------------------


@dataclass
class FakeTargetHost(FakeHost):
    activated: list[str] = field(default_factory=list)

    def discard_incoming(self, guest: Guest) -> None:
        guest.release(VmState.Stopped)

    def activate_incoming(self, guest: Guest, state: VmState) -> None:
        self.activated.append(guest.vm_id)
        guest.resume()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection (a target names its peer by address)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        left = socket.create_connection(server.getsockname())
        right, _ = server.accept()
    return left, right


def incoming(host: FakeTargetHost, vm_id: str) -> tuple[TargetMigration, FrameStream, asyncio.Task[None]]:
    """A target migration of a 1 MiB guest served on one end of a socket pair; (it, the source's end, its task)."""
    guest = Guest(vm_id, VmDefinition(name=vm_id, cpus=1, memory_mib=1))
    migration = TargetMigration(cast(MigrationHost, host), guest, f"m-{vm_id}", MigrationMode.Live, "t", 30.0)
    left, right = tcp_pair()
    hello = Hello(migration_id=f"m-{vm_id}", vm_id=vm_id, ticket="t", mode=MigrationMode.Live, pages=256)
    return migration, FrameStream(left), asyncio.create_task(migration.serve(FrameStream(right), hello))


async def test_the_target_answers_prepare_holds_its_agent_until_resumed_and_other_copies_wait_meanwhile() -> None:
    host = FakeTargetHost()
    switching, to_switching, serving = incoming(host, "v-a")
    other, to_other, other_serving = incoming(host, "v-b")
    for stream in (to_switching, to_other):
        frame = await stream.read_frame(5.0, MAX_PAGES_BODY)
        welcome = decode(frame.kind, frame.body)
        assert isinstance(welcome, Welcome) and welcome.prepare
    source_memory = GuestMemory("v-a", 1)
    source_memory.prefill(source_memory.pages)
    await to_switching.send_parts(source_memory.frame_parts(range(256), pages_prefix(0, 256)))
    await to_switching.send_message(PrepareSwitchover())
    ready = await to_switching.read_frame(5.0, MAX_PAGES_BODY)
    assert ready.kind == Frame.READY and host.switchover_gate.closed

    other_memory = GuestMemory("v-b", 1)
    other_memory.prefill(other_memory.pages)
    await to_other.send_parts(other_memory.frame_parts(range(256), pages_prefix(0, 256)))
    await asyncio.sleep(0.05)
    assert other.record.pages_sent == 0, "another migration's page frame was applied while a switchover held the agent"

    await to_switching.send_message(Switchover(digest=source_memory.digest_hex()))
    resumed = await to_switching.read_frame(5.0, MAX_PAGES_BODY)
    assert resumed.kind == Frame.RESUMED and host.activated == ["v-a"] and switching.committed
    assert not host.switchover_gate.closed and gc.isenabled()
    async def applied() -> bool:
        return other.record.pages_sent == 256

    await poll(applied, "the other migration's page frame to be applied once the gate opened", 5)
    for stream in (to_switching, to_other):
        stream.close()
    await asyncio.wait({serving, other_serving}, timeout=10)
    assert other.record.phase is MigrationPhase.Failed and not other.committed  # its source went away

