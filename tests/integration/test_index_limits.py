"""Values the indexes cannot hold never block a partition: the envelope bounds
what lands in an index, and a row PostgreSQL still refuses as too large
(SQLSTATE 54000) is isolated and dead-lettered, also right after an outage."""

from __future__ import annotations

import json
import random
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.events import RESOURCE_ID, RESOURCE_ROLE
from schemas.tables import dead_letters, event_resources, events
from tests.integration.support import (
    counts,
    create_topic,
    running,
    send,
    settings_for,
    unique,
    wait_persisted,
    wait_until,
)
from worker.devtools.loadgen import encode, make_event
from worker.devtools.stack import StackInfo
from worker.pipeline.connections import create_engine
from worker.pipeline.persister import Persister

ALPHABET = string.ascii_letters + string.digits


def wide(rng: random.Random, n_bytes: int) -> str:
    """Random text of exactly `n_bytes` in UTF-8, 4-byte characters but for the
    remainder: what compresses least and takes most bytes per character."""
    chars = [chr(rng.randrange(0x10000, 0x20000)) for _ in range(n_bytes // 4)]
    value = "".join(chars) + "".join(rng.choice(ALPHABET) for _ in range(n_bytes % 4))
    assert len(value.encode()) == n_bytes
    return value


def random_ascii(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def event(rng: random.Random, **fields: Any) -> dict[str, Any]:
    return {**make_event(rng, related=1), **fields}


async def dead_letter_rows(engine: AsyncEngine) -> list[tuple[int, str, str]]:
    c = dead_letters.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(c.offset, c.error_class, c.error).order_by(c.offset))
        return [(offset, error_class, error) for offset, error_class, error in rows]


async def test_values_over_the_envelope_bounds_are_dead_letters(
    stack_info: StackInfo, any_engine: AsyncEngine
) -> None:
    """Each value one byte over its bound is one InvalidEnvelope dead letter
    naming the field; values exactly at the bounds are stored unchanged."""
    engine = any_engine
    rng = random.Random(51)
    topic = unique("bounds")
    await create_topic(stack_info, topic, 1)
    settings = settings_for(stack_info, topic)

    at_bounds = {
        "name": wide(rng, 2048),
        "resource_id": wide(rng, 1024),
        "related_id": wide(rng, 1024),
        "role": wide(rng, 256),
    }
    values = [event(rng) for _ in range(20)]
    stored_at_bounds = [
        event(rng, event=at_bounds["name"], related=[]),
        event(rng, resource={RESOURCE_ID: at_bounds["resource_id"]}, related=[]),
        event(
            rng, related=[{RESOURCE_ID: at_bounds["related_id"], RESOURCE_ROLE: at_bounds["role"]}]
        ),
    ]
    over = [
        event(rng, event=wide(rng, 2049)),
        event(rng, resource={RESOURCE_ID: wide(rng, 1025)}),
        event(rng, related=[{RESOURCE_ID: wide(rng, 1025), RESOURCE_ROLE: "tag"}]),
        event(rng, related=[{RESOURCE_ID: "r", RESOURCE_ROLE: wide(rng, 257)}]),
    ]
    # Bad ones at offsets 20, 22, 24, 26, among the good ones.
    ordered = [*values, over[0], stored_at_bounds[0], over[1], stored_at_bounds[1]]
    ordered += [over[2], stored_at_bounds[2], over[3]]
    await send(stack_info, topic, [json.dumps(v).encode() for v in ordered])

    async with running(Persister(settings, engine)):
        await wait_persisted(engine, settings.group_id, topic, {0: 27})

    # 23 events: 20 with one related resource, 2 with none, 1 with one.
    assert await counts(engine) == (23, 20 * 2 + 1 + 1 + 2, 4)
    assert await dead_letter_rows(engine) == [
        (
            20,
            "InvalidEnvelope",
            "event: Value error, event name is 2049 bytes in UTF-8, more than 2048",
        ),
        (
            22,
            "InvalidEnvelope",
            "resource: Value error, resource 'prefect.resource.id' is 1025 bytes in UTF-8,"
            " more than 1024",
        ),
        (
            24,
            "InvalidEnvelope",
            "related: Value error, related[0] 'prefect.resource.id' is 1025 bytes in UTF-8,"
            " more than 1024",
        ),
        (
            26,
            "InvalidEnvelope",
            "related: Value error, related[0] 'prefect.resource.role' is 257 bytes in UTF-8,"
            " more than 256",
        ),
    ]
    async with engine.connect() as conn:
        names = set((await conn.execute(select(events.c.event))).scalars())
        ids = set((await conn.execute(select(event_resources.c.resource_id))).scalars())
        roles = set((await conn.execute(select(event_resources.c.resource_role))).scalars())
    assert at_bounds["name"] in names
    assert {at_bounds["resource_id"], at_bounds["related_id"]} <= ids
    assert at_bounds["role"] in roles


async def test_the_largest_values_the_settings_allow_fit_postgresql(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    """With the resource id bound raised to its cap, incompressible values at
    every bound are stored: no setting can let in what an index refuses."""
    rng = random.Random(52)
    topic = unique("caps")
    await create_topic(stack_info, topic, 1)
    settings = settings_for(
        stack_info, topic, max_resource_id_bytes=2048, group_id=f"g-{wide(rng, 1000)}"
    )
    largest = event(
        rng,
        event=wide(rng, 2048),
        resource={RESOURCE_ID: wide(rng, 2048)},
        related=[{RESOURCE_ID: wide(rng, 2048), RESOURCE_ROLE: wide(rng, 256)}],
    )
    await send(stack_info, topic, [encode(largest), encode(event(rng))])

    async with running(Persister(settings, engine)):
        await wait_persisted(engine, settings.group_id, topic, {0: 2})

    assert await counts(engine) == (2, 4, 0)


@pytest.fixture
async def operator_index(engine: AsyncEngine) -> AsyncIterator[str]:
    """An index the worker does not know about, as an operator adds one for
    their own queries: the `note` field of the payload."""
    name = "ix_operator_payload_note"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE INDEX {name} ON events ((payload->>'note'))"))
    try:
        yield name
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP INDEX {name}"))


def refused_by_the_operator_index(rng: random.Random, note_chars: int) -> dict[str, Any]:
    """A valid envelope whose payload note that index cannot hold."""
    row = event(rng)
    row["payload"]["note"] = random_ascii(rng, note_chars)
    return row


async def test_a_row_postgresql_refuses_as_too_large_is_isolated(
    stack_info: StackInfo, engine: AsyncEngine, operator_index: str
) -> None:
    """SQLSTATE 54000, both forms: a btree entry over 2,704 bytes, and an
    index row over 8,191 bytes. Each is one dead letter; the rest of the
    batch is written and the partition moves on."""
    rng = random.Random(53)
    topic = unique("too-large")
    await create_topic(stack_info, topic, 1)
    settings = settings_for(stack_info, topic, batch_size=1_000, flush_every_s=2)
    values = [event(rng) for _ in range(100)]
    values[30] = refused_by_the_operator_index(rng, 3_000)
    values[70] = refused_by_the_operator_index(rng, 10_000)
    await send(stack_info, topic, [encode(v) for v in values])

    async with running(Persister(settings, engine)) as persister:
        await wait_persisted(engine, settings.group_id, topic, {0: 100})

    assert await counts(engine) == (98, 98 * 2, 2)
    letters = await dead_letter_rows(engine)
    assert [(offset, error_class) for offset, error_class, _ in letters] == [
        (30, "DatabaseRejected:ProgramLimitExceededError"),
        (70, "DatabaseRejected:ProgramLimitExceededError"),
    ]
    assert letters[0][2].startswith("SQLSTATE 54000: index row size ")
    # The partition's index, whose parent is the operator's index.
    named = letters[0][2].rsplit('for index "', 1)[1].rstrip('"')
    async with engine.connect() as conn:
        parent = await conn.execute(
            text(
                "SELECT inhparent::regclass::text FROM pg_inherits"
                " WHERE inhrelid = CAST(:i AS regclass)"
            ),
            {"i": named},
        )
        assert parent.scalar_one() == operator_index
    assert letters[1][2].startswith("SQLSTATE 54000: index row requires ")
    assert persister.stats.isolation_attempts > 0
    assert persister.stats.write_failures == 0


@asynccontextmanager
async def database_unavailable(database_url: str) -> AsyncIterator[None]:
    """Until exit, the database drops every open connection and refuses new
    ones, as while it restarts; the administration runs from the maintenance
    database."""
    url = make_url(database_url)
    admin = create_engine(url.set(database="postgres").render_as_string(False), pool_size=1)
    async with admin.connect() as conn:
        quoted = conn.dialect.identifier_preparer.quote(str(url.database))
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f"ALTER DATABASE {quoted} ALLOW_CONNECTIONS false"))
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": url.database},
            )
        yield
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"ALTER DATABASE {quoted} ALLOW_CONNECTIONS true"))
        await admin.dispose()


