"""Leader election by lease: one row per task in `leader_leases`.

A replica takes the lease when it is free or expired, and renews it while it
holds it; each change of holder increases the epoch. Work done under the lease
is fenced with `holds()`, a condition checked in the same statement as the
work, so a holder that was paused (GC, SIGSTOP, a stalled VM) past its expiry
does nothing when it wakes: the lease is someone else's, or has a new epoch.

Works on PostgreSQL and SQLite and through connection poolers (no session
state, no advisory locks). Expiry uses the replicas' clocks: keep them in sync
(NTP); the TTL is seconds, skew should be milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import leader_leases


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    epoch: int
    expires: datetime


def _now() -> datetime:
    return datetime.now(UTC)


async def acquire(engine: AsyncEngine, name: str, holder: str, ttl: timedelta) -> Lease | None:
    """Take or renew the lease; None while someone else holds it."""
    now = _now()
    expires = now + ttl
    table = leader_leases
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(name=name, holder=holder, epoch=1, expires=expires)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={
            "holder": holder,
            "epoch": case((table.c.holder == holder, table.c.epoch), else_=table.c.epoch + 1),
            "expires": expires,
        },
        where=(table.c.holder == holder) | (table.c.expires < now),
    ).returning(table.c.epoch)
    async with engine.begin() as conn:
        epoch = (await conn.execute(stmt)).scalar_one_or_none()
    return None if epoch is None else Lease(name, holder, epoch, expires)


async def release(engine: AsyncEngine, lease: Lease) -> None:
    """Give the lease up now, so another replica need not wait for expiry.
    The row stays (expired), so the epoch keeps growing."""
    c = leader_leases.c
    async with engine.begin() as conn:
        await conn.execute(
            update(leader_leases)
            .where(c.name == lease.name, c.holder == lease.holder, c.epoch == lease.epoch)
            .values(expires=_now())
        )


async def current(engine: AsyncEngine, name: str) -> Lease | None:
    """Who holds the lease now, if anyone (for status and metrics)."""
    c = leader_leases.c
    query = select(c.holder, c.epoch, c.expires).where(c.name == name, c.expires >= _now())
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return None if row is None else Lease(name, row.holder, row.epoch, row.expires)


def _held(lease: Lease) -> ColumnElement[bool]:
    c = leader_leases.c
    now = bindparam("lease_now", callable_=_now, type_=leader_leases.c.expires.type)
    return and_(
        c.name == lease.name, c.holder == lease.holder, c.epoch == lease.epoch, c.expires >= now
    )


def holds(lease: Lease) -> ColumnElement[bool]:
    """True while `lease` is still held, unexpired, with the same epoch. The
    time is taken each time a statement using it runs, not when it is built."""
    return exists().where(_held(lease))


def lock_if_held(lease: Lease) -> Select[tuple[str]]:
    """The lease's row, locked until the transaction ends, if `lease` is still
    held: no one can take the lease meanwhile (PostgreSQL)."""
    return select(leader_leases.c.name).where(_held(lease)).with_for_update()
