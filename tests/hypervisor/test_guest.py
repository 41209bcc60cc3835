"""The guest model on its own: sparse versioned pages, content checks, the digest, the workload."""

from __future__ import annotations

import random
import tracemalloc
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.hypervisor.guest import Guest, GuestMemory
from vmshift.hypervisor.migration.wire import pages_prefix, parse_pages
from vmshift.hypervisor.pages import (
    BLOCK_PAGES,
    PAGE_SIZE,
    PAGES_PER_MIB,
    CorruptPage,
    page_content,
    page_offset,
    page_seed,
    stretches,
)
from vmshift.hypervisor.protocol import VmDefinition, VmState, WorkloadSpec
from vmshift.precopy.model import distinct_dirtied_mib


def transfer(source: GuestMemory, target: GuestMemory, pages: list[int] | range) -> None:
    """Encode pages on one side and apply the frame on the other, as the stream does."""
    for lo in range(0, len(pages), 256):
        chunk = pages[lo:lo + 256]
        frame = source.encode(chunk, pages_prefix(0, len(chunk)))
        _round, idx, versions, payload = parse_pages(memoryview(frame)[8:])
        target.apply(idx, versions, payload)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_page_contents_are_derived_from_vm_page_and_version() -> None:
    a = GuestMemory("vm-a", 4)
    b = GuestMemory("vm-b", 4)
    assert page_content(a.key, 3, 0) == bytes(PAGE_SIZE), "a never-written page is a zero page"
    assert page_content(a.key, 3, 1) == page_content(a.key, 3, 1)
    assert page_content(a.key, 3, 1) != page_content(a.key, 3, 2), "a new version has new bytes"
    assert page_content(a.key, 3, 1) != page_content(a.key, 4, 1)
    assert page_content(a.key, 3, 1) != page_content(b.key, 3, 1), "two VMs' pages differ"
    assert len(page_content(a.key, 3, 7)) == PAGE_SIZE


def test_encoded_frame_carries_exactly_the_derived_bytes() -> None:
    memory = GuestMemory("vm", 4)
    memory.write_pages([1, 5, 5, 9])
    frame = memory.encode([1, 5, 9, 10], pages_prefix(0, 4))
    _round, idx, versions, payload = parse_pages(memoryview(frame)[8:])
    assert list(idx) == [1, 5, 9, 10]
    assert list(versions) == [1, 2, 1, 0]
    assert bytes(payload) == b"".join(page_content(memory.key, p, v) for p, v in zip(idx, versions, strict=True))


def test_digest_is_incremental_and_equals_a_full_recount() -> None:
    memory = GuestMemory("vm", 16)
    rng = random.Random(7)
    assert memory.digest == 0
    memory.write_random(20_000, rng, hot_pages=256, hot_fraction=0.9)
    assert memory.digest == memory.full_digest()
    memory.write_pages(range(memory.pages))
    assert memory.digest == memory.full_digest()


