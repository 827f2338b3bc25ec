"""Per-node token buckets in the table every worker maps: bursts allowed up to the limit, then
RESOURCE_EXHAUSTED territory; one bucket per node whichever connection (or process) asks."""

from __future__ import annotations

from pathlib import Path

import pytest

import ca.rate_limit as rl
from ca.rate_limit import DEFAULT_BURST, DEFAULT_RATE, RateLimiter, clear_rate_limits, refill


def test_refill_rule() -> None:
    assert refill(0.0, 10.0, 10.5, rate=2, burst=5) == 1.0
    assert refill(0.0, 10.0, 20.0, rate=2, burst=5) == 5.0, "never beyond the burst"
    assert refill(3.0, 10.0, 9.0, rate=2, burst=5) == 3.0, "time from the past refills nothing"


def test_burst_then_refill(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path, rate=10, burst=5)
    assert all(limiter.allow("node-1", 0.0) for _ in range(5))
    assert not limiter.allow("node-1", 0.0)
    assert limiter.allow("node-2", 0.0), "buckets are per node"
    assert limiter.allow("node-1", 0.2)  # two tokens back after 2/rate seconds
    assert limiter.allow("node-1", 0.2)
    assert not limiter.allow("node-1", 0.2)


def test_a_draw_with_an_earlier_clock_does_not_move_the_stamp_back(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path, rate=10, burst=2)
    assert limiter.allow("node-1", 5.0)
    assert limiter.allow("node-1", 4.0), "a token left is taken at any time"
    assert not limiter.allow("node-1", 5.05), "the stamp stayed at 5.0"
    assert limiter.allow("node-1", 5.2)


def test_two_mappings_of_the_table_draw_from_one_bucket(tmp_path: Path) -> None:
    one = RateLimiter(tmp_path, rate=1, burst=4)
    two = RateLimiter(tmp_path, rate=1, burst=4)
    results = [limiter.allow("node-1", 0.0) for limiter in (one, two, one, two, one, two)]
    assert results == [True, True, True, True, False, False]


def test_clear_empties_every_bucket(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path, rate=1, burst=1)
    assert limiter.allow("node-1", 0.0)
    assert not limiter.allow("node-1", 0.0)
    clear_rate_limits(tmp_path)
    assert limiter.allow("node-1", 0.0)
    assert (tmp_path / "rate-buckets").stat().st_mode & 0o077 == 0


def test_a_10000_workload_mesh_restarting_at_once_is_not_refused(tmp_path: Path) -> None:
    # 10,000 workloads on 40 nodes (250 each) all asking within the same instant.
    limiter = RateLimiter(tmp_path, DEFAULT_RATE, DEFAULT_BURST)
    refused = sum(not limiter.allow(f"node-{n}", 0.0) for n in range(40) for _ in range(250))
    assert refused == 0
    # Even 1,000 workloads on one node, each asking once, fit in the burst.
    assert all(limiter.allow("big-node", 1.0) for _ in range(1000))


def test_a_crowded_neighbourhood_reuses_the_stalest_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rl, "SLOTS", 4)
    monkeypatch.setattr(rl, "PROBES", 4)
    limiter = RateLimiter(tmp_path, rate=1, burst=1)
    for n, now in enumerate((0.0, 1.0, 2.0, 3.0)):
        assert limiter.allow(f"n{n}", now)
    assert not limiter.allow("n3", 3.0), "n3 has its own, empty bucket"
    assert limiter.allow("n4", 4.0), "n4 takes n0's slot, idle the longest"
    assert limiter.allow("n0", 4.0), "and n0, forgotten, starts full again (in n1's slot)"
