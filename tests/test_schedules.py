"""The cron DSL and schedule maths: documented outputs, errors at definition time, DST."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from croniter import croniter
from hypothesis import given
from hypothesis import strategies as st

import soniq
from soniq.errors import ConfigurationError
from soniq.schedules import (
    cron,
    daily,
    every,
    monthly,
    next_run,
    normalize_schedule,
    weekly,
)

UTC = timezone.utc
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
DAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]


# --- documented outputs -------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (lambda: every(5).minutes(), "*/5 * * * *"),
        (lambda: every(2).hours(), "0 */2 * * *"),
        (lambda: every(30).seconds(), timedelta(seconds=30)),
        (lambda: daily().at("09:00"), "0 9 * * *"),
        (lambda: weekly().on("monday").at("09:00"), "0 9 * * 1"),
        (lambda: monthly().on_day(15).at("12:00"), "0 12 15 * *"),
        (lambda: cron("*/15 * * * *"), "*/15 * * * *"),
    ],
)
def test_documented_examples(built, expected):
    result = built()
    assert result == expected
    assert type(result) is type(expected)


def test_package_root_reexports_the_dsl():
    assert soniq.every is every and soniq.daily is daily and soniq.cron is cron
    assert soniq.weekly is weekly and soniq.monthly is monthly


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (lambda: every(1).minutes(), "* * * * *"),
        (lambda: every(60).minutes(), "0 * * * *"),
        (lambda: every(120).minutes(), "0 */2 * * *"),
        (lambda: every(1).hours(), "0 * * * *"),
        (lambda: every(24).hours(), "0 0 * * *"),
        (lambda: every(0.5).seconds(), timedelta(milliseconds=500)),
        (lambda: str(daily()), "0 0 * * *"),
        (lambda: str(weekly()), "0 0 * * 0"),
        (lambda: str(monthly()), "0 0 1 * *"),
        (lambda: daily().at("7:05"), "5 7 * * *"),
        (lambda: weekly().on("FRI", "Monday").at("08:30"), "30 8 * * 1,5"),
        (lambda: weekly().at("06:00"), "0 6 * * 0"),
        (lambda: cron("  0   9 * *  1 "), "0 9 * * 1"),
        (lambda: cron("@hourly"), "0 * * * *"),
        (lambda: cron("@daily"), "0 0 * * *"),
    ],
)
def test_edge_forms(built, expected):
    assert built() == expected


def test_builders_are_immutable():
    base = weekly()
    base.on("monday")
    assert str(base) == "0 0 * * 0"


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (lambda: every(90).minutes(), "every=timedelta(minutes=90)"),
        (lambda: every(7).minutes(), "does not divide 60"),
        (lambda: every(5).hours(), "every=timedelta(hours=5)"),
        (lambda: every(1.5).minutes(), "whole number"),
        (lambda: every(0), "positive"),
        (lambda: every(-3), "positive"),
        (lambda: every(float("inf")), "positive"),
        (lambda: every(True), "positive"),
        (lambda: daily().at("25:00"), "00-23"),
        (lambda: daily().at("09:60"), "00-59"),
        (lambda: daily().at("9am"), "HH:MM"),
        (lambda: daily().at(900), "HH:MM"),  # type: ignore[arg-type]
        (lambda: weekly().on("funday"), "funday"),
        (lambda: weekly().on(), "at least one day"),
        (lambda: monthly().on_day(32), "1 to 31"),
        (lambda: monthly().on_day(0), "1 to 31"),
        (lambda: cron("* * *"), "5-field"),
        (lambda: cron("61 * * * *"), "5-field"),
        (lambda: cron("* * * * * *"), "5-field"),
        (lambda: cron("@reboot"), "5-field"),
        (lambda: cron("0 0 30 2 *"), "never matches"),
        (lambda: cron(5), "string"),  # type: ignore[arg-type]
    ],
)
def test_invalid_input_fails_at_definition_time(bad, needle):
    with pytest.raises(ConfigurationError) as info:
        bad()
    assert isinstance(info.value, ValueError)
    assert needle in str(info.value)


# --- normalize_schedule -------------------------------------------------------


def test_normalize_accepts_strings_builders_and_intervals():
    assert normalize_schedule(cron="0 9 * * *") == ("0 9 * * *", None)
    assert normalize_schedule(cron=daily()) == ("0 0 * * *", None)
    assert normalize_schedule(cron=weekly().on("tue")) == ("0 0 * * 2", None)
    assert normalize_schedule(every=timedelta(minutes=2)) == (None, 120.0)
    assert normalize_schedule(every=every(30).seconds()) == (None, 30.0)
    assert normalize_schedule(every=5) == (None, 5.0)
    assert normalize_schedule(every=0.25) == (None, 0.25)


class _CronLike:
    def __str__(self) -> str:
        return "*/10 * * * *"


def test_normalize_accepts_any_object_whose_str_is_cron():
    assert normalize_schedule(cron=_CronLike()) == ("*/10 * * * *", None)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({}, "exactly one"),
        ({"cron": "* * * * *", "every": 5}, "exactly one"),
        ({"cron": timedelta(seconds=30)}, "every="),
        ({"cron": every(5)}, "finish a builder"),
        ({"cron": "not cron"}, "5-field"),
        ({"every": 0}, "positive"),
        ({"every": timedelta(0)}, "positive"),
        ({"every": "5m"}, "positive"),
        ({"every": False}, "positive"),
    ],
)
def test_normalize_rejects(kwargs, needle):
    with pytest.raises(ConfigurationError) as info:
        normalize_schedule(**kwargs)
    assert needle in str(info.value)


# --- next_run -----------------------------------------------------------------


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_next_run_cron_in_utc():
    assert next_run("0 9 * * *", None, utc(2024, 1, 1, 10)) == utc(2024, 1, 2, 9)
    assert next_run("0 9 * * *", None, utc(2024, 1, 1, 8, 59, 59)) == utc(2024, 1, 1, 9)


def test_next_run_is_strictly_after():
    assert next_run("0 9 * * *", None, utc(2024, 1, 1, 9)) == utc(2024, 1, 2, 9)


def test_next_run_every_adds_the_interval():
    assert next_run(None, 90.0, utc(2024, 1, 1, 9)) == utc(2024, 1, 1, 9, 1, 30)


def test_next_run_naive_after_is_utc():
    assert next_run("0 9 * * *", None, datetime(2024, 1, 1, 10)) == utc(2024, 1, 2, 9)


def test_next_run_evaluates_cron_in_the_zone():
    # 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
    assert next_run("0 9 * * *", None, utc(2024, 1, 10), "Europe/Berlin") == utc(2024, 1, 10, 8)
    assert next_run("0 9 * * *", None, utc(2024, 7, 10), "Europe/Berlin") == utc(2024, 7, 10, 7)
    assert next_run("0 9 * * *", None, utc(2024, 7, 10), "Asia/Kolkata") == utc(2024, 7, 10, 3, 30)


def test_next_run_returns_aware_utc():
    result = next_run("0 9 * * *", None, utc(2024, 7, 10), "America/New_York")
    assert result.utcoffset() == timedelta(0)
    assert result == utc(2024, 7, 10, 13)


def test_dst_spring_forward_daily_run_keeps_local_time():
    # Berlin jumps 02:00 -> 03:00 on 2024-03-31: 09:00 local moves from 08:00Z to 07:00Z.
    runs = _chain("0 9 * * *", utc(2024, 3, 29, 12), "Europe/Berlin", 3)
    assert runs == [utc(2024, 3, 30, 8), utc(2024, 3, 31, 7), utc(2024, 4, 1, 7)]


def test_dst_spring_forward_run_in_the_gap_fires_once_after_the_jump():
    runs = _chain("30 2 * * *", utc(2024, 3, 29, 12), "Europe/Berlin", 3)
    # 02:30 does not exist on the 31st: it fires at 03:00 CEST (01:00Z), then back to normal.
    assert runs == [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)]


def test_dst_fall_back_fixed_time_fires_once():
    # Berlin repeats 02:00-03:00 on 2024-10-27; a 02:30 job runs in the first pass only.
    runs = _chain("30 2 * * *", utc(2024, 10, 26, 12), "Europe/Berlin", 2)
    assert runs == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


def test_dst_fall_back_hourly_wildcard_fires_every_real_hour():
    runs = _chain("0 * * * *", utc(2024, 10, 26, 23, 30), "Europe/Berlin", 4)
    assert runs == [utc(2024, 10, 27, h) for h in (0, 1, 2, 3)]


def _chain(expr: str, start: datetime, tz: str, n: int) -> list[datetime]:
    runs, after = [], start
    for _ in range(n):
        after = next_run(expr, None, after, tz)
        runs.append(after)
    return runs


def test_next_run_rejects_unknown_zone_and_bad_arguments():
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        next_run("* * * * *", None, utc(2024, 1, 1), "Mars/Olympus")
    with pytest.raises(ConfigurationError, match="exactly one"):
        next_run("* * * * *", 5.0, utc(2024, 1, 1))
    with pytest.raises(ConfigurationError, match="exactly one"):
        next_run(None, None, utc(2024, 1, 1))


# --- properties -----------------------------------------------------------------

hours = st.integers(0, 23)
minutes = st.integers(0, 59)
times = st.tuples(hours, minutes).map(lambda hm: f"{hm[0]:02d}:{hm[1]:02d}")
minute_steps = st.sampled_from([n for n in range(1, 61) if 60 % n == 0])
hour_steps = st.sampled_from([n for n in range(1, 25) if 24 % n == 0])
builder_outputs = st.one_of(
    minute_steps.map(lambda n: every(n).minutes()),
    hour_steps.map(lambda n: every(n).hours()),
    times.map(lambda t: daily().at(t)),
    st.tuples(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7), times).map(
        lambda dt: weekly().on(*dt[0]).at(dt[1])
    ),
    st.tuples(st.integers(1, 28), times).map(lambda dt: monthly().on_day(dt[0]).at(dt[1])),
)
afters = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


@given(builder_outputs)
def test_every_builder_output_is_valid_cron(expr):
    assert isinstance(expr, str)
    assert croniter.is_valid(expr)
    assert cron(expr) == expr


@given(hours, minutes)
def test_at_round_trips_hour_and_minute(hour, minute):
    expr = daily().at(f"{hour:02d}:{minute:02d}")
    fields = expr.split()
    assert (int(fields[1]), int(fields[0])) == (hour, minute)
    assert weekly().on("monday").at(f"{hour}:{minute:02d}").split()[:2] == fields[:2]


@given(builder_outputs, afters)
def test_next_run_matches_croniter_in_utc(expr, after):
    expected = croniter(expr, after).get_next(datetime)
    assert next_run(expr, None, after) == expected


@given(builder_outputs, afters, st.sampled_from(ZONES))
def test_next_run_is_strictly_after_and_aware_utc(expr, after, tz):
    result = next_run(expr, None, after, tz)
    assert result > after
    assert result.tzinfo is not None and result.utcoffset() == timedelta(0)


@given(
    builder_outputs, afters, st.timedeltas(timedelta(0), timedelta(days=3)), st.sampled_from(ZONES)
)
def test_next_run_is_monotonic(expr, after, delta, tz):
    assert next_run(expr, None, after, tz) <= next_run(expr, None, after + delta, tz)


@given(builder_outputs, afters, st.sampled_from(ZONES))
def test_no_run_is_skipped_between_after_and_next(expr, after, tz):
    """Nothing fires between ``after`` and its next run: the next run of any instant in
    between is that same run."""
    result = next_run(expr, None, after, tz)
    midpoint = after + (result - after) / 2
    assert next_run(expr, None, midpoint, tz) == result


@given(st.floats(0.001, 1e7), afters)
def test_next_run_every_is_after_plus_interval(seconds, after):
    assert next_run(None, seconds, after) == after + timedelta(seconds=seconds)
