"""A real flow run, executed by Prefect's client against the server at
PREFECT_API_URL, run with the Prefect venv's python (`make demo-prefect`
and the tests):

    prefect_flow.py OUT    the flow run's id and its task run's, as JSON, into OUT

The flow and task have fixed names, so two runs (on two brokers) emit events
that differ only in ids and timestamps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.context import get_run_context


@task(task_run_name="add-one")  # type: ignore[untyped-decorator]
def add_one(number: int) -> int:
    return number + 1


@flow(name="kafka-check", flow_run_name="kafka-check-run")  # type: ignore[untyped-decorator]
def kafka_check() -> dict[str, str]:
    get_run_logger().info("adding one")
    future = add_one.submit(41)
    assert future.result() == 42
    context = get_run_context()
    return {"flow_run_id": str(context.flow_run.id), "task_run_id": str(future.task_run_id)}


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(kafka_check()))