def test_a_full_copy_gives_the_same_digest_and_corrupt_pages_are_refused() -> None:
    source = GuestMemory("vm", 8)
    source.prefill(source.pages // 2)
    source.write_random(5_000, random.Random(1), hot_pages=64, hot_fraction=0.95)
    target = GuestMemory("vm", 8)
    transfer(source, target, range(source.pages))
    assert target.digest == source.digest == target.full_digest()

    source.write_pages([3, 300])
    frame = bytearray(source.encode([3, 300], pages_prefix(0, 2)))
    frame[-100] ^= 0xFF  # one flipped bit in the second page
    _round, idx, versions, payload = parse_pages(memoryview(frame)[8:])
    before = target.digest
    with pytest.raises(CorruptPage, match="page 300"):
        target.apply(idx, versions, payload)
    assert target.digest == before and target.version(3) != source.version(3), "a refused frame changes nothing"


@pytest.mark.parametrize("bad", [0, 77, 130, 255])  # 77: page 333, a zero page
def test_a_corrupt_page_inside_a_run_is_named_and_the_run_changes_nothing(bad: int) -> None:
    """A run of consecutive pages (round 0's frames) mixing written and never-written pages: one changed
    byte anywhere in one page, zero page or not, refuses the frame and names that page."""
    source = GuestMemory("vm-run", 2)
    source.write_pages([p for p in range(256, 512) if p % 3])  # page 258, 261, ... stay zero pages
    target = GuestMemory("vm-run", 2)
    frame = bytearray(source.encode(range(256, 512), pages_prefix(0, 256)))
    header = 8 + 8 + 8 * 256
    frame[header + bad * PAGE_SIZE + 1234] ^= 0x01
    _round, idx, versions, payload = parse_pages(memoryview(frame)[8:])
    with pytest.raises(CorruptPage, match=f"page {256 + bad} does not hold the bytes of version "
                                          f"{source.version(256 + bad)}"):
        target.apply(idx, versions, payload)
    assert target.digest == 0 and all(target.version(p) == 0 for p in range(target.pages))
    frame[header + bad * PAGE_SIZE + 1234] ^= 0x01
    target.apply(*parse_pages(memoryview(frame)[8:])[1:])
    assert target.digest == source.digest == target.full_digest()


def test_a_blocks_pages_at_one_version_lie_back_to_back_and_other_blocks_elsewhere() -> None:
    """What lets a run of pages cross as one piece and be checked with one comparison: within an aligned
    block of BLOCK_PAGES pages, page p + 1 at version v starts where page p at v ends; the next block, or
    another version, starts somewhere else."""
    key = GuestMemory("vm-blocks", 1).key
    for version in (1, 2, 9):
        starts = [page_offset(key, p, version) for p in range(BLOCK_PAGES, 2 * BLOCK_PAGES)]
        assert starts == [starts[0] + i * PAGE_SIZE for i in range(BLOCK_PAGES)]
        assert page_offset(key, 2 * BLOCK_PAGES, version) != starts[-1] + PAGE_SIZE
    assert page_offset(key, BLOCK_PAGES, 1) != page_offset(key, BLOCK_PAGES, 2)
    assert {page_content(key, p, 0) for p in range(BLOCK_PAGES)} == {bytes(PAGE_SIZE)}
    contents = {page_content(key, p, 1) for p in range(4 * BLOCK_PAGES)}
    assert len(contents) == 4 * BLOCK_PAGES, "every page of a run holds its own bytes"


def test_stretches_cut_at_version_changes_and_block_ends() -> None:
    assert stretches(60, array("I", [1] * 10)) == [(0, 4, 1), (4, 6, 1)]
    assert stretches(0, array("I", [1, 1, 0, 0, 2])) == [(0, 2, 1), (2, 2, 0), (4, 1, 2)]
    assert stretches(5, array("I")) == []
    long = stretches(0, array("I", [3] * 1024))
    assert len(long) == 1024 // BLOCK_PAGES and all(length == BLOCK_PAGES for _at, length, _v in long)


@settings(max_examples=80, deadline=None)
@given(first=st.integers(0, 8 * PAGES_PER_MIB - 1100), versions=st.lists(st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
                                                                          min_size=1, max_size=1100))
def test_a_runs_seed_sum_is_the_sum_of_its_page_seeds(first: int, versions: list[int]) -> None:
    memory = GuestMemory("vm-sum", 8)
    run = array("I", versions)
    assert memory.seed_sum(first, run, stretches(first, run)) == sum(
        page_seed(memory.key, first + i, v) for i, v in enumerate(versions))


@pytest.mark.parametrize("pages", [range(0, 1024), range(40, 300), [7, 8, 9, 10, 11]],
                         ids=["round0-bulk-frame", "unaligned-run", "dirty-run"])
@pytest.mark.parametrize("where", ["first", "block-start", "block-end", "last"])
def test_a_run_is_sent_as_stretches_and_a_corrupt_page_in_any_of_them_is_named(
        pages: range | list[int], where: str) -> None:
    """Consecutive pages (a bulk frame of round 0, a run not aligned to blocks, consecutive dirty pages) go out
    as one view per stretch and are checked one stretch at a time; one changed byte in any page, at a block's
    first or last page too, refuses the frame, names that page, and changes nothing."""
    source = GuestMemory("vm-stretch", 8)
    source.prefill(source.pages)
    source.write_pages(range(100, 140))  # a second version inside the runs
    target = GuestMemory("vm-stretch", 8)
    prefix = pages_prefix(0, len(pages))
    parts = source.frame_parts(pages, prefix)
    assert len(parts) - 1 <= len(pages) // BLOCK_PAGES + 3, f"{len(pages)} consecutive pages in {len(parts)} parts"
    frame = bytearray(b"".join(parts))
    page_list = list(pages)
    bad = {"first": 0, "block-start": next((i for i, p in enumerate(page_list) if p % BLOCK_PAGES == 0 and i), 1),
           "block-end": next((i for i, p in enumerate(page_list) if p % BLOCK_PAGES == BLOCK_PAGES - 1), 2),
           "last": len(page_list) - 1}[where]
    at = len(prefix) + 8 * len(page_list) + bad * PAGE_SIZE + (PAGE_SIZE - 1 if where == "last" else 17)
    frame[at] ^= 0x40
    _round, idx, versions, payload = parse_pages(memoryview(frame)[8:])
    with pytest.raises(CorruptPage, match=f"page {page_list[bad]} does not hold the bytes of version "
                                          f"{source.version(page_list[bad])}$"):
        target.apply(idx, versions, payload)
    assert target.digest == 0 and not any(target.version(p) for p in page_list), "a refused frame changes nothing"
    frame[at] ^= 0x40
    target.apply(*parse_pages(memoryview(frame)[8:])[1:])
    assert all(target.version(p) == source.version(p) for p in page_list)
    assert target.digest == target.full_digest()


def test_a_run_over_pages_already_there_replaces_them_in_the_digest() -> None:
    """Round 0 then a run of re-written consecutive pages (a later round): the digest takes the old versions out."""
    source = GuestMemory("vm-again", 4)
    source.prefill(source.pages)
    target = GuestMemory("vm-again", 4)
    transfer(source, target, range(source.pages))
    source.take_dirty()
    source.write_pages(range(200, 520))
    source.write_pages(range(300, 310))
    transfer(source, target, sorted(source.take_dirty()))
    assert target.digest == source.digest == source.full_digest()


def test_apply_refuses_pages_beyond_the_guest() -> None:
    memory = GuestMemory("vm", 1)
    with pytest.raises(CorruptPage, match="beyond"):
        memory.apply(array("I", [PAGES_PER_MIB]), array("I", [1]), page_content(memory.key, PAGES_PER_MIB, 1))


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.integers(min_value=0, max_value=2 * PAGES_PER_MIB - 1), max_size=300),
       more=st.lists(st.integers(min_value=0, max_value=2 * PAGES_PER_MIB - 1), max_size=100))
