"""The simulated guest: sparse versioned memory pages, an incremental digest, and the workload.

No I/O and no asyncio: plain objects that the agent (host.py) and the migration stream
(the migration package) drive. Memory is 4 KiB pages that each carry a version; the bytes of a page are
never stored, they are derived from (VM id, page, version), so any side can rebuild what a page
must contain and check what it received. Versions live in a private anonymous mapping (4 bytes a
page, touched only where written), so a 64 GiB guest costs the agent megabytes, not gigabytes.

Page contents: memory is laid out in blocks of BLOCK_PAGES (64) aligned pages. A page at version
v > 0 is a 4 KiB window of a fixed pseudo-random pattern (the same in every agent): its block's
pages at version v lie back to back in the pattern from a place chosen by the 64-bit word
``window_seed(vm, block, v)``, so a run of consecutive pages of one version is one contiguous
stretch of the pattern, as it is one stretch of a real guest's RAM. A page at version 0 is a zero
page. The memory digest is the sum (mod 2^64) of ``page_seed(vm, page, v)`` over every page, kept up
to date as the workload writes and as migration frames arrive, so comparing two digests costs
nothing at switchover. A receiver compares every byte of every page it receives with the bytes its
(page, version) header names before it applies it: a run of pages with one comparison per block.
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import random
import time
from array import array
from collections.abc import Iterable, Sequence
from typing import Literal

from vmshift.drivers import io_ceilings
from vmshift.hypervisor.protocol import (
    DiskInfo,
    GuestIoCeilings,
    VmDefinition,
    VmInfo,
    VmState,
    WorkloadInfo,
    WorkloadSpec,
)

PAGE_SIZE = 4096
PAGES_PER_MIB = 256
#: Heartbeat ticks per second of guest run time.
HEARTBEAT_HZ = 100
#: A guest starved of CPU for longer than this does not catch up on the writes it missed.
MAX_CATCH_UP_SECONDS = 0.5

_M64 = (1 << 64) - 1
_K1 = 0x9E3779B97F4A7C15
_K3 = 0xBF58476D1CE4E5B9
_MAX_VERSION = 0xFFFFFFFF
ZERO_PAGE = bytes(PAGE_SIZE)
#: Pages whose windows lie back to back in the pattern at one version (an aligned block).
BLOCK_PAGES = 64
BLOCK_BYTES = BLOCK_PAGES * PAGE_SIZE
#: Where a block's windows may start: one of PATTERN_BYTES / 8 places (32768), enough to catch corruption.
PATTERN_BYTES = 256 * 1024
#: Page contents are windows of this pattern: a block of zero pages (version 0), then pseudo-random bytes
#: (PATTERN_BYTES of starting places plus a block's length). 772 KiB: small enough to stay in a core's cache.
_PATTERN = bytes(BLOCK_BYTES) + hashlib.shake_256(b"vmshift guest page pattern v2").digest(PATTERN_BYTES + BLOCK_BYTES)
_PATTERN_VIEW = memoryview(_PATTERN)
_OFFSET_MASK = PATTERN_BYTES - 8
_BLOCK_SHIFT = BLOCK_PAGES.bit_length() - 1
_IN_BLOCK = BLOCK_PAGES - 1
_PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
#: Makes window_seed() a different hash of (block, version) than page_seed() of (page, version).
_WINDOW_SALT = 0x5DEECE66D2545F49


class CorruptPage(ValueError):
    """A received page does not hold the bytes its (page, version) header promises."""


def vm_key(vm_id: str) -> int:
    """The 64-bit key that makes one VM's page contents differ from another's."""
    return int.from_bytes(hashlib.blake2b(vm_id.encode(), digest_size=8).digest(), "little")


def page_seed(key: int, page: int, version: int) -> int:
    """The 64-bit seed of ``page`` at ``version`` (0 for a never-written page): the page's share of the
    digest (all 64 bits, which is what tells pages and versions apart)."""
    if version == 0:
        return 0
    x = (((version << 32) | page) ^ key) * _K1 & _M64
    x ^= x >> 29
    x = (x * _K3) & _M64
    return x ^ (x >> 32)


def window_seed(key: int, block: int, version: int) -> int:
    """The 64-bit word that places the pages of ``block`` at ``version`` in the pattern (see :func:`page_offset`)."""
    return page_seed(key ^ _WINDOW_SALT, block, version)


def page_offset(key: int, page: int, version: int) -> int:
    """Where in the pattern the bytes of ``page`` at ``version`` start. The pages of one block at one
    version follow each other, so ``page_offset(key, p + 1, v) == page_offset(key, p, v) + PAGE_SIZE``
    within a block; version 0 is a zero page."""
    within = (page & _IN_BLOCK) * PAGE_SIZE
    if version == 0:
        return within
    return BLOCK_BYTES + (window_seed(key, page >> _BLOCK_SHIFT, version) & _OFFSET_MASK) + within


def page_content(key: int, page: int, version: int) -> bytes:
    """The 4 KiB a page holds at ``version``."""
    offset = page_offset(key, page, version)
    return _PATTERN[offset:offset + PAGE_SIZE]


def stretches(first: int, versions: Sequence[int]) -> list[tuple[int, int, int]]:
    """The pages ``first``, ``first + 1``, ... at ``versions`` cut where the version changes and at block
    ends: (index of the stretch's first page in ``versions``, pages, version) each. A stretch's bytes are
    one contiguous piece of the pattern, from :func:`page_offset` of its first page on."""
    count = len(versions)
    if not count:
        return []
    head = versions[0]
    if versions.count(head) == count:  # the usual round-0 run: one version (a C-level count)
        groups: Iterable[tuple[int, int]] = ((head, count),)
    else:
        groups = ((v, len(list(g))) for v, g in itertools.groupby(versions))
    out: list[tuple[int, int, int]] = []
    at = 0
    for version, length in groups:
        end = at + length
        while at < end:
            stop = min(end, at + BLOCK_PAGES - ((first + at) & _IN_BLOCK))
            out.append((at, stop - at, version))
            at = stop
    return out


class _Lanes:
    """Constants for hashing ``count`` pages at once: one 128-bit lane per page in a big integer.

    Each lane holds a 64-bit value in its low half, so multiplying the whole integer by a 64-bit
    constant never carries into the next lane; masking keeps the low halves. This turns the per-page
    hash into a handful of C-level operations per frame instead of a Python loop, and the same goes
    for where each page's bytes lie in the pattern (:func:`_offset` of every lane at once).
    """

    __slots__ = ("block_bytes", "key", "mask", "offset_bits", "page_word", "window_key", "within")

    def __init__(self, key: int, count: int) -> None:
        self.mask = int.from_bytes(_LANE_MASK * count, "little")
        self.key = int.from_bytes((key.to_bytes(8, "little") + bytes(8)) * count, "little")
        self.window_key = int.from_bytes(((key ^ _WINDOW_SALT).to_bytes(8, "little") + bytes(8)) * count, "little")
        self.offset_bits = int.from_bytes(_OFFSET_MASK.to_bytes(16, "little") * count, "little")
        self.block_bytes = int.from_bytes(BLOCK_BYTES.to_bytes(16, "little") * count, "little")
        self.page_word = int.from_bytes((b"\xff" * 4 + bytes(12)) * count, "little")
        self.within = int.from_bytes(_IN_BLOCK.to_bytes(16, "little") * count, "little")


_LANE_MASK = b"\xff" * 8 + bytes(8)


def _mix(x: int, mask: int) -> int:
    """page_seed()'s mixing, on every lane of ``x`` at once (``x`` already multiplied by nothing)."""
    x = (x * _K1) & mask
    x ^= (x >> 29) & mask
    x = (x * _K3) & mask
    return x ^ ((x >> 32) & mask)


class GuestMemory:
    """A guest's memory: per-page versions, the digest, and (during a migration) the dirty set."""

    def __init__(self, vm_id: str, memory_mib: int) -> None:
        self.vm_id = vm_id
        self.key = vm_key(vm_id)
        self.pages = memory_mib * PAGES_PER_MIB
        self._map = mmap.mmap(-1, max(self.pages * 4, mmap.PAGESIZE),
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._ver = memoryview(self._map).cast("I")
        self._lanes: dict[int, _Lanes] = {}
        self.digest = 0
        #: Pages written since the last take_dirty(); None while nobody tracks them.
        self.dirty: set[int] | None = None
        #: Page writes since creation (the workload's, not the migration's).
        self.writes = 0

    # -- hashing many pages at once ----------------------------------------------------------------

    def _lanes_for(self, count: int) -> _Lanes:
        lanes = self._lanes.get(count)
        if lanes is None:
            if len(self._lanes) > 64:  # frames of many sizes (dirty rounds): keep the cache small
                self._lanes.clear()
            lanes = self._lanes[count] = _Lanes(self.key, count)
        return lanes

    def _seed_lanes(self, idx: array[int], versions: array[int]) -> tuple[int, int, _Lanes]:
        """(the 64-bit hash of each (page, version) pair in its lane (version 0 not special-cased), the
        pairs themselves as lanes (page in the low word, version in the next), the constants)."""
        count = len(idx)
        lanes = self._lanes_for(count)
        buf = bytearray(16 * count)
        words = memoryview(buf).cast("I")
        words[0::4] = idx
        words[1::4] = versions
        words.release()
        pairs = int.from_bytes(buf, "little")
        return _mix(pairs ^ lanes.key, lanes.mask), pairs, lanes

    def seeds(self, idx: array[int], versions: array[int]) -> list[int]:
        """page_seed() of each (page, version) pair, computed lane-parallel (see _Lanes)."""
        count = len(idx)
        if count == 0 or not any(versions):
            return [0] * count
        x, _pairs, _lanes = self._seed_lanes(idx, versions)
        seeds: list[int] = _lane_words(x, count, "Q").tolist()
        if 0 in versions:
            for i, v in enumerate(versions):
                if not v:
                    seeds[i] = 0
        return seeds

    def seed_sum(self, first: int, versions: array[int], runs: list[tuple[int, int, int]]) -> int:
        """The sum of page_seed() over the pages ``first``, ``first + 1``, ... at ``versions``, whose
        :func:`stretches` are ``runs`` (version-0 stretches add nothing), without a Python step per page."""
        count = len(versions)
        if count == 0 or not any(versions):
            return 0
        x, _pairs, _lanes = self._seed_lanes(_ramp(first, count), versions)
        if all(version for _at, _length, version in runs):
            return _lane_sum(x, count)
        seeds = _lane_words(x, count, "Q")
        return sum(sum(seeds[at:at + length]) for at, length, version in runs if version)

    def _expected(self, idx: array[int], versions: array[int]) -> tuple[int, list[int]]:
        """(the sum of the pairs' seeds, where in the pattern each page's bytes lie: :func:`page_offset`)."""
        count = len(idx)
        if count == 0 or not any(versions):
            return 0, [(p & _IN_BLOCK) * PAGE_SIZE for p in idx]
        x, pairs, lanes = self._seed_lanes(idx, versions)
        seeds: list[int] = _lane_words(x, count, "Q").tolist()
        # window_seed() of each (block, version): the page word shifted down to the block number.
        page_word = lanes.page_word
        blocks = (pairs & ~page_word) | (((pairs & page_word) >> _BLOCK_SHIFT) & page_word)
        w = _mix(blocks ^ lanes.window_key, lanes.mask)
        placed = (w & lanes.offset_bits) + lanes.block_bytes + ((pairs & lanes.within) << _PAGE_SHIFT)
        offsets: list[int] = _lane_words(placed, count, "I").tolist()
        if 0 in versions:
            for i, v in enumerate(versions):
                if not v:
                    seeds[i] = 0
                    offsets[i] = (idx[i] & _IN_BLOCK) * PAGE_SIZE
        return sum(seeds), offsets

    # -- reading -------------------------------------------------------------------------------

    def version(self, page: int) -> int:
        return int(self._ver[page])

    def content(self, page: int) -> bytes:
        return page_content(self.key, page, self._ver[page])

    def digest_hex(self) -> str:
        return f"{self.digest:016x}"

    def full_digest(self) -> int:
        """Recompute the digest from every page (for tests and checks)."""
        total = 0
        for start in range(0, self.pages, 4096):
            stop = min(start + 4096, self.pages)
            total += sum(self.seeds(array("I", range(start, stop)), array("I", self._ver[start:stop])))
        return total & _M64

    # -- writing (the workload) ------------------------------------------------------------------

    def write(self, page: int) -> None:
        """One guest write to ``page``: bump its version, update the digest, mark it dirty."""
        self.write_pages((page,))

    def write_pages(self, pages: Iterable[int]) -> None:
        ver = self._ver
        key = self.key
        digest = self.digest
        dirty = self.dirty
        count = 0
        for p in pages:
            old = ver[p]
            v = old + 1 if old < _MAX_VERSION else 1
            ver[p] = v
            x = (((v << 32) | p) ^ key) * _K1 & _M64
            x ^= x >> 29
            x = (x * _K3) & _M64
            digest += x ^ (x >> 32)
            if old:
                x = (((old << 32) | p) ^ key) * _K1 & _M64
                x ^= x >> 29
                x = (x * _K3) & _M64
                digest -= x ^ (x >> 32)
            if dirty is not None:
                dirty.add(p)
            count += 1
        self.digest = digest & _M64
        self.writes += count

    def prefill(self, pages: int) -> None:
        """Write pages [0, pages) once each, in bulk (the guest's memory after it booted)."""
        ver = self._ver
        digest = self.digest
        for lo in range(0, min(pages, self.pages), 4096):
            hi = min(lo + 4096, pages, self.pages)
            idx = array("I", range(lo, hi))
            old = array("I", ver[lo:hi])
            new = array("I", [v + 1 if v < _MAX_VERSION else 1 for v in old])
            ver[lo:hi] = new
            digest += sum(self.seeds(idx, new)) - sum(self.seeds(idx, old))
        self.digest = digest & _M64

    def write_random(self, count: int, rng: random.Random, hot_pages: int, hot_fraction: float) -> None:
        """``count`` writes: uniform in pages [0, hot_pages) with probability ``hot_fraction``, else
        uniform over the rest of memory (the distribution precopy.py models)."""
        n = self.pages
        hot = min(max(hot_pages, 0), n) or n
        cold = n - hot
        hf = hot_fraction if cold else 1.0
        hot_scale = hot / hf if hf > 0 else 0.0
        cold_scale = cold / (1.0 - hf) if hf < 1.0 else 0.0
        rnd = rng.random
        chosen: list[int] = []
        append = chosen.append
        for _ in range(count):
            r = rnd()
            if r < hf:
                p = int(r * hot_scale)
                if p >= hot:
                    p = hot - 1
            else:
                p = hot + int((r - hf) * cold_scale)
                if p >= n:
                    p = n - 1
            append(p)
        self.write_pages(chosen)

    # -- migration --------------------------------------------------------------------------------

    def take_dirty(self) -> set[int]:
        """The pages written since the last call (and start tracking if nobody did)."""
        taken = self.dirty if self.dirty is not None else set()
        self.dirty = set()
        return taken

    def dirty_count(self) -> int:
        return len(self.dirty) if self.dirty is not None else 0

    def stop_tracking(self) -> None:
        self.dirty = None

    def _versions_slice(self, lo: int, hi: int) -> array[int]:
        """The versions of pages [lo, hi), copied at C speed."""
        out = array("I")
        out.frombytes(self._ver[lo:hi].cast("B"))
        return out

    def _versions_of(self, pages: Sequence[int]) -> tuple[array[int], array[int], bool]:
        """(page indexes, their versions, whether the pages are consecutive: first, first + 1, ...)."""
        if isinstance(pages, range) and pages.step == 1:
            return _ramp(pages.start, len(pages)), self._versions_slice(pages.start, pages.stop), True
        idx = array("I", pages)
        count = len(idx)
        if count and idx[-1] - idx[0] == count - 1 and idx == _ramp(idx[0], count):
            return idx, self._versions_slice(idx[0], idx[-1] + 1), True
        ver = self._ver
        return idx, array("I", [ver[p] for p in pages]), False

    def frame_parts(self, pages: Sequence[int], prefix: bytes) -> list[bytes | memoryview]:
        """A PAGES frame as the parts of one scatter-gather write: ``prefix`` + page indexes (u32) +
        versions (u32) as one small buffer, then the pages' bytes as views of the pattern: one view per
        stretch of consecutive pages (one version, one block: up to 256 KiB), else one per page.

        Nothing of a page is copied here (the kernel copies each view straight into the socket), and
        nothing large is allocated, so the cost of a frame does not depend on the allocator.
        """
        idx, versions, consecutive = self._versions_of(pages)
        head = b"".join((prefix, idx.tobytes(), versions.tobytes()))
        if consecutive and len(idx):
            first = idx[0]
            key = self.key
            parts: list[bytes | memoryview] = [head]
            for at, length, version in stretches(first, versions):
                offset = page_offset(key, first + at, version)
                parts.append(_PATTERN_VIEW[offset:offset + length * PAGE_SIZE])
            return parts
        _total, offsets = self._expected(idx, versions)
        return [head, *map(_PATTERN_VIEW.__getitem__, map(slice, offsets, map(PAGE_SIZE.__add__, offsets)))]

    def encode(self, pages: Sequence[int], prefix: bytes) -> bytes:
        """``prefix`` + page indexes (u32) + versions (u32) + the pages' bytes, as one buffer."""
        return b"".join(self.frame_parts(pages, prefix))

    def apply(self, idx: array[int], versions: array[int], payload: bytes | memoryview) -> None:
        """Check received pages byte for byte against their (page, version), then store them.

        Consecutive pages (round 0's frames, runs of a dirty round) are checked a stretch at a time (one
        comparison of up to a block, 256 KiB, against the pattern where the stretch's bytes lie), other
        frames a page at a time. Raises CorruptPage naming the first bad page (and changes nothing) if
        any page is out of range or holds other bytes.
        """
        count = len(idx)
        if count != len(versions) or len(payload) != count * PAGE_SIZE:
            raise CorruptPage(f"frame of {count} pages carries {len(versions)} versions and "
                              f"{len(payload)} bytes")
        if count == 0:
            return
        first, last = idx[0], idx[-1]
        run = last - first == count - 1 and idx == _ramp(first, count)
        if (last if run else max(idx)) >= self.pages:
            raise CorruptPage(f"page {max(idx)} is beyond the guest's {self.pages} pages")
        ver = self._ver
        if run:
            runs = stretches(first, versions)
            _check_stretches(self.key, first, runs, payload)
            total = self.seed_sum(first, versions, runs)
            old = self._versions_slice(first, last + 1)
            ver[first:last + 1] = versions
            if any(old):
                total -= self.seed_sum(first, old, stretches(first, old))
        else:
            total, offsets = self._expected(idx, versions)
            if not _matches(offsets, payload):
                for i, offset in enumerate(offsets):
                    if not _matches([offset], payload[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]):
                        raise CorruptPage(f"page {idx[i]} does not hold the bytes of version {versions[i]}")
            old = array("I", [ver[p] for p in idx])
            for p, v in zip(idx, versions, strict=True):
                ver[p] = v
            total -= sum(self.seeds(idx, old))
        self.digest = (self.digest + total) & _M64

    def release(self) -> None:
        """Give the memory back to the host (the object is unusable afterwards)."""
        try:
            self._ver.release()
            self._map.close()
        except BufferError:  # a view is still alive somewhere; the GC frees the mapping later
            pass


_RAMPS: dict[int, tuple[int, int]] = {}


def _ramp(first: int, count: int) -> array[int]:
    """array("I", range(first, first + count)), four times faster: 32-bit lanes of one big integer."""
    consts = _RAMPS.get(count)
    if consts is None:
        if len(_RAMPS) > 64:
            _RAMPS.clear()
        consts = _RAMPS[count] = (int.from_bytes(b"\x01\x00\x00\x00" * count, "little"),
                                  int.from_bytes(array("I", range(count)).tobytes(), "little"))
    ones, steps = consts
    out = array("I")
    out.frombytes((first * ones + steps).to_bytes(4 * count, "little"))
    return out


def _lane_sum(lanes: int, count: int) -> int:
    """The sum of the 64-bit values in the low halves of ``count`` 128-bit lanes: halves folded onto each
    other (a lane has room for the carries of 2^64 values), a dozen big-integer steps instead of a loop."""
    while count > 1:
        low = count // 2
        bits = 128 * low
        lanes = (lanes & ((1 << bits) - 1)) + (lanes >> bits)
        count -= low
    return lanes


def _lane_words(lanes: int, count: int, kind: Literal["I", "Q"]) -> memoryview:
    """The low word (``kind`` "I": 32 bits, "Q": 64 bits) of each of ``count`` 128-bit lanes."""
    step = 4 if kind == "I" else 2
    return memoryview(lanes.to_bytes(16 * count, "little")).cast(kind)[0::step]


def _check_stretches(key: int, first: int, runs: list[tuple[int, int, int]], payload: bytes | memoryview) -> None:
    """Compare ``payload``, the pages ``first``, ``first + 1``, ... cut into ``runs`` (:func:`stretches`),
    with the pattern, one comparison (memcmp) per stretch; CorruptPage names the first page that differs."""
    view = memoryview(payload)
    startswith = _PATTERN.startswith
    for at, length, version in runs:
        offset = page_offset(key, first + at, version)
        if not startswith(view[at * PAGE_SIZE:(at + length) * PAGE_SIZE], offset):
            for i in range(at, at + length):
                if not startswith(view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE], offset + (i - at) * PAGE_SIZE):
                    raise CorruptPage(f"page {first + i} does not hold the bytes of version {version}")


def _matches(offsets: Sequence[int], payload: bytes | memoryview) -> bool:
    """True when each 4 KiB page of ``payload`` is the pattern window at its offset (see :func:`page_offset`).

    Every byte is compared (memcmp per page against the pattern, where it lies), without building
    the expected bytes: a megabyte-sized temporary per frame costs page faults on every frame.
    """
    view = memoryview(payload)
    count = len(offsets)
    if view.nbytes != count * PAGE_SIZE:
        return False
    if count > len(_PAGE_SLICES):
        _PAGE_SLICES.extend(slice(i * PAGE_SIZE, (i + 1) * PAGE_SIZE) for i in range(len(_PAGE_SLICES), count))
    pages = map(view.__getitem__, _PAGE_SLICES[:count])
    return all(map(_PATTERN.startswith, pages, offsets))


#: Where each page of a run lies in it (made once: a slice per page per frame costs a third of a check).
_PAGE_SLICES: list[slice] = [slice(i * PAGE_SIZE, (i + 1) * PAGE_SIZE) for i in range(256)]


class Guest:
    """One VM on one host: its definition, its state, its memory and its running workload."""

    def __init__(self, vm_id: str, definition: VmDefinition) -> None:
        self.vm_id = vm_id
        self.definition = definition
        self.state = VmState.Defined
        self.features: frozenset[str] = frozenset()
        self.drivers: list[str] = list(dict.fromkeys(definition.drivers))
        self.memory: GuestMemory | None = GuestMemory(vm_id, definition.memory_mib)
        self.heartbeat = 0
        self.throttle_percent = 0.0
        self.migration_id: str | None = None
        self._rng = random.Random(vm_key(vm_id))
        self._last: float | None = None  # monotonic time of the last advance while running
        self._write_carry = 0.0
        self._beat_carry = 0.0
        self._final_digest = "0" * 16

    # -- the workload ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._last is not None

    def write_rate_pages(self) -> float:
        """Page writes per second the workload does now (after any auto-converge throttle)."""
        rate = self.definition.workload.dirty_rate_mib_ps * PAGES_PER_MIB
        return rate * max(0.0, 1.0 - self.throttle_percent / 100.0)

    def advance(self, now: float | None = None) -> None:
        """Apply the writes and heartbeats the guest made since the last call (if it runs)."""
        if self._last is None or self.memory is None:
            return
        now = time.monotonic() if now is None else now
        elapsed = now - self._last
        if elapsed <= 0:
            return
        self._last = now
        beats = elapsed * HEARTBEAT_HZ + self._beat_carry
        whole = int(beats)
        self._beat_carry = beats - whole
        self.heartbeat += whole
        rate = self.write_rate_pages()
        if rate <= 0:
            return
        writes = min(elapsed, MAX_CATCH_UP_SECONDS) * rate + self._write_carry
        count = int(writes)
        self._write_carry = writes - count
        if count:
            workload = self.definition.workload
            hot = int(workload.working_set_mib * PAGES_PER_MIB)
            self.memory.write_random(count, self._rng, hot, workload.hot_fraction)

    def set_workload(self, workload: WorkloadSpec) -> None:
        self.advance()
        self.definition = self.definition.model_copy(update={"workload": workload})

    def set_throttle(self, percent: float) -> None:
        self.advance()
        self.throttle_percent = percent

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self, features: frozenset[str]) -> None:
        """Boot: fresh memory, the CPU feature set fixed for the guest's lifetime, the clock running."""
        if self.memory is None or self.state is VmState.Stopped:
            self._replace_memory()
        self.features = features
        self.heartbeat = 0
        prefill = int(self.definition.workload.prefill_mib * PAGES_PER_MIB)
        if prefill and self.memory is not None:
            self.memory.prefill(prefill)
        self.state = VmState.Running
        self._run()

    def _run(self) -> None:
        self._last = time.monotonic()

    def _halt(self) -> None:
        self.advance()
        self._last = None

    def pause(self) -> None:
        """Stop executing (switchover); memory and state stay."""
        self._halt()
        self.state = VmState.Paused

    def save(self) -> None:
        self._halt()
        self.state = VmState.Saved

    def resume(self) -> None:
        """Run again after pause() or save()."""
        self.state = VmState.Running
        self._run()

    def stop(self) -> None:
        """Power off: the memory is gone."""
        self._halt()
        self.state = VmState.Stopped
        self.throttle_percent = 0.0
        self._replace_memory()

    def release(self, state: VmState) -> None:
        """Drop the memory (migrated away, or discarded) and keep a tombstone in ``state``."""
        self._halt()
        if self.memory is not None:
            self._final_digest = self.memory.digest_hex()
            self.memory.release()
            self.memory = None
        self.state = state

    def _replace_memory(self) -> None:
        if self.memory is not None:
            self.memory.release()
        self.memory = GuestMemory(self.vm_id, self.definition.memory_mib)

    # -- reporting ------------------------------------------------------------------------------------

    def digest_hex(self) -> str:
        self.advance()
        return self.memory.digest_hex() if self.memory is not None else self._final_digest

    def info(self) -> VmInfo:
        d = self.definition
        network, disk = io_ceilings(self.drivers)
        digest = self.digest_hex()
        return VmInfo(
            id=self.vm_id,
            name=d.name,
            namespace=d.namespace,
            state=self.state,
            features=sorted(self.features),
            digest=digest,
            heartbeat=self.heartbeat,
            drivers=list(self.drivers),
            io_ceilings=GuestIoCeilings(network_mbps=network, disk_mbps=disk),
            memory_mib=d.memory_mib,
            cpus=d.cpus,
            compatibility=d.compatibility,
            disks=[DiskInfo.model_validate(disk.model_dump()) for disk in d.disks],
            workload=WorkloadInfo.model_validate(d.workload.model_dump()),
            throttle_percent=self.throttle_percent,
            migration_id=self.migration_id,
        )