async def test_a_refused_row_right_after_an_outage_is_isolated(
    stack_info: StackInfo, engine: AsyncEngine, operator_index: str
) -> None:
    """The replica's only partition holds a row PostgreSQL refuses, and its
    write first fails because the database is unavailable: once the database
    answers, the row is isolated and the partition reaches its end."""
    rng = random.Random(54)
    topic = unique("after-outage")
    await create_topic(stack_info, topic, 1)
    settings = settings_for(stack_info, topic)
    before = [event(rng) for _ in range(10)]
    after = [event(rng) for _ in range(90)]
    after[45] = refused_by_the_operator_index(rng, 3_000)

    async with running(Persister(settings, engine)) as persister:
        await send(stack_info, topic, [encode(v) for v in before])
        await wait_persisted(engine, settings.group_id, topic, {0: 10})

        async with database_unavailable(stack_info.database_url):
            await send(stack_info, topic, [encode(v) for v in after])

            async def write_failed() -> bool:
                return persister.stats.write_failures > 0

            await wait_until(
                write_failed, 30, "the write to fail while the database is unavailable"
            )

        await wait_persisted(engine, settings.group_id, topic, {0: 100})

    assert await counts(engine) == (99, 99 * 2, 1)
    letters = await dead_letter_rows(engine)
    assert [(offset, error_class) for offset, error_class, _ in letters] == [
        (55, "DatabaseRejected:ProgramLimitExceededError")
    ]
