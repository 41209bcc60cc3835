"""Alertmanager webhook v4 parsing (errors name the field) and alerts made from agents' sensors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from vmshift.hypervisor.protocol import FanStatus, PowerSupplyStatus, Sensors
from vmshift.remediation.alerts import (
    AlertPayloadError,
    SensorLimits,
    host_signals_from_sensors,
    parse_alertmanager_payload,
)


def payload(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": "4",
        "groupKey": '{}:{alertname="FanFailure"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "vmshift",
        "groupLabels": {"alertname": "FanFailure"},
        "commonLabels": {"alertname": "FanFailure", "severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "FanFailure", "host": "host-h3", "severity": "critical"},
                "annotations": {"summary": "2 fans failed"},
                "startsAt": "2025-01-02T03:04:05.123Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "c2a1f5f5b5e3a1d0",
            }
        ],
    }
    body.update(overrides)
    return body


def test_parses_a_standard_payload() -> None:
    parsed = parse_alertmanager_payload(json.dumps(payload()).encode())
    assert parsed.group_key.startswith("{}:") and parsed.receiver == "vmshift"
    [alert] = parsed.alerts
    assert alert.firing and alert.alertname == "FanFailure" and alert.host() == "host-h3"
    assert alert.starts_at == datetime(2025, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    assert alert.ends_at is None  # Go's zero time means "not set"
    assert alert.generator_url.endswith("/graph")


def test_unknown_fields_are_ignored() -> None:
    assert parse_alertmanager_payload(payload(newField=1)).version == "4"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "the body is not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        (payload(version="3"), "version: Input should be '4'"),
        (payload(status="burning"), "status: Input should be 'firing' or 'resolved' (got \"burning\")"),
        ({k: v for k, v in payload().items() if k != "groupKey"}, "groupKey: Field required"),
        (payload(alerts=[{**payload()["alerts"][0], "status": "bogus"}]), "alerts[0].status:"),
        (payload(alerts=[{**payload()["alerts"][0], "startsAt": "yesterday"}]), "alerts[0].startsAt:"),
        (payload(alerts=[{**payload()["alerts"][0], "labels": {"a": 1}}]), "alerts[0].labels.a:"),
        (payload(alerts=[payload()["alerts"][0]] * 3), "alerts: 3 alerts, more than the 2 accepted"),
    ],
)
def test_errors_name_the_bad_field(body: Any, expected: str) -> None:
    with pytest.raises(AlertPayloadError) as error:
        parse_alertmanager_payload(body, max_alerts=2)
    assert expected in str(error.value)
    assert str(error.value).startswith("invalid Alertmanager webhook payload: ")


def test_healthy_sensors_make_no_alerts() -> None:
    ok = Sensors(fans=[FanStatus(index=0, ok=True)], power_supplies=[PowerSupplyStatus(index=0, ok=True)],
                 temperature_c=40, corrected_memory_errors=0)
    assert host_signals_from_sensors("h1", ok) == []


def test_sensor_alerts_and_severities() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    reading = {
        "fans": [{"index": 0, "ok": False}, {"index": 1, "ok": False}, {"index": 2, "ok": True}],
        "powerSupplies": [{"index": 0, "ok": False}, {"index": 1, "ok": True}],
        "temperatureC": 85.0,
        "correctedMemoryErrors": 90_000,
        "correctedMemoryErrorsPerHour": 5000,
    }
    alerts = host_signals_from_sensors("host-h3", Sensors.model_validate(reading), now=now)
    by_name = {a.alertname: a for a in alerts}
    assert list(by_name) == ["FanFailure", "PowerSupplyFailure", "HighTemperature", "CorrectedMemoryErrors"]
    assert {n: a.labels["severity"] for n, a in by_name.items()} == {
        "FanFailure": "critical", "PowerSupplyFailure": "critical", "HighTemperature": "warning",
        "CorrectedMemoryErrors": "critical",
    }
    fan = by_name["FanFailure"]
    assert fan.labels["host"] == "host-h3" and fan.labels["signal"] == "Fan" and fan.starts_at == now
    assert "fan(s) 0, 1 failed (2 of 3; 0, 0 RPM, below 1500)" in fan.annotations["summary"]
    assert fan.fingerprint == host_signals_from_sensors("host-h3", Sensors.model_validate(reading))[0].fingerprint
    one_fan = {**reading, "fans": [{"index": 0, "ok": False}], "temperatureC": 95.0}
    names = {a.alertname: a.labels["severity"] for a in host_signals_from_sensors("h", Sensors.model_validate(one_fan))}
    assert names["FanFailure"] == "warning" and names["HighTemperature"] == "critical"
    strict = SensorLimits(corrected_errors_warning_per_hour=10_000, corrected_errors_critical_per_hour=20_000)
    alerts = host_signals_from_sensors("h", Sensors.model_validate(reading), limits=strict)
    assert "CorrectedMemoryErrors" not in {a.alertname for a in alerts}
