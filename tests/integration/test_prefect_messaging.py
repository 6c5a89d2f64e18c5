"""The Prefect messaging broker on Kafka (`worker.prefect_messaging`), driven
through Prefect's own messaging functions in the pinned Prefect's venv
(tests/prefect_side/broker_checks.py), against the real Kafka broker.

Each test gets topics of its own (a fresh PERSISTER_PREFECT_TOPIC_PREFIX)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from schemas.migrate import upgrade
from tests.integration.support import fresh_database
from worker.devtools.prefect_server import PREFECT_BIN, kafka_broker_env
from worker.devtools.stack import StackInfo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
CHECKS = ROOT / "tests" / "prefect_side" / "broker_checks.py"
PREFECT_PYTHON = PREFECT_BIN.with_name("python")
PARTITIONS = 4
MAX_RETRIES = 2


def broker_env(stack_info: StackInfo, home: Path, **extra: str) -> dict[str, str]:
    """A Prefect process's environment with the Kafka broker, its topics under
    a prefix no other test uses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PERSISTER_"))}
    prefix = f"t{uuid.uuid4().hex[:10]}."
    env.update(kafka_broker_env(stack_info.kafka_bootstrap_servers, prefix))
    # The in-process cache unless a test says otherwise.
    env.pop("PREFECT_MESSAGING_CACHE")
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PERSISTER_PREFECT_TOPIC_PARTITIONS=str(PARTITIONS),
        PERSISTER_PREFECT_MAX_RETRIES=str(MAX_RETRIES),
        PERSISTER_PREFECT_RETRY_BASE_S="0.01",
    )
    env.update(extra)
    return env


async def check(name: str, env: dict[str, str], tmp_path: Path) -> Any:
    assert PREFECT_PYTHON.exists(), f"{PREFECT_PYTHON} is missing: run `make prefect-venv`"
    out = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.json"
    done = await asyncio.to_thread(
        subprocess.run,
        [str(PREFECT_PYTHON), str(CHECKS), name, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture
def env(stack_info: StackInfo, tmp_path: Path) -> dict[str, str]:
    """The checks publish before their group first joins."""
    home = tmp_path / "prefect-home"
    return broker_env(stack_info, home, PERSISTER_PREFECT_NEW_GROUP_OFFSET="earliest")


async def test_a_published_message_is_consumed_as_sent_with_its_id_as_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("round_trip", env, tmp_path)
    ids = seen["ids"]
    assert seen["consumed"] == [
        {"data": f'{{"n": {n}}}', "attributes": {"id": ids[n], "event": "x.y"}} for n in range(3)
    ]
    assert seen["records"] == [
        {"key": ids[n], "value": f'{{"n": {n}}}', "headers": {"id": ids[n], "event": "x.y"}}
        for n in range(3)
    ]


@pytest.mark.parametrize(
    "cache", ["prefect.server.utilities.messaging.memory", "worker.prefect_messaging"]
)
async def test_a_message_published_again_by_id_is_written_once(
    env: dict[str, str], tmp_path: Path, cache: str
) -> None:
    # Prefect's own cache, and the broker's on Prefect's default database
    # (SQLite, nothing to share): both remember in the process.
    seen = await check("deduplication", env | {"PREFECT_MESSAGING_CACHE": cache}, tmp_path)
    keys = Counter(r["key"] for r in seen["records"])
    # Five ids once each; the message without an id is not deduplicated.
    assert keys == Counter({**dict.fromkeys(seen["ids"], 1), None: 1})


async def test_processes_sharing_the_database_publish_an_id_once_kafka_has_it(
    stack_info: StackInfo, tmp_path: Path
) -> None:
    async with fresh_database(stack_info.database_url) as url:
        await asyncio.to_thread(upgrade, url)
        env = broker_env(
            stack_info,
            tmp_path / "prefect-home",
            PREFECT_MESSAGING_CACHE="worker.prefect_messaging",
            PREFECT_API_DATABASE_CONNECTION_URL=url,
        )
        ids = [str(uuid.uuid4()) for _ in range(100)]
        shared = {**env, "CHECK_IDS": ",".join(ids)}
        # Kafka refused them: nothing is taken for seen, the retry goes out.
        failed = await check("publish_ids_failing", shared, tmp_path)
        await check("publish_ids", shared, tmp_path)
        await asyncio.gather(*(check("publish_ids", shared, tmp_path) for _ in range(2)))
        seen = await check("records", env, tmp_path)
    assert failed == {"failed": "oops"}
    assert Counter(r["key"] for r in seen["records"]) == Counter(dict.fromkeys(ids, 1))


async def test_a_new_group_starts_at_the_end_of_the_topic(
    stack_info: StackInfo, tmp_path: Path
) -> None:
    seen = await check("new_group_starts_at_the_end", broker_env(stack_info, tmp_path), tmp_path)
    assert seen == {"consumed": ["new"]}


async def test_stop_consumer_without_ack_leaves_the_message_for_the_group(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("stop_consumer", env, tmp_path)
    # Stopped without ack on "first": the group's next run gets it again;
    # stopped with ack: the next run goes on with "second".
    assert seen["runs"] == [["first"], ["first"], ["second"]]


async def test_two_members_of_a_group_share_its_partitions_and_its_messages(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("shared_group", env, tmp_path)
    a, b = seen["assigned"]["a"], seen["assigned"]["b"]
    assert sorted(a + b) == list(range(PARTITIONS))
    assert a and b
    ids_a, ids_b = seen["seen"]["a"], seen["seen"]["b"]
    assert ids_a and ids_b
    assert len(ids_a) + len(ids_b) == len(set(ids_a) | set(ids_b)) == 200


async def test_an_ephemeral_subscription_gets_what_was_published_after_it_and_leaves_no_group(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("ephemeral", env, tmp_path)
    assert seen["kwargs"] == ["since_ms", "topic"]
    assert seen["consumed"] == ["during"]
    assert seen["groups_before"] == seen["groups_during"] == seen["groups_after"]


async def test_a_broken_topic_fails_publishing_and_nothing_is_remembered(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("broken_topic", env, tmp_path)
    assert seen == {"failed": "oops", "records": 1}


async def test_a_message_its_handler_keeps_failing_becomes_a_dead_letter(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("dead_letters", env, tmp_path)
    assert seen["calls"] == ["bad"] * (MAX_RETRIES + 1) + ["good"]
    [letter] = seen["dead_letters"]
    prefix = env["PERSISTER_PREFECT_TOPIC_PREFIX"]
    assert letter["value"] == "bad"
    assert letter["key"] == "1"
    assert letter["headers"] == {
        "id": "1",
        "prefect-group": "failing",
        "source-topic": f"{prefix}events",
        "source-partition": letter["headers"]["source-partition"],
        "source-offset": "0",
        "error": "RuntimeError('cannot handle it')",
    }


async def test_an_event_from_a_producer_that_is_not_prefect_gets_its_attributes(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("foreign_producer", env, tmp_path)
    assert seen["attributes"] == [{"id": seen["id"], "event": "external.thing"}]


async def test_prefect_s_own_event_persister_on_the_broker_is_refused_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("persister_group", env, tmp_path)
    assert seen["refused"] == (
        "Prefect's event persister is on: with this broker `persister run` persists "
        "the events; set PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED=false"
    )


async def test_a_failed_commit_is_made_again_though_no_record_follows(
    env: dict[str, str], tmp_path: Path
) -> None:
    seen = await check("commit_retried", env, tmp_path)
    assert seen == {"failed": 1, "seen": 20, "committed": 20}
