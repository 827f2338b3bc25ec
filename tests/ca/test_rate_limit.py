"""Per-node token buckets: bursts allowed up to the limit, then RESOURCE_EXHAUSTED territory."""

from __future__ import annotations

from ca.rate_limit import DEFAULT_BURST, DEFAULT_RATE, RateLimiter


def test_burst_then_refill() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert all(limiter.allow("node-1", 0.0) for _ in range(5))
    assert not limiter.allow("node-1", 0.0)
    assert limiter.allow("node-2", 0.0), "buckets are per node"
    assert limiter.allow("node-1", 0.1)  # one token back after 1/rate seconds
    assert not limiter.allow("node-1", 0.1)


def test_a_10000_workload_mesh_restarting_at_once_is_not_refused() -> None:
    # 10,000 workloads on 40 nodes (250 each) all asking within the same instant.
    limiter = RateLimiter(DEFAULT_RATE, DEFAULT_BURST)
    refused = sum(not limiter.allow(f"node-{n}", 0.0) for n in range(40) for _ in range(250))
    assert refused == 0
    # Even 1,000 workloads on one node, each asking once, fit in the burst.
    assert all(limiter.allow("big-node", 1.0) for _ in range(1000))


def test_idle_buckets_are_forgotten_when_the_table_is_full() -> None:
    limiter = RateLimiter(rate=1000, burst=10)
    import ca.rate_limit as rl

    old = rl._MAX_BUCKETS
    rl._MAX_BUCKETS = 3
    try:
        for n in range(3):
            limiter.allow(f"n{n}", 0.0)
        limiter.allow("n3", 10.0)
        assert len(limiter._buckets) == 1
    finally:
        rl._MAX_BUCKETS = old
