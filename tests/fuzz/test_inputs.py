"""Untrusted inputs either parse or raise the reading module's own clear error, never anything else.

Alertmanager webhook bodies (AlertPayloadError), OVF descriptors (OvfError), OVA archives
(OvaError), physical inventories (PhysicalInventoryError), the agent API's request bodies
(pydantic's ValidationError, which the server turns into a 400 naming the field), and the migration
stream's frames (ProtocolError), including a real agent fed fuzzed frames after a valid handshake:
it must keep answering, end the migration and give back the reservation.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from tests.conversion.conftest import shared_dir
from vmshift.conversion.ova import read_ova
from vmshift.conversion.ovf import OvfError, parse_ovf
from vmshift.conversion.physical import PhysicalInventoryError, inspect_physical
from vmshift.hypervisor import protocol
from vmshift.hypervisor.client import HypervisorClient
from vmshift.hypervisor.launcher import AgentConfig, AgentProcess, start_agent
from vmshift.hypervisor.migration.wire import (
    MAGIC,
    PROTOCOL_VERSION,
    Frame,
    ProtocolError,
    control_frame,
    parse_control,
    parse_pages,
)
from vmshift.hypervisor.protocol import IncomingMigrationRequest, IncomingVm, MigrationMode
from vmshift.remediation.alerts import AlertPayloadError, parse_alertmanager_payload

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
#: Numbers that break careless conversions: overflow on int(), NaN, huge, negative.
NASTY_NUMBERS = st.sampled_from([1e308, -1e308, float("inf"), 10**30, -1, 0, 2**63, float("nan"), "12", None, [], {}])


def _ovf_corpus() -> list[bytes]:
    directory = shared_dir() / "testdata" / "ovf"
    return [p.read_bytes() for p in sorted(directory.glob("*.ovf"))][:6] if directory.is_dir() else []


CORPUS = _ovf_corpus()


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A real document with a few bytes flipped, a slice cut out, a slice repeated or truncated."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "repeat", "truncate", "number"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:at + draw(st.integers(1, 200))]
        elif action == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 200))]
        elif action == "truncate":
            del data[at:]
        else:  # a digit run replaced by a huge or negative number
            data[at:at] = str(draw(st.sampled_from([10**40, -5, 0, 2**64]))).encode()
    return bytes(data)


# --- Alertmanager ------------------------------------------------------------------------------------


@st.composite
def webhook_bodies(draw: st.DrawFn) -> Any:
    alert = st.fixed_dictionaries({}, optional={
        "status": st.sampled_from(["firing", "resolved", "bogus"]) | JSON,
        "labels": st.dictionaries(st.text(max_size=10), st.text(max_size=10) | JSON, max_size=4) | JSON,
        "annotations": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=2) | JSON,
        "startsAt": st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "yesterday", ""]) | JSON,
        "endsAt": st.sampled_from(["2026-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "x"]) | JSON,
        "generatorURL": st.text(max_size=20), "fingerprint": st.text(max_size=20) | JSON})
    return draw(st.fixed_dictionaries({}, optional={
        "version": st.sampled_from(["4", "3", 4]) | JSON, "groupKey": st.text(max_size=10) | JSON,
        "truncatedAlerts": NASTY_NUMBERS | st.integers(), "status": st.sampled_from(["firing", "resolved"]) | JSON,
        "receiver": st.text(max_size=10) | JSON, "groupLabels": st.dictionaries(st.text(), st.text()) | JSON,
        "commonLabels": JSON, "commonAnnotations": JSON, "externalURL": JSON,
        "alerts": st.lists(alert, max_size=4) | JSON}))


@FUZZ
@given(st.binary(max_size=300) | webhook_bodies().map(lambda b: json.dumps(b, allow_nan=True).encode()))
def test_webhook_bodies_parse_or_say_what_is_wrong(body: bytes) -> None:
    try:
        parse_alertmanager_payload(body)
    except AlertPayloadError as exc:
        assert str(exc).startswith("invalid Alertmanager webhook payload")


# --- OVF, OVA, physical inventories ----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400) | (mutated(CORPUS) if CORPUS else st.binary(max_size=400)),
       st.none() | st.text(max_size=10))
def test_ovf_descriptors_parse_or_raise_ovf_error(data: bytes, configuration: str | None) -> None:
    try:
        parse_ovf(data, configuration=configuration)
    except OvfError as exc:
        assert str(exc)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    ovf = draw(mutated(CORPUS)) if CORPUS and draw(st.booleans()) else draw(st.binary(max_size=200))
    names = st.sampled_from(["vm.ovf", "vm.mf", "disk1.vmdk", "../evil.ovf", "/abs.ovf", "a/b.ovf", "vm.cert"])
    members = [("vm.ovf", ovf)]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(names)
        body = draw(st.binary(max_size=100) | st.sampled_from([
            b"SHA256(vm.ovf)= " + b"0" * 64 + b"\n", b"SHA1(disk1.vmdk)=zz\n", b"garbage line\n"]))
        members.append((name, body))
    data = _tar(members)
    if draw(st.booleans()):  # damage the archive: a header byte, or a truncation
        raw = bytearray(data)
        at = draw(st.integers(0, len(raw) - 1))
        if draw(st.booleans()):
            raw[at] = draw(st.integers(0, 255))
        else:
            del raw[at:]
        data = bytes(raw)
    return data


@FUZZ
@given(archives() | st.binary(max_size=1200))
def test_ova_archives_read_or_raise_ova_error(data: bytes) -> None:
    try:
        read_ova(io.BytesIO(data))
    except OvfError as exc:  # OvaError is an OvfError
        assert str(exc)


def test_a_sparse_ova_member_is_refused_without_reading_its_declared_size() -> None:
    """A member whose header declares 4 TiB in an archive of a few KiB: refused quickly, not hashed."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        ovf = tarfile.TarInfo("vm.ovf")
        body = CORPUS[0] if CORPUS else b"<Envelope/>"
        ovf.size = len(body)
        tar.addfile(ovf, io.BytesIO(body))
        disk = tarfile.TarInfo("disk1.vmdk")
        disk.type = tarfile.GNUTYPE_SPARSE
        disk.sparse = [(4 * 2**40 - 512, 512)]  # type: ignore[attr-defined]
        disk.size = 512
        tar.addfile(disk, io.BytesIO(b"\0" * 512))
    started = time.monotonic()
    with pytest.raises(OvfError):
        read_ova(io.BytesIO(out.getvalue()))
    assert time.monotonic() - started < 5, "the sparse member was read through its declared size"


