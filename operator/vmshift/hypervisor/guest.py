"""The simulated guest: sparse versioned memory pages, an incremental digest, and the workload.

No I/O and no asyncio: plain objects that the agent (host.py) and the migration stream
(the migration package) drive. Memory is 4 KiB pages that each carry a version; the bytes of a page are
never stored, they are derived from (VM id, page, version), so any side can rebuild what a page
must contain and check what it received. Versions live in a private anonymous mapping (4 bytes a
page, touched only where written), so a 64 GiB guest costs the agent megabytes, not gigabytes.

What a page holds at a version, the per-page hashes and the byte checks live in ``pages.py``.
"""

from __future__ import annotations

import mmap
import random
import time
from array import array
from collections.abc import Iterable, Sequence

from vmshift.drivers import io_ceilings
from vmshift.hypervisor.pages import (
    BLOCK_SHIFT,
    IN_BLOCK,
    K1,
    K3,
    M64,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGES_PER_MIB,
    PATTERN_VIEW,
    CorruptPage,
    Lanes,
    check_stretches,
    lane_sum,
    lane_words,
    mix_lanes,
    page_content,
    page_offset,
    pages_match,
    ramp,
    stretches,
    vm_key,
)
from vmshift.hypervisor.protocol import (
    DiskInfo,
    GuestIoCeilings,
    VmDefinition,
    VmInfo,
    VmState,
    WorkloadInfo,
    WorkloadSpec,
)

#: Heartbeat ticks per second of guest run time.
HEARTBEAT_HZ = 100
#: A guest starved of CPU for longer than this does not catch up on the writes it missed.
MAX_CATCH_UP_SECONDS = 0.5

_MAX_VERSION = 0xFFFFFFFF


class GuestMemory:
    """A guest's memory: per-page versions, the digest, and (during a migration) the dirty set."""

    def __init__(self, vm_id: str, memory_mib: int) -> None:
        self.vm_id = vm_id
        self.key = vm_key(vm_id)
        self.pages = memory_mib * PAGES_PER_MIB
        self._map = mmap.mmap(-1, max(self.pages * 4, mmap.PAGESIZE),
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._ver = memoryview(self._map).cast("I")
        self._lanes: dict[int, Lanes] = {}
        self.digest = 0
        #: Pages written since the last take_dirty(); None while nobody tracks them.
        self.dirty: set[int] | None = None
        #: Page writes since creation (the workload's, not the migration's).
        self.writes = 0

    # -- hashing many pages at once ----------------------------------------------------------------

    def _lanes_for(self, count: int) -> Lanes:
        lanes = self._lanes.get(count)
        if lanes is None:
            if len(self._lanes) > 64:  # frames of many sizes (dirty rounds): keep the cache small
                self._lanes.clear()
            lanes = self._lanes[count] = Lanes(self.key, count)
        return lanes

    def _seed_lanes(self, idx: array[int], versions: array[int]) -> tuple[int, int, Lanes]:
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
        return mix_lanes(pairs ^ lanes.key, lanes.mask), pairs, lanes

    def seeds(self, idx: array[int], versions: array[int]) -> list[int]:
        """page_seed() of each (page, version) pair, computed lane-parallel (see Lanes)."""
        count = len(idx)
        if count == 0 or not any(versions):
            return [0] * count
        x, _pairs, _lanes = self._seed_lanes(idx, versions)
        seeds: list[int] = lane_words(x, count, "Q").tolist()
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
        x, _pairs, _lanes = self._seed_lanes(ramp(first, count), versions)
        if all(version for _at, _length, version in runs):
            return lane_sum(x, count)
        seeds = lane_words(x, count, "Q")
        return sum(sum(seeds[at:at + length]) for at, length, version in runs if version)

    def _expected(self, idx: array[int], versions: array[int]) -> tuple[int, list[int]]:
        """(the sum of the pairs' seeds, where in the pattern each page's bytes lie: :func:`page_offset`)."""
        count = len(idx)
        if count == 0 or not any(versions):
            return 0, [(p & IN_BLOCK) * PAGE_SIZE for p in idx]
        x, pairs, lanes = self._seed_lanes(idx, versions)
        seeds: list[int] = lane_words(x, count, "Q").tolist()
        # window_seed() of each (block, version): the page word shifted down to the block number.
        page_word = lanes.page_word
        blocks = (pairs & ~page_word) | (((pairs & page_word) >> BLOCK_SHIFT) & page_word)
        w = mix_lanes(blocks ^ lanes.window_key, lanes.mask)
        placed = (w & lanes.offset_bits) + lanes.block_bytes + ((pairs & lanes.within) << PAGE_SHIFT)
        offsets: list[int] = lane_words(placed, count, "I").tolist()
        if 0 in versions:
            for i, v in enumerate(versions):
                if not v:
                    seeds[i] = 0
                    offsets[i] = (idx[i] & IN_BLOCK) * PAGE_SIZE
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
        return total & M64

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
            x = (((v << 32) | p) ^ key) * K1 & M64
            x ^= x >> 29
            x = (x * K3) & M64
            digest += x ^ (x >> 32)
            if old:
                x = (((old << 32) | p) ^ key) * K1 & M64
                x ^= x >> 29
                x = (x * K3) & M64
                digest -= x ^ (x >> 32)
            if dirty is not None:
                dirty.add(p)
            count += 1
        self.digest = digest & M64
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
        self.digest = digest & M64

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
            return ramp(pages.start, len(pages)), self._versions_slice(pages.start, pages.stop), True
        idx = array("I", pages)
        count = len(idx)
        if count and idx[-1] - idx[0] == count - 1 and idx == ramp(idx[0], count):
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
                parts.append(PATTERN_VIEW[offset:offset + length * PAGE_SIZE])
            return parts
        _total, offsets = self._expected(idx, versions)
        return [head, *map(PATTERN_VIEW.__getitem__, map(slice, offsets, map(PAGE_SIZE.__add__, offsets)))]

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
        run = last - first == count - 1 and idx == ramp(first, count)
        if (last if run else max(idx)) >= self.pages:
            raise CorruptPage(f"page {max(idx)} is beyond the guest's {self.pages} pages")
        ver = self._ver
        if run:
            runs = stretches(first, versions)
            check_stretches(self.key, first, runs, payload)
            total = self.seed_sum(first, versions, runs)
            old = self._versions_slice(first, last + 1)
            ver[first:last + 1] = versions
            if any(old):
                total -= self.seed_sum(first, old, stretches(first, old))
        else:
            total, offsets = self._expected(idx, versions)
            if not pages_match(offsets, payload):
                for i, offset in enumerate(offsets):
                    if not pages_match([offset], payload[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]):
                        raise CorruptPage(f"page {idx[i]} does not hold the bytes of version {versions[i]}")
            old = array("I", [ver[p] for p in idx])
            for p, v in zip(idx, versions, strict=True):
                ver[p] = v
            total -= sum(self.seeds(idx, old))
        self.digest = (self.digest + total) & M64

    def release(self) -> None:
        """Give the memory back to the host (the object is unusable afterwards)."""
        try:
            self._ver.release()
            self._map.close()
        except BufferError:  # a view is still alive somewhere; the GC frees the mapping later
            pass


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
