"""Commands that steer a running group without stopping it: pause, resume."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.limits import MAX_GROUP_ID_BYTES, MAX_TOPIC_CHARS, utf8_length
from worker.cli.common import app, setup, with_engine
from worker.core.kafka_admin import KafkaView
from worker.pipeline.controls import resume_one_of_paused_topic, set_paused, topic_paused

Topic = Annotated[str, typer.Option(help="The topic.")]
Partition = Annotated[int | None, typer.Option(min=0, help="Only this partition.")]
Group = Annotated[str | None, typer.Option(help="Default: PERSISTER_GROUP_ID.")]


def _set(topic: str, partition: int | None, group: str | None, paused: bool) -> None:
    settings = setup("WARNING")
    name = group or settings.group_id
    # Both are part of a key: keep them to what an index entry holds.
    if utf8_length(name) > MAX_GROUP_ID_BYTES or len(topic) > MAX_TOPIC_CHARS:
        raise typer.BadParameter(
            f"a group is at most {MAX_GROUP_ID_BYTES} bytes, a topic {MAX_TOPIC_CHARS} characters"
        )

    async def go(engine: AsyncEngine) -> list[int]:
        """The partitions still paused by the topic's pause, if it is split."""
        if paused or partition is None or not await topic_paused(engine, name, topic):
            await set_paused(engine, name, topic, partition, paused)
            return []
        async with KafkaView.open(settings) as view:
            found = [tp.partition for tp in await view.partitions(topic)]
        await resume_one_of_paused_topic(engine, name, topic, found, partition)
        return [p for p in found if p != partition]

    still = asyncio.run(with_engine(settings, go))
    which = f"{topic}[{partition}]" if partition is not None else f"every partition of {topic}"
    verb = "paused" if paused else "resumed"
    typer.echo(f"{verb} {which} for group {name!r}; its owner follows within 2 s")
    if still:
        listed = ", ".join(f"{topic}[{p}]" for p in still)
        typer.echo(f"the topic was paused as a whole; still paused: {listed}")


@app.command()
def pause(topic: Topic, partition: Partition = None, group: Group = None) -> None:
    """Stop fetching a topic (or one partition) on whichever replica owns it,
    until `resume`; kept in the database, so it outlasts rebalances and
    restarts. What is buffered is still written."""
    _set(topic, partition, group, paused=True)


@app.command()
def resume(topic: Topic, partition: Partition = None, group: Group = None) -> None:
    """Fetch a paused topic (every partition of it) or partition again."""
    _set(topic, partition, group, paused=False)