def test_precopy_rounds_always_converge_to_the_source_digest(writes: list[int], more: list[int]) -> None:
    """Round 0 sends all, then the dirty set: the target ends with the source's exact memory."""
    source = GuestMemory("prop", 2)
    target = GuestMemory("prop", 2)
    source.write_pages(writes)
    source.take_dirty()
    transfer(source, target, range(source.pages))
    source.write_pages(more)
    transfer(source, target, sorted(source.take_dirty()))
    assert target.digest == source.digest == source.full_digest()
    assert all(target.version(p) == source.version(p) for p in set(writes) | set(more))


def test_a_64_gib_guest_costs_megabytes() -> None:
    before = rss_kib()
    memory = GuestMemory("big", 64 * 1024)
    memory.write_random(50_000, random.Random(3), hot_pages=256 * PAGES_PER_MIB, hot_fraction=0.95)
    memory.take_dirty()
    memory.write_random(50_000, random.Random(4), hot_pages=256 * PAGES_PER_MIB, hot_fraction=0.95)
    frame = memory.encode(range(0, 256), b"")  # round 0 reads versions without touching memory
    grown_mib = (rss_kib() - before) / 1024
    assert len(frame) > 256 * PAGE_SIZE
    assert grown_mib < 48, f"a 64 GiB guest with 100k writes grew the process by {grown_mib:.0f} MiB"
    memory.release()


