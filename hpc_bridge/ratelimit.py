"""Requests per second per user: one token bucket per owner, in this process's memory.

In memory because the service is one process (waitress threads); a restart forgets the buckets,
which at worst grants one extra burst. Buckets of idle users are dropped so the map stays small.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hpc_bridge.errors import TooManyRequests

_IDLE_DROP_SECONDS = 600.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def check(self, owner: str, rate: float, burst: int) -> None:
        """Take one token from `owner`'s bucket or raise TooManyRequests (429) with Retry-After."""
        now = self._clock()
        with self._lock:
            self._sweep(now)
            bucket = self._buckets.setdefault(owner, _Bucket(tokens=float(burst), updated=now))
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / rate
                raise TooManyRequests(f"too many requests: the limit is {rate:g} per second "
                                      f"(burst {burst}); retry in {wait:.1f} s", retry_after=wait)
            bucket.tokens -= 1.0

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _IDLE_DROP_SECONDS:
            return
        self._last_sweep = now
        for owner in [o for o, b in self._buckets.items() if now - b.updated > _IDLE_DROP_SECONDS]:
            del self._buckets[owner]
