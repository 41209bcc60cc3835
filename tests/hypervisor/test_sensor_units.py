"""Sensors in their units: fans in RPM, power supplies in watts, corrected memory errors per hour over a
sliding hour; one set of thresholds (vmshift.sensors) for the agent's health, the Host's status and
the alerts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmshift.api.host import SensorHealth, SensorKind
from vmshift.hypervisor.host import HostConfig, HypervisorHost
from vmshift.hypervisor.protocol import (
    ComponentFault,
    FanStatus,
    PowerSupplyStatus,
    SensorChange,
    Sensors,
    VmDefinition,
)
from vmshift.remediation.alerts import host_signals_from_sensors
from vmshift.sensors import (
    HOUR_SECONDS,
    IDLE_HOST_WATTS,
    LIMITS,
    Reading,
    assess,
    errors_per_hour,
    psu_watts,
    verdicts,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def host() -> tuple[HypervisorHost, Clock]:
    h = HypervisorHost(HostConfig(name="h1", cpu_model="icelake", cores=16, memory_mib=65536, bandwidth_mbps=10_000))
    clock = Clock()
    h.clock = clock
    return h, clock


def test_a_healthy_host_reads_real_units(host: tuple[HypervisorHost, Clock]) -> None:
    h, _ = host
    sensors = h.host_info().sensors
    assert all(5000 < f.rpm < 12000 and f.ok for f in sensors.fans), sensors.fans
    assert [p.watts for p in sensors.power_supplies] == [IDLE_HOST_WATTS / 2] * 2
    assert sensors.corrected_memory_errors_per_hour == 0 and h.health().healthy


def test_a_failed_fan_stops_and_the_other_supply_carries_the_load(host: tuple[HypervisorHost, Clock]) -> None:
    h, _ = host
    h.define_vm("g1", VmDefinition(name="g1", cpus=4, memory_mib=8192))
    h.start_vm("g1")
    loaded = h.host_info().sensors.power_supplies
    assert loaded[0].watts > IDLE_HOST_WATTS / 2, "a running guest draws power"
    info = h.change_sensors(SensorChange(fan=ComponentFault(index=2, failed=True),
                                         power_supply=ComponentFault(index=0, failed=True)))
    fans, psus = info.sensors.fans, info.sensors.power_supplies
    assert fans[2].rpm == 0 and not fans[2].ok and fans[1].rpm > LIMITS.fan_min_rpm
    assert psus[0].watts == 0 and psus[1].watts == pytest.approx(loaded[0].watts * 2)
    assert {(p.signal.value, p.severity.value) for p in info.health.problems} == {
        ("Fan", "Warning"), ("PowerSupply", "Critical")}


def test_fans_spin_faster_when_the_inlet_warms(host: tuple[HypervisorHost, Clock]) -> None:
    h, _ = host
    cool = h.host_info().sensors.fans[0].rpm
    warm = h.change_sensors(SensorChange(temperature_c=60)).sensors.fans[0].rpm
    assert warm > cool


def test_corrected_errors_are_counted_per_hour_over_a_sliding_hour(host: tuple[HypervisorHost, Clock]) -> None:
    h, clock = host
    h.change_sensors(SensorChange(corrected_memory_errors=80))
    clock.now += 1800
    info = h.change_sensors(SensorChange(corrected_memory_errors=40))
    assert (info.sensors.corrected_memory_errors, info.sensors.corrected_memory_errors_per_hour) == (120, 120)
    assert [p.signal.value for p in info.health.problems] == ["CorrectedMemoryErrors"]
    clock.now += 1801  # the first 80 leave the window
    info = h.host_info()
    assert (info.sensors.corrected_memory_errors, info.sensors.corrected_memory_errors_per_hour) == (120, 40)
    assert info.health.healthy, "40 errors in the last hour is under the warning limit"


@given(st.lists(st.tuples(st.floats(0, 10 * HOUR_SECONDS), st.integers(0, 1000)), max_size=30),
       st.floats(0, 10 * HOUR_SECONDS))
def test_the_rate_counts_exactly_the_last_hour(events: list[tuple[float, int]], now: float) -> None:
    expected = sum(c for t, c in events if now - HOUR_SECONDS < t <= now)
    assert errors_per_hour(events, now) == expected


@given(st.floats(0, 5000), st.lists(st.booleans(), min_size=1, max_size=4))
def test_working_supplies_share_the_whole_load(load: float, ok: list[bool]) -> None:
    watts = psu_watts(load, ok)
    assert all(w == 0 for w, good in zip(watts, ok, strict=True) if not good)
    if any(ok):
        assert sum(watts) == pytest.approx(load, abs=0.1 * len(ok))


def test_one_verdict_for_status_health_and_alerts() -> None:
    reading = Reading(fan_rpm=(9000, 300, 0, 9100), psu_ok=(True, True), psu_watts=(150, 150),
                      temperature_c=85, corrected_errors_per_hour=1500)
    problems = {p.kind: p.severity for p in assess(reading)}
    assert problems == {SensorKind.Fan: SensorHealth.Critical, SensorKind.Temperature: SensorHealth.Warning,
                        SensorKind.CorrectedMemoryErrors: SensorHealth.Critical}
    by_name = {v.name: v for v in verdicts(reading)}
    assert by_name["fan-2"].value == 300 and by_name["fan-2"].health is SensorHealth.Critical
    assert by_name["fan-1"].health is SensorHealth.OK and by_name["psu-1"].value == 150
    assert by_name["corrected-memory-errors"].value == 1500
    assert by_name["inlet-temperature"].health is SensorHealth.Warning
    sensors = Sensors(fans=[FanStatus(index=i, rpm=r) for i, r in enumerate(reading.fan_rpm)],
                      power_supplies=[PowerSupplyStatus(index=i, ok=True, watts=150) for i in range(2)],
                      temperature_c=85, corrected_memory_errors_per_hour=1500)
    alerts = {a.alertname: a.labels["severity"] for a in host_signals_from_sensors("h", sensors)}
    assert alerts == {"FanFailure": "critical", "HighTemperature": "warning", "CorrectedMemoryErrors": "critical"}
