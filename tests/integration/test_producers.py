"""Records written by producers the worker did not write: Kafka's own Java
client and aiokafka, with every compression codec, plain and transactional
(every third transaction aborted). For each combination the stored offset
reaches the log end (past the commit and abort markers) and every committed
event is stored exactly once, no aborted one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import select

from schemas.tables import events
from tests.integration.conftest import emptied
from tests.integration.support import (
    create_topic,
    end_offsets,
    running,
    settings_for,
    stored_offsets,
    unique,
    wait_until,
)
from worker.core import metrics
from worker.core.kafka_admin import KafkaView
from worker.devtools.loadgen import make_event
from worker.devtools.stack import StackInfo, kafka_libs
from worker.operate.status import gather
from worker.pipeline.persister import Persister

PRODUCERS = ("java", "aiokafka")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
MODES = ("plain", "txn")
PARTITIONS = 2
PER_TOPIC = 40
TXN_SIZE = 7  # as in Produce.java: every third transaction is aborted
PRODUCE_JAVA = Path(__file__).with_name("java") / "Produce.java"


@dataclass
class Job:
    """One producer's records for one topic: (partition, value, event id)."""

    producer: str
    topic: str
    codec: str
    mode: str
    records: list[tuple[int, bytes, str]] = field(default_factory=list)
    aborted: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    ends: dict[str, dict[int, int]]
    stored: dict[str, dict[int, int]]
    ids: dict[str, list[str]]
    status_lag: int


def make_job(producer: str, topic: str, codec: str, mode: str, rng: random.Random) -> Job:
    job = Job(producer, topic, codec, mode)
    for i in range(PER_TOPIC):
        event = make_event(rng, payload_bytes=200)
        job.records.append((i % PARTITIONS, orjson.dumps(event), event["id"]))
    return job


