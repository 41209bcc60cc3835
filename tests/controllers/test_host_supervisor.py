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


async def test_a_supervisor_asks_its_agent_before_the_caches_first_listing_is_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No VM is placed or adopted until every agent has answered once, and at a start the VM cache's
    first listing takes seconds at 10,000 VMs: the agents' first answers must not wait for it."""
    import asyncio
    import logging

    from vmshift.controllers import indexes, runtime

    listing_in = asyncio.Event()  # never set: the caches' first listing is still coming
    polled: list[str] = []

    async def ready() -> None:
        await listing_in.wait()

    async def poll(self: HostSupervisor, spec: Any) -> None:
        polled.append(self.name)

    runtime.reset_runtime()
    monkeypatch.setattr(indexes, "ready", ready)
    monkeypatch.setattr(HostSupervisor, "poll", poll)
    task = asyncio.ensure_future(hostsupervisor.supervise_host(
        name="h1", spec={}, meta={}, status={}, body=kopf.Body({}), stopped=asyncio.Event(),  # type: ignore[arg-type]
        logger=logging.getLogger("test")))
    try:
        for _ in range(100):
            if polled:
                break
            await asyncio.sleep(0.01)
        assert polled == ["h1"], "the supervisor waited for the caches before its agent's first poll"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        runtime.reset_runtime()


async def test_every_agent_is_asked_once_as_soon_as_the_host_cache_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kopf starts the Hosts' supervisors one at a time (1,000 took over 10 s), and no VM is adopted
    until every agent has answered: the start's first round asks them all at once, without them; a
    Host whose agent settings are wrong is left to its supervisor, which says so."""
    import asyncio

    from vmshift.controllers import agents, indexes, runtime

    runtime.reset_runtime()
    names = ["h1", "h2", "bad"]
    for name in names:
        monkeypatch.setitem(hosts._seen, name, {"metadata": {"name": name}, "spec": {"agent": {"endpoint": name}}})
    monkeypatch.setattr(indexes, "host_names", lambda: list(names))
    monkeypatch.setattr(indexes.HOSTS, "synced", asyncio.Event())
    indexes.HOSTS.synced.set()
    polled: list[str] = []

    async def link(self: agents.AgentDirectory, host: str, spec: Any) -> Any:
        if host == "bad":
            raise agents.AgentConfigError("AgentTokenMissing", "no token")
        return host

    async def poll(self: agents.AgentDirectory, link: Any) -> bool:
        polled.append(link)
        return True

    monkeypatch.setattr(agents.AgentDirectory, "link", link)
    monkeypatch.setattr(agents.AgentDirectory, "poll", poll)
    task = asyncio.ensure_future(hostsupervisor.first_round())
    try:
        for _ in range(100):
            if len(polled) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(polled) == ["h1", "h2"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        runtime.reset_runtime()


async def test_a_supervisor_started_after_the_first_round_does_not_ask_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from vmshift.controllers import agents, runtime

    runtime.reset_runtime()
    rt = runtime.runtime()
    answered = agents.AgentLink(host="h1", endpoint="http://a", token="t", client=None,  # type: ignore[arg-type]
                                reported_at=time.monotonic(), reachable=True)
    monkeypatch.setattr(rt.agents, "_links", {"h1": answered})

    async def link(host: str, spec: Any) -> agents.AgentLink:
        return answered

    polled: list[str] = []

    async def poll(self: HostSupervisor, spec: Any) -> None:
        polled.append(self.name)

    monkeypatch.setattr(rt.agents, "link", link)
    monkeypatch.setattr(HostSupervisor, "poll", poll)
    supervisor = HostSupervisor("h1", kopf.Body({}), {})
    try:
        await supervisor.first_poll({})
        assert polled == []
        assert supervisor.link is answered and supervisor.was_reachable is True
        assert supervisor.next_poll == pytest.approx(answered.reported_at + rt.poll_interval)
    finally:
        runtime.reset_runtime()


async def test_a_host_deleted_while_the_first_round_asks_it_leaves_no_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """No supervisor will ever run for it, and a link left behind would be asked by every live look for
    a guest: an agent gone with its Host would make every VM's location unknown."""
    import asyncio

    from vmshift.controllers import agents, indexes, runtime

    runtime.reset_runtime()
    monkeypatch.setitem(hosts._seen, "gone", {"metadata": {"name": "gone"}, "spec": {"agent": {"endpoint": "x"}}})
    monkeypatch.setattr(indexes, "host_names", lambda: ["gone"])
    monkeypatch.setattr(indexes.HOSTS, "synced", asyncio.Event())
    indexes.HOSTS.synced.set()
    forgotten: list[str] = []

    async def link(self: agents.AgentDirectory, host: str, spec: Any) -> Any:
        return host

    async def poll(self: agents.AgentDirectory, link: Any) -> bool:
        hosts._seen.pop(link, None)  # the Host's DELETED event came while its agent was asked
        return True

    async def forget(self: agents.AgentDirectory, host: str) -> None:
        forgotten.append(host)

    monkeypatch.setattr(agents.AgentDirectory, "link", link)
    monkeypatch.setattr(agents.AgentDirectory, "poll", poll)
    monkeypatch.setattr(agents.AgentDirectory, "forget", forget)
    task = asyncio.ensure_future(hostsupervisor.first_round())
    try:
        for _ in range(100):
            if forgotten:
                break
            await asyncio.sleep(0.01)
        assert forgotten == ["gone"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        runtime.reset_runtime()


async def test_a_supervisor_asked_to_stop_during_its_first_poll_ends_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator exiting while an agent is slow to answer the first poll: the daemon ends on its
    stop flag, without waiting for the agent and without Kopf having to cancel it."""
    import asyncio
    import logging

    from vmshift.controllers import indexes, runtime

    class Stopped:
        def __init__(self) -> None:
            self.event = asyncio.Event()
            self.reason = None

        def __bool__(self) -> bool:
            return self.event.is_set()

        async def wait(self) -> None:
            await self.event.wait()

    async def slow(self: HostSupervisor, spec: Any) -> None:
        await asyncio.sleep(60)

    async def ready() -> None:
        return None

    runtime.reset_runtime()
    monkeypatch.setattr(HostSupervisor, "first_poll", slow)
    monkeypatch.setattr(indexes, "ready", ready)
    monkeypatch.setattr(hostsupervisor, "values", lambda index: [])
    stopped = Stopped()
    task = asyncio.ensure_future(hostsupervisor.supervise_host(
        name="h1", spec={}, meta={}, status={}, body=kopf.Body({}), stopped=stopped,  # type: ignore[arg-type]
        logger=logging.getLogger("test")))
    try:
        await asyncio.sleep(0.05)
        stopped.event.set()
        await asyncio.wait_for(task, 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        runtime.reset_runtime()
