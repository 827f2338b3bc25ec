"""Per-caller token buckets (pure: `now` is passed in, in seconds from any monotonic clock).

Defaults: 500 requests/s sustained, bursts of 1000, per node. A node hosting 250 workloads that all
restart at once asks for 250 certificates; a 10,000-workload mesh spread over 40+ nodes asks each
node's bucket for far less than the burst, so a mass restart is never refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_RATE = 500.0
DEFAULT_BURST = 1000.0
# Forget callers idle long enough for their bucket to be full again.
_MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full(self, now: float) -> None:
        refill = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < refill}
