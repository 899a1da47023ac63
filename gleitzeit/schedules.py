"""Schedule slots as pure functions: when a cron expression fires in a time zone.

A slot is an instant (epoch seconds); its name, in run keys and in
``${inputs.scheduled_at}``, is its ISO 8601 time in the schedule's zone, with the offset.
``croniter`` parses the expression and walks it in the zone (``zoneinfo``); this module
adds the rule for daylight-saving days and the choice of which slots are due.

Daylight saving: a cron expression names wall-clock times, and each one it names fires
once. A time that a spring-forward day skips (02:30 in Europe/Berlin on 2026-03-29)
fires at the first instant after the gap, 03:00 local, as croniter gives it; a time that
a fall-back day repeats (02:30 on 2026-10-25) fires in its first pass only. An
expression that names every hour (``*/5 * * * *``) runs on real time instead: each hour
that passes fires, so the repeated hour fires twice and the skipped hour not at all,
and a schedule every five minutes never stops for an hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from gleitzeit.errors import ScheduleError

#: the input each scheduled run gets: its slot's time, ISO 8601 with the offset
SCHEDULED_AT = "scheduled_at"
#: what run keys of a schedule start with unless it names its own
KEY_PREFIX = "schedule:"

_FIELDS = "minute hour day-of-month month day-of-week"


def _zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError(f"time zone must be a name such as 'Europe/Berlin', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"time zone {name!r} does not exist (an IANA name such as 'Europe/Berlin' or 'UTC')"
        ) from exc


def _check_cron(expression: str) -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise ScheduleError(
            f"cron expression must be a string such as '0 3 * * *', got {expression!r}"
        )
    text = " ".join(expression.split())
    fields = len(text.split(" "))
    if not text.startswith("@") and fields not in (5, 6):
        raise ScheduleError(
            f"cron expression {expression!r} has {fields} fields; it needs 5 ({_FIELDS}), "
            "or 6 with seconds last"
        )
    try:
        walk = croniter(text, datetime(2000, 1, 1, tzinfo=timezone.utc))
    except (ValueError, KeyError, TypeError) as exc:
        raise ScheduleError(f"cron expression {expression!r} does not parse: {exc}") from exc
    try:
        walk.get_next(datetime)
    except CroniterBadDateError as exc:
        raise ScheduleError(f"cron expression {expression!r} names no date that exists") from exc
    return text


@dataclass(frozen=True)
class Cron:
    """A cron expression in a time zone: the slots it fires at.

    Build it with :func:`parse_cron`, which checks both and raises :class:`ScheduleError`.
    """

    expression: str
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def real_time(self) -> bool:
        """Whether the expression names every hour: it then fires each hour that passes,
        the repeated hour of a fall-back day twice."""
        hours = croniter(self.expression).expanded[1]
        return hours == ["*"] or len(set(hours)) == 24

    def next_after(self, t: float) -> float:
        """The first slot strictly after ``t``."""
        walk = croniter(self.expression, self._local(t))
        real_time = self.real_time
        while True:
            slot = walk.get_next(datetime)
            if real_time or not _second_pass(slot):
                return slot.timestamp()

    def first_at_or_after(self, t: float) -> float:
        """The first slot at ``t`` or after it (slots fall on whole seconds)."""
        return self.next_after(math.ceil(t) - 1)

    def latest_at_or_before(self, t: float) -> float:
        """The last slot at ``t`` or before it."""
        walk = croniter(self.expression, self._local(t))
        real_time = self.real_time
        while True:
            slot = walk.get_prev(datetime)
            if real_time or not _second_pass(slot):
                break
        # croniter's backward walk is checked against its forward one: the slots after
        # the one found are the same slots the forward walk gives, up to t
        found = slot.timestamp()
        following = self.next_after(found)
        while following <= t:
            found, following = following, self.next_after(following)
        return found

    def iso(self, slot: float) -> str:
        """The slot's name: its local time in the zone, ISO 8601 with the offset."""
        return self._local(slot).isoformat()

    def _local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, timezone.utc).astimezone(self.zone)


def _second_pass(slot: datetime) -> bool:
    """Whether ``slot`` is a wall-clock time the day repeats, in its second pass."""
    # croniter's fold flag is not reliable; the instants are: the first pass of a
    # repeated time is earlier (for a skipped time, fold=0 gives the later instant)
    return slot.replace(fold=0).timestamp() < slot.timestamp()


def parse_cron(expression: str, timezone: str = "UTC") -> Cron:
    """``expression`` in ``timezone``, both checked.

    Five fields (minute hour day-of-month month day-of-week), or six with seconds last
    (``*/10 * * * * *``: every ten seconds), or an alias such as ``@daily``. Raises
    :class:`ScheduleError` naming what does not parse or which zone does not exist.
    """
    text = _check_cron(expression)
    zone = _zone(timezone)
    return Cron(text, zone.key)


@dataclass(frozen=True)
class Due:
    """The slots one tick fires for a schedule, oldest first, and its next slot after."""

    fire: list[float]
    following: float


def due_slots(cron: Cron, next_slot: float, now: float, *, catchup: bool, limit: int) -> Due:
    """What to fire at ``now`` for a schedule whose earliest unfired slot is ``next_slot``.

    Nothing when ``next_slot`` is after ``now``. Otherwise, with ``catchup`` every slot
    from ``next_slot`` up to ``now``, oldest first, at most ``limit`` of them (the next
    tick goes on from there); without it only the latest of them: the ones missed while
    nothing fired are dropped.
    """
    if next_slot > now:
        return Due([], next_slot)
    if not catchup:
        latest = max(next_slot, cron.latest_at_or_before(now))
        return Due([latest], cron.next_after(latest))
    fire = [next_slot]
    following = cron.next_after(next_slot)
    while following <= now and len(fire) < limit:
        fire.append(following)
        following = cron.next_after(following)
    return Due(fire, following)


def run_key(prefix: str, cron: Cron, slot: float) -> str:
    """The idempotency key of a slot's run: ``<prefix>:<slot ISO time>``."""
    return f"{prefix}:{cron.iso(slot)}"


def default_key_prefix(name: str) -> str:
    return f"{KEY_PREFIX}{name}"
