"""Events on the objects the operator handles, posted alike from Kopf's handlers and from its own loops.

Kopf posts an event only from inside its handling of an object: its poster's queue is a context
variable set there. The operator's background loops (the fleet resync, which places and starts VMs
too) run outside it, where ``kopf.info`` raises ``LookupError`` and the pass that wanted to report
something would end before it wrote the status. Outside Kopf's handling an event is therefore
posted through the API directly, in a task of its own, so that it neither delays nor fails the pass
that reports it; a failed post is logged, as Kopf logs its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from vmshift.controllers import kubeapi

#: The component named in every event the operator posts (source.component, reportingComponent).
REPORTING_COMPONENT = "vmshift-operator"
#: Longest message an event carries (the API server refuses longer ones); the middle is cut.
MAX_MESSAGE = 1024
CUT = " … "

log = logging.getLogger("vmshift.events")
#: Posts under way outside Kopf's handling (held so that the tasks are not collected early).
_posting: set[asyncio.Task[None]] = set()


def reporting_instance() -> str:
    """Which operator process posted: the pod's name in a cluster."""
    return os.environ.get("HOSTNAME") or REPORTING_COMPONENT


def shortened(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut in the middle to ``limit`` characters, beginning and end kept (pure)."""
    if len(message) <= limit:
        return message
    head = (limit - len(CUT)) // 2
    return message[:head] + CUT + message[-(limit - len(CUT) - head):]


def reference(obj: Mapping[str, Any]) -> dict[str, str]:
    """The ``involvedObject`` of an object's event (pure)."""
    meta = obj.get("metadata") or {}
    ref = {"apiVersion": str(obj.get("apiVersion") or ""), "kind": str(obj.get("kind") or ""),
           "name": str(meta.get("name") or ""), "uid": str(meta.get("uid") or "")}
    if meta.get("namespace"):
        ref["namespace"] = str(meta["namespace"])
    return {k: v for k, v in ref.items() if v}


def event_body(ref: Mapping[str, str], type_: str, reason: str, message: str, now: datetime,
               instance: str) -> dict[str, Any]:
    """A core/v1 Event as Kopf would post it (pure); a cluster-scoped object's goes to ``default``."""
    namespace = ref.get("namespace") or "default"
    stamp = now.isoformat()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"namespace": namespace, "generateName": "vmshift-event-"},
        "type": type_, "reason": reason, "message": shortened(message), "action": reason,
        "reportingComponent": REPORTING_COMPONENT, "reportingInstance": instance,
        "source": {"component": REPORTING_COMPONENT},
        "involvedObject": {**ref, "namespace": namespace},
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": stamp,
    }


async def _post(body: dict[str, Any]) -> None:
    try:
        await kubeapi.create("events", body["metadata"]["namespace"], body)
    except (ApiException, OSError) as exc:
        log.warning("event %s on %s not posted: %s", body["reason"], body["involvedObject"].get("name"), exc)


def post(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post an event on ``obj`` (a Kopf body or a raw object with apiVersion, kind and metadata)."""
    try:
        kopf.event(obj, type=type_, reason=reason, message=message)
    except LookupError:  # outside Kopf's handling of an object: post it ourselves
        body = event_body(reference(obj), type_, reason, message, datetime.now(UTC), reporting_instance())
        task = asyncio.get_running_loop().create_task(_post(body), name=f"event-{reason}")
        _posting.add(task)
        task.add_done_callback(_posting.discard)


def info(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    post(obj, "Normal", reason, message)


def warn(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    post(obj, "Warning", reason, message)
