"""Schedule slots, pure: a cron expression in a time zone, on a fixed clock."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gleitzeit import ScheduleError
from gleitzeit.schedules import Cron, due_slots, parse_cron, run_key

BERLIN = ZoneInfo("Europe/Berlin")


def at(*fields: int, zone: ZoneInfo = BERLIN) -> float:
    """Epoch seconds of a wall-clock time (not on a daylight-saving edge) in ``zone``."""
    return datetime(*fields, tzinfo=zone).timestamp()


def walk(cron: Cron, start: float, end: float) -> list[str]:
    """Every slot after ``start`` up to ``end``, by name."""
    found = []
    slot = cron.next_after(start)
    while slot <= end:
        found.append(cron.iso(slot))
        slot = cron.next_after(slot)
    return found


def test_a_daily_slot_fires_at_its_local_time_with_the_offset_of_the_day() -> None:
    cron = parse_cron("0 3 * * *", "Europe/Berlin")

    assert walk(cron, at(2026, 7, 1, 12), at(2026, 7, 3, 12)) == [
        "2026-07-02T03:00:00+02:00",
        "2026-07-03T03:00:00+02:00",
    ]
    assert walk(cron, at(2026, 12, 1, 12), at(2026, 12, 2, 12)) == ["2026-12-02T03:00:00+01:00"]


def test_a_time_the_spring_forward_day_skips_fires_once_at_the_end_of_the_gap() -> None:
    # 2026-03-29 in Berlin: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day
    cron = parse_cron("30 2 * * *", "Europe/Berlin")

    assert walk(cron, at(2026, 3, 28, 12), at(2026, 3, 30, 12)) == [
        "2026-03-29T03:00:00+02:00",  # croniter's choice: the first instant after the gap
        "2026-03-30T02:30:00+02:00",
    ]


def test_a_time_the_fall_back_day_repeats_fires_once_in_its_first_pass() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET; 02:30 happens twice
    cron = parse_cron("30 2 * * *", "Europe/Berlin")

    assert walk(cron, at(2026, 10, 24, 12), at(2026, 10, 26, 12)) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


def test_catching_up_over_both_daylight_saving_nights_fires_each_day_once() -> None:
    cron = parse_cron("30 2 * * *", "Europe/Berlin")
    for day, expected in (
        (
            28,
            ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        (
            24,
            ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
    ):
        month = 3 if day == 28 else 10
        first = cron.first_at_or_after(at(2026, month, day))

        due = due_slots(cron, first, at(2026, month, day + 2, 12), catchup=True, limit=100)

        assert [cron.iso(slot) for slot in due.fire] == expected


def test_each_minute_of_a_repeated_hour_named_by_the_expression_fires_once() -> None:
    cron = parse_cron("*/20 2 * * *", "Europe/Berlin")

    assert walk(cron, at(2026, 10, 24, 12), at(2026, 10, 25, 12)) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:20:00+02:00",
        "2026-10-25T02:40:00+02:00",
    ]


def test_an_expression_naming_every_hour_fires_each_hour_that_passes() -> None:
    hourly = parse_cron("30 * * * *", "Europe/Berlin")
    day = timedelta(days=1).total_seconds()

    spring = walk(hourly, at(2026, 3, 29, 0), at(2026, 3, 29, 0) + day - 3600)
    autumn = walk(hourly, at(2026, 10, 25, 0), at(2026, 10, 25, 0) + day + 3600)

    assert len(spring) == 23 and "2026-03-29T01:30:00+01:00" in spring
    assert spring[1:3] == ["2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"]
    assert len(autumn) == 25
    assert autumn[2:4] == ["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00"]
    assert len(set(autumn)) == 25  # the offset tells the two passes apart in run keys


def test_every_five_minutes_goes_on_through_the_repeated_hour() -> None:
    cron = parse_cron("*/5 * * * *", "Europe/Berlin")

    slots = walk(cron, at(2026, 10, 25, 1, 57), at(2026, 10, 25, 1, 57) + 2 * 3600)

    assert len(slots) == 24  # two real hours, one of them the repeated one
    assert slots[0] == "2026-10-25T02:00:00+02:00" and slots[12] == "2026-10-25T02:00:00+01:00"


def test_other_zones_daylight_saving_days() -> None:
    new_york = parse_cron("30 2 * * *", "America/New_York")
    lord_howe = parse_cron("15 2 * * *", "Australia/Lord_Howe")  # a half-hour shift
    santiago = parse_cron("0 0 * * *", "America/Santiago")  # midnight skipped

    assert walk(
        new_york, at(2026, 3, 7, 12, zone=new_york.zone), at(2026, 3, 8, 12, zone=new_york.zone)
    ) == ["2026-03-08T03:00:00-04:00"]
    assert walk(
        lord_howe,
        at(2026, 10, 3, 12, zone=lord_howe.zone),
        at(2026, 10, 4, 12, zone=lord_howe.zone),
    ) == ["2026-10-04T02:30:00+11:00"]
    assert walk(
        santiago, at(2026, 9, 5, 12, zone=santiago.zone), at(2026, 9, 6, 12, zone=santiago.zone)
    ) == ["2026-09-06T01:00:00-03:00"]


@pytest.mark.parametrize(
    "expression",
    ["30 2 * * *", "30 * * * *", "*/7 1-3 * * *", "0 0,2 * * *", "*/5 * * * *"],
)
def test_the_latest_slot_before_a_time_agrees_with_walking_forward(expression: str) -> None:
    cron = parse_cron(expression, "Europe/Berlin")
    rng = random.Random(7)
    for start in (at(2026, 3, 28, 20), at(2026, 10, 24, 20)):
        slots = [start]
        while slots[-1] < start + 2 * 86400:
            slots.append(cron.next_after(slots[-1]))
        for _ in range(200):
            t = slots[1] + rng.random() * (slots[-2] - slots[1])
            expected = max(slot for slot in slots[1:] if slot <= t)
            assert cron.latest_at_or_before(t) == expected, cron.iso(t)
        for slot in slots[2:-1]:
            assert cron.latest_at_or_before(slot) == slot


def test_seconds_as_a_sixth_field() -> None:
    cron = parse_cron("* * * * * */2", "UTC")

    assert cron.next_after(1000.0) == 1002.0
    assert cron.first_at_or_after(1000.0) == 1000.0
    assert cron.first_at_or_after(1000.5) == 1002.0
    assert cron.latest_at_or_before(1003.9) == 1002.0
    assert cron.iso(1002.0) == "1970-01-01T00:16:42+00:00"


def test_nothing_is_due_before_the_next_slot() -> None:
    cron = parse_cron("0 * * * *", "UTC")
    next_slot = at(2026, 1, 1, 5, zone=ZoneInfo("UTC"))

    due = due_slots(cron, next_slot, next_slot - 1, catchup=True, limit=100)

    assert due.fire == [] and due.following == next_slot


def test_three_slots_missed_fire_each_oldest_first_with_catchup() -> None:
    cron = parse_cron("0 * * * *", "Europe/Berlin")
    first = at(2026, 11, 21, 3)

    due = due_slots(cron, first, first + 2 * 3600 + 59, catchup=True, limit=100)

    assert [cron.iso(slot) for slot in due.fire] == [
        "2026-11-21T03:00:00+01:00",
        "2026-11-21T04:00:00+01:00",
        "2026-11-21T05:00:00+01:00",
    ]
    assert cron.iso(due.following) == "2026-11-21T06:00:00+01:00"


def test_three_slots_missed_fire_the_latest_only_without_catchup() -> None:
    cron = parse_cron("0 * * * *", "Europe/Berlin")
    first = at(2026, 11, 21, 3)

    due = due_slots(cron, first, first + 2 * 3600 + 59, catchup=False, limit=100)

    assert [cron.iso(slot) for slot in due.fire] == ["2026-11-21T05:00:00+01:00"]
    assert cron.iso(due.following) == "2026-11-21T06:00:00+01:00"


def test_catchup_fires_at_most_its_limit_per_tick_and_the_next_tick_goes_on() -> None:
    cron = parse_cron("0 * * * *", "UTC")
    first = at(2026, 11, 21, 0, zone=ZoneInfo("UTC"))
    now = first + 4 * 3600

    one = due_slots(cron, first, now, catchup=True, limit=2)
    two = due_slots(cron, one.following, now, catchup=True, limit=2)
    three = due_slots(cron, two.following, now, catchup=True, limit=2)

    assert [len(one.fire), len(two.fire), len(three.fire)] == [2, 2, 1]
    assert one.fire + two.fire + three.fire == [first + hour * 3600 for hour in range(5)]
    assert three.following == now + 3600


def test_a_slot_is_due_at_its_own_second() -> None:
    cron = parse_cron("0 3 * * *", "UTC")
    slot = at(2026, 11, 21, 3, zone=ZoneInfo("UTC"))

    assert due_slots(cron, slot, slot, catchup=False, limit=100).fire == [slot]


def test_a_run_key_names_the_schedule_and_the_slot_with_its_offset() -> None:
    cron = parse_cron("0 3 * * *", "Europe/Berlin")

    assert run_key("schedule:nightly", cron, at(2026, 11, 21, 3)) == (
        "schedule:nightly:2026-11-21T03:00:00+01:00"
    )


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("61 * * * *", "UTC", "cron expression '61 * * * *' does not parse"),
        ("0 3 * *", "UTC", "has 4 fields; it needs 5"),
        ("0 3 * * * * *", "UTC", "has 7 fields"),
        ("", "UTC", "cron expression must be a string"),
        ("0 3 * * mon-fry", "UTC", "does not parse"),
        ("0 0 30 2 *", "UTC", "cron expression '0 0 30 2 *' names no date that exists"),
        ("0 3 * * *", "Europe/Berlln", "time zone 'Europe/Berlln' does not exist"),
        ("0 3 * * *", "../etc/passwd", "time zone '../etc/passwd' does not exist"),
        ("0 3 * * *", "", "time zone must be a name"),
    ],
)
def test_a_bad_expression_or_zone_is_named(expression: str, zone: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("*", r"\*")):
        parse_cron(expression, zone)


def test_aliases_parse() -> None:
    cron = parse_cron("@daily", "UTC")

    assert cron.iso(cron.next_after(at(2026, 1, 1, 12, zone=ZoneInfo("UTC")))) == (
        "2026-01-02T00:00:00+00:00"
    )
