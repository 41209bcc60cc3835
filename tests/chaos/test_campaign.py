"""A short fault-injection campaign (every fault kind three times) on the real product; 0 violations.

The full campaign is ``bench/chaos.py --trials 500``; this one runs in ``make test``. Seeds start at
``VMSHIFT_CHAOS_SEED`` (default 1000), so a failure names seeds that replay with
``.venv/bin/python bench/chaos.py --trials 1 --seed SEED``.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.harness import KINDS, Campaign, run_trials, table, violations_report

pytestmark = pytest.mark.e2e

#: Every fault kind three times (``VMSHIFT_CHAOS_TRIALS`` to change; a multiple of 10 covers each kind).
TRIALS = int(os.environ.get("VMSHIFT_CHAOS_TRIALS", str(3 * len(KINDS))))


@pytest.mark.timeout(1800)
def test_short_campaign_keeps_every_vm_on_exactly_one_host(campaign: Campaign) -> None:
    first = int(os.environ.get("VMSHIFT_CHAOS_SEED", "1000"))
    results = run_trials(campaign, range(first, first + TRIALS), lanes=int(os.environ.get("VMSHIFT_CHAOS_LANES", "3")))
    assert len(results) == TRIALS
    assert {r.plan.kind for r in results} == set(KINDS)
    report = violations_report(results)
    print(table(results))
    assert not report, f"{table(results)}\n\nviolations:\n{report}"
