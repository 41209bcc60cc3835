"""The migration stream's wire format, version 2: frames, the typed control messages, page runs.

Pure: no I/O (``stream.py`` moves these bytes over a socket). The one place that says what crosses
a migration connection; both sides encode with :func:`encode` and decode with :func:`decode`, so
they always agree, and a message a peer gets wrong is refused with a :class:`ProtocolError` that
names the frame and the field.

All integers are little-endian. A connection opens with ``MAGIC``; then frames of ``<type u8,
flags u8, reserved u16, length u32>`` + body. Control frames carry one JSON object (the message
classes below, camelCase keys; NaN, infinities and overflowing numbers are refused). PAGES frames
carry ``<round u32, count u32>``, ``count`` page indexes (u32), ``count`` versions (u32) and
``count`` pages of 4 KiB, so a run of pages crosses in one large write.

The opening frame (:class:`Hello`, or :class:`Resolve` on a re-dial) names the protocol version it
speaks; a listener refuses any version but :data:`PROTOCOL_VERSION` with an :class:`Abort` that says
which versions meet, so agents of different releases fail a migration with a clear reason instead
of misreading each other. Within one version, a peer ignores keys it does not know.
"""

from __future__ import annotations

import json
import math
import struct
from array import array
from enum import IntEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from vmshift import limits
from vmshift.api.reasons import MigrationMode
from vmshift.drivers import DriverName
from vmshift.hypervisor.guest import PAGE_SIZE
from vmshift.hypervisor.protocol import VmState

#: The version of this wire format. Raise it with any change a peer of the previous version would
#: misread; a listener refuses every other version (see :func:`check_version`). Version 2: the bytes a
#: page holds at a version (guest.page_offset: a block's pages lie back to back), so a version-1 peer
#: would refuse every page as corrupt.
PROTOCOL_VERSION = 2

MAGIC = b"VMSHIFT\x01"
HEADER = struct.Struct("<BBHI")
PAGES_HEAD = struct.Struct("<II")
FLAG_FINAL = 1

#: Pages per PAGES frame: 1 MiB writes keep syscalls and Python overhead small against the bytes.
CHUNK_PAGES = 256
#: Pages per PAGES frame of a migration no rate limits (neither its own nor its host's link): 4 MiB
#: frames spread the per-frame work over four times the bytes. A shaped migration keeps CHUNK_PAGES, so
#: its frames stay short against the rate and a trickling one still sends often.
BULK_CHUNK_PAGES = 1024
MAX_FRAME_PAGES = 4096
MAX_CONTROL_BYTES = 64 * 1024
MAX_HELLO_BYTES = 4096
#: The largest PAGES body a receiver accepts.
MAX_PAGES_BODY = PAGES_HEAD.size + MAX_FRAME_PAGES * (8 + PAGE_SIZE)


class Frame(IntEnum):
    HELLO = 1
    WELCOME = 2
    PAGES = 3
    ROUND_END = 4
    SWITCHOVER = 5
    PREPARE = 6
    READY = 7
    RESUMED = 8
    ABORT = 9
    FINISHED = 10
    RESOLVE = 11
    DECISION = 12


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


class UnsupportedVersion(ProtocolError):
    """The peer's opening frame speaks a protocol version this agent does not."""


# --------------------------------------------------------------------------------------------------
# Control messages


class ControlMessage(BaseModel):
    """One control frame's body. ``kind`` is the frame type that carries it."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )

    kind: ClassVar[Frame]


class Hello(ControlMessage):
    """Source → target, first frame of a migration: who it is and the target's one-time ticket."""

    kind: ClassVar[Frame] = Frame.HELLO

    version: int = PROTOCOL_VERSION
    migration_id: str = Field(max_length=253)
    vm_id: str = Field(max_length=253)
    ticket: str = Field(max_length=1024)
    mode: MigrationMode
    pages: int = Field(ge=0, description="Guest memory in 4 KiB pages; must match the reservation.")
    resolve_token: str | None = Field(None, max_length=1024, description="The secret a re-dial (RESOLVE) "
                                      "presents to ask whether the target resumed the guest.")


