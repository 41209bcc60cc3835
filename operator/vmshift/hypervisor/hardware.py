"""The simulated hardware of one agent's host: which fans and power supplies work, the inlet
temperature and the corrected memory errors. Data and arithmetic only, no I/O; the agent
(host.py) owns one and reports it through the thresholds of :mod:`vmshift.sensors`. The QEMU
driver's hosts keep these sensors simulated too: there is nothing real to read on a shared test machine.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vmshift.sensors import HOUR_SECONDS, NOMINAL_FAN_RPM, NORMAL_TEMPERATURE_C, errors_per_hour


@dataclass
class SensorState:
    """The simulated hardware: which fans and supplies work, the inlet temperature, and the corrected
    memory errors (the count since boot, and when they came, for the per-hour rate)."""

    fans_ok: list[bool]
    power_ok: list[bool]
    temperature_c: float = NORMAL_TEMPERATURE_C
    corrected_memory_errors: int = 0
    error_events: deque[tuple[float, int]] = field(default_factory=deque)
    extra: dict[str, str] = field(default_factory=dict)

    def fan_rpm(self, index: int) -> float:
        """A working fan spins faster as the inlet warms (2 % per °C over normal); a failed one stops."""
        if not self.fans_ok[index]:
            return 0.0
        boost = 1 + max(self.temperature_c - NORMAL_TEMPERATURE_C, 0.0) / 50
        return round(NOMINAL_FAN_RPM * boost + 60 * index)

    def per_hour(self, now: float) -> float:
        while self.error_events and self.error_events[0][0] <= now - HOUR_SECONDS:
            self.error_events.popleft()
        return errors_per_hour(self.error_events, now)