@FUZZ
@given(JSON | st.fixed_dictionaries({}, optional={
    "hostname": st.text(max_size=20) | JSON, "cpu": JSON, "memoryMiB": NASTY_NUMBERS,
    "disks": st.lists(st.dictionaries(st.sampled_from(["name", "sizeGiB", "bus", "model"]), NASTY_NUMBERS | JSON,
                                      max_size=4), max_size=3) | JSON,
    "nics": JSON, "drivers": JSON, "os": JSON}))
def test_physical_inventories_parse_or_raise_inventory_error(data: Any) -> None:
    try:
        inspect_physical(data if isinstance(data, dict) else {"inventory": data})
    except PhysicalInventoryError as exc:
        assert str(exc)


# --- the agent API's request bodies ---------------------------------------------------------------------

REQUESTS = [m for m in vars(protocol).values()
            if isinstance(m, type) and issubclass(m, protocol.Request) and m is not protocol.Request]


@FUZZ
@given(st.sampled_from(REQUESTS), st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_agent_request_bodies_parse_or_raise_validation_error(model: type[BaseModel], body: bytes) -> None:
    try:
        model.model_validate_json(body)
    except ValidationError as exc:
        assert exc.errors()


# --- the migration stream ----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_control_and_pages_frames_decode_or_raise_protocol_error(body: bytes) -> None:
    try:
        parse_control(body)
    except ProtocolError:
        pass
    try:
        parse_pages(memoryview(body))
    except ProtocolError:
        pass


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    process = start_agent(AgentConfig(name="fuzz-target", memory_mib=4096, reservation_seconds=3),
                          None, tmp_path_factory.mktemp("fuzz-agent"))
    try:
        yield process
    finally:
        process.stop()


def _pages(round_index: int, indexes: list[int], flags: int = 0) -> bytes:
    body = struct.pack("<II", round_index, len(indexes)) + struct.pack(f"<{len(indexes)}I", *indexes) \
        + struct.pack(f"<{len(indexes)}I", *[1] * len(indexes)) + b"\x5a" * 4096 * len(indexes)
    return struct.pack("<BBHI", Frame.PAGES, flags, 0, len(body)) + body


@st.composite
def hostile_frames(draw: st.DrawFn) -> list[bytes]:
    """What a broken or hostile source sends after a valid HELLO."""
    frames = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["round_end", "pages", "switchover", "raw", "unknown", "finished"]))
        if kind == "round_end":
            frames.append(control_frame(Frame.ROUND_END, draw(st.fixed_dictionaries({}, optional={
                k: NASTY_NUMBERS for k in ("round", "pages", "dirtyPages", "dirtyRateMiBps", "seconds",
                                           "throttlePercent")}))))
        elif kind == "pages":
            frames.append(_pages(draw(st.integers(0, 2**32 - 1)),
                                 draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3))))
        elif kind == "switchover":
            frames.append(control_frame(Frame.SWITCHOVER, draw(st.fixed_dictionaries({}, optional={
                "digest": JSON, "heartbeat": NASTY_NUMBERS, "drivers": JSON, "mode": JSON, "resumeState": JSON}))))
        elif kind == "unknown":
            frames.append(struct.pack("<BBHI", draw(st.integers(0, 255)), 0, 0, 0))
        elif kind == "finished":
            frames.append(control_frame(Frame.FINISHED, {"downtimeMs": 1e308}))
        else:
            frames.append(draw(st.binary(min_size=1, max_size=64)))
    return frames


