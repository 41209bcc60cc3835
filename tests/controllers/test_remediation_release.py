"""A person's release ends a quarantine for good: readings taken before the release do not start it again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest

from vmshift.controllers import kubeapi, remediation
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.remediation import HostRemediator
from vmshift.controllers.runtime import runtime
from vmshift.hypervisor.protocol import FanStatus, HostInfo, PowerSupplyStatus, Sensors
from vmshift.remediation.signals import policy_view

HOST = "release-h1"
FIXED = "example.com/fan-fixed"


def _sensors(fan_ok: bool) -> Sensors:
    return Sensors(fans=[FanStatus(index=0, ok=fan_ok), FanStatus(index=1, ok=True)],
                   power_supplies=[PowerSupplyStatus(index=0, ok=True)], temperature_c=40,
                   corrected_memory_errors=0)


async def test_a_release_is_not_undone_by_the_readings_taken_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    patched: list[dict[str, Any]] = []

    async def patch(plural: str, namespace: str | None, name: str, body: dict[str, Any]) -> None:
        patched.append(body)

    async def create(plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return body  # the events the passes post

    monkeypatch.setattr(kubeapi, "patch", patch)
    monkeypatch.setattr(kubeapi, "create", create)
    link = AgentLink(host=HOST, endpoint="http://127.0.0.1:1", token="t", client=cast(Any, None))
    link.reachable, link.reported_at = True, 100.0
    link.info = cast(HostInfo, SimpleNamespace(sensors=_sensors(fan_ok=False)))
    monkeypatch.setitem(runtime().agents._links, HOST, link)
    policy = policy_view("fan", {"match": {"alertname": "FanFailure"}, "action": "Quarantine",
                                 "debounceSeconds": 0, "cooldownSeconds": 0,
                                 "release": {"mode": "Annotation", "annotation": FIXED}})
    remediator = HostRemediator(HOST, kopf.Body({}), {})
    try:
        await remediator.run_pass({}, [policy])
        assert remediator.remediation is not None and remediator.remediation["action"] == "Quarantine"

        # The fan is replaced and the person releases the host before the operator polls the agent
        # again: the last report still shows the fan failed.
        await remediator.run_pass({FIXED: "fan-replaced"}, [policy])
        assert remediator.remediation is None
        assert remediator.last is not None and remediator.last["reason"] == "ReleasedByAnnotation"
        assert patched == [{"metadata": {"annotations": {FIXED: None}}}]  # the release is consumed
        # The next pass reads the same (old) report: nothing starts again.
        await remediator.run_pass({}, [policy])
        assert remediator.remediation is None
        # The next report shows the new fan: still nothing.
        link.info, link.reported_at = cast(HostInfo, SimpleNamespace(sensors=_sensors(fan_ok=True))), 110.0
        await remediator.run_pass({}, [policy])
        assert remediator.remediation is None

        # A later report that shows the fan failed starts the quarantine again.
        link.info, link.reported_at = cast(HostInfo, SimpleNamespace(sensors=_sensors(fan_ok=False))), 120.0
        await remediator.run_pass({}, [policy])
        assert remediator.remediation is not None and remediator.remediation["policy"] == "fan"
    finally:
        remediation.receiver.book.forget_host(HOST)
