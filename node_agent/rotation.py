"""When to renew an SVID and how long to wait after a failed attempt: pure functions of time.

Like SPIRE's rotationutil: renew at half of the certificate's lifetime, spread by a little jitter so
that a node's workloads (and a fleet's nodes) do not all call the CA in the same second, and never
later than three quarters of the lifetime so a slow CA still leaves room for retries before expiry.
Retries back off exponentially with full jitter (AWS's "full jitter": uniform in [0, cap]), which
spreads a thundering herd after a CA outage better than fixed or equal jitter. Randomness is passed
in as a number in [0, 1), so tests pin it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from meshward_common.errors import ConfigError


@dataclass(frozen=True)
class RotationSchedule:
    renew_fraction: float = 0.5  # of the lifetime, measured from notBefore
    jitter_fraction: float = 0.1  # +/- this fraction of the lifetime around renew_fraction
    latest_fraction: float = 0.75  # never renew later than this
    backoff_initial: float = 1.0  # seconds
    backoff_max: float = 30.0  # seconds

    def __post_init__(self) -> None:
        if not 0 < self.renew_fraction < 1:
            raise ConfigError(f"renew_fraction {self.renew_fraction} must be in (0, 1)")
        if not 0 <= self.jitter_fraction < self.renew_fraction:
            raise ConfigError(f"jitter_fraction {self.jitter_fraction} must be in [0, renew)")
        if not self.renew_fraction <= self.latest_fraction < 1:
            raise ConfigError(f"latest_fraction {self.latest_fraction} must be in [renew, 1)")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ConfigError("backoff_initial must be positive and at most backoff_max")

    def renew_at(self, not_before: dt.datetime, not_after: dt.datetime, rand: float) -> dt.datetime:
        """The moment to renew a certificate valid from `not_before` to `not_after`.

        `rand` in [0, 1) picks a point in [renew - jitter, renew + jitter] of the lifetime,
        clamped to `latest_fraction`. CAs backdate notBefore (clock skew), which for short TTLs
        would put half-life in the past: callers pass the later of notBefore and the time they
        received the certificate (see `effective_start`).
        """
        _check_rand(rand)
        lifetime = not_after - not_before
        if lifetime <= dt.timedelta(0):
            return not_before
        fraction = self.renew_fraction + self.jitter_fraction * (2 * rand - 1)
        fraction = min(max(fraction, 0.0), self.latest_fraction)
        return not_before + lifetime * fraction

    def should_renew(
        self, not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime
    ) -> bool:
        """True once `now` is past the earliest point the jittered schedule could choose."""
        earliest = self.renew_at(not_before, not_after, 0.0)
        return now >= earliest

    def backoff(self, attempt: int, rand: float) -> float:
        """Seconds to wait before retry number `attempt` (0 = first retry): full jitter."""
        _check_rand(rand)
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        return self.backoff_cap(attempt) * rand

    def backoff_cap(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_initial * (2.0 ** min(max(attempt, 0), 32)))

    def next_retry_delay(
        self, attempt: int, rand: float, now: dt.datetime, not_after: dt.datetime | None
    ) -> float:
        """Backoff for `attempt`, but never sleep past the expiry of what we still hold.

        Waking at expiry lets the caller stop serving an expired SVID and report it promptly.
        """
        delay = self.backoff(attempt, rand)
        if not_after is not None:
            remaining = (not_after - now).total_seconds()
            if remaining > 0:
                delay = min(delay, remaining)
        return max(delay, 0.0)


def effective_start(not_before: dt.datetime, received_at: dt.datetime | None) -> dt.datetime:
    """Where the usable lifetime starts: a backdated notBefore does not count."""
    return not_before if received_at is None else max(not_before, received_at)


def is_expired(not_after: dt.datetime, now: dt.datetime) -> bool:
    return now >= not_after


def seconds_until(when: dt.datetime, now: dt.datetime) -> float:
    return max((when - now).total_seconds(), 0.0)


def _check_rand(rand: float) -> None:
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand}")
