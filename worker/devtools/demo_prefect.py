"""`make demo-prefect`: Prefect on Kafka, end to end, on a throwaway stack.

Starts Kafka and PostgreSQL (`persister stack up`), a real Prefect server
(the pinned Prefect in `.venv-prefect`) with this project's Kafka broker and
its own event persister off, then `persister migrate` and one `persister run`
as its event persister, all on one database. Runs a real flow through
Prefect's client, prints that flow run's events as Prefect's API returns
them, and stops everything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.core.kafka_admin import create_topic
from worker.devtools.prefect_server import PrefectServer, kafka_broker_env, run_flow
from worker.devtools.stack import LocalStack, StackInfo

TOPIC = "events"
PARTITIONS = 4
GROUP = "event-persister"
# The flow's last events: once both are stored, the run's events are all in.
LAST_EVENTS = {"prefect.flow-run.Completed", "prefect.task-run.Completed"}
WAIT_S = 120.0
STOP_TIMEOUT_S = 60.0

console = Console(width=120)


def persister(info: StackInfo, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`persister <args>` as Prefect's event persister on the stack."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": info.kafka_bootstrap_servers,
        "DATABASE_URL": info.database_url,
        "PERSISTER_TOPICS": TOPIC,
        "PERSISTER_GROUP_ID": GROUP,
        "PERSISTER_EVENT_TABLES": "prefect",
        "PERSISTER_METRICS_HOST": "127.0.0.1",
        "PERSISTER_METRICS_PORT": "0",
    }
    out = log.open("wb") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *args], env=env, stdout=out, stderr=out
    )


def flow_run_events(server: PrefectServer, flow_run_id: str) -> list[dict[str, Any]]:
    """The flow run's events as Prefect's API returns them, once its last
    ones are stored."""
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    body = {
        "filter": {
            "occurred": {"since": since},
            "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            "order": "ASC",
        },
        "limit": 50,
    }
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        status, page = server.request("POST", "/events/filter", body)
        if status != 200:
            raise RuntimeError(f"Prefect's API answered {status}: {page}")
        events: list[dict[str, Any]] = page["events"]
        if {e["event"] for e in events} >= LAST_EVENTS:
            return events
        time.sleep(0.5)
    raise RuntimeError(f"the flow run's events were not stored in {WAIT_S:.0f} s")


def report(events: list[dict[str, Any]], took_s: float) -> None:
    table = Table(title="The flow run's events, read back through Prefect's API")
    for column in ("occurred", "event", "resource"):
        table.add_column(column)
    for event in events:
        resource = event["resource"]
        table.add_row(
            event["occurred"][11:23],
            event["event"],
            resource.get("prefect.resource.name", resource["prefect.resource.id"]),
        )
    console.print(table)
    console.print(
        f"{len(events)} events; from starting the flow run to reading them back: {took_s:.1f} s"
    )


def run(info: StackInfo, tmp: Path) -> None:
    asyncio.run(
        create_topic({"bootstrap_servers": info.kafka_bootstrap_servers}, TOPIC, PARTITIONS)
    )
    broker = kafka_broker_env(info.kafka_bootstrap_servers)
    console.print("starting a Prefect server with the Kafka broker ...")
    with PrefectServer(info.database_url, tmp / "prefect", env=broker) as server:
        migrate = persister(info, "migrate")
        if migrate.wait(timeout=STOP_TIMEOUT_S) != 0:
            raise RuntimeError("persister migrate failed")
        worker = persister(info, "run", log=tmp / "worker.log")
        try:
            console.print(f"Prefect's API: {server.api}; running a flow ...")
            start = time.monotonic()
            ids = run_flow(server.api, {**os.environ, **broker}, tmp / "flow.json")
            report(flow_run_events(server, ids["flow_run_id"]), time.monotonic() - start)
        finally:
            worker.send_signal(signal.SIGTERM)
            console.print(f"worker stopped with exit code {worker.wait(timeout=STOP_TIMEOUT_S)}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="persister-demo-prefect-") as tmp:
        stack = LocalStack(Path(tmp), database_url=None)
        console.print("starting Kafka and PostgreSQL ...")
        info = stack.start()
        try:
            run(info, Path(tmp))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