class Welcome(ControlMessage):
    """Target → source: the ticket is good; where to re-dial if the stream breaks at the switchover."""

    kind: ClassVar[Frame] = Frame.WELCOME

    resolve_port: int | None = Field(None, ge=1, le=65535)
    qemu_port: int | None = Field(None, ge=1, le=65535, description="QEMU driver, live: the port the target's "
                                  "incoming QEMU listens on (on the host the source dialled); the source's QEMU "
                                  "sends the guest there.")
    prepare: bool = Field(False, description="The target answers PREPARE with READY: the source may announce "
                          "its switchover before it pauses the guest (a target that does not say so is not asked).")


class RoundEnd(ControlMessage):
    """Source → target after each pre-copy round: what it sent and what the guest dirtied meanwhile."""

    kind: ClassVar[Frame] = Frame.ROUND_END

    round: int = Field(ge=0)
    pages: int = Field(ge=0, description="Pages the round sent.")
    seconds: float = Field(ge=0)
    dirty_pages: int = Field(ge=0, description="Pages dirty when the round ended: the next round's size.")
    dirty_rate_mib_ps: float = Field(ge=0, alias="dirtyRateMiBps")
    throttle_percent: float = Field(0.0, ge=0, le=100)
    throughput_mbps: float = Field(0.0, ge=0)


class Switchover(ControlMessage):
    """Source → target, after the final pages in the same write: the memory's digest and device state."""

    kind: ClassVar[Frame] = Frame.SWITCHOVER

    digest: str = Field(max_length=64)
    heartbeat: int | None = Field(None, ge=0)
    drivers: list[DriverName] | None = Field(None, max_length=limits.MAX_DRIVERS)
    resume_state: VmState = Field(VmState.Running, description="Running, or Saved for a guest that was saved "
                                  "before the migration (it arrives saved).")
    mode: MigrationMode | None = Field(None, description="The mode used (Live turns Quick on fallback).")
    state_file: str | None = Field(None, max_length=4096, description="QEMU driver, quick: the file on the "
                                   "shared volume the source saved the guest's state to; the target restores it.")


class PrepareSwitchover(ControlMessage):
    """Source → target, the guest still running: the switchover comes next; make room for it (hold the
    target's other bulk work, read this stream at once) and answer READY. Only sent to a target whose
    WELCOME offered ``prepare``."""

    kind: ClassVar[Frame] = Frame.PREPARE


class ReadyForSwitchover(ControlMessage):
    """Target → source, the answer to :class:`PrepareSwitchover`: the target waits for the final pages now."""

    kind: ClassVar[Frame] = Frame.READY


class Resumed(ControlMessage):
    """Target → source: the digest matched and the guest runs here (the commit point has passed)."""

    kind: ClassVar[Frame] = Frame.RESUMED

    digest: str | None = Field(None, max_length=64)
    heartbeat: int | None = Field(None, ge=0)


class Abort(ControlMessage):
    """Either side: the migration failed; ``reason`` is a FailureReason word (unknown words are kept
    out of status by the receiver), ``message`` says what a person can do."""

    kind: ClassVar[Frame] = Frame.ABORT

    reason: str = Field("", max_length=64)
    message: str = Field("aborted", max_length=4096)


class Finished(ControlMessage):
    """Source → target once it released its copy: the measured pause and duration."""

    kind: ClassVar[Frame] = Frame.FINISHED

    downtime_ms: float | None = Field(None, ge=0)
    duration_ms: float | None = Field(None, ge=0)


class Resolve(ControlMessage):
    """Source → target on a fresh connection after the stream broke at the switchover: did you resume?"""

    kind: ClassVar[Frame] = Frame.RESOLVE

    version: int = PROTOCOL_VERSION
    migration_id: str = Field(max_length=253)
    resolve_token: str = Field(max_length=1024)


class ResolveDecision(ControlMessage):
    """Target → source, the answer to :class:`Resolve`: ``known`` false when the target never heard of
    the migration (it restarted since: the guest cannot run there)."""

    kind: ClassVar[Frame] = Frame.DECISION

    known: bool
    resumed: bool = False


