"""The target side of a migration, and the listener of the migration port that hands it its stream.

A target first holds a reservation and a one-time ticket (``TargetMigration``); the listener
(:func:`handle_connection`) checks a connection's opening frame (protocol version, then the ticket)
and gives the stream to the migration it names, or answers a source's RESOLVE. The target resumes
the guest only after it holds verified memory (the commit point) and never after it told a source
it had not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time

from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.guest import CorruptPage, Guest, GuestMemory
from vmshift.hypervisor.migration.host import MigrationHost
from vmshift.hypervisor.migration.priority import GateHold, read_frame_spinning
from vmshift.hypervisor.migration.record import MigrationFailed, MigrationRecord, failure_from_abort
from vmshift.hypervisor.migration.stream import FrameStream, StreamClosed
from vmshift.hypervisor.migration.tickets import TicketIssuer
from vmshift.hypervisor.migration.wire import (
    FLAG_FINAL,
    MAGIC,
    MAX_CONTROL_BYTES,
    MAX_HELLO_BYTES,
    MAX_PAGES_BODY,
    Abort,
    Finished,
    Frame,
    Hello,
    PrepareSwitchover,
    ProtocolError,
    ReadyForSwitchover,
    Resolve,
    ResolveDecision,
    Resumed,
    RoundEnd,
    Switchover,
    UnsupportedVersion,
    Welcome,
    decode,
    parse_pages,
)
from vmshift.hypervisor.protocol import MigrationFailureReport, MigrationRole, RoundInfo, VmState

log = logging.getLogger("vmshift.agent.migration")

HANDSHAKE_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0


class TargetMigration:
    """Receives one VM: a reservation and a ticket first, then the stream, then the switchover."""

    role = MigrationRole.target

    def __init__(self, host: MigrationHost, guest: Guest, migration_id: str, mode: MigrationMode,
                 ticket: str, expires_in: float) -> None:
        assert guest.memory is not None
        self.host = host
        self.guest = guest
        self.memory: GuestMemory = guest.memory
        self.migration_id = migration_id
        self.ticket = ticket
        self.expires_in = expires_in
        self.record = MigrationRecord(migration_id, guest.vm_id, MigrationRole.target, mode, self.memory.pages)
        self.connected = False
        self.resolve_token: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._cancel: MigrationFailed | None = None
        self._final_at: float | None = None
        self._gate_hold: GateHold | None = None  # held from PREPARE to RESUMED: the switchover goes first
        self._marks: list[tuple[str, float]] = []
        self._expiry = asyncio.get_running_loop().call_later(expires_in, self._expire)

    @property
    def committed(self) -> bool:
        """True once the guest resumed here: from then on the VM is this host's."""
        return self.record.committed

    def _expire(self) -> None:
        if not self.connected and not self.record.finished:
            self._discard(MigrationFailed(FailureReason.Timeout,
                                  f"no migration stream arrived within {self.expires_in:g} s; the "
                                  "reservation was released"))

    def cancel(self, reason: FailureReason, message: str) -> bool:
        """Abort before the guest resumed here (False when it already did, or the migration is over)."""
        if self.committed or self.record.finished:
            return False
        if not self.connected or self.task is None or self.task.done():
            self._discard(MigrationFailed(reason, message))
            return True
        if self._cancel is None:
            self._cancel = MigrationFailed(reason, message)
            self.task.cancel()
        return True

    def _discard(self, failure: MigrationFailed) -> None:
        if self.record.finished:
            return
        self._expiry.cancel()
        self.host.discard_incoming(self.guest)
        phase = MigrationPhase.Cancelled if failure.reason is FailureReason.Cancelled else MigrationPhase.Failed
        log.info("incoming migration %s %s: %s", self.migration_id, phase.value.lower(), failure.message)
        self.record.finish(phase, MigrationFailureReport(reason=failure.reason, message=failure.message))
        self.host.migration_ended(self)

    def accepts(self, hello: Hello, issuer: TicketIssuer) -> bool:
        """True when the HELLO carries this migration's valid, unused ticket."""
        ticket = hello.ticket
        return (not self.connected and not self.record.finished
                and hmac.compare_digest(ticket.encode(), self.ticket.encode())
                and issuer.check(ticket, self.migration_id, self.guest.vm_id)
                and hello.vm_id == self.guest.vm_id and hello.pages == self.memory.pages)

    def _begin(self, stream: FrameStream, hello: Hello) -> MigrationRecord:
        """The stream arrived: the reservation no longer expires, the record starts, the resolve token is kept."""
        self.connected = True
        self._expiry.cancel()
        self.task = asyncio.current_task()
        record = self.record
        record.started = time.monotonic()
        record.phase = MigrationPhase.Transferring
        record.peer = stream.peer[0]
        record.touch()
        token = hello.resolve_token
        self.resolve_token = token if token is not None and 16 <= len(token) <= 128 else None
        return record

    async def _welcome(self, stream: FrameStream, welcome: Welcome) -> None:
        """Answer the HELLO; MigrationFailed when the source went away."""
        try:
            await stream.send_message(welcome)
        except (StreamClosed, OSError) as exc:
            raise MigrationFailed(FailureReason.SourceLost, f"the source went away at the handshake ({exc}); "
                                  "the reservation was released") from None

    def _interrupted(self) -> MigrationFailed:
        """Why the serving task was cancelled (a cancel's failure, else the agent's shutdown); clears the cancel."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return self._cancel or MigrationFailed(FailureReason.TargetLost, "the target agent is shutting down")

    async def _fail(self, stream: FrameStream, failure: MigrationFailed) -> None:
        """Tell the source (if it still listens) and discard the reservation and the partial VM."""
        with contextlib.suppress(StreamClosed, OSError, TimeoutError):
            await stream.send_message(failure.abort(), within=1.0)
        self._discard(failure)
        await stream.linger()  # the source reads the ABORT before the connection ends

    async def serve(self, stream: FrameStream, hello: Hello) -> None:
        """Run the target side on an accepted, authenticated stream."""
        record = self._begin(stream, hello)
        try:
            try:
                welcome = Welcome(resolve_port=self.host.migration_port, prepare=True)
                await self._welcome(stream, welcome)
                switchover = await self._receive(stream)
            except asyncio.CancelledError:
                raise self._interrupted() from None
            self._switchover(switchover)  # no await in there: the guest resumes or the copy is refused
        except MigrationFailed as failure:
            self._release_gate()
            await self._fail(stream, failure)
            return
        except Exception as exc:  # a bug must not keep the reservation (or the copy) forever
            self._release_gate()
            log.exception("incoming migration %s failed unexpectedly", self.migration_id)
            if not self.committed:
                self._discard(MigrationFailed(FailureReason.SourceLost, f"internal error on the target: {exc!r}; the "
                                      "partial VM was discarded"))
            return
        with contextlib.suppress(StreamClosed, OSError, ProtocolError, TimeoutError):
            try:
                await stream.send_message(Resumed(digest=record.target_digest, heartbeat=self.guest.heartbeat))
            finally:
                self._release_gate()
            self._marks.append(("resumed sent", time.monotonic()))
            log.info("VM %s arrived by migration %s and is %s", self.guest.vm_id, self.migration_id,
                     self.guest.state.value)
            frame = await stream.read_frame(5.0, MAX_CONTROL_BYTES)
            finished = decode(frame.kind, frame.body)
            if isinstance(finished, Finished):
                if finished.downtime_ms is not None:
                    record.downtime_ms = finished.downtime_ms
                record.touch()

    async def _receive(self, stream: FrameStream) -> Switchover:
        record = self.record
        memory = self.memory
        ingress = self.host.ingress
        round_started = time.monotonic()
        round_bytes = 0
        try:
            while True:
                if self._gate_hold is None:
                    frame = await stream.read_frame(IDLE_TIMEOUT, MAX_PAGES_BODY)
                else:  # prepared: the final pages come next, take them the moment they arrive
                    frame = await read_frame_spinning(stream, IDLE_TIMEOUT, MAX_PAGES_BODY)
                if frame.kind == Frame.PAGES:
                    size = len(frame.body)
                    round_index, idx, versions, payload = parse_pages(frame.body)
                    if frame.flags & FLAG_FINAL and self._final_at is None and round_index > 0:
                        self._final_at = time.monotonic()
                        if record.mode is MigrationMode.Live:
                            record.phase = MigrationPhase.SwitchingOver
                    if self._final_at is None and self._gate_hold is None and self.host.switchover_gate.closed:
                        await self.host.switchover_gate.wait()  # another migration's guest is paused: it goes first
                    memory.apply(idx, versions, payload)
                    if round_index != record.round:
                        record.round = round_index
                        round_started = time.monotonic()
                        round_bytes = 0
                    round_bytes += size
                    record.pages_sent += len(idx)
                    record.wire_bytes += size
                    record.remaining_pages = max(0, record.remaining_pages - len(idx))
                    elapsed = time.monotonic() - round_started
                    if elapsed > 0.02:
                        record.throughput_mbps = round_bytes * 8 / 1e6 / elapsed
                    record.touch()
                    if self._final_at is not None:  # a live switchover's last pages: no wait behind others' bulk
                        ingress.charge(size)
                        self._marks.append(("applied", time.monotonic()))
                    else:
                        await ingress.consume(size)
                    continue
                message = decode(frame.kind, frame.body)
                self._marks.append((message.kind.name, time.monotonic()))
                if isinstance(message, RoundEnd):
                    record.remaining_pages = message.dirty_pages
                    record.dirty_rate_mib_ps = message.dirty_rate_mib_ps
                    record.throttle_percent = message.throttle_percent
                    record.rounds.append(RoundInfo(round=message.round, sent_mib=message.pages / 256,
                                                   seconds=message.seconds, dirty_mib=record.remaining_pages / 256))
                    record.touch()
                elif isinstance(message, PrepareSwitchover):
                    if self._gate_hold is None:
                        self._gate_hold = self.host.switchover_gate.hold()
                    await stream.send_message(ReadyForSwitchover())
                elif isinstance(message, Switchover):
                    return message
                elif isinstance(message, Abort):
                    raise failure_from_abort(message, FailureReason.SourceLost, "the source aborted")
                else:
                    raise ProtocolError(f"unexpected frame {message.kind.name} during transfer")
        except CorruptPage as exc:
            raise MigrationFailed(FailureReason.MemoryMismatch,
                          f"a page arrived with other bytes than its version promises ({exc}); the partial VM "
                          "was discarded and the VM keeps running on the source") from None
        except (StreamClosed, OSError) as exc:
            raise MigrationFailed(FailureReason.SourceLost,
                          f"the source went away during the copy after {record.pages_sent / 256:.1f} MiB "
                          f"({exc}); the partial VM was discarded") from None
        except (ProtocolError, ValueError, TypeError, ArithmeticError) as exc:
            raise MigrationFailed(FailureReason.SourceLost,
                          f"the source broke the migration protocol ({exc}); the partial VM was discarded") \
                from None

    def _release_gate(self) -> None:
        if self._gate_hold is not None:
            self._gate_hold.release()
            self._gate_hold = None

    def _switchover(self, switchover: Switchover) -> None:
        """Verify the memory and resume the guest here (the commit point), or raise MigrationFailed."""
        record = self.record
        record.phase = MigrationPhase.SwitchingOver
        if switchover.mode is not None:
            record.mode = switchover.mode
        digest = self.memory.digest_hex()
        record.source_digest = switchover.digest
        record.target_digest = digest
        if record.source_digest != digest:
            raise MigrationFailed(FailureReason.MemoryMismatch,
                          f"memory digest mismatch after the copy (source {record.source_digest}, target "
                          f"{digest}); the target discarded its copy and the VM keeps running on the source")
        if switchover.heartbeat is not None:
            self.guest.heartbeat = switchover.heartbeat
        if switchover.drivers is not None:
            self.guest.drivers = list(switchover.drivers)
        state = VmState.Saved if switchover.resume_state is VmState.Saved else VmState.Running
        self.host.activate_incoming(self.guest, state)
        self._marks.append(("activated", time.monotonic()))
        record.committed = True
        record.remaining_pages = 0
        record.finish(MigrationPhase.Succeeded)
        self.host.migration_ended(self)
        if self._final_at is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("incoming migration %s: resumed +%.2f ms after the first final frame (%s)",
                      self.migration_id, (time.monotonic() - self._final_at) * 1000, ", ".join(
                          f"{what} +{(when - self._final_at) * 1000:.2f}" for what, when in self._marks
                          if when >= self._final_at))

    def answer_resolve(self, token: str) -> bool | None:
        """The source lost the stream during the switchover: did the guest resume here?

        None for a wrong token. If it had not resumed, it never will: the copy is discarded now.
        """
        if self.resolve_token is None or not hmac.compare_digest(token.encode(), self.resolve_token.encode()):
            return None
        if not self.committed:
            self.cancel(FailureReason.SourceLost, "the stream broke before the switchover completed and the "
                        "source kept the VM; the copy here was discarded")
        return self.committed


# --------------------------------------------------------------------------------------------------
# The listener's side of a connection


async def handle_connection(host: MigrationHost, issuer: TicketIssuer, sock: socket.socket) -> None:
    """Serve one connection to the migration port; anything unauthenticated or malformed is dropped."""
    stream = FrameStream(sock)
    try:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                if bytes(await stream.read_exactly(len(MAGIC), None)) != MAGIC:
                    raise ProtocolError("bad magic")
                frame = await stream.read_frame(None, MAX_HELLO_BYTES)
                opening = decode(frame.kind, frame.body)
        except UnsupportedVersion as exc:
            log.warning("migration port: refused a connection from %s: %s", stream.peer[0], exc)
            with contextlib.suppress(StreamClosed, OSError):
                await stream.send_message(Abort(reason=FailureReason.AgentUnreachable.value, message=str(exc)),
                                          within=1.0)
            return
        except (TimeoutError, StreamClosed, ProtocolError, OSError) as exc:
            log.info("migration port: dropped a connection from %s: %s", stream.peer[0], exc)
            return
        if isinstance(opening, Hello):
            incoming = host.find_incoming(opening.migration_id)
            if incoming is None or not incoming.accepts(opening, issuer):
                log.warning("migration port: refused a stream for %r from %s (no valid ticket)",
                            opening.migration_id, stream.peer[0])
                return
            await incoming.serve(stream, opening)
        elif isinstance(opening, Resolve):
            incoming = host.find_incoming(opening.migration_id)
            if incoming is None:
                await stream.send_message(ResolveDecision(known=False))
                return
            resumed = incoming.answer_resolve(opening.resolve_token)
            if resumed is not None:
                await stream.send_message(ResolveDecision(known=True, resumed=resumed))
        else:
            log.info("migration port: dropped a connection from %s: unexpected opening frame", stream.peer[0])
    except Exception:  # the listener must survive anything a peer does
        log.exception("migration port: error serving a connection")
    finally:
        stream.close()
