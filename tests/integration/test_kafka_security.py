"""The Kafka security settings against a broker listener that wants SASL."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import (
    counts,
    create_topic,
    end_offsets,
    running,
    send,
    settings_for,
    unique,
    wait_persisted,
    wait_until,
)
from worker.core.errors import OperatorNeeded
from worker.devtools.loadgen import messages
from worker.devtools.stack import SASL_PASSWORD, SASL_USER, StackInfo
from worker.pipeline.persister import Persister


async def test_persists_over_sasl_plain(stack_info: StackInfo, engine: AsyncEngine) -> None:
    topic = unique("sasl")
    await create_topic(stack_info, topic, 2)
    await send(stack_info, topic, messages(200, seed=81, invalid_every=50))
    ends = await end_offsets(stack_info, topic, 2)
    settings = settings_for(
        stack_info,
        topic,
        kafka_bootstrap_servers=stack_info.kafka_sasl_bootstrap_servers,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=SASL_USER,
        kafka_sasl_password=SASL_PASSWORD,
    )
    async with running(Persister(settings, engine)) as persister:
        await wait_persisted(engine, settings.group_id, topic, ends)

        async def dead_letters_sent() -> bool:
            return persister.dead_letters.published == 4

        await wait_until(dead_letters_sent, 30, "the dead letters to reach their topic")
    assert await counts(engine) == (196, 196 + related_of(200, 81), 4)


def related_of(count: int, seed: int) -> int:
    return sum(
        len(orjson.loads(v)["related"])
        for i, v in enumerate(messages(count, seed=seed, invalid_every=50), 1)
        if i % 50 and v is not None
    )


async def test_wrong_password_is_not_let_in(stack_info: StackInfo, engine: AsyncEngine) -> None:
    """A refused login stops the persister before it joins: no retry mends
    it, and nothing is written."""
    topic = unique("sasl-refused")
    await create_topic(stack_info, topic, 1)
    settings = settings_for(
        stack_info,
        topic,
        kafka_bootstrap_servers=stack_info.kafka_sasl_bootstrap_servers,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=SASL_USER,
        kafka_sasl_password="wrong",
    )
    persister = Persister(settings, engine)
    with pytest.raises(OperatorNeeded, match=r"^Kafka refused the login at "):
        await asyncio.wait_for(persister.run(asyncio.Event()), 30)
    assert await counts(engine) == (0, 0, 0)
