"""Alertmanager's webhook payload (v4) and alerts from agents' sensors. Pure: no I/O.

The webhook handler hands the request body to :func:`parse_alertmanager_payload` (authentication and
the size limit are the HTTP layer's job); the host controller turns an agent's sensor readings into
the same :class:`Alert` shape with :func:`host_signals_from_sensors`, so RemediationPolicies match
both the same way (by labels).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vmshift.api.host import HardwareAlert
from vmshift.sensors import LIMITS, Reading, SensorLimits, assess

#: Alertnames of the alerts made from sensors (defined once, in the API: HardwareAlert), and the
#: ``signal`` label each carries (the sensor kind, which RemediationPolicy correlation may name
#: instead of an alertname).
FAN_FAILURE = HardwareAlert.FanFailure.value
POWER_SUPPLY_FAILURE = HardwareAlert.PowerSupplyFailure.value
HIGH_TEMPERATURE = HardwareAlert.HighTemperature.value
CORRECTED_MEMORY_ERRORS = HardwareAlert.CorrectedMemoryErrors.value
SIGNAL_OF = {alert.value: alert.sensor.value for alert in HardwareAlert}
#: Alertmanager's "not set" time (Go's zero time.Time).
_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


class AlertPayloadError(ValueError):
    """The webhook body is not a valid Alertmanager v4 payload; the message names the bad field."""


class _Model(BaseModel):
    # Alertmanager may add fields in later releases: ignore them rather than refuse the alert.
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class Alert(_Model):
    """One alert of the payload (or one made from sensors)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = ""

    @field_validator("ends_at")
    @classmethod
    def _zero_is_unset(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is not None and value <= _ZERO_TIME:
            return None
        return value

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    def host(self, label: str = "host") -> str | None:
        """The Host the alert names, from ``label`` (default ``host``), or None."""
        value = self.labels.get(label)
        return value or None


class AlertmanagerPayload(_Model):
    """The body Alertmanager POSTs to a webhook receiver (``version: "4"``)."""

    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[Alert]


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(body)"


def parse_alertmanager_payload(data: bytes | str | Mapping[str, Any], *, max_alerts: int = 10_000
                               ) -> AlertmanagerPayload:
    """Parse and check a webhook body; :class:`AlertPayloadError` names the first bad field, e.g.
    ``invalid Alertmanager webhook payload: alerts[0].status: Input should be 'firing' or 'resolved'
    (got "bogus")``. More than ``max_alerts`` alerts in one call are refused.
    """
    if isinstance(data, bytes | str):
        try:
            decoded = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AlertPayloadError(f"invalid Alertmanager webhook payload: the body is not JSON ({e})") from None
    else:
        decoded = dict(data)
    if not isinstance(decoded, dict):
        raise AlertPayloadError(
            f"invalid Alertmanager webhook payload: expected a JSON object, got {type(decoded).__name__}"
        )
    alerts = decoded.get("alerts")
    if isinstance(alerts, list) and len(alerts) > max_alerts:
        raise AlertPayloadError(
            f"invalid Alertmanager webhook payload: alerts: {len(alerts)} alerts, more than the {max_alerts} "
            f"accepted in one call"
        )
    try:
        return AlertmanagerPayload.model_validate(decoded)
    except ValidationError as e:
        first = e.errors()[0]
        got = first.get("input")
        shown = "" if first["type"] == "missing" else f" (got {json.dumps(got, default=str)[:80]})"
        problems = f"; and {e.error_count() - 1} more problem(s)" if e.error_count() > 1 else ""
        raise AlertPayloadError(
            f"invalid Alertmanager webhook payload: {_field_path(first['loc'])}: {first['msg']}{shown}{problems}"
        ) from None


# --- sensors -------------------------------------------------------------------------------------


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable id of an alert's label set (like Alertmanager's: same labels, same fingerprint)."""
    text = "\x00".join(f"{k}\x00{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _alert(host: str, alertname: str, severity: str, summary: str, now: datetime) -> Alert:
    labels = {"alertname": alertname, "host": host, "severity": severity, "signal": SIGNAL_OF[alertname],
              "source": "agent"}
    return Alert(
        status="firing",
        labels=labels,
        annotations={"summary": summary},
        starts_at=now,
        fingerprint=fingerprint(labels),
    )


class SensorReadings(Protocol):
    """What alerts are made from: a host's sensors that can say what they read. The agent's
    ``Sensors`` (its API model) is one; the decision depends on no agent code."""

    def reading(self) -> Reading: ...


def host_signals_from_sensors(
    host: str,
    sensors: SensorReadings,
    *,
    limits: SensorLimits | None = None,
    now: datetime | None = None,
) -> list[Alert]:
    """The firing alerts an agent's sensor readings amount to (empty when the hardware is fine).

    The verdict is :func:`vmshift.sensors.assess` (the thresholds the agent's own health uses):
    FanFailure (warning for one failed fan, critical from ``fans_critical``), PowerSupplyFailure
    (critical: redundancy is gone), HighTemperature and CorrectedMemoryErrors (per hour; warning over
    the warning limit, critical over the critical one). Labels: alertname, host, severity, signal
    (the sensor kind) and source=agent. ``now`` is the alerts' startsAt (the caller keeps first-seen
    times); it defaults to the Unix epoch so the function stays free of clocks.
    """
    when = now or datetime.fromtimestamp(0, UTC)
    return [_alert(host, problem.alert.value, problem.severity.value.lower(), f"{host}: {problem.message}.", when)
            for problem in assess(sensors.reading(), limits or LIMITS)]
