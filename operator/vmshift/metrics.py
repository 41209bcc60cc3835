"""Prometheus metrics of the operator: one registry, every metric defined here and nowhere else.

No I/O until ``serve`` starts the HTTP endpoint.
"""

from __future__ import annotations

import platform

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from vmshift import __version__

MIGRATIONS = Counter(
    "vmshift_migrations_total", "Migrations that finished, by mode used and result.", ["mode", "result"]
)
MIGRATION_REFUSALS = Counter(
    "vmshift_migration_refusals_total", "Migrations refused before any transfer, by failure reason.", ["reason"]
)
DOWNTIME = Histogram(
    "vmshift_migration_downtime_seconds", "Switchover downtime of finished migrations.", ["mode"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 1, 3, 10, 30),
)
DURATION = Histogram(
    "vmshift_migration_duration_seconds", "Total duration of finished migrations.", ["mode"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
EVENT_LOOP_LAG = Histogram(
    "vmshift_event_loop_lag_seconds",
    "How late the operator's event loop ran a timer it had set (sampled every 10 ms): every handler, watch and "
    "poll waits that long.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)
GC_PAUSES = Histogram(
    "vmshift_gc_pause_seconds",
    "How long each pass of Python's garbage collector held the operator, by generation (2: a full collection).",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
GC_FREEZES = Counter(
    "vmshift_gc_freezes_total",
    "Times the operator moved what survived a long full collection out of the garbage collector's walks "
    "(gc.freeze), so the next full collections stay short.",
)
RECONCILE_ERRORS = Counter(
    "vmshift_reconcile_errors_total", "Reconcile passes that ended in an error, by kind.", ["kind"]
)
HOSTS = Gauge("vmshift_hosts", "Hosts by phase.", ["phase"])
VMS_IN_SYNC = Gauge(
    "vmshift_virtualmachines_in_sync",
    "VirtualMachines whose last reconcile found them as their spec asks (nothing to write).",
)
API_REQUESTS = Counter(
    "vmshift_api_requests_total", "Direct Kubernetes API calls the operator made (watches excluded).",
    ["verb", "resource"],
)


DRAINS = Counter(
    "vmshift_drains_total", "Drains (maintenance or remediation) by what happened: Started, Completed, Blocked, "
    "Cancelled.", ["result"],
)
REMEDIATIONS = Counter(
    "vmshift_remediation_decisions_total", "RemediationPolicy decisions acted on (Start, End), by policy and action.",
    ["policy", "action", "decision"],
)
HOST_ALERTS = Gauge(
    "vmshift_host_alerts", "Health alerts firing on hosts (from agents' sensors and Alertmanager), by labels.",
    ["host", "alertname", "severity", "source"],
)
WEBHOOK_REQUESTS = Counter(
    "vmshift_webhook_requests_total", "Calls to the Alertmanager webhook receiver, by HTTP status code.", ["code"],
)
MIGRATIONS_IN_FLIGHT = Gauge(
    "vmshift_migrations_in_flight", "Migrations under way now (Validating, Transferring or SwitchingOver).",
)
OLDEST_IN_FLIGHT = Gauge(
    "vmshift_migration_oldest_in_flight_seconds",
    "Age of the oldest migration under way (since its object was created); 0 when none is.",
)
TRANSFERRED_BYTES = Counter(
    "vmshift_migration_transferred_bytes_total",
    "Guest memory sent by finished migrations (any result), by mode used; counted when a migration ends.",
    ["mode"],
)
DRAINS_BLOCKED = Gauge(
    "vmshift_drains_blocked", "Hosts whose drain is Blocked now: VMs that must leave cannot move.",
)
BUILD_INFO = Gauge(
    "vmshift_build_info", "Always 1; the labels say which vmshift and Python run the operator.",
    ["version", "python_version"],
)
BUILD_INFO.labels(version=__version__, python_version=platform.python_version()).set(1)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Expose /metrics on ``addr:port`` from a background thread."""
    start_http_server(port, addr=addr)