async def _hostile_source(agent: AgentProcess, frames: list[bytes], n: int) -> tuple[int, int]:
    """Reserve an incoming migration, send a valid HELLO then ``frames``; return the reservation
    before and after the agent has dealt with the stream (memory MiB)."""
    async with HypervisorClient(agent.endpoint, agent.token) as client:
        vm_id = f"fuzz-{n}-{uuid.uuid4().hex[:12]}"
        grant = await client.prepare_incoming(IncomingMigrationRequest(
            migration_id=f"m-{vm_id}", mode=MigrationMode.Live, vm=IncomingVm(
                vm_id=vm_id, name=vm_id, namespace="fuzz", cpus=1, memory_mib=16, features=[])))
        before = (await client.host()).reserved.memory_mib
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.migration_port)
        hello = {"version": PROTOCOL_VERSION, "migrationId": f"m-{vm_id}", "vmId": vm_id, "ticket": grant.ticket,
                 "mode": "Live", "pages": 16 * 256, "resolveToken": "r" * 32}
        writer.write(MAGIC + control_frame(Frame.HELLO, hello))
        for frame in frames:
            writer.write(frame)
        with_timeout = asyncio.timeout(2)
        try:
            async with with_timeout:
                await writer.drain()
                await reader.read(1 << 16)
        except (TimeoutError, ConnectionError):
            pass
        writer.transport.abort()
        deadline = time.monotonic() + 15
        while True:
            info = await client.host()
            mine = [m for m in await client.list_migrations() if m.migration_id == f"m-{vm_id}"]
            if all(m.phase.finished for m in mine) and info.reserved.memory_mib <= before - 16:
                return before, info.reserved.memory_mib
            if time.monotonic() > deadline:
                return before, info.reserved.memory_mib
            await asyncio.sleep(0.1)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_frames())
def test_a_target_agent_survives_hostile_frames_and_gives_its_reservation_back(
        agent: AgentProcess, frames: list[bytes]) -> None:
    before, after = asyncio.run(_hostile_source(agent, frames, len(frames)))
    assert agent.alive, f"the agent died:\n{agent.log_tail()}"
    assert after <= before - 16, (
        f"the agent still reserves {after} MiB (was {before} MiB with this migration's 16 MiB) after the "
        f"stream ended; last log lines:\n{agent.log_tail(8)}")


def test_the_ovf_corpus_is_there_to_mutate() -> None:
    assert CORPUS, f"no OVF test data under {Path(shared_dir()) / 'testdata' / 'ovf'}"
