"""A Host's supervisor writes one status patch with what its passes decided; each pass reads the others'."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from vmshift.controllers import hosts, hostsupervisor, kubeapi
from vmshift.controllers.hostsupervisor import HostSupervisor

QUARANTINE = {"policy": "psu", "action": "EvacuateCritical", "since": "2026-01-01T00:00:00Z", "alerts": []}
DRAIN = {"state": "Running", "trigger": "Remediation psu", "total": 2, "moved": 0, "inFlight": 1, "failed": 0,
         "blocked": []}


def test_the_drain_pass_reads_the_remediation_as_decided_not_as_stored() -> None:
    supervisor = HostSupervisor("h1", kopf.Body({}), {"phase": "Ready"})
    supervisor.remediator.remediation = dict(QUARANTINE)  # decided this pass, not written yet
    stored = supervisor.stored({"phase": "Ready"})
    assert stored["remediation"] == QUARANTINE
    assert stored["phase"] == "Ready"


async def test_one_patch_carries_host_drain_and_remediation_then_nothing_until_they_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[dict[str, Any]] = []

    async def patch_status(plural: str, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        written.append(kubeapi.checked_status(plural, status))  # the model must accept it too

    monkeypatch.setattr(hostsupervisor.kubeapi, "patch_status", patch_status)
    supervisor = HostSupervisor("h1", kopf.Body({}), {})
    supervisor.remediator.staged["remediation"] = dict(QUARANTINE)
    supervisor.evacuator.drain = dict(DRAIN)
    host_part = {"phase": "Draining", "observedGeneration": 1, "migrations": {"inbound": 0, "outbound": 1}}
    await supervisor.write(host_part)
    assert written == [{**host_part, "drain": DRAIN, "remediation": QUARANTINE}]
    await supervisor.write(dict(host_part))
    assert len(written) == 1  # nothing changed: nothing written
    supervisor.evacuator.drain = {**DRAIN, "moved": 1, "inFlight": 0}
    await supervisor.write(dict(host_part))
    assert written[-1] == {"drain": {**DRAIN, "moved": 1, "inFlight": 0}}


async def test_a_failed_write_is_written_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    async def failing(plural: str, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        calls.append(status)
        raise kubeapi.ApiException(status=500, reason="boom")

    monkeypatch.setattr(hostsupervisor.kubeapi, "patch_status", failing)
    supervisor = HostSupervisor("h1", kopf.Body({}), {})
    supervisor.remediator.staged["remediation"] = dict(QUARANTINE)
    with pytest.raises(kubeapi.ApiException):
        await supervisor.write({"phase": "Cordoned"})
    assert supervisor.patch({"phase": "Cordoned"}) == {"phase": "Cordoned", "remediation": QUARANTINE}


def test_the_passes_read_the_informers_host_when_kopfs_copy_lags_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The informer's event wakes the supervisor; Kopf's copy may not have it yet. Maintenance just
    turned off, or a release annotation just set, must be what the passes see."""
    kopf_spec, kopf_meta = {"maintenance": True}, {"resourceVersion": "100", "annotations": {}}
    newer = {"metadata": {"resourceVersion": "101", "annotations": {"example.com/fan-fixed": "yes"}},
             "spec": {"maintenance": False}}
    monkeypatch.setitem(hosts._seen, "h1", newer)
    spec, meta = hostsupervisor.newest_of("h1", kopf_spec, kopf_meta)
    assert spec == {"maintenance": False} and meta["annotations"] == {"example.com/fan-fixed": "yes"}
    monkeypatch.setitem(hosts._seen, "h1", {**newer, "metadata": {"resourceVersion": "99"}})
    assert hostsupervisor.newest_of("h1", kopf_spec, kopf_meta) == (kopf_spec, kopf_meta)
    monkeypatch.setitem(hosts._seen, "h1", {**newer, "metadata": {"resourceVersion": "opaque"}})
    assert hostsupervisor.newest_of("h1", kopf_spec, kopf_meta) == (kopf_spec, kopf_meta)
    assert hostsupervisor.newest_of("unseen", kopf_spec, kopf_meta) == (kopf_spec, kopf_meta)
