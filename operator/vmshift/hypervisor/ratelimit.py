"""A token bucket that shapes a byte stream to a link rate (asyncio; the clock is injectable).

No network I/O: callers ask to send ``n`` bytes and wait as long as the bucket says. The bucket
runs into debt rather than splitting a write, so large writes keep the average rate exact. A
sender that was waiting on the bucket and woke up late (the event loop was busy, or the process was
not scheduled: routine on a loaded host) is credited the time it lost, up to ``catch_up_seconds``,
so the rate does not sag below target; a bucket nobody used saves only the small ``burst``. A
switchover's final pages may take priority over bulk traffic (:meth:`TokenBucket.charge`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

MBIT = 1_000_000 / 8  # bytes per second in one Mbit/s


def mbps_to_bytes_per_second(mbps: float) -> float:
    return mbps * MBIT


class TokenBucket:
    """Shape to ``rate`` bytes per second; ``math.inf`` (or <= 0) means unlimited."""

    def __init__(
        self,
        rate: float,
        *,
        burst_seconds: float = 0.01,
        min_burst: float = 256 * 1024,
        catch_up_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._burst_seconds = burst_seconds
        self._min_burst = min_burst
        self._catch_up_seconds = catch_up_seconds
        self.rate = math.inf
        self.burst = math.inf
        self.tokens = 0.0
        self._stamp = clock()
        self.set_rate(rate)

    @classmethod
    def mbps(cls, mbps: float, burst_seconds: float = 0.01) -> TokenBucket:
        """A bucket for a link of ``mbps`` megabits per second (<= 0: unlimited)."""
        return cls(mbps_to_bytes_per_second(mbps) if mbps > 0 else math.inf, burst_seconds=burst_seconds)

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.rate)

    def set_rate(self, rate: float) -> None:
        self._refill()
        self.rate = rate if rate > 0 else math.inf
        self.burst = max(self.rate * self._burst_seconds, self._min_burst)
        self.tokens = min(self.tokens, self.burst)

    def _refill(self) -> None:
        now = self._clock()
        if not math.isinf(self.rate):
            elapsed = now - self._stamp
            tokens = self.tokens + elapsed * self.rate
            if self.tokens < 0:  # a sender was waiting for this debt: credit how late it came back
                due = -self.tokens / self.rate
                late = elapsed - due
                cap = late * self.rate if late <= self._catch_up_seconds else 0.0
                self.tokens = min(tokens, max(self.burst, cap))
            else:
                self.tokens = min(self.burst, tokens)
        self._stamp = now

    def reserve(self, n: float) -> float:
        """Take ``n`` bytes' worth of tokens now; return how long the caller must wait before sending."""
        if math.isinf(self.rate):
            return 0.0
        self._refill()
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def charge(self, n: float) -> None:
        """Take ``n`` bytes' worth of tokens without waiting: priority traffic (a switchover's final pages)
        goes at once, and whoever shares the bucket waits the longer for it."""
        self.reserve(n)

    async def consume(self, n: float) -> None:
        delay = self.reserve(n)
        if delay > 0:
            await self._sleep(delay)
