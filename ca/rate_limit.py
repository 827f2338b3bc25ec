"""Per-node token buckets, shared by every worker of the CA.

Defaults: 500 requests/s sustained, bursts of 1000, per node. A node hosting 250 workloads that all
restart at once asks for 250 certificates; a 10,000-workload mesh spread over 40+ nodes asks each
node's bucket for far less than the burst, so a mass restart is never refused.

`refill` is the rule, pure (`now` in seconds of CLOCK_MONOTONIC, which every process on the host
reads alike). The buckets live in a small file every worker maps into memory (`rate-buckets`, in
the state dir): a fixed table of slots keyed by a digest of the node name, each draw done under an
exclusive flock, so a node that spreads its calls over several connections, and so over several
workers, still draws from one bucket. A draw costs a few microseconds; buckets are not worth
keeping across restarts, so the supervisor empties the table when it starts.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import struct
from pathlib import Path

from ca.store import Flock
from meshward_common.errors import ConfigError

DEFAULT_RATE = 500.0
DEFAULT_BURST = 1000.0
BUCKETS_FILE = "rate-buckets"
SLOTS = 1 << 16  # far more nodes than a control plane serves; 2 MiB
PROBES = 32  # slots tried from a key's home slot before the stalest one is reused
_SLOT = struct.Struct("<16sdd")  # key digest, tokens, stamp
_EMPTY = bytes(16)


def refill(tokens: float, stamp: float, now: float, rate: float, burst: float) -> float:
    """The bucket's tokens at `now`. A process that read the clock just before another one drew
    may come second: time from the past neither refills nor drains."""
    return min(burst, tokens + max(0.0, now - stamp) * rate)


@functools.lru_cache(maxsize=4096)
def _slot_key(key: str) -> tuple[bytes, int]:
    """A key's digest and home slot (a node asks many times: computed once per node)."""
    digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
    return digest, int.from_bytes(digest[:8], "little") % SLOTS


class RateLimiter:
    def __init__(self, state_dir: Path, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST):
        self.rate = rate
        self.burst = burst
        self.path = state_dir / BUCKETS_FILE
        size = SLOTS * _SLOT.size
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size != size:
                with self._locked():
                    os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot map the rate-limit table: {exc}") from exc

    def _locked(self) -> Flock:
        return Flock(self._fd)

    def allow(self, key: str, now: float) -> bool:
        """Take one token from `key`'s bucket; False (and nothing taken) when it is empty."""
        digest, home = _slot_key(key)
        with self._locked():
            offset, tokens, stamp = self._find(digest, home, now)
            tokens = refill(tokens, stamp, now, self.rate, self.burst)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
                _SLOT.pack_into(self._map, offset, digest, tokens, max(stamp, now))
            return allowed

    def _find(self, digest: bytes, home: int, now: float) -> tuple[int, float, float]:
        """(offset, tokens, stamp) of `digest`'s slot; a new slot starts with a full bucket."""
        stalest, stalest_stamp = -1, float("inf")
        for probe in range(PROBES):
            offset = ((home + probe) % SLOTS) * _SLOT.size
            key, tokens, stamp = _SLOT.unpack_from(self._map, offset)
            if key == digest:
                return offset, tokens, stamp
            if key == _EMPTY:
                return offset, self.burst, now
            if stamp < stalest_stamp:
                stalest, stalest_stamp = offset, stamp
        # Every slot near home is taken: reuse the one idle longest (refilled by now, most likely).
        return stalest, self.burst, now

    def clear(self) -> None:
        with self._locked():
            self._map[:] = bytes(len(self._map))

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def clear_rate_limits(state_dir: Path) -> None:
    """Empty every bucket (at start: the stamps are CLOCK_MONOTONIC, meaningless after a reboot)."""
    limiter = RateLimiter(state_dir)
    try:
        limiter.clear()
    finally:
        limiter.close()
