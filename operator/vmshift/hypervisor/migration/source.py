"""The source side of a migration: sends one VM to a target that issued a ticket.

Talks only to the peer agent, over one TCP connection per migration (plus a short re-dial that
resolves an in-doubt switchover); reaches the rest of its own agent only through ``MigrationHost``.
The source owns the guest until the commit point: any failure before SWITCHOVER resumes the guest
here. After SWITCHOVER only the target's word decides (see the package's docstring); the
convergence decision after each round is :func:`vmshift.precopy.convergence.next_action`'s. When
the request asks for a switchover wait, a converged live migration holds its switchover (guest
running, rounds going on) until its agent passes on the caller's go, or the wait runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from typing import TypeVar

from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.guest import PAGE_SIZE, Guest, GuestMemory
from vmshift.hypervisor.migration.hold import WAIT_ROUND_SECONDS, SwitchoverHold
from vmshift.hypervisor.migration.host import MigrationHost
from vmshift.hypervisor.migration.priority import GateHold, read_frame_spinning
from vmshift.hypervisor.migration.record import MigrationFailed, MigrationRecord, failure_from_abort
from vmshift.hypervisor.migration.resolve import resolve_with_target
from vmshift.hypervisor.migration.sendround import send_round
from vmshift.hypervisor.migration.stream import FrameStream, StreamClosed, open_stream
from vmshift.hypervisor.migration.wire import (
    CHUNK_PAGES,
    FLAG_FINAL,
    MAX_CONTROL_BYTES,
    Abort,
    ControlMessage,
    Finished,
    Hello,
    PrepareSwitchover,
    ProtocolError,
    ReadyForSwitchover,
    Resumed,
    RoundEnd,
    Switchover,
    Welcome,
    decode,
    encode,
    pages_prefix,
)
from vmshift.hypervisor.protocol import MigrationFailureReport, MigrationRequest, MigrationRole, RoundInfo, VmState
from vmshift.hypervisor.ratelimit import TokenBucket, mbps_to_bytes_per_second
from vmshift.precopy.convergence import ActionKind, RoundStats, next_action

log = logging.getLogger("vmshift.agent.migration")

Expected = TypeVar("Expected", bound=ControlMessage)

HANDSHAKE_TIMEOUT = 5.0
RESUMED_TIMEOUT = 10.0
ABORT_READ_SECONDS = 5.0  # after a failed send, how long the reader may take to reach the end of the stream
#: How long the source asks the target after a broken switchover before it reports the migration in doubt.
IN_DOUBT_AFTER = 10.0
#: The longest pause between two questions to a target that cannot be asked.
IN_DOUBT_RETRY_MAX = 5.0


class SourceMigration:
    """Sends one VM to a target that issued a ticket; owns the guest until commit or abort."""

    role = MigrationRole.source

    def __init__(self, host: MigrationHost, guest: Guest, request: MigrationRequest,
                 bandwidth_mbps: float) -> None:
        assert guest.memory is not None
        self.host = host
        self.guest = guest
        self.memory: GuestMemory = guest.memory
        self.request = request
        self.record = MigrationRecord(request.migration_id, guest.vm_id, MigrationRole.source,
                                      request.mode, self.memory.pages)
        self.record.peer = f"{request.target.host}:{request.target.port}"
        self.bandwidth_mbps = bandwidth_mbps  # 0: unlimited
        self.rate = mbps_to_bytes_per_second(bandwidth_mbps) if bandwidth_mbps > 0 else math.inf
        self.bucket = TokenBucket(self.rate)
        self._measured_rate = 0.0  # bytes per second of the last round that took long enough to tell
        self.resolve_token = secrets.token_hex(16)
        self.committed = False
        self.in_doubt = False  # SWITCHOVER sent: only the target's answer decides from here
        self._verdict: asyncio.Future[bool] | None = None  # the target's statement, passed on by the operator
        self._resolve_port: int | None = None
        self.welcome: Welcome | None = None
        self.task: asyncio.Task[None] | None = None
        self._cancel: MigrationFailed | None = None
        self._stream: FrameStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[ControlMessage | None] = asyncio.Queue()
        self._target_abort: Abort | None = None
        self._target_gone: str | None = None
        self._prior_state = guest.state
        self._halted = False
        self._paused_at: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._ending = False
        self._marks: list[tuple[str, float]] = []  # switchover timeline, for the debug log
        self._gate_hold: GateHold | None = None  # this switchover's hold on the agent's other bulk work
        self.hold = SwitchoverHold(self.record, request.switchover_wait_seconds, request.timeout_seconds)

    @property
    def migration_id(self) -> str:
        return self.request.migration_id

    def start(self) -> None:
        self.record.started = time.monotonic()
        self.record.phase = MigrationPhase.Transferring
        self.task = asyncio.create_task(self.run(), name=f"migration-out-{self.migration_id}")

    def cancel(self, reason: FailureReason, message: str) -> bool:
        """Abort before the commit point (False when it is too late or already over)."""
        if self.committed or self.in_doubt or self._ending or self.task is None or self.task.done():
            return False
        if self._cancel is None:
            self._cancel = MigrationFailed(reason, message)
            self.task.cancel()
        return True

    def settle(self, target_resumed: bool) -> bool:
        """The operator passes on the target's statement while this side is in doubt (False if it is not)."""
        if not self.record.in_doubt or self._verdict is None or self._verdict.done():
            return False
        self._verdict.set_result(target_resumed)
        return True

    # -- the run ---------------------------------------------------------------------------------

    async def run(self) -> None:
        record = self.record
        if record.started is None:
            record.started = time.monotonic()
        record.phase = MigrationPhase.Transferring
        record.touch()
        timeout = self.request.timeout_seconds
        if timeout:
            self._watchdog = asyncio.get_running_loop().call_later(
                timeout, self.cancel, FailureReason.Timeout,
                f"the migration did not reach its commit point within timeoutSeconds={timeout:g}; "
                "the VM keeps running on the source")
        failure: MigrationFailed | None = None
        try:
            await self._precommit()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            failure = self._cancel or MigrationFailed(FailureReason.SourceLost, "the source agent is shutting down")
        except MigrationFailed as exc:
            failure = exc
        except (StreamClosed, OSError, ProtocolError) as exc:
            failure = await self._explain_stream_error(exc)
        except Exception as exc:  # never leave the VM paused because of a bug
            log.exception("migration %s failed unexpectedly", self.migration_id)
            failure = MigrationFailed(FailureReason.TargetLost, f"internal error on the source: {exc!r}")
        self._ending = True
        self._release_gate()
        if self._watchdog is not None:
            self._watchdog.cancel()
        try:
            if failure is not None:
                await self._abort(failure)
            else:
                await self._commit_tail()
        finally:
            await self._close()
            self.host.migration_ended(self)

    async def _explain_stream_error(self, exc: BaseException) -> MigrationFailed:
        """A send fails on the close after an ABORT not read yet: the reader gets time to read to the end."""
        if self._reader is not None and self._target_abort is None:
            await asyncio.wait({self._reader}, timeout=ABORT_READ_SECONDS)
        return self._target_failure(f"the migration stream to the target broke ({exc})")

    async def _precommit(self) -> None:
        request = self.request
        target = request.target
        try:
            self._stream = await open_stream(target.host, target.port)
        except (OSError, TimeoutError) as exc:
            raise MigrationFailed(FailureReason.AgentUnreachable,
                          f"cannot connect to the target's migration port {target.host}:{target.port}: "
                          f"{exc or 'timed out'}") from None
        stream = self._stream
        await stream.send_message(Hello(migration_id=request.migration_id, vm_id=self.guest.vm_id,
                                        ticket=target.ticket, mode=request.mode, pages=self.memory.pages,
                                        resolve_token=self.resolve_token))
        try:
            welcome = await stream.read_frame(HANDSHAKE_TIMEOUT * 2, MAX_CONTROL_BYTES)
        except (StreamClosed, ProtocolError):
            raise MigrationFailed(FailureReason.AgentUnreachable,
                          "the target dropped the migration connection at the handshake: its ticket was "
                          "refused, already used or expired; ask the target for a new one") from None
        answer = decode(welcome.kind, welcome.body)
        if isinstance(answer, Abort):
            raise failure_from_abort(answer, FailureReason.TargetLost, "the target refused the migration")
        if not isinstance(answer, Welcome):
            raise ProtocolError(f"expected WELCOME, got {answer.kind.name}")
        self._resolve_port = answer.resolve_port
        self.welcome = answer
        self._reader = asyncio.create_task(self._read_target())
        if request.mode is MigrationMode.Quick:
            await self._quick()
        else:
            await self._live()

    async def _read_target(self) -> None:
        assert self._stream is not None
        try:
            while True:
                frame = await self._stream.read_frame(None, MAX_CONTROL_BYTES)
                message = decode(frame.kind, frame.body)
                if isinstance(message, Abort):
                    self._target_abort = message
                self._inbox.put_nowait(message)
        except (StreamClosed, OSError, ProtocolError) as exc:
            self._target_gone = str(exc)
        finally:
            self._inbox.put_nowait(None)

    def _target_failure(self, how: str) -> MigrationFailed:
        """The target's ABORT if it sent one, else how the stream ended: the VM keeps running here."""
        if self._target_abort is not None:
            return failure_from_abort(self._target_abort, FailureReason.TargetLost, "the target aborted")
        return MigrationFailed(FailureReason.TargetLost, f"{how}; the VM keeps running on the source")

    def _check_target(self) -> None:
        if self._target_abort is not None or self._target_gone is not None:
            raise self._target_failure(f"the target closed the migration stream ({self._target_gone})")

    async def _expect(self, kind: type[Expected], within: float) -> Expected:
        try:
            async with asyncio.timeout(within):
                while True:
                    item = await self._inbox.get()
                    if item is None:
                        self._inbox.put_nowait(None)
                        self._check_target()
                        raise MigrationFailed(FailureReason.TargetLost, "the target closed the migration stream")
                    if isinstance(item, Abort):
                        raise failure_from_abort(item, FailureReason.TargetLost, "the target aborted")
                    if isinstance(item, kind):
                        return item
        except TimeoutError:
            raise MigrationFailed(FailureReason.TargetLost,
                          f"the target did not answer {kind.kind.name} within {within:g} s") from None

    # -- pre-copy ----------------------------------------------------------------------------------

    async def _send_pages(self, round_index: int, pages: range | list[int], final: bool = False) -> float:
        """Send ``pages`` shaped to the link (``sendround``); return the seconds it took."""
        assert self._stream is not None
        return await send_round(self._stream, self.host, self.bucket, self.memory, self.record, self._check_target,
                                round_index, pages, final)

    async def _round(self, round_index: int, pages: range | list[int], final: bool = False) -> None:
        record = self.record
        record.round = round_index
        writes_before = self.memory.writes
        seconds = await self._send_pages(round_index, pages, final)
        if seconds > 0.01 and pages:
            self._measured_rate = len(pages) * PAGE_SIZE / seconds
        self.guest.advance()
        dirty = self.memory.dirty_count()
        if seconds > 0 and not final:
            record.dirty_rate_mib_ps = (self.memory.writes - writes_before) / 256 / seconds
        record.remaining_pages = dirty
        record.rounds.append(RoundInfo(round=round_index, sent_mib=len(pages) / 256, seconds=round(seconds, 6),
                                       dirty_mib=dirty / 256))
        record.touch()
        assert self._stream is not None
        if not final:
            await self._stream.send_message(RoundEnd(
                round=round_index, pages=len(pages), seconds=seconds, dirty_pages=dirty,
                dirty_rate_mib_ps=record.dirty_rate_mib_ps, throttle_percent=self.guest.throttle_percent,
                throughput_mbps=record.throughput_mbps))

    async def _live(self) -> None:
        request = self.request
        record = self.record
        memory = self.memory
        policy = request.convergence()
        memory.take_dirty()
        await self._round(0, range(memory.pages))
        sent_last = memory.pages
        round_index = 0
        waited = 0  # rounds sent while the switchover was held for the go: the ladder does not count them
        stalled = rung_started = 0
        while True:
            self.guest.advance()
            dirty = memory.dirty_count()
            action = next_action(RoundStats(
                round_index=round_index - waited, remaining_bytes=dirty * PAGE_SIZE,
                sent_bytes=sent_last * PAGE_SIZE, link_rate=self._link_rate(),
                write_rate=record.dirty_rate_mib_ps * 2**20, throttle_percent=self.guest.throttle_percent,
                stalled=stalled, rung_started=rung_started), policy)
            if self.hold.holding(action.kind is ActionKind.SwitchOver):
                # Converged, waiting for the go: the guest runs on and each round sends what it dirtied,
                # so the pause after the go copies no more than it would have without the wait.
                await self.hold.wait(WAIT_ROUND_SECONDS)
                pages = sorted(memory.take_dirty())
                if pages:
                    round_index += 1
                    waited += 1
                    await self._round(round_index, pages)
                    sent_last = len(pages)
                continue
            stalled, rung_started = action.stalled, action.rung_started
            if action.kind is ActionKind.SwitchOver:
                await self._prepare()
                await self._switchover(quick=False)
                return
            if action.kind is ActionKind.Throttle:
                self.guest.set_throttle(action.throttle_percent)
                record.throttle_percent = action.throttle_percent
                log.info("migration %s: %s", self.migration_id, action.why)
            elif action.kind is ActionKind.Quick:
                log.info("migration %s: pre-copy does not converge (%s), falling back to quick", self.migration_id,
                         action.why)
                record.mode = MigrationMode.Quick
                await self._switchover(quick=True)
                return
            elif action.kind is ActionKind.Fail:
                raise MigrationFailed(FailureReason.NotConverging,
                                      self._not_converging(dirty, round_index, action.why))
            elif action.kind is ActionKind.PostCopy:
                raise MigrationFailed(FailureReason.NotConverging, self._not_converging(
                    dirty, round_index, f"{action.why}; the policy's ladder ends in PostCopy, which only the QEMU "
                    "driver offers (this host runs the simulated one)"))
            round_index += 1
            pages = sorted(memory.take_dirty())
            await self._round(round_index, pages)
            sent_last = len(pages)

    def _link_rate(self) -> float:
        """Bytes per second the switchover threshold assumes: the configured rate, else the measured one."""
        return self.rate if not math.isinf(self.rate) else self._measured_rate or 1e9

    def _not_converging(self, dirty: int, round_index: int, extra: str | None) -> str:
        threshold_mib = self._link_rate() * self.request.threshold_ms / 1000 / 2**20
        text = (f"pre-copy did not converge after {round_index + 1} rounds: {dirty / 256:.1f} MiB stay dirty "
                f"per round (guest writes {self.guest.definition.workload.dirty_rate_mib_ps:g} MiB/s in a "
                f"{self.guest.definition.workload.working_set_mib:g} MiB hot set) against a switchover "
                f"threshold of {threshold_mib:.2f} MiB ({self.request.threshold_ms:g} ms at "
                f"{self._link_rate() * 8 / 1e6:.0f} Mbit/s)")
        if extra:
            text += f"; {extra}"
        return text + ("; the VM keeps running on the source. Allow autoConverge or fallbackToQuick, "
                       "raise the bandwidth or the threshold, or migrate when the guest is quieter.")

    def _halt_guest(self, quick: bool) -> None:
        self._paused_at = time.monotonic()
        self._halted = True
        if self.guest.state is VmState.Running:
            if quick:
                self.guest.save()
            else:
                self.guest.pause()

    async def _quick(self) -> None:
        memory = self.memory
        self._halt_guest(quick=True)
        memory.take_dirty()
        await self._round(0, range(memory.pages), final=True)
        await self._switchover(quick=True, already_halted=True)

    async def _prepare(self) -> None:
        """Announce the switchover, the guest still running, if the target offered it: both agents hold their
        other migrations' bulk work from here to the answer (``priority``); READY: the target waits for it."""
        if self.welcome is None or not self.welcome.prepare:
            return
        assert self._stream is not None
        await self._stop_reader()
        self._gate_hold = self.host.switchover_gate.hold()
        await self._stream.send_message(PrepareSwitchover())
        await self._answer(ReadyForSwitchover, HANDSHAKE_TIMEOUT)

    async def _stop_reader(self) -> None:
        """Stop the background reader (between frames: the target sends nothing unasked but ABORT, which is
        kept): the switchover reads its answer itself."""
        reader = self._reader
        if reader is None:
            return
        self._reader = None
        if not reader.done():
            reader.cancel()
            await asyncio.wait({reader})  # (a cancel of this task still raises here)
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, Abort):
                self._target_abort = item

    async def _answer(self, kind: type[Expected], within: float) -> Expected:
        """The target's next frame, read straight off the stream (polled briefly first): ``kind``, or a failure."""
        assert self._stream is not None
        frame = await read_frame_spinning(self._stream, within, MAX_CONTROL_BYTES)
        answer = decode(frame.kind, frame.body)
        if isinstance(answer, Abort):
            self._target_abort = answer  # (the failure's reason)
        if not isinstance(answer, kind):
            raise ProtocolError(f"expected {kind.kind.name}, got {answer.kind.name}")
        return answer

    async def _switchover(self, quick: bool, already_halted: bool = False) -> None:
        """Pause, send the rest with the device state in one write, and learn whether the target resumed.
        Until the answer the gate holds the agent's other bulk work and the answer is polled for (``priority``)."""
        record = self.record
        await self._stop_reader()
        self._check_target()
        if self._gate_hold is None:
            self._gate_hold = self.host.switchover_gate.hold()
        record.phase = MigrationPhase.SwitchingOver
        record.touch()
        assert self._stream is not None
        stream = self._stream
        final: list[int] = []
        if not already_halted:
            self._halt_guest(quick)
            final = sorted(self.memory.take_dirty())
        digest = self.memory.digest_hex()
        record.source_digest = digest
        switchover = encode(Switchover(
            digest=digest,
            heartbeat=self.guest.heartbeat,
            drivers=self.guest.drivers,
            resume_state=VmState.Saved if self._prior_state is VmState.Saved else VmState.Running,
            mode=record.mode,
        ))
        parts: list[bytes | memoryview] = []
        for lo in range(0, len(final), CHUNK_PAGES):
            chunk = final[lo:lo + CHUNK_PAGES]
            parts += self.memory.frame_parts(chunk, pages_prefix(record.round + 1, len(chunk), FLAG_FINAL))
        pages_bytes = sum(map(len, parts))
        parts.append(switchover)
        # The final pages take the whole link within this migration's cap (the gate holds the others' bulk:
        # its share's debt drains at the link's rate), the model's transfer part of the downtime.
        cap = mbps_to_bytes_per_second(self.bandwidth_mbps) if self.bandwidth_mbps > 0 else math.inf
        self.bucket.set_rate(min(cap, self.host.egress.rate))
        await self.bucket.consume(pages_bytes)
        self.host.egress.charge(pages_bytes)
        self._check_target()
        self._marks.append(("final built", time.monotonic()))
        # From the moment this write may reach the target, only the target knows whether the guest
        # resumed there: no cancel, and a broken stream is resolved by asking (never by guessing).
        self.in_doubt = True
        if not already_halted:  # the stop-and-copy round of a live migration (possibly empty)
            record.round += 1
            record.pages_sent += len(final)
        record.wire_bytes += pages_bytes + len(switchover)
        try:
            await stream.send_parts(parts)
            self._marks.append(("switchover sent", time.monotonic()))
            if not already_halted:
                assert self._paused_at is not None
                record.rounds.append(RoundInfo(round=record.round, sent_mib=len(final) / 256,
                                               seconds=round(time.monotonic() - self._paused_at, 6), dirty_mib=0.0))
            resumed = await self._answer(Resumed, RESUMED_TIMEOUT)
        except (MigrationFailed, StreamClosed, OSError, ProtocolError) as exc:
            self._release_gate()
            if self._target_abort is not None:  # the target refused explicitly: it did not resume
                raise self._target_failure("the target aborted") from None
            log.warning("migration %s: stream lost during the switchover (%s); asking the target",
                        self.migration_id, exc)
            await self._resolve(str(exc))
        else:
            record.target_digest = resumed.digest or None
            self._marks.append(("resumed", time.monotonic()))
        self.committed = True
        record.committed = True
        assert self._paused_at is not None
        record.downtime_ms = (time.monotonic() - self._paused_at) * 1000
        self._release_gate()

    def _release_gate(self) -> None:
        if self._gate_hold is not None:
            self._gate_hold.release()  # (idempotent)

    async def _resolve(self, why: str) -> None:
        """Ask the target whether it resumed the guest; return if it did, raise Failure if it says it did not.

        Only the target's statement decides. While it cannot be asked (connections refused, silence:
        a partition or a dead host) the guest stays paused here and the migration is in doubt: resuming
        it could make two running copies. The source asks again and again, and the operator may pass on
        the target's answer (``settle``) when it can reach the target and this host cannot.
        """
        target = self.request.target
        port = self._resolve_port or target.port
        self._verdict = asyncio.get_running_loop().create_future()
        asker = asyncio.create_task(self._ask_until_answered(target.host, port, why))
        try:
            await asyncio.wait({asker, self._verdict}, return_when=asyncio.FIRST_COMPLETED)
            resumed = self._verdict.result() if self._verdict.done() else asker.result()
        finally:
            asker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asker
        if self.record.in_doubt:
            log.warning("migration %s: no longer in doubt: the target %s the VM", self.migration_id,
                        "resumed" if resumed else "did not resume")
            self.record.in_doubt = False
            self.record.touch()
        if not resumed:
            raise MigrationFailed(FailureReason.TargetLost,
                          f"the stream to the target broke during the switchover ({why}) and the target had "
                          "not resumed the VM; it keeps running on the source")
        log.info("migration %s: the target confirms it resumed the VM", self.migration_id)

    async def _ask_until_answered(self, host: str, port: int, why: str) -> bool:
        delay = 1.0
        while True:
            answer = await resolve_with_target(host, port, self.migration_id, self.resolve_token,
                                               give_up_after=IN_DOUBT_AFTER)
            if answer is not None:
                return answer
            if not self.record.in_doubt:
                log.error("migration %s is in doubt: the switchover was sent (%s) and the target %s:%d cannot be "
                          "asked whether it resumed the VM; the VM stays paused here until it answers",
                          self.migration_id, why, host, port)
                self.record.in_doubt = True
                self.record.touch()
            await asyncio.sleep(delay)
            delay = min(delay * 2, IN_DOUBT_RETRY_MAX)

    async def _commit_tail(self) -> None:
        record = self.record
        self.host.release_source_vm(self.guest)
        self.guest.migration_id = None
        record.remaining_pages = 0
        record.finish(MigrationPhase.Succeeded)
        if log.isEnabledFor(logging.DEBUG) and self._paused_at is not None:
            log.debug("migration %s switchover: %s", self.migration_id, ", ".join(
                f"{what} +{(when - self._paused_at) * 1000:.2f} ms" for what, when in self._marks))
        if self._stream is not None:
            with contextlib.suppress(StreamClosed, OSError):
                await self._stream.send_message(Finished(downtime_ms=record.downtime_ms,
                                                         duration_ms=record.duration_ms))

    async def _abort(self, failure: MigrationFailed) -> None:
        record = self.record
        guest = self.guest
        if self._halted and guest.state in (VmState.Paused, VmState.Saved):
            if self._prior_state is VmState.Running:
                guest.resume()
            elif guest.state is VmState.Paused:
                guest.save()
        if guest.throttle_percent:
            guest.set_throttle(0.0)
        self.memory.stop_tracking()
        guest.migration_id = None
        if self._paused_at is not None:
            record.downtime_ms = (time.monotonic() - self._paused_at) * 1000
        if self._stream is not None and not self._stream.closed:
            with contextlib.suppress(StreamClosed, OSError, TimeoutError):
                await self._stream.send_message(failure.abort(), within=1.0)
        phase = MigrationPhase.Cancelled if failure.reason is FailureReason.Cancelled else MigrationPhase.Failed
        log.info("migration %s %s: %s", self.migration_id, phase.value.lower(), failure.message)
        record.finish(phase, MigrationFailureReport(reason=failure.reason, message=failure.message))

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._stream is not None:
            self._stream.close()
