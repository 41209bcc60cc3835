"""What a simulated guest's page holds at each version, the pages' hashes, and the byte checks.

Pure: no state beyond constants, no I/O. ``guest.py`` keeps the versions and the digest; both sides of a
migration derive from here what each page must contain, so a receiver checks what it got.

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
from array import array
from collections.abc import Iterable, Sequence
from typing import Literal

PAGE_SIZE = 4096
PAGES_PER_MIB = 256

M64 = (1 << 64) - 1
K1 = 0x9E3779B97F4A7C15
K3 = 0xBF58476D1CE4E5B9
ZERO_PAGE = bytes(PAGE_SIZE)
#: Pages whose windows lie back to back in the pattern at one version (an aligned block).
BLOCK_PAGES = 64
BLOCK_BYTES = BLOCK_PAGES * PAGE_SIZE
#: Where a block's windows may start: one of PATTERN_BYTES / 8 places (32768), enough to catch corruption.
PATTERN_BYTES = 256 * 1024
#: Page contents are windows of this pattern: a block of zero pages (version 0), then pseudo-random bytes
#: (PATTERN_BYTES of starting places plus a block's length). 768 KiB: small enough to stay in a core's cache.
_PATTERN = bytes(BLOCK_BYTES) + hashlib.shake_256(b"vmshift guest page pattern v2").digest(PATTERN_BYTES + BLOCK_BYTES)
PATTERN_VIEW = memoryview(_PATTERN)
_OFFSET_MASK = PATTERN_BYTES - 8
BLOCK_SHIFT = BLOCK_PAGES.bit_length() - 1
IN_BLOCK = BLOCK_PAGES - 1
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
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
    x = (((version << 32) | page) ^ key) * K1 & M64
    x ^= x >> 29
    x = (x * K3) & M64
    return x ^ (x >> 32)


def window_seed(key: int, block: int, version: int) -> int:
    """The 64-bit word that places the pages of ``block`` at ``version`` in the pattern (see :func:`page_offset`)."""
    return page_seed(key ^ _WINDOW_SALT, block, version)


def page_offset(key: int, page: int, version: int) -> int:
    """Where in the pattern the bytes of ``page`` at ``version`` start. The pages of one block at one
    version follow each other, so ``page_offset(key, p + 1, v) == page_offset(key, p, v) + PAGE_SIZE``
    within a block; version 0 is a zero page."""
    within = (page & IN_BLOCK) * PAGE_SIZE
    if version == 0:
        return within
    return BLOCK_BYTES + (window_seed(key, page >> BLOCK_SHIFT, version) & _OFFSET_MASK) + within


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
            stop = min(end, at + BLOCK_PAGES - ((first + at) & IN_BLOCK))
            out.append((at, stop - at, version))
            at = stop
    return out


class Lanes:
    """Constants for hashing ``count`` pages at once: one 128-bit lane per page in a big integer.

    Each lane holds a 64-bit value in its low half, so multiplying the whole integer by a 64-bit
    constant never carries into the next lane; masking keeps the low halves. This turns the per-page
    hash into a handful of C-level operations per frame instead of a Python loop, and the same goes
    for where each page's bytes lie in the pattern (:func:`page_offset` of every lane at once).
    """

    __slots__ = ("block_bytes", "key", "mask", "offset_bits", "page_word", "window_key", "within")

    def __init__(self, key: int, count: int) -> None:
        self.mask = int.from_bytes(_LANE_MASK * count, "little")
        self.key = int.from_bytes((key.to_bytes(8, "little") + bytes(8)) * count, "little")
        self.window_key = int.from_bytes(((key ^ _WINDOW_SALT).to_bytes(8, "little") + bytes(8)) * count, "little")
        self.offset_bits = int.from_bytes(_OFFSET_MASK.to_bytes(16, "little") * count, "little")
        self.block_bytes = int.from_bytes(BLOCK_BYTES.to_bytes(16, "little") * count, "little")
        self.page_word = int.from_bytes((b"\xff" * 4 + bytes(12)) * count, "little")
        self.within = int.from_bytes(IN_BLOCK.to_bytes(16, "little") * count, "little")


_LANE_MASK = b"\xff" * 8 + bytes(8)


def mix_lanes(x: int, mask: int) -> int:
    """page_seed()'s mixing, on every lane of ``x`` (the (page, version) pairs xor the key) at once."""
    x = (x * K1) & mask
    x ^= (x >> 29) & mask
    x = (x * K3) & mask
    return x ^ ((x >> 32) & mask)


_RAMPS: dict[int, tuple[int, int]] = {}


def ramp(first: int, count: int) -> array[int]:
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


def lane_sum(lanes: int, count: int) -> int:
    """The sum of the 64-bit values in the low halves of ``count`` 128-bit lanes: halves folded onto each
    other (a lane has room for the carries of 2^64 values), a dozen big-integer steps instead of a loop."""
    while count > 1:
        low = count // 2
        bits = 128 * low
        lanes = (lanes & ((1 << bits) - 1)) + (lanes >> bits)
        count -= low
    return lanes


def lane_words(lanes: int, count: int, kind: Literal["I", "Q"]) -> memoryview:
    """The low word (``kind`` "I": 32 bits, "Q": 64 bits) of each of ``count`` 128-bit lanes."""
    step = 4 if kind == "I" else 2
    return memoryview(lanes.to_bytes(16 * count, "little")).cast(kind)[0::step]


def check_stretches(key: int, first: int, runs: list[tuple[int, int, int]], payload: bytes | memoryview) -> None:
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


def pages_match(offsets: Sequence[int], payload: bytes | memoryview) -> bool:
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
