"""RotationSchedule: half-life renewal with bounded jitter, full-jitter backoff, expiry, all with injected time."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshward_common.errors import ConfigError
from node_agent.rotation import RotationSchedule, is_expired, seconds_until

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize(
    ("rand", "expected_fraction"),
    [
        (0.5, 0.5),  # the middle of the jitter window is exactly half-life
        (0.0, 0.4),  # earliest: half-life minus 10% of the lifetime
        (0.999999, 0.6),  # latest: half-life plus 10%
        (0.25, 0.45),
    ],
)
def test_renews_at_half_life_within_jitter_bounds(rand, expected_fraction):
    schedule = RotationSchedule()
    at = schedule.renew_at(T0, T0 + 10 * HOUR, rand)
    assert abs((at - T0) / (10 * HOUR) - expected_fraction) < 1e-5


def test_jitter_never_past_the_latest_fraction():
    schedule = RotationSchedule(renew_fraction=0.7, jitter_fraction=0.2, latest_fraction=0.75)
    at = schedule.renew_at(T0, T0 + 100 * HOUR, 0.999)
    assert at == T0 + 75 * HOUR


def test_every_jittered_renewal_stays_inside_the_window():
    schedule = RotationSchedule()
    lifetime = dt.timedelta(seconds=30)
    for i in range(100):
        at = schedule.renew_at(T0, T0 + lifetime, i / 100)
        assert T0 + lifetime * 0.4 <= at <= T0 + lifetime * 0.6


def test_zero_lifetime_renews_immediately():
    assert RotationSchedule().renew_at(T0, T0, 0.5) == T0


def test_should_renew_flips_at_the_earliest_jitter_point():
    schedule = RotationSchedule()
    end = T0 + 10 * HOUR
    assert not schedule.should_renew(T0, end, T0 + 3 * HOUR)
    assert schedule.should_renew(T0, end, T0 + 4 * HOUR)


@pytest.mark.parametrize(
    ("attempt", "cap"), [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (40, 30.0)]
)
def test_backoff_doubles_from_one_second_to_thirty(attempt, cap):
    schedule = RotationSchedule()
    assert schedule.backoff_cap(attempt) == cap
    assert schedule.backoff(attempt, 0.0) == 0.0  # full jitter: anywhere from zero...
    assert abs(schedule.backoff(attempt, 0.999999) - cap) < 1e-4  # ...up to the cap
    assert schedule.backoff(attempt, 0.5) == cap / 2


def test_retry_never_sleeps_past_expiry_of_the_held_svid():
    schedule = RotationSchedule()
    now = T0
    delay = schedule.next_retry_delay(10, 0.99, now, now + dt.timedelta(seconds=3))
    assert delay == 3.0
    # once expired, the plain backoff applies (the caller reports the expiry)
    assert schedule.next_retry_delay(2, 0.5, now, now - HOUR) == 2.0
    assert schedule.next_retry_delay(2, 0.5, now, None) == 2.0


def test_expiry_and_time_left():
    assert not is_expired(T0 + HOUR, T0)
    assert is_expired(T0 + HOUR, T0 + HOUR)
    assert seconds_until(T0 + HOUR, T0) == 3600
    assert seconds_until(T0, T0 + HOUR) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"renew_fraction": 1.0},
        {"jitter_fraction": 0.6},
        {"latest_fraction": 0.4},
        {"backoff_initial": 0},
        {"backoff_initial": 60, "backoff_max": 30},
    ],
)
def test_bad_schedules_are_refused(kwargs):
    with pytest.raises(ConfigError):
        RotationSchedule(**kwargs)


def test_random_input_is_checked():
    with pytest.raises(ValueError, match="rand"):
        RotationSchedule().renew_at(T0, T0 + HOUR, 1.0)
    with pytest.raises(ValueError, match="attempt"):
        RotationSchedule().backoff(-1, 0.5)


@given(
    lifetime_s=st.integers(min_value=1, max_value=10 * 365 * 86400),
    rand=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    attempt=st.integers(min_value=0, max_value=1000),
)
def test_schedule_bounds_hold_for_any_lifetime(lifetime_s, rand, attempt):
    schedule = RotationSchedule()
    lifetime = dt.timedelta(seconds=lifetime_s)
    at = schedule.renew_at(T0, T0 + lifetime, rand)
    # never before 40% nor after 60% of the lifetime (and so never after 75%, nor after expiry)
    assert T0 + lifetime * 0.4 - dt.timedelta(microseconds=1) <= at
    assert at <= T0 + lifetime * 0.6 + dt.timedelta(microseconds=1)
    assert 0.0 <= schedule.backoff(attempt, rand) <= min(30.0, 2.0**attempt)
