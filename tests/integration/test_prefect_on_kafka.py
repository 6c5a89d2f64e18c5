"""Prefect on Kafka, end to end: a real Prefect server (the pinned Prefect,
its defaults) with `worker.prefect_messaging` as its messaging broker and its
own event persister off, `persister run` as its event persister, one
PostgreSQL database for both, and real flow runs from Prefect's client."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text

from tests.integration.support import create_topic, end_offsets, fresh_database, wait_until
from tests.integration.test_prefect_messaging import broker_env
from tests.integration.workers import WorkerPool, run_command, worker_env
from worker.devtools.prefect_server import PrefectServer, run_flow
from worker.devtools.stack import LocalStack, StackInfo
from worker.pipeline.connections import create_engine

pytestmark = pytest.mark.integration

PARTITIONS = 4
# Prefect's consumers of `events` besides its event persister (the worker).
OTHER_GROUPS = ("reactive-triggers", "task-run-recorder", "event-logger")
SETTLE_S = 60.0
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The names flow_run.py gives; any other name is one Prefect made up.
OUR_NAMES = ("kafka-check", "kafka-check-run", "add-one")
NAMES = ("prefect.resource.name", "name")
# A flow run's first name (adjective-animal) and a task run's (function-key).
MADE_UP = re.compile(r"[a-z]+-[a-z]+|add_one-[0-9a-f]{3}")
GENERATED = "<generated>"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")


def posted_events(count: int, kind: str) -> list[dict[str, Any]]:
    """Events as a client posts them to Prefect's API."""
    now = datetime.now(UTC).isoformat()
    return [
        {
            "id": str(uuid.uuid4()),
            "occurred": now,
            "event": f"check.{kind}",
            "resource": {"prefect.resource.id": f"check.{kind}.{n}"},
        }
        for n in range(count)
    ]


def post(server: PrefectServer, events: list[dict[str, Any]]) -> None:
    status, body = server.request("POST", "/events", events)
    assert status == 204, body


async def stored_once(url: str, ids: list[str] | None = None) -> tuple[int, int]:
    """(rows, distinct ids) in the events table: of `ids`, or of every event."""
    sql = "SELECT count(*), count(DISTINCT id) FROM events"
    if ids is not None:
        sql += " WHERE id = ANY(:ids)"
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(text(sql), {"ids": [uuid.UUID(i) for i in ids or []]})
            rows, distinct = found.one()
    finally:
        await engine.dispose()
    return int(rows), int(distinct)


@dataclass
class Deployment:
    info: StackInfo
    url: str
    topic: str
    server: PrefectServer
    workers: WorkerPool
    env: dict[str, str]


