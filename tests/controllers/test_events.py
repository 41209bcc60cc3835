"""Events are posted from Kopf's handlers and from the operator's own loops alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting

from vmshift.controllers import events

VM = {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachine",
      "metadata": {"name": "web", "namespace": "prod", "uid": "u-1"}}
HOST = {"apiVersion": "vmshift.io/v1alpha1", "kind": "Host", "metadata": {"name": "h1", "uid": "u-2"}}


def test_an_event_names_its_object_and_vmshift_and_a_hosts_goes_to_default() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = events.event_body(events.reference(VM), "Warning", "FailedScheduling", "no host fits", now, "pod-1")
    assert body["metadata"] == {"namespace": "prod", "generateName": "vmshift-event-"}
    assert body["involvedObject"] == {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachine",
                                      "name": "web", "namespace": "prod", "uid": "u-1"}
    assert (body["type"], body["reason"], body["message"]) == ("Warning", "FailedScheduling", "no host fits")
    assert body["source"] == {"component": "vmshift-operator"} and body["reportingInstance"] == "pod-1"
    assert body["lastTimestamp"] == "2026-01-01T00:00:00+00:00"
    host = events.event_body(events.reference(HOST), "Normal", "AgentReachable", "ok", now, "pod-1")
    assert host["metadata"]["namespace"] == host["involvedObject"]["namespace"] == "default"


def test_a_long_message_keeps_its_beginning_and_end() -> None:
    message = "A" * 600 + "B" * 600
    cut = events.shortened(message)
    assert len(cut) == events.MAX_MESSAGE and cut.startswith("A" * 500) and cut.endswith("B" * 500)
    assert events.shortened("short") == "short"


async def test_outside_kopfs_handling_the_event_is_posted_through_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resync loop runs outside Kopf's handling, where kopf.warn raises LookupError: the event
    is posted all the same, and the caller goes on."""
    posted: list[tuple[str, str, dict[str, Any]]] = []

    async def create(plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        posted.append((plural, namespace, body))
        return body

    monkeypatch.setattr(events.kubeapi, "create", create)
    events.warn(VM, reason="FailedScheduling", message="no host fits")
    await asyncio.gather(*events._posting)
    assert [(p, ns, b["reason"], b["involvedObject"]["name"]) for p, ns, b in posted] == [
        ("events", "prod", "FailedScheduling", "web")]


async def test_a_failed_post_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    async def refused(plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        raise events.ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(events.kubeapi, "create", refused)
    events.info(HOST, reason="AgentReachable", message="ok")
    await asyncio.gather(*events._posting)
    assert "event AgentReachable on h1 not posted" in caplog.text


async def test_inside_kopfs_handling_kopf_posts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async def create(plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("posted twice")

    monkeypatch.setattr(events.kubeapi, "create", create)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    events.info(VM, reason="Started", message="started web on h1")
    event = queue.get_nowait()
    assert (event.reason, event.ref["name"]) == ("Started", "web")
    assert not events._posting
