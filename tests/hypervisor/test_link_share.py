"""A source agent shapes each migration to its share of the host's link (LinkShareSettings), again whenever
one starts or ends: the pure sharing rules, then two migrations through real agents."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from tests.hypervisor.helpers import finished, running_vm
from vmshift.api.reasons import MigrationPhase
from vmshift.hypervisor.client import begin_migration
from vmshift.hypervisor.launcher import AgentProcess
from vmshift.hypervisor.protocol import LinkShareSettings
from vmshift.hypervisor.ratelimit import TRICKLE_FLOOR, link_shares, link_weights, weighted_shares


def test_weights_count_only_differences_of_rank() -> None:
    assert link_weights([(5, 8.0), (6, 8.0)]) == pytest.approx([1.0, 1 / 8])
    assert link_weights([(100_000, 8.0), (100_002, 8.0)]) == pytest.approx([1.0, 1 / 64])
    assert link_weights([(3, 1.0), (9, 1.0)]) == [1.0, 1.0]
    assert link_weights([None, (4, 1000.0), (5, 1000.0)]) == pytest.approx([1.0, 1.0, 1e-3])


def test_shares_divide_the_link_by_weight_and_pass_on_what_a_cap_leaves() -> None:
    assert weighted_shares([(1.0, math.inf), (1 / 8, math.inf)], 900.0) == pytest.approx([800.0, 100.0])
    # the first is held to 300 by its target's link: the second takes the rest
    assert weighted_shares([(1.0, 300.0), (1 / 8, math.inf)], 900.0) == pytest.approx([300.0, 600.0])
    assert weighted_shares([(1.0, 100.0), (1.0, 200.0)], 900.0) == pytest.approx([100.0, 200.0])
    assert weighted_shares([(1.0, 50.0)], math.inf) == [50.0]
    assert weighted_shares([], 900.0) == []


def test_a_migration_kept_behind_on_a_slow_link_still_sends_often_enough_for_its_target() -> None:
    # 100 Mbit/s: a thousandth of it would send one 1 MiB frame every 84 s, past the target's 30 s limit
    first, ready = link_shares([(LinkShareSettings(rank=0, ratio=1000.0), 0.0),
                                (LinkShareSettings(rank=1, ratio=1000.0), 0.0)], 100e6 / 8)
    assert ready == TRICKLE_FLOOR and 2**20 / ready < 30 / 4
    assert first == pytest.approx(100e6 / 8 * 1000 / 1001)
    # a migration capped below the floor keeps its cap (0.5 Mbit/s)
    assert link_shares([(None, 0.5)], 100e6 / 8) == [pytest.approx(0.5e6 / 8)]


async def test_the_first_ranked_migration_takes_most_of_the_link_and_the_next_the_rest_when_it_ends(
    spawn: Callable[..., AgentProcess],
) -> None:
    a = spawn("share-h1", bandwidth_mbps=400.0)
    b = spawn("share-h2", bandwidth_mbps=10_000.0)
    async with a.client() as h1, b.client() as h2:
        await running_vm(h1, "first", memory_mib=64, prefill=64)
        await running_vm(h1, "second", memory_mib=64, prefill=64)
        await begin_migration(h1, h2, "first", "mig-first", link_share=LinkShareSettings(rank=0, ratio=8.0))
        await begin_migration(h1, h2, "second", "mig-second", link_share=LinkShareSettings(rank=1, ratio=8.0))
        await asyncio.sleep(0.6)
        first, second = await h1.get_migration("mig-first"), await h1.get_migration("mig-second")
        # 400 Mbit/s is 47.7 MiB/s: 8/9 of it for the first, 1/9 for the second
        assert first.transferred_mib > 4 * second.transferred_mib, (first.transferred_mib, second.transferred_mib)
        first = await finished(h1, "mig-first")
        second = await finished(h1, "mig-second")
        assert first.phase is second.phase is MigrationPhase.Succeeded, (first, second)
        # the second sped up to the whole link when the first ended: far sooner than at 1/9 of it
        assert second.duration_ms is not None and first.duration_ms is not None
        assert second.duration_ms < first.duration_ms + 64 / 47.7 * 1000 * 1.6, (first.duration_ms, second.duration_ms)