def flow_events(server: PrefectServer, flow_run_id: str) -> list[dict[str, Any]]:
    """What Prefect's API returns for the flow run: its events and those of
    everything related to it (its task run, its flow)."""
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    body = {
        "filter": {
            "occurred": {"since": since},
            "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        },
        "limit": 50,
    }
    status, page = server.request("POST", "/events/filter", body)
    assert status == 200, page
    events: list[dict[str, Any]] = page["events"]
    return events


def normal(value: Any) -> Any:
    """An event with ids, timestamps, durations and the names Prefect makes
    up (a run's name before the flow renames it, a task run's key) replaced:
    what two runs of one flow have in common."""
    if isinstance(value, dict):
        return {
            k: GENERATED if k in NAMES and made_up(v) else normal(v)
            for k, v in value.items()
            if k not in ("id", "occurred", "received", "total_run_time")
        }
    if isinstance(value, list):
        return sorted((normal(v) for v in value), key=json.dumps)
    if isinstance(value, str):
        return TIMESTAMP.sub("<time>", UUID.sub("<id>", value))
    return value


def made_up(name: Any) -> bool:
    return isinstance(name, str) and name not in OUR_NAMES and bool(MADE_UP.fullmatch(name))


async def finished(server: PrefectServer, flow_run_id: str) -> list[dict[str, Any]]:
    """The flow run's events once both runs' last events have arrived."""
    found: list[dict[str, Any]] = []

    async def complete() -> bool:
        found[:] = await asyncio.to_thread(flow_events, server, flow_run_id)
        names = {e["event"] for e in found}
        return {"prefect.flow-run.Completed", "prefect.task-run.Completed"} <= names

    await wait_until(complete, SETTLE_S, "the flow run's events", every_s=0.5)
    return found


async def committed(info: StackInfo, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=info.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: at.offset for tp, at in offsets.items() if tp.topic == topic}


async def all_read(info: StackInfo, groups: tuple[str, ...], topic: str) -> bool:
    ends = await end_offsets(info, topic, PARTITIONS)
    ends = {p: o for p, o in ends.items() if o > 0}
    for group in groups:
        read = {p: o for p, o in (await committed(info, group, topic)).items() if o > 0}
        if read != ends:
            return False
    return True


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-on-kafka")


@pytest.fixture(scope="module")
async def deployment(stack_info: StackInfo, home: Path) -> AsyncIterator[Deployment]:
    async with fresh_database(stack_info.database_url) as url:
        env = broker_env(
            stack_info,
            home / "prefect-home",
            PREFECT_MESSAGING_CACHE="worker.prefect_messaging",
            PREFECT_SERVER_SERVICES_EVENT_LOGGER_ENABLED="true",
        )
        topic = f"{env['PERSISTER_PREFECT_TOPIC_PREFIX']}events"
        await create_topic(stack_info, topic, PARTITIONS)
        with PrefectServer(url, home / "prefect-home", env=env) as server:
            own = worker_env(stack_info, topic, "event-persister", event_tables="prefect")
            code, _out, err = run_command(stack_info, "migrate", env=own | {"DATABASE_URL": url})
            assert code == 0, err
            with WorkerPool(own | {"DATABASE_URL": url}, home / "workers") as workers:
                workers.start(1)
                yield Deployment(stack_info, url, topic, server, workers, env)


@pytest.fixture(scope="module")
def in_memory(stack_info: StackInfo, home: Path) -> Iterator[PrefectServer]:
    """The same Prefect with its own broker (in memory) and event persister,
    on a database of its own (SQLite, its default)."""
    base = home / "memory-home"
    env = {"PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "true"}
    url = f"sqlite+aiosqlite:///{base / 'prefect.db'}"
    with PrefectServer(url, base, env=env) as server:
        yield server


async def test_a_flow_run_s_events_travel_through_kafka_and_are_stored_once(
    deployment: Deployment, in_memory: PrefectServer, home: Path
) -> None:
    ids = run_flow(deployment.server.api, deployment.env, home / "on-kafka.json")
    reference = run_flow(in_memory.api, deployment.env, home / "in-memory.json")
    on_kafka = await finished(deployment.server, ids["flow_run_id"])
    expected = await finished(in_memory, reference["flow_run_id"])

    got = Counter(json.dumps(normal(e), sort_keys=True) for e in on_kafka)
    want = Counter(json.dumps(normal(e), sort_keys=True) for e in expected)
    assert got == want, "\n".join(
        [
            *(f"only on Kafka: {e}" for e in got - want),
            *(f"only in memory: {e}" for e in want - got),
        ]
    )

    async def caught_up() -> bool:
        return await all_read(deployment.info, ("event-persister",), deployment.topic)

    await wait_until(caught_up, SETTLE_S, "the worker to read the topic", every_s=0.5)
    rows, distinct = await stored_once(deployment.url)
    records = sum((await end_offsets(deployment.info, deployment.topic, PARTITIONS)).values())
    assert rows == distinct == records


async def test_prefect_s_other_consumers_read_every_event_through_kafka(
    deployment: Deployment, home: Path
) -> None:
    ids = run_flow(deployment.server.api, deployment.env, home / "consumers.json")
    await finished(deployment.server, ids["flow_run_id"])

    async def all_groups_read() -> bool:
        return await all_read(deployment.info, OTHER_GROUPS, deployment.topic)

    try:
        await wait_until(all_groups_read, SETTLE_S, "Prefect's consumer groups", every_s=0.5)
    except AssertionError as exc:
        info, topic = deployment.info, deployment.topic
        ends = await end_offsets(info, topic, PARTITIONS)
        read = {group: await committed(info, group, topic) for group in OTHER_GROUPS}
        raise AssertionError(
            f"{exc}: ends {ends}, read {read}\n{deployment.server.tail()}"
        ) from None
    # The task run exists only through Prefect's task-run recorder, which
    # builds it from the task run's events.
    status, task_run = deployment.server.request("GET", f"/task_runs/{ids['task_run_id']}")
    assert status == 200, task_run
    assert task_run["state"]["type"] == "COMPLETED"


async def test_an_event_from_a_producer_that_is_not_prefect_fires_an_automation(
    deployment: Deployment,
) -> None:
    name = f"external.ping.{uuid.uuid4().hex[:8]}"
    automation = {
        "name": "kafka-ping",
        "trigger": {
            "type": "event",
            "posture": "Reactive",
            "expect": [name],
            "match": {"prefect.resource.id": "external.*"},
            "threshold": 1,
            "within": 0,
        },
        "actions": [{"type": "do-nothing"}],
    }
    status, created = deployment.server.request("POST", "/automations/", automation)
    assert status == 201, created
    producer = AIOKafkaProducer(bootstrap_servers=deployment.info.kafka_bootstrap_servers)
    await producer.start()
    sent: list[str] = []
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    body = {
        "filter": {
            "occurred": {"since": since},
            "event": {"name": ["prefect.automation.triggered"]},
            "resource": {"id": [f"prefect.automation.{created['id']}"]},
        }
    }
    triggered: list[dict[str, Any]] = []

    async def fired() -> bool:
        # Prefect loads a new automation in the background: an event sent
        # before that fires nothing, so one is sent on each try.
        event_id = str(uuid.uuid4())
        event = {
            "id": event_id,
            "occurred": datetime.now(UTC).isoformat(),
            "event": name,
            "resource": {"prefect.resource.id": "external.sensor"},
            "payload": {},
        }
        await producer.send_and_wait(deployment.topic, json.dumps(event).encode())
        sent.append(event_id)
        status, page = await asyncio.to_thread(
            deployment.server.request, "POST", "/events/filter", body
        )
        triggered[:] = page["events"] if status == 200 else []
        return bool(triggered)

    try:
        await wait_until(fired, SETTLE_S, "the automation to fire", every_s=1.0)
    finally:
        await producer.stop()
    assert triggered[0]["payload"]["triggering_event"]["id"] in sent


async def test_two_api_processes_publish_an_event_sent_to_both_once(
    deployment: Deployment, home: Path
) -> None:
    with PrefectServer(
        deployment.url, home / "second-api", env=deployment.env, options=("--no-services",)
    ) as second:
        shared = posted_events(30, "both")
        first_only, second_only = posted_events(30, "first"), posted_events(30, "second")
        # A client that retries through a load balancer sends one event to both.
        post(deployment.server, shared + first_only)
        post(second, shared + second_only)
    ids = [e["id"] for e in shared + first_only + second_only]

    async def all_stored() -> bool:
        return await stored_once(deployment.url, ids) == (90, 90)

    await wait_until(all_stored, SETTLE_S, "the 90 events", every_s=0.5)
    records = sum((await end_offsets(deployment.info, deployment.topic, PARTITIONS)).values())
    rows, _ = await stored_once(deployment.url)
    assert rows == records


async def test_kafka_restarted_under_a_running_prefect_server_loses_nothing(
    deployment: Deployment, local_stack: LocalStack, home: Path
) -> None:
    before, during, after = (posted_events(20, k) for k in ("before", "during", "after"))
    post(deployment.server, before)
    await asyncio.to_thread(local_stack.stop_kafka)
    try:
        # Accepted once Kafka has the events: the request waits for it.
        posting = asyncio.create_task(asyncio.to_thread(post, deployment.server, during))
    finally:
        await asyncio.to_thread(local_stack.start_kafka)
    await posting
    post(deployment.server, after)
    ids = [e["id"] for e in before + during + after]

    async def all_stored() -> bool:
        return await stored_once(deployment.url, ids) == (60, 60)

    await wait_until(all_stored, SETTLE_S * 2, "the 60 events", every_s=0.5)
    flow = run_flow(deployment.server.api, deployment.env, home / "after-restart.json")
    await finished(deployment.server, flow["flow_run_id"])
    assert deployment.workers.alive() == [0], deployment.workers.tail()
