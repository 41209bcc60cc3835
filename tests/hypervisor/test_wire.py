"""The migration stream's wire format: every control message survives encode/decode, the opening
frames carry the protocol version and other versions are refused, bad fields are named. Pure."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmshift.api.reasons import MigrationMode
from vmshift.hypervisor.migration.wire import (
    HEADER,
    MESSAGES,
    PROTOCOL_VERSION,
    Abort,
    ControlMessage,
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
    control_frame,
    decode,
    encode,
)
from vmshift.hypervisor.protocol import VmState

SAMPLES: list[ControlMessage] = [
    Hello(migration_id="m1", vm_id="vm1", ticket="123.abc", mode=MigrationMode.Live, pages=4096,
          resolve_token="r" * 32),
    Welcome(resolve_port=7001, prepare=True),
    RoundEnd(round=3, pages=120, seconds=0.25, dirty_pages=17, dirty_rate_mib_ps=12.5, throttle_percent=20,
             throughput_mbps=950.0),
    Switchover(digest="0123456789abcdef", heartbeat=42, drivers=["netvsc", "storvsc"],
               resume_state=VmState.Saved, mode=MigrationMode.Quick),
    PrepareSwitchover(),
    ReadyForSwitchover(),
    Resumed(digest="0123456789abcdef", heartbeat=43),
    Abort(reason="NotConverging", message="the guest writes faster than the link"),
    Finished(downtime_ms=2.5, duration_ms=812.0),
    Resolve(migration_id="m1", resolve_token="r" * 32),
    ResolveDecision(known=True, resumed=False),
]


def split(frame: bytes) -> tuple[int, bytes]:
    kind, _flags, _reserved, length = HEADER.unpack_from(frame)
    assert len(frame) == HEADER.size + length
    return kind, frame[HEADER.size:]


def test_every_frame_type_with_a_body_has_one_message_class() -> None:
    assert set(MESSAGES) == set(Frame) - {Frame.PAGES}
    assert {type(m) for m in SAMPLES} == set(MESSAGES.values())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_each_message_survives_encode_and_decode(message: ControlMessage) -> None:
    kind, body = split(encode(message))
    assert kind == message.kind
    assert decode(kind, body) == message


def test_the_wire_keeps_its_camel_case_keys() -> None:
    """Field names on the wire are part of the protocol: renaming a Python attribute must not move them."""
    _, body = split(encode(SAMPLES[2]))
    assert set(json.loads(body)) == {"round", "pages", "seconds", "dirtyPages", "dirtyRateMiBps", "throttlePercent",
                                     "throughputMbps"}
    _, body = split(encode(SAMPLES[0]))
    assert json.loads(body)["version"] == PROTOCOL_VERSION
    assert {"migrationId", "vmId", "resolveToken"} <= set(json.loads(body))


@pytest.mark.parametrize("kind", [Frame.HELLO, Frame.RESOLVE])
@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, "1", True, None])
def test_opening_frames_of_another_version_are_refused_before_anything_else(kind: Frame, version: object) -> None:
    payload: dict[str, object] = {"migrationId": "m1"}  # incomplete on purpose: the version is read first
    if version is not None:
        payload["version"] = version
    _, body = split(control_frame(kind, payload))
    with pytest.raises(UnsupportedVersion, match=f"speaks version {PROTOCOL_VERSION} only"):
        decode(kind, body)


def test_a_bad_field_is_named_with_its_frame() -> None:
    _, body = split(control_frame(Frame.ROUND_END, {"round": 1, "pages": 2, "seconds": 0.1, "dirtyPages": -5,
                                                    "dirtyRateMiBps": 1.0}))
    with pytest.raises(ProtocolError, match="ROUND_END frame: dirtyPages"):
        decode(Frame.ROUND_END, body)
    _, body = split(control_frame(Frame.SWITCHOVER, {"digest": "x", "drivers": ["no spaces allowed"]}))
    with pytest.raises(ProtocolError, match="SWITCHOVER frame: drivers"):
        decode(Frame.SWITCHOVER, body)
    with pytest.raises(ProtocolError, match="carries no control message"):
        decode(Frame.PAGES, b"{}")
    with pytest.raises(ProtocolError, match="carries no control message"):
        decode(200, b"{}")


def test_unknown_keys_of_the_same_version_are_ignored() -> None:
    _, body = split(control_frame(Frame.WELCOME, {"resolvePort": 7001, "somethingNewer": [1, 2]}))
    assert decode(Frame.WELCOME, body) == Welcome(resolve_port=7001)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # generation is slow on a busy machine
@given(st.sampled_from(sorted(MESSAGES)), st.dictionaries(st.sampled_from(
    ["version", "migrationId", "vmId", "ticket", "mode", "pages", "round", "seconds", "dirtyPages", "digest",
     "heartbeat", "drivers", "resumeState", "reason", "message", "known", "resumed", "resolvePort",
     "downtimeMs"]), st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False,
                                                                                          allow_infinity=False)
    | st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3), max_size=8))
def test_any_json_object_decodes_or_raises_protocol_error(kind: Frame, payload: dict[str, object]) -> None:
    _, body = split(control_frame(kind, payload))
    try:
        message = decode(kind, body)
    except ProtocolError:
        return
    assert message.kind == kind