def test_writes_follow_the_distribution_the_precopy_model_assumes() -> None:
    memory = GuestMemory("dist", 256)
    hot = 32 * PAGES_PER_MIB
    rng = random.Random(11)
    memory.take_dirty()
    writes = 40 * PAGES_PER_MIB  # 40 MiB of writes: D*t with D = 40 MiB/s over one second
    memory.write_random(writes, rng, hot_pages=hot, hot_fraction=0.95)
    dirty = memory.take_dirty()
    hot_share = sum(1 for p in dirty if p < hot) / len(dirty)
    predicted = distinct_dirtied_mib(1.0, 40, 32, 256) * PAGES_PER_MIB
    assert abs(len(dirty) - predicted) / predicted < 0.02, (len(dirty), predicted)
    predicted_hot = distinct_dirtied_mib(1.0, 40 * 0.95, 32, 32, hot_fraction=1.0) * PAGES_PER_MIB
    assert abs(hot_share * len(dirty) - predicted_hot) / predicted_hot < 0.02


def test_guest_clock_heartbeat_and_writes_run_only_while_running() -> None:
    definition = VmDefinition(name="g", cpus=1, memory_mib=16,
                              workload=WorkloadSpec(dirty_rate_mib_ps=4, working_set_mib=1))
    guest = Guest("g", definition)
    guest.start(frozenset({"sse2"}))
    assert guest.features == frozenset({"sse2"}) and guest.state is VmState.Running
    assert guest._last is not None
    t0 = guest._last
    for step in (0.25, 0.5, 0.75, 1.0):  # a guest catches up at most MAX_CATCH_UP_SECONDS at once
        guest.advance(t0 + step)
    assert guest.heartbeat == 100
    assert guest.memory is not None and guest.memory.writes == 4 * PAGES_PER_MIB
    guest.advance(t0 + 1.5)
    guest.pause()
    frozen = (guest.heartbeat, guest.memory.digest)
    guest.advance(t0 + 9.0)
    assert (guest.heartbeat, guest.memory.digest) == frozen, "a paused guest neither beats nor writes"
    guest.set_throttle(75.0)
    assert guest.write_rate_pages() == pytest.approx(PAGES_PER_MIB)


def test_a_frame_is_built_and_checked_without_a_page_sized_temporary() -> None:
    """Sending and checking a 1 MiB frame allocates nothing near the size of its pages: each such
    temporary cost page faults on every frame, whose price depended on the allocator's state."""
    source = GuestMemory("vm-frames", 1)
    source.prefill(source.pages)
    target = GuestMemory("vm-frames", 1)
    prefix = pages_prefix(0, 256)
    arrived = bytearray(source.encode(range(256), prefix))  # the receiver's buffer, filled by recv_into
    tracemalloc.start()
    try:
        parts = source.frame_parts(range(256), prefix)
        sent_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        _round, idx, versions, payload = parse_pages(memoryview(arrived)[8:])
        target.apply(idx, versions, payload)
        checked_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert b"".join(parts) == bytes(arrived)
    assert sent_peak < 256 * 1024, f"building a frame's parts allocated {sent_peak} bytes"
    assert checked_peak < 256 * 1024, f"checking a frame allocated {checked_peak} bytes"
    assert target.digest == source.digest
