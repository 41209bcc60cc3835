"""The operator's /metrics, scraped in Prometheus' text format the way Prometheus does, after a real
migration: the operations metrics are there with real values."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift import __version__

pytestmark = pytest.mark.e2e


def scrape(fleet: Fleet) -> dict[str, list[tuple[dict[str, str], float]]]:
    request = urllib.request.Request(f"http://127.0.0.1:{fleet.stack.metrics_port}/metrics",
                                     headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain"), response.headers["Content-Type"]
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def test_a_live_migration_shows_in_the_scraped_metrics(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "scraped", host="h-icelake-1", compatibility=True, memory=512, dirty=5)
    before = scrape(fleet)
    sent_before = sum(v for labels, v in before.get("vmshift_migration_transferred_bytes_total", [])
                      if labels.get("mode") == "Live")
    fleet.apply(fleet.migration(ns, "scraped-move", "scraped", "h-icelake-2"))
    status = fleet.wait_phase("vsmig", "scraped-move", ns, {"Succeeded", "Failed", "Cancelled"}, timeout=120)
    assert status["phase"] == "Succeeded", status
    after = scrape(fleet)
    assert after["vmshift_build_info"] == [({"version": __version__, "python_version": after["vmshift_build_info"][0][0]
                                             ["python_version"]}, 1.0)]
    sent = sum(v for labels, v in after["vmshift_migration_transferred_bytes_total"] if labels.get("mode") == "Live")
    assert sent - sent_before >= 512 * 1024 * 1024 * 0.9, \
        f"a 512 MiB guest moved live, but the counter grew by {sent - sent_before} bytes"
    assert after["vmshift_drains_blocked"] == [({}, 0.0)]

    # A move over h-slow's 1 Gbit/s link lasts seconds: the in-flight gauges see it while it runs.
    fleet.apply(fleet.migration(ns, "scraped-slow", "scraped", "h-slow"))

    def in_flight() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        now = scrape(fleet)
        return now if now["vmshift_migrations_in_flight"][0][1] >= 1 else None
    during = wait_for(in_flight, "vmshift_migrations_in_flight >= 1 while scraped-slow runs", 60, interval=0.1,
                      describe=lambda: str(fleet.status("vsmig", "scraped-slow", ns)))
    assert during["vmshift_migration_oldest_in_flight_seconds"][0][1] >= 0
    status = fleet.wait_phase("vsmig", "scraped-slow", ns, {"Succeeded", "Failed", "Cancelled"}, timeout=120)
    assert status["phase"] == "Succeeded", status
    wait_for(lambda: scrape(fleet)["vmshift_migrations_in_flight"][0][1] == 0,
             "vmshift_migrations_in_flight back to 0", 30)
