"""Operator start-up: Kopf settings and the registration of every controller module.

Importing this module registers all handlers with Kopf's default registry; ``configure`` is the
start-up handler. Nothing here decides anything about VMs or hosts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import kopf

from vmshift import metrics, timestamps
from vmshift.api.labels import FINALIZER, KOPF_PREFIX

# Importing the controller modules registers their handlers.
from vmshift.controllers import (  # noqa: F401
    drains,
    hosts,
    hostsupervisors,
    imports,
    indexes,
    kubeapi,
    migrations,
    policies,
    remediation,
    virtualmachines,
    vmevents,
)
from vmshift.controllers.events import REPORTING_COMPONENT, reporting_instance
from vmshift.controllers.runtime import runtime
from vmshift.controllers.supervisor import GC_PAUSES, Supervisor, watch_loop_lag
from vmshift.controllers.views import in_flight_summary

WORKER_LIMIT = 300


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    # Progress and diff-base live in annotations under our prefix, so status is ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = FINALIZER
    # Explicit events only (kopf.info/warn): handler log lines would flood the API server.
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    # Events say they come from vmshift (the "From" column of `kubectl describe`), one instance per pod.
    settings.posting.reporting_component = REPORTING_COMPONENT
    settings.posting.reporting_instance = reporting_instance()
    # At most this many objects are handled at once; the rest wait in the watch stream. Without a
    # limit, 10,000 migrations listed at start-up are 10,000 handlers in flight. (VMs are not Kopf's:
    # their events go from the VM informer to virtualmachines' work queue, see workqueue.py.) An
    # idle worker leaves its slot soon (Kopf's default of 5 s would cap a 10,000-VM start-up at
    # WORKER_LIMIT / 5 objects a second); a later event simply starts a new one.
    settings.queueing.worker_limit = WORKER_LIMIT
    settings.queueing.idle_timeout = 0.5
    # Kopf's own initial listing in pages, like the informers': 10,000 VMs in one response are a
    # few hundred megabytes of parsed bodies at once.
    settings.watching.chunk_size = 500
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.peering.name = os.environ.get("VMSHIFT_PEERING", "vmshift")
    settings.peering.mandatory = False
    kubeapi.configure()
    # The process's one in-memory state (agents, gate, expectations, wakers), made here and kept in
    # Kopf's memo; handlers reach the same object through runtime().
    rt = runtime()
    memo.runtime = rt
    rt.poll_interval = float(os.environ.get("VMSHIFT_AGENT_POLL_SECONDS", rt.poll_interval))
    rt.poll_backoff_cap = float(os.environ.get("VMSHIFT_AGENT_POLL_MAX_SECONDS", rt.poll_backoff_cap))
    rt.keep_finished_migrations = int(os.environ.get("VMSHIFT_KEEP_FINISHED_MIGRATIONS",
                                                     rt.keep_finished_migrations))
    background.start("vm-events", vmevents.start_event_workers().run)
    # The Hosts' supervisors start from the Host informer's events (hostsupervisors: not Kopf's).
    background.start("hosts-gone-while-down", hostsupervisors.start().collect)
    indexes.start()
    metrics.MIGRATIONS_IN_FLIGHT.set_function(lambda: _in_flight()[0])
    metrics.OLDEST_IN_FLIGHT.set_function(lambda: _in_flight()[1])
    resync_log = logging.getLogger("vmshift.resync")
    background.start("resync", lambda: virtualmachines.resync_forever(resync_log), logger=resync_log)
    lag_record = os.environ.get("VMSHIFT_LOOP_LAG_RECORD")
    GC_PAUSES.install()
    background.start("loop-lag", lambda: watch_loop_lag(record=Path(lag_record) if lag_record else None,
                                                        collector=GC_PAUSES))
    logger.info("vmshift operator configured")


_last_in_flight: tuple[int, float] = (0, 0.0)


def _in_flight() -> tuple[int, float]:
    """The in-flight gauges, computed from the migration index when Prometheus scrapes.

    The scrape runs in the metrics server's thread while the event loop may change the index: a
    read that races a change (the dict changed size) answers the previous scrape's numbers.
    """
    global _last_in_flight
    for _ in range(3):
        try:
            _last_in_flight = in_flight_summary(indexes.values(indexes.migration_index), timestamps.now())
            break
        except RuntimeError:
            continue
    return _last_in_flight


#: Fleet-wide loops the operator runs beside Kopf's handlers, each restarted when it fails.
background = Supervisor()


@kopf.on.cleanup()
async def close_agents(**_: Any) -> None:
    runtime().stopping = True
    await hostsupervisors.stop()  # they use the agent links and the API session closed below
    await background.stop()
    for informer in indexes.INFORMERS:
        informer.stop()
    await runtime().agents.close()
    await kubeapi.close()
