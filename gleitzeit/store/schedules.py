"""Schedules in the store: functions of a connection, each part of one transaction.

A slot is claimed by moving the schedule's ``next_slot`` on, conditional on the value the
tick read (``UPDATE ... WHERE name = :n AND next_slot = :due``): of two ticks that read
the same slot, one updates the row and the other matches nothing. The winner inserts the
slot's run in the same transaction (``Store.fire_schedule``), so a slot is claimed if and
only if its run exists.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, false, literal, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from gleitzeit import codec
from gleitzeit.errors import ScheduleConflict, ScheduleNotFound
from gleitzeit.states import RunState
from gleitzeit.store.records import DueSchedule, ScheduleDefinition, ScheduleRecord
from gleitzeit.store.tables import db_now, db_statement_now, runs, schedules

#: what must be equal for adding a schedule again to be the same schedule
_COMPARED = (
    ("cron", "cron expression"),
    ("timezone", "time zone"),
    ("graph_hash", "workflow"),
    ("inputs_hash", "inputs"),
    ("catchup", "catchup"),
    ("key_prefix", "key"),
)


def add(conn: Connection, definition: ScheduleDefinition) -> bool:
    """Insert the schedule; ``False`` when one of the same name and definition exists.

    Raises :class:`ScheduleConflict` when the name is taken by another definition.
    """
    values = {
        "name": definition.name,
        "cron": definition.cron,
        "timezone": definition.timezone,
        "workflow": definition.workflow,
        "graph": definition.graph,
        "graph_hash": definition.graph_hash,
        "inputs": definition.inputs,
        "inputs_hash": definition.inputs_hash,
        "catchup": definition.catchup,
        "key_prefix": definition.key_prefix,
        "paused": False,
        "next_slot": definition.first_slot,
        "created_at": db_now(),
        "updated_at": db_now(),
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(schedules)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(schedules.c.name)
    )
    if conn.execute(stmt).one_or_none() is not None:
        return True
    found = conn.execute(select(schedules).where(schedules.c.name == definition.name)).one()
    differs = [
        label
        for column, label in _COMPARED
        if getattr(found, column) != getattr(definition, column)
    ]
    if differs:
        raise ScheduleConflict(definition.name, differs)
    return False


def remove(conn: Connection, name: str) -> None:
    if not conn.execute(delete(schedules).where(schedules.c.name == name)).rowcount:
        raise ScheduleNotFound(name)


def pause(conn: Connection, name: str) -> bool:
    """Pause the schedule; ``False`` when it was paused already."""
    paused = conn.execute(
        update(schedules)
        .where(schedules.c.name == name, schedules.c.paused == false())
        .values(paused=True, updated_at=db_now())
    ).rowcount
    if not paused:
        _require(conn, name)
    return bool(paused)


def locked_row(conn: Connection, name: str) -> Any:
    """The schedule's row, locked against a concurrent change (raises if there is none)."""
    stmt = select(schedules.c.cron, schedules.c.timezone, schedules.c.paused, db_now().label("now"))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt.where(schedules.c.name == name)).one_or_none()
    if row is None:
        raise ScheduleNotFound(name)
    return row


def resume(conn: Connection, name: str, next_slot: float) -> bool:
    """Resume a paused schedule from ``next_slot``; ``False`` when it was not paused."""
    return bool(
        conn.execute(
            update(schedules)
            .where(schedules.c.name == name, schedules.c.paused == true())
            .values(paused=False, next_slot=next_slot, updated_at=db_now())
        ).rowcount
    )


def _require(conn: Connection, name: str) -> None:
    if conn.execute(select(schedules.c.name).where(schedules.c.name == name)).first() is None:
        raise ScheduleNotFound(name)


def find_due(conn: Connection, now: float | None, limit: int) -> list[DueSchedule]:
    """Schedules not paused whose next slot is at ``now`` (the database's clock when
    ``None``) or before: one search of ``ix_gz_schedules_due``."""
    at = db_statement_now() if now is None else literal(now)
    rows = conn.execute(
        select(
            schedules.c.name,
            schedules.c.cron,
            schedules.c.timezone,
            schedules.c.graph,
            schedules.c.inputs,
            schedules.c.catchup,
            schedules.c.key_prefix,
            schedules.c.next_slot,
            at.label("now"),
        )
        .where(schedules.c.paused == false(), schedules.c.next_slot <= at)
        .order_by(schedules.c.next_slot)
        .limit(limit)
    )
    return [
        DueSchedule(
            name=row.name,
            cron=row.cron,
            timezone=row.timezone,
            graph=row.graph,
            inputs=row.inputs,
            catchup=bool(row.catchup),
            key_prefix=row.key_prefix,
            next_slot=row.next_slot,
            now=row.now,
        )
        for row in rows
    ]


def claim(conn: Connection, name: str, due: float, following: float, last: float) -> bool:
    """Move the schedule from the slot ``due`` on to ``following``, ``last`` fired; ``True``
    for the one transaction that does it."""
    return bool(
        conn.execute(
            update(schedules)
            .where(
                schedules.c.name == name,
                schedules.c.next_slot == due,
                schedules.c.paused == false(),
            )
            .values(next_slot=following, last_slot=last, updated_at=db_now())
        ).rowcount
    )


def set_last_run(conn: Connection, name: str, run_id: str) -> None:
    conn.execute(update(schedules).where(schedules.c.name == name).values(last_run_id=run_id))


def records(conn: Connection, name: str | None = None) -> list[ScheduleRecord]:
    """Every schedule by name (or the one named), with its last run's state."""
    stmt = (
        select(schedules, runs.c.state.label("last_run_state"))
        .select_from(schedules.outerjoin(runs, runs.c.id == schedules.c.last_run_id))
        .order_by(schedules.c.name)
    )
    if name is not None:
        stmt = stmt.where(schedules.c.name == name)
    return [_record(row) for row in conn.execute(stmt)]


def _record(row: Any) -> ScheduleRecord:
    return ScheduleRecord(
        name=row.name,
        cron=row.cron,
        timezone=row.timezone,
        workflow=row.workflow,
        graph=codec.loads(row.graph),
        inputs=codec.loads(row.inputs),
        catchup=bool(row.catchup),
        key_prefix=row.key_prefix,
        paused=bool(row.paused),
        next_slot=row.next_slot,
        last_slot=row.last_slot,
        last_run_id=row.last_run_id,
        last_run_state=None if row.last_run_state is None else RunState(row.last_run_state),
        created_at=row.created_at,
    )
