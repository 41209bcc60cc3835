"""A Host's sensors through the real API server: fans in RPM, power supplies in watts, corrected memory
errors per hour, judged by the same thresholds as the agent's health and the alerts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.hypervisor.protocol import SensorChange
from vmshift.sensors import LIMITS

pytestmark = pytest.mark.e2e

HOST = "h-small"


def sensors(fleet: Fleet) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in fleet.status("host", HOST).get("sensors") or []}


def set_sensors(fleet: Fleet, change: SensorChange) -> None:
    async def call() -> None:
        async with fleet.stack.agents[HOST].client() as client:
            await client.set_sensors(change)
    asyncio.run(call())


def test_host_sensors_are_reported_in_their_units(fleet: Fleet) -> None:
    readings = wait_for(lambda: sensors(fleet) or None, f"{HOST} to report its sensors", 30)
    fans = [s for s in readings.values() if s["kind"] == "Fan"]
    psus = [s for s in readings.values() if s["kind"] == "PowerSupply"]
    assert fans and all(s["value"] > LIMITS.fan_min_rpm and s["health"] == "OK" for s in fans), fans
    assert psus and all(s["value"] > 50 for s in psus), f"power supplies report watts: {psus}"
    assert readings["corrected-memory-errors"]["value"] == 0
    try:
        set_sensors(fleet, SensorChange(corrected_memory_errors=150))

        def judged() -> dict[str, Any] | None:
            ecc = sensors(fleet).get("corrected-memory-errors") or {}
            return ecc if ecc.get("value") == 150 and ecc.get("health") == "Warning" else None
        ecc = wait_for(judged, "150 corrected errors in the last hour, a Warning", 30,
                       describe=lambda: json.dumps(sensors(fleet))[:1500])
        assert "in the last hour" in ecc["message"], ecc
    finally:
        set_sensors(fleet, SensorChange(heal=True))
    wait_for(lambda: (sensors(fleet).get("corrected-memory-errors") or {}).get("health") == "OK",
             f"{HOST} healthy again", 30)
