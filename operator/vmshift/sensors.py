"""Hardware sensors: their units, the one set of thresholds, and the verdict on a reading. Pure: no I/O.

The agent reports real-looking readings (fans in RPM, power supplies in watts, inlet temperature in
°C, corrected memory errors per hour over a sliding hour); :func:`assess` turns a reading into the
problems it amounts to, one per sensor kind with a severity, and :func:`verdicts` gives each sensor
its own health for the Host's ``status.sensors``. The agent's ``/v1/host`` health, the operator's
Host status and the alerts RemediationPolicies match (``remediation.alerts``) all call these, with
:data:`LIMITS`, so a threshold is written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmshift.api.host import HardwareAlert, SensorHealth, SensorKind

#: One hour: corrected memory errors are counted over the last hour (a sliding window).
HOUR_SECONDS = 3600.0


@dataclass(frozen=True)
class SensorLimits:
    """When a reading becomes a problem, and how severe. Units as in the names."""

    #: A fan turning slower than this has failed (stalled or stopped).
    fan_min_rpm: float = 1500.0
    #: This many failed fans or more make FanFailure critical (one failed fan is a warning).
    fans_critical: int = 2
    #: Inlet temperature over this is a warning, over the critical one critical.
    temperature_warning_c: float = 80.0
    temperature_critical_c: float = 90.0
    #: Corrected memory errors in the last hour over this are a warning, over the critical one critical.
    corrected_errors_warning_per_hour: float = 100.0
    corrected_errors_critical_per_hour: float = 1000.0


#: The thresholds every component uses.
LIMITS = SensorLimits()

#: What a healthy simulated host reads: a fan's speed, a power supply's share of an idle host's draw,
#: the inlet temperature.
NOMINAL_FAN_RPM = 9000.0
IDLE_HOST_WATTS = 180.0
NORMAL_TEMPERATURE_C = 35.0


@dataclass(frozen=True)
class Reading:
    """One host's sensors: fan speeds (RPM), each power supply's state and output (W), inlet
    temperature (°C), corrected memory errors in the last hour."""

    fan_rpm: tuple[float, ...]
    psu_ok: tuple[bool, ...]
    psu_watts: tuple[float, ...]
    temperature_c: float
    corrected_errors_per_hour: float


@dataclass(frozen=True)
class SensorProblem:
    """What a reading amounts to for one sensor kind: the alert it raises, its severity and a sentence."""

    kind: SensorKind
    severity: SensorHealth
    message: str

    @property
    def alert(self) -> HardwareAlert:
        return next(a for a in HardwareAlert if a.sensor is self.kind)


@dataclass(frozen=True)
class Verdict:
    """One sensor's value (in its kind's unit) and health, for the Host's status."""

    name: str
    kind: SensorKind
    value: float
    health: SensorHealth
    message: str | None = None


def fan_failed(rpm: float, limits: SensorLimits = LIMITS) -> bool:
    return rpm < limits.fan_min_rpm


def errors_per_hour(events: Iterable[tuple[float, int]], now: float) -> float:
    """Corrected errors counted in the hour before ``now``, from (time in seconds, count) events."""
    return float(sum(count for when, count in events if now - HOUR_SECONDS < when <= now))


def psu_watts(load_watts: float, psu_ok: Sequence[bool]) -> tuple[float, ...]:
    """Each supply's output: the working ones share the host's draw; a failed one gives nothing."""
    working = sum(1 for ok in psu_ok if ok)
    return tuple(round(load_watts / working, 1) if ok and working else 0.0 for ok in psu_ok)


def assess(reading: Reading, limits: SensorLimits = LIMITS) -> list[SensorProblem]:
    """The problems a reading amounts to (empty: healthy), in the order Fan, PowerSupply,
    Temperature, CorrectedMemoryErrors. A failed power supply is critical: the host has lost its
    redundancy, one more failure powers it off."""
    out: list[SensorProblem] = []
    failed = [i for i, rpm in enumerate(reading.fan_rpm) if fan_failed(rpm, limits)]
    if failed:
        severity = SensorHealth.Critical if len(failed) >= limits.fans_critical else SensorHealth.Warning
        speeds = ", ".join(f"{reading.fan_rpm[i]:.0f}" for i in failed)
        out.append(SensorProblem(SensorKind.Fan, severity,
                           f"fan(s) {', '.join(map(str, failed))} failed ({len(failed)} of {len(reading.fan_rpm)}; "
                           f"{speeds} RPM, below {limits.fan_min_rpm:.0f})"))
    lost = [i for i, ok in enumerate(reading.psu_ok) if not ok]
    if lost:
        out.append(SensorProblem(SensorKind.PowerSupply, SensorHealth.Critical,
                           f"power supply(ies) {', '.join(map(str, lost))} failed ({len(lost)} of "
                           f"{len(reading.psu_ok)}); no redundancy left"))
    if reading.temperature_c > limits.temperature_warning_c:
        critical = reading.temperature_c > limits.temperature_critical_c
        limit = limits.temperature_critical_c if critical else limits.temperature_warning_c
        out.append(SensorProblem(SensorKind.Temperature, SensorHealth.Critical if critical else SensorHealth.Warning,
                           f"inlet temperature {reading.temperature_c:.1f} °C is over {limit:.0f} °C"))
    if reading.corrected_errors_per_hour > limits.corrected_errors_warning_per_hour:
        critical = reading.corrected_errors_per_hour > limits.corrected_errors_critical_per_hour
        limit = limits.corrected_errors_critical_per_hour if critical else limits.corrected_errors_warning_per_hour
        out.append(SensorProblem(SensorKind.CorrectedMemoryErrors,
                           SensorHealth.Critical if critical else SensorHealth.Warning,
                           f"{reading.corrected_errors_per_hour:.0f} corrected memory errors in the last hour, "
                           f"over {limit:.0f}; a DIMM is likely failing"))
    return out


def verdicts(reading: Reading, limits: SensorLimits = LIMITS) -> list[Verdict]:
    """Each sensor with its value and health: fan-N (RPM), psu-N (W), inlet-temperature (°C),
    corrected-memory-errors (errors per hour)."""
    problems = {p.kind: p for p in assess(reading, limits)}
    out: list[Verdict] = []
    for i, rpm in enumerate(reading.fan_rpm):
        failed = fan_failed(rpm, limits)
        out.append(Verdict(f"fan-{i + 1}", SensorKind.Fan, rpm, SensorHealth.Critical if failed else SensorHealth.OK,
                           f"fan {i + 1} turns at {rpm:.0f} RPM, below {limits.fan_min_rpm:.0f}: it has failed"
                           if failed else None))
    for i, (ok, watts) in enumerate(zip(reading.psu_ok, reading.psu_watts, strict=True)):
        out.append(Verdict(f"psu-{i + 1}", SensorKind.PowerSupply, watts,
                           SensorHealth.OK if ok else SensorHealth.Critical,
                           None if ok else f"power supply {i + 1} has failed"))
    for name, kind, value in (("inlet-temperature", SensorKind.Temperature, reading.temperature_c),
                              ("corrected-memory-errors", SensorKind.CorrectedMemoryErrors,
                               reading.corrected_errors_per_hour)):
        problem = problems.get(kind)
        out.append(Verdict(name, kind, value, problem.severity if problem else SensorHealth.OK,
                           problem.message if problem else None))
    return out
