"""The cron DSL: small builders that return plain cron strings, plus schedule maths.

Builders exist so that a schedule reads like English at the definition site and
fails *there* (with a ``ConfigurationError``) instead of in the scheduler
process hours later. Every terminal returns a plain ``str`` (or a ``timedelta``
for sub-minute intervals), so the result can be stored, compared and passed to
``@app.periodic(cron=...)`` or ``app.scheduler.add(cron=...)`` as-is.

Example::

    from soniq import cron, daily, every, monthly, weekly

    every(5).minutes()                    # "*/5 * * * *"
    every(2).hours()                      # "0 */2 * * *"
    every(30).seconds()                   # timedelta(seconds=30)
    daily().at("09:00")                   # "0 9 * * *"
    weekly().on("monday").at("09:00")     # "0 9 * * 1"
    monthly().on_day(15).at("12:00")      # "0 12 15 * *"
    cron("*/15 * * * *")                  # "*/15 * * * *"

This module is pure: no I/O, no clocks, no module-level mutable state.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from soniq.errors import ConfigurationError, ConfigurationTypeError
from soniq.utils import to_utc

_WEEKDAYS = MappingProxyType({
    "sunday": 0, "monday": 1, "tuesday": 2, "wednesday": 3,
    "thursday": 4, "friday": 5, "saturday": 6,
})  # fmt: skip
_MACROS = MappingProxyType(
    {
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    }
)
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")
# Any fixed date croniter can search forward from, to prove an expression ever fires.
_PROBE = datetime(2000, 1, 1, tzinfo=timezone.utc)
# A DST repeat or gap is at most a few hours; this bounds the skip loop in next_run.
_MAX_SKIPS = 500


# --- builders ---------------------------------------------------------------


@dataclass(frozen=True)
class Every:
    """``every(n)``: pick a unit. Only even divisions of the hour/day are cron-expressible.

    ``*/7`` in the minute field restarts at every hour (``:56`` → ``:00`` is 4
    minutes), so such steps are refused with a pointer to ``every=timedelta(...)``
    rather than silently firing unevenly.

    Example::

        every(15).minutes()   # "*/15 * * * *"
    """

    n: float

    def seconds(self) -> timedelta:
        """Sub-minute intervals are not cron; pass the result as ``every=``.

        Example::

            @app.periodic(every=every(30).seconds())
            async def flush_metrics(): ...
        """
        return timedelta(seconds=self.n)

    def minutes(self) -> str:
        """``*/n`` in the minute field; ``n`` must divide 60 (or be whole hours)."""
        n = _whole(self.n, "minutes")
        if n % 60 == 0:
            return Every(n // 60).hours()
        if 60 % n:
            raise _uneven(n, "minutes", "60", f"timedelta(minutes={n})")
        return "* * * * *" if n == 1 else f"*/{n} * * * *"

    def hours(self) -> str:
        """On the hour, every ``n`` hours; ``n`` must divide 24."""
        n = _whole(self.n, "hours")
        if 24 % n:
            raise _uneven(n, "hours", "24", f"timedelta(hours={n})")
        if n == 24:
            return "0 0 * * *"
        return "0 * * * *" if n == 1 else f"0 */{n} * * *"

    def days(self) -> str:
        """At midnight every ``n`` days of the month: ``"0 0 */n * *"``.

        Cron's day step restarts on the 1st, so ``every(3).days()`` fires on the 1st,
        4th, ... 31st and again on the 1st; use ``every=timedelta(days=3)`` for an
        exact interval. (The published package's builder; kept for its users.)

        Example::

            every(2).days()   # "0 0 */2 * *"
        """
        n = _whole(self.n, "days")
        if n > 31:
            raise ConfigurationError(
                f"every({n}).days() exceeds a month; use every=timedelta(days={n}) instead"
            )
        return "0 0 * * *" if n == 1 else f"0 0 */{n} * *"


def every(n: float) -> Every:
    """Start an interval schedule: ``every(5).minutes()``, ``every(30).seconds()``.

    Example::

        @app.periodic(cron=every(10).minutes(), name="cleanup")
        async def cleanup(): ...
    """
    if not _positive(n):
        raise ConfigurationError(f"every(n) needs a positive number, got {n!r}")
    return Every(n)


@dataclass(frozen=True)
class Daily:
    """``daily()``: once a day. ``str(daily())`` is midnight, like cron's ``@daily``."""

    def at(self, time: str) -> str:
        """Fire at ``"HH:MM"`` (24-hour clock) in the schedule's time zone.

        Example::

            daily().at("09:00")   # "0 9 * * *"
        """
        hour, minute = parse_time(time)
        return f"{minute} {hour} * * *"

    def __str__(self) -> str:
        return self.at("00:00")


def daily() -> Daily:
    """Once a day; finish with ``.at("HH:MM")``.

    Example::

        @app.periodic(cron=daily().at("09:00"), name="reports.daily")
        async def daily_report(): ...
    """
    return Daily()


@dataclass(frozen=True)
class Weekly:
    """``weekly()``: chosen weekdays (default Sunday, like cron's ``@weekly``)."""

    days: tuple[int, ...] = (0,)

    def on(self, *days: str | int) -> Weekly:
        """Weekday names, full or three-letter, any case: ``on("monday", "fri")``; or
        cron numbers, 0 = Sunday ... 6 = Saturday: ``on(1)``.

        Example::

            weekly().on("monday").at("09:00")   # "0 9 * * 1"
        """
        if not days:
            raise ConfigurationError('weekly().on(...) needs at least one day, e.g. on("monday")')
        numbers = sorted({_weekday(day) for day in days})
        return Weekly(tuple(numbers))

    def at(self, time: str) -> str:
        """Fire at ``"HH:MM"`` on the chosen days."""
        hour, minute = parse_time(time)
        return f"{minute} {hour} * * {','.join(map(str, self.days))}"

    def __str__(self) -> str:
        return self.at("00:00")


def weekly() -> Weekly:
    """Once a week; ``weekly().on("monday").at("09:00")``.

    Example::

        weekly().on("monday", "thursday").at("08:30")   # "30 8 * * 1,4"
    """
    return Weekly()


@dataclass(frozen=True)
class Monthly:
    """``monthly()``: a day of the month (default the 1st, like cron's ``@monthly``).

    Days 29-31 only fire in months that have them; that is how cron behaves.
    """

    day: int = 1

    def on_day(self, day: int) -> Monthly:
        """Day of the month, 1-31.

        Example::

            monthly().on_day(15).at("12:00")   # "0 12 15 * *"
        """
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
            raise ConfigurationError(f"on_day() takes a day of the month from 1 to 31, got {day!r}")
        return Monthly(day)

    def at(self, time: str) -> str:
        """Fire at ``"HH:MM"`` on the chosen day."""
        hour, minute = parse_time(time)
        return f"{minute} {hour} {self.day} * *"

    def __str__(self) -> str:
        return self.at("00:00")


def monthly() -> Monthly:
    """Once a month; ``monthly().on_day(15).at("12:00")``.

    Example::

        @app.periodic(cron=monthly().on_day(1).at("06:00"), name="invoices.monthly")
        async def monthly_invoices(): ...
    """
    return Monthly()


def cron(expression: str) -> str:
    """Validate a 5-field cron expression now and return it (whitespace normalised).

    The ``@daily``-style macros are expanded to their 5-field form.

    Example::

        cron("*/15 * * * *")   # "*/15 * * * *"
        cron("@hourly")        # "0 * * * *"
    """
    if not isinstance(expression, str):
        raise ConfigurationTypeError(
            f'cron() takes a string, got {type(expression).__name__}; e.g. cron("0 9 * * *")'
        )
    text = " ".join(expression.split())
    text = _MACROS.get(text.lower(), text)
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise ConfigurationError(
            f"{expression!r} is not a valid 5-field cron expression "
            '("minute hour day-of-month month day-of-week", e.g. "*/15 * * * *")'
        )
    _check_fires(text, expression)
    return text


def parse_time(time: str) -> tuple[int, int]:
    """``"HH:MM"`` → ``(hour, minute)``, or a ``ConfigurationError`` saying what is wrong."""
    match = _TIME.match(time) if isinstance(time, str) else None
    if match is None:
        raise ConfigurationError(f'at() takes a 24-hour "HH:MM" time such as "09:00", got {time!r}')
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise ConfigurationError(
            f"at({time!r}) is not a time of day; hours are 00-23 and minutes 00-59"
        )
    return hour, minute


# --- normalisation and maths ------------------------------------------------


def normalize_schedule(cron: Any = None, every: Any = None) -> tuple[str | None, float | None]:
    """Turn ``cron=`` / ``every=`` arguments into ``(cron_string, every_seconds)``.

    Exactly one must be given. ``cron`` is a string or any object whose ``str()``
    is one (the builders); ``every`` is a ``timedelta`` or a number of seconds.

    Example::

        normalize_schedule(cron=daily().at("09:00"))       # ("0 9 * * *", None)
        normalize_schedule(every=timedelta(seconds=30))    # (None, 30.0)
    """
    if (cron is None) == (every is None):
        raise ConfigurationError(
            "Specify exactly one of cron= or every= (e.g. cron=daily().at('09:00') "
            "or every=timedelta(minutes=5)); they cannot be combined."
        )
    if every is not None:
        return None, _every_seconds(every)
    if isinstance(cron, timedelta):
        raise ConfigurationError(
            f"cron= got an interval ({cron!r}); pass intervals as every= instead, "
            "e.g. every=every(30).seconds()"
        )
    return _cron_text(cron), None


def next_run(
    cron: str | None, every_seconds: float | None, after: datetime, tz: str = "UTC"
) -> datetime:
    """The first run strictly after ``after``, as an aware UTC datetime.

    A cron expression is evaluated on the wall clock of the IANA zone ``tz``,
    so ``"0 9 * * *"`` in ``"Europe/Berlin"`` stays at 09:00 local across DST.
    Around DST changes it behaves like classic cron: a fixed-time run that falls
    into the skipped hour fires right after the jump, and one that falls into
    the repeated hour fires once; runs with ``*`` as the hour fire every real hour.
    An interval is simply ``after + every_seconds``. Naive ``after`` is UTC.

    Example::

        next_run("0 9 * * *", None, datetime(2024, 1, 1, 10, tzinfo=timezone.utc))
        # datetime(2024, 1, 2, 9, 0, tzinfo=timezone.utc)
    """
    after = to_utc(after)
    if (cron is None) == (every_seconds is None):
        raise ConfigurationError("next_run() needs exactly one of a cron expression or an interval")
    if every_seconds is not None:
        return after + timedelta(seconds=_every_seconds(every_seconds))
    assert cron is not None
    return _next_cron(cron, after, zone(tz))


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or a ``ConfigurationError`` naming the problem."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(
            f"Unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


def _next_cron(expression: str, after: datetime, tz: ZoneInfo) -> datetime:
    fixed_hour = expression.split()[1] != "*"
    cursor = after.astimezone(tz)
    for _ in range(_MAX_SKIPS):
        candidate = croniter(expression, cursor).get_next(datetime)
        # Round-trip through UTC so ``fold`` tells the second pass of a repeated hour.
        local = candidate.astimezone(timezone.utc).astimezone(tz)
        if not (fixed_hour and _is_repeat(local)):
            return local.astimezone(timezone.utc)
        cursor = local
    raise ConfigurationError(f"cron {expression!r} found no run after {after.isoformat()}")


def _is_repeat(local: datetime) -> bool:
    """The wall-clock time already happened once, earlier, in the hour DST repeats."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _every_seconds(every: Any) -> float:
    if isinstance(every, bool) or not isinstance(every, (timedelta, int, float)):
        raise ConfigurationTypeError(
            f"every= must be a positive timedelta or number of seconds, got {type(every).__name__}"
        )
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if not _positive(seconds):
        raise ConfigurationError(
            f"every= must be a positive timedelta or number of seconds, got {every!r}"
        )
    return float(seconds)


def _positive(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > 0


def _cron_text(value: Any) -> str:
    if isinstance(value, (int, float, Every)):
        raise ConfigurationError(
            f"cron= takes a cron string or builder, got {value!r}; "
            "finish a builder with a unit, e.g. every(5).minutes()"
        )
    return cron(str(value))


def _check_fires(text: str, original: str) -> None:
    try:
        croniter(text, _PROBE).get_next(datetime)
    except (CroniterError, ValueError, KeyError):
        raise ConfigurationError(
            f"cron {original!r} never matches a real date (e.g. February 30); check its fields"
        ) from None


def _whole(n: float, unit: str) -> int:
    if isinstance(n, float) and not n.is_integer():
        raise ConfigurationError(
            f"every({n}).{unit}() needs a whole number; use every=timedelta({unit}={n}) instead"
        )
    return int(n)


def _uneven(n: int, unit: str, span: str, hint: str) -> ConfigurationError:
    return ConfigurationError(
        f"every({n}).{unit}() is not expressible as a cron step: {n} does not divide {span}, "
        f"so the runs would be uneven. Use every={hint} for an exact interval."
    )


def _weekday(day: str | int) -> int:
    if isinstance(day, int) and not isinstance(day, bool):
        if 0 <= day <= 6:
            return day
        raise ConfigurationError(f"Weekday number {day} is out of range; use 0 (Sunday) to 6")
    if not isinstance(day, str):
        raise ConfigurationTypeError(
            f"weekly().on() takes weekday names or numbers 0-6, not {type(day).__name__}"
        )
    key = day.strip().lower()
    for name, number in _WEEKDAYS.items():
        if key in (name, name[:3]):
            return number
    raise ConfigurationError(
        f"Unknown weekday {day!r}; use a name such as 'monday' (or 'mon'), any case"
    )


__all__ = [
    "Daily",
    "Every",
    "Monthly",
    "Weekly",
    "cron",
    "daily",
    "every",
    "monthly",
    "next_run",
    "normalize_schedule",
    "parse_time",
    "weekly",
    "zone",
]