def aborted_positions(n: int) -> set[int]:
    return {i for i in range(n) if (i // TXN_SIZE) % 3 == 1}


async def produce_java(info: StackInfo, jobs: list[Job]) -> None:
    lines = []
    for job in jobs:
        lines.append(f"@ {job.topic} {job.codec} {job.mode}")
        lines += [f"{p}\t{value.decode()}" for p, value, _ in job.records]
    proc = await asyncio.create_subprocess_exec(
        "java",
        "-cp",
        f"{kafka_libs()}/*",
        str(PRODUCE_JAVA),
        info.kafka_bootstrap_servers,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate("\n".join(lines).encode())
    assert proc.returncode == 0, err.decode()[-3000:]
    by_topic = {job.topic: job for job in jobs}
    for line in out.decode().splitlines():
        word, topic, number = line.split()
        if word == "aborted":
            job = by_topic[topic]
            job.aborted.add(job.records[int(number)][2])
    for job in jobs:
        if job.mode == "txn":  # Java said which; the rule says the same
            assert job.aborted == {job.records[i][2] for i in aborted_positions(PER_TOPIC)}


async def produce_aiokafka(info: StackInfo, job: Job, prefix: str) -> None:
    txn = job.mode == "txn"
    producer = AIOKafkaProducer(
        bootstrap_servers=info.kafka_bootstrap_servers,
        compression_type=None if job.codec == "none" else job.codec,
        transactional_id=f"{prefix}-{job.topic}" if txn else None,
        linger_ms=5,
        acks="all",
    )
    await producer.start()
    try:
        step = TXN_SIZE if txn else len(job.records)
        for start in range(0, len(job.records), step):
            chunk = job.records[start : start + step]
            abort = txn and (start // step) % 3 == 1
            if txn:
                await producer.begin_transaction()
            futures = [await producer.send(job.topic, v, partition=p) for p, v, _ in chunk]
            # Delivered before the transaction ends, so aborted records are
            # in the log and the consumer must skip them.
            for future in futures:
                await future
            if abort:
                await producer.abort_transaction()
                job.aborted |= {event_id for _, _, event_id in chunk}
            elif txn:
                await producer.commit_transaction()
    finally:
        await producer.stop()


def mixed_jobs(topic: str, rng: random.Random) -> list[Job]:
    """One partition whose batches change codec (and producer) midway."""
    return [
        make_job(producer, topic, codec, mode, rng)
        for producer, codec, mode in [
            ("aiokafka", "gzip", "plain"),
            ("java", "lz4", "txn"),
            ("aiokafka", "zstd", "plain"),
            ("aiokafka", "none", "txn"),
            ("java", "snappy", "plain"),
            ("aiokafka", "lz4", "plain"),
        ]
    ]


@pytest.fixture(scope="module")
async def outcome(stack_info: StackInfo) -> AsyncIterator[dict[str, tuple[list[Job], Outcome]]]:
    """Produce every combination, run one worker over all the topics until
    each partition's stored offset is its end offset, and collect it all."""
    prefix = unique("producers")
    rng = random.Random(9)
    cells: dict[str, list[Job]] = {
        f"{p}-{c}-{m}": [make_job(p, f"{prefix}-{p}-{c}-{m}", c, m, rng)]
        for p in PRODUCERS
        for c in CODECS
        for m in MODES
    }
    mixed = mixed_jobs(f"{prefix}-mixed", rng)
    for job in mixed:
        job.records = [(0, value, event_id) for _, value, event_id in job.records]
    cells["mixed"] = mixed
    for name, jobs in cells.items():
        await create_topic(stack_info, jobs[0].topic, 1 if name == "mixed" else PARTITIONS)
    for job in mixed:  # in order, so that the codec changes from batch to batch
        if job.producer == "java":
            await produce_java(stack_info, [job])
        else:
            await produce_aiokafka(stack_info, job, prefix)
    java = [jobs[0] for name, jobs in cells.items() if name.startswith("java-")]
    await produce_java(stack_info, java)
    for name, jobs in cells.items():
        if name.startswith("aiokafka-"):
            await produce_aiokafka(stack_info, jobs[0], prefix)

    topics = tuple(jobs[0].topic for jobs in cells.values())
    engine = await emptied(stack_info.database_url)
    settings = settings_for(stack_info, topics[0], topics=topics, group_id=prefix)
    ends = {
        t: await end_offsets(stack_info, t, 1 if t.endswith("-mixed") else PARTITIONS)
        for t in topics
    }
    try:
        async with running(Persister(settings, engine)):

            async def all_stored() -> bool:
                for topic in topics:
                    if await stored_offsets(engine, prefix, topic) != ends[topic]:
                        return False
                return True

            await wait_until(all_stored, 90, "every partition's stored offset to reach its end")

            async def lag_reported() -> bool:
                return all(
                    metrics.registry.get_sample_value(
                        "persister_lag_records", {"topic": t, "partition": str(p)}
                    )
                    == 0
                    for t in topics
                    for p in ends[t]
                )

            await wait_until(lag_reported, 10, "the lag gauges to show 0")
        async with KafkaView.open(settings) as view:
            status = await gather(view, engine, prefix, list(topics), "retention")
        async with engine.connect() as conn:
            rows = (await conn.execute(select(events.c.id))).scalars().all()
        stored_ids = [str(i) for i in rows]
        result = {}
        for name, jobs in cells.items():
            mine = {event_id for job in jobs for _, _, event_id in job.records}
            result[name] = (
                jobs,
                Outcome(
                    ends={jobs[0].topic: ends[jobs[0].topic]},
                    stored={jobs[0].topic: await stored_offsets(engine, prefix, jobs[0].topic)},
                    ids={jobs[0].topic: [i for i in stored_ids if i in mine]},
                    status_lag=sum(p.lag for p in status.partitions if p.topic == jobs[0].topic),
                ),
            )
        yield result
    finally:
        await engine.dispose()


CELLS = [f"{p}-{c}-{m}" for p in PRODUCERS for c in CODECS for m in MODES]


@pytest.mark.parametrize("cell", CELLS)
async def test_each_producer_codec_and_mode_is_stored_once_up_to_the_end(
    outcome: dict[str, tuple[list[Job], Outcome]], cell: str
) -> None:
    jobs, result = outcome[cell]
    job = jobs[0]
    committed = [event_id for _, _, event_id in job.records if event_id not in job.aborted]
    expected_aborted = len(aborted_positions(PER_TOPIC)) if job.mode == "txn" else 0
    assert len(job.aborted) == expected_aborted
    assert sorted(result.ids[job.topic]) == sorted(committed)
    assert result.stored[job.topic] == result.ends[job.topic]
    assert result.status_lag == 0
    if job.mode == "txn":
        # Aborted records and the markers take offsets too: the log ends
        # past every record, on a marker.
        assert sum(result.ends[job.topic].values()) == PER_TOPIC + 2 * 6


async def test_a_partition_whose_batches_change_codec_midway(
    outcome: dict[str, tuple[list[Job], Outcome]],
) -> None:
    jobs, result = outcome["mixed"]
    topic = jobs[0].topic
    committed = [e for job in jobs for _, _, e in job.records if e not in job.aborted]
    assert len(committed) == 6 * PER_TOPIC - 2 * len(aborted_positions(PER_TOPIC))
    assert sorted(result.ids[topic]) == sorted(committed)
    assert result.stored[topic] == result.ends[topic]
    assert result.status_lag == 0
