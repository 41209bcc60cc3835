"""Where the VM controller's events come from: the VM informer, through a work queue (not Kopf).

Every change the VM informer applies is put on the process's :class:`WorkQueue` and handled by
:func:`virtualmachines.vm_event`, one object at a time, the newest event of each (see
``workqueue`` for why not a ``kopf.on.event`` handler). A handler call that fails defers the VM to
the resync, which looks at it again soon.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from vmshift import metrics
from vmshift.controllers import indexes, virtualmachines
from vmshift.controllers.runtime import runtime
from vmshift.controllers.vmstatus import DEFERRED_RESYNC_SECONDS
from vmshift.controllers.workqueue import WorkQueue

#: How many VMs' events are handled at once (each mostly waits on its agent and its status write;
#: the API client holds 32 connections, so more would wait for one).
EVENT_WORKERS = 32
log = logging.getLogger("vmshift.virtualmachines")


def start_event_workers() -> WorkQueue:
    """The process's queue of VM events, made before the informers start (so no event goes
    missing); the operator's supervisor runs it."""
    queue = WorkQueue(lambda kind, body: virtualmachines.vm_event(kind, body, log), workers=EVENT_WORKERS,
                      on_error=event_failed)
    runtime().vm_events = queue
    return queue


@indexes.VMS.listen
def enqueue(kind: str, body: Mapping[str, Any]) -> None:
    queue = runtime().vm_events
    if queue is not None:
        queue.put(kind, body)


def event_failed(kind: str, body: Mapping[str, Any], exc: Exception) -> None:
    """A handler call failed (an API error, a bug): the resync looks at the VM again soon."""
    meta = body.get("metadata") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    runtime().deferred.add(key)
    metrics.RECONCILE_ERRORS.labels(kind="VirtualMachine").inc()
    log.warning("handling the %s event of %s failed (%r); it is looked at again within %.0f s", kind, key, exc,
                DEFERRED_RESYNC_SECONDS, exc_info=not isinstance(exc, kopf.TemporaryError))