MESSAGES: dict[Frame, type[ControlMessage]] = {
    m.kind: m for m in (Hello, Welcome, RoundEnd, Switchover, PrepareSwitchover, ReadyForSwitchover, Resumed, Abort,
                        Finished, Resolve, ResolveDecision)
}


# --------------------------------------------------------------------------------------------------
# Encoding and decoding: the one place for each


def control_frame(kind: Frame, payload: dict[str, Any] | None = None, flags: int = 0) -> bytes:
    """A control frame holding ``payload`` as JSON (use :func:`encode` for a typed message)."""
    body = json.dumps(payload or {}, separators=(",", ":")).encode()
    return HEADER.pack(kind, flags, 0, len(body)) + body


def encode(message: ControlMessage) -> bytes:
    """The frame that carries ``message``."""
    return control_frame(message.kind, message.model_dump(mode="json"))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"control frame holds a number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"control frame holds {name}, which is not a number a peer may send")


def parse_control(body: memoryview | bytes) -> dict[str, Any]:
    """A control frame's JSON object; NaN, infinities and overflowing numbers are refused (they would
    reach status and the API as values no client can read)."""
    try:
        value = json.loads(bytes(body), parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"control frame is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("control frame is not a JSON object")
    return value


def check_version(kind: Frame, payload: dict[str, Any]) -> None:
    """Refuse an opening frame whose protocol version is not :data:`PROTOCOL_VERSION`."""
    version = payload.get("version")
    if version == PROTOCOL_VERSION and not isinstance(version, bool):
        return
    said = "no protocol version (an agent older than versioned streams)" if version is None else \
        f"migration protocol version {json.dumps(version)[:20]}"
    raise UnsupportedVersion(f"the {kind.name} speaks {said}; the receiving agent speaks version "
                             f"{PROTOCOL_VERSION} only: run the same vmshift release on both hosts")


def decode(kind: int, body: memoryview | bytes) -> ControlMessage:
    """The typed message of a control frame; ProtocolError naming the frame and field when it is wrong.

    An opening frame (HELLO, RESOLVE) of another protocol version raises :class:`UnsupportedVersion`
    before anything else of it is read.
    """
    if kind not in MESSAGES:
        name = Frame(kind).name if kind in Frame._value2member_map_ else str(kind)
        raise ProtocolError(f"frame type {name} carries no control message")
    frame = Frame(kind)
    payload = parse_control(body)
    if frame in (Frame.HELLO, Frame.RESOLVE):
        check_version(frame, payload)
    try:
        return MESSAGES[frame].model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise ProtocolError(f"{frame.name} frame: {where}: {first['msg']}") from None


# --------------------------------------------------------------------------------------------------
# Page runs


def frame_size(count: int) -> int:
    """Bytes on the wire of a PAGES frame of ``count`` pages, header included."""
    return HEADER.size + PAGES_HEAD.size + (8 + PAGE_SIZE) * count


def pages_prefix(round_index: int, count: int, flags: int = 0) -> bytes:
    """Frame header and PAGES head of a run of ``count`` pages (the page data follows)."""
    body_len = PAGES_HEAD.size + 8 * count + PAGE_SIZE * count
    return HEADER.pack(Frame.PAGES, flags, 0, body_len) + PAGES_HEAD.pack(round_index, count)


def parse_pages(body: memoryview) -> tuple[int, array[int], array[int], memoryview]:
    """(round, page indexes, versions, page bytes) of a PAGES body."""
    if len(body) < PAGES_HEAD.size:
        raise ProtocolError("PAGES frame too short")
    round_index, count = PAGES_HEAD.unpack_from(body)
    if count > MAX_FRAME_PAGES or len(body) != PAGES_HEAD.size + count * (8 + PAGE_SIZE):
        raise ProtocolError(f"PAGES frame of {len(body)} bytes does not hold {count} pages")
    lo = PAGES_HEAD.size
    idx = array("I")
    idx.frombytes(body[lo:lo + 4 * count])
    versions = array("I")
    versions.frombytes(body[lo + 4 * count:lo + 8 * count])
    return round_index, idx, versions, body[lo + 8 * count:]
