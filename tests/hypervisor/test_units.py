"""Pure pieces of the hypervisor layer: the token bucket, the wire models, the tickets."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from vmshift.hypervisor.migration.tickets import TicketIssuer
from vmshift.hypervisor.migration.wire import ProtocolError, parse_control
from vmshift.hypervisor.protocol import (
    DiskSpec,
    IncomingMigrationRequest,
    MigrationStatus,
    SensorChange,
    VmDefinition,
)
from vmshift.hypervisor.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


async def test_token_bucket_shapes_to_its_rate_whatever_the_write_size() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000_000.0, clock=clock, sleep=clock.sleep)
    for size in [1_000_000] * 3 + [300_000] * 10 + [5_000_000]:
        await bucket.consume(size)
    assert clock.now - 100.0 == pytest.approx(11.0, rel=1e-6), "11 MB at 1 MB/s take 11 s"


async def test_token_bucket_credits_oversleeping_up_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000_000.0, clock=clock, sleep=clock.sleep, burst_seconds=0.01, min_burst=0)
    await bucket.consume(1_000_000)
    clock.now += 0.005  # the loop woke up late: the next write may go early by as much
    start = clock.now
    await bucket.consume(1_000_000)
    assert clock.now - start == pytest.approx(0.995)
    clock.now += 60  # idle for a minute: only the burst (10 ms) is saved up
    start = clock.now
    await bucket.consume(1_000_000)
    assert clock.now - start == pytest.approx(0.99)


async def test_token_bucket_credits_a_waiting_sender_all_the_time_it_came_back_late() -> None:
    """A sender scheduled 40 ms late (a loaded host) catches up in full, so the rate does not sag;
    before, whatever it lost past the 10 ms burst was lost for good."""
    clock = FakeClock()
    bucket = TokenBucket(1_000_000.0, clock=clock, sleep=clock.sleep, burst_seconds=0.01, min_burst=0)
    start = clock.now
    for _ in range(10):
        await bucket.consume(100_000)
        clock.now += 0.04  # woke up and sent 40 ms later than the bucket asked
    assert clock.now - start == pytest.approx(1.0 + 0.04), "1 MB at 1 MB/s: the lateness is made up"
    clock.now += 0.5  # then idle for longer than the catch-up window: only the burst is saved
    start = clock.now
    await bucket.consume(1_000_000)
    assert clock.now - start == pytest.approx(0.99)


async def test_priority_traffic_goes_at_once_and_the_bulk_waits_for_it() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000_000.0, clock=clock, sleep=clock.sleep, burst_seconds=0.01, min_burst=0)
    bucket.reserve(500_000)  # another stream's write is waiting
    start = clock.now
    bucket.charge(100_000)  # a switchover's final pages
    assert clock.now == start
    await bucket.consume(100_000)
    assert clock.now - start == pytest.approx(0.7), "the next bulk write waits for both"


async def test_unlimited_bucket_never_waits() -> None:
    bucket = TokenBucket.mbps(0)
    assert bucket.unlimited
    await bucket.consume(10**12)
    assert bucket.reserve(10**12) == 0


def test_wire_names_are_camel_case_with_units() -> None:
    body = VmDefinition.model_validate({"name": "a", "cpus": 1, "memoryMiB": 8,
                                        "workload": {"dirtyRateMiBps": 3, "workingSetMiB": 1}})
    dumped = body.model_dump()
    assert dumped["memoryMiB"] == 8 and dumped["workload"]["dirtyRateMiBps"] == 3
    status = MigrationStatus.model_validate({"migrationId": "m", "vmId": "v", "role": "source", "mode": "Live",
                                            "phase": "Transferring", "futureField": 1})
    assert set(status.model_dump()) >= {"transferredMiB", "remainingMiB", "dirtyRateMiBps", "throughputMbps",
                                        "downtimeMs", "durationMs", "sourceDigest", "targetDigest"}


def test_requests_refuse_what_they_cannot_mean() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        DiskSpec.model_validate({"name": "d", "sizeGiB": 1, "volume": "csv1", "local": True})
    with pytest.raises(ValidationError, match="memoryMiB"):
        VmDefinition.model_validate({"name": "a", "cpus": 1, "memoryMib": 8})  # wrong unit spelling
    with pytest.raises(ValidationError, match="Live or Quick"):
        IncomingMigrationRequest.model_validate({
            "migrationId": "m", "mode": "Auto",
            "vm": {"vmId": "v", "name": "v", "cpus": 1, "memoryMiB": 8, "features": []}})
    with pytest.raises(ValidationError, match="at least one"):
        SensorChange.model_validate({})


def test_tickets_are_bound_to_their_migration_and_expire() -> None:
    issuer = TicketIssuer()
    ticket = issuer.issue("m1", "vm1", ttl_seconds=30)
    assert issuer.check(ticket, "m1", "vm1")
    assert not issuer.check(ticket, "m2", "vm1")
    assert not issuer.check(ticket, "m1", "vm2")
    assert not TicketIssuer().check(ticket, "m1", "vm1"), "another host's secret"
    expires, mac = ticket.split(".")
    assert not issuer.check(f"{int(expires) + 100}.{mac}", "m1", "vm1"), "a stretched expiry"
    assert not issuer.check("garbage", "m1", "vm1")
    stale = issuer.issue("m1", "vm1", ttl_seconds=-5)
    assert int(stale.split(".")[0]) <= time.time() + 1 - 5 + 1
    assert not issuer.check(stale, "m1", "vm1")


@pytest.mark.parametrize("body", [b'{"dirtyRateMiBps": NaN}', b'{"throttlePercent": Infinity}',
                                  b'{"seconds": -Infinity}', b'{"dirtyRateMiBps": 1e999}'])
def test_a_control_frame_with_a_number_no_client_can_read_is_refused(body: bytes) -> None:
    """A ROUND_END with NaN once reached the agent's migration list as null, and the operator took
    the whole host for unreachable."""
    with pytest.raises(ProtocolError, match="control frame holds"):
        parse_control(body)
    assert parse_control(b'{"dirtyRateMiBps": 12.5, "round": 3}') == {"dirtyRateMiBps": 12.5, "round": 3}
