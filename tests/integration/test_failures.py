"""Every command, every failure: one line on stderr and a documented exit
code, against real closed ports, a real missing database and a real refused
SASL login. No traceback, no client library noise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import pytest
from sqlalchemy import insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from worker.devtools.stack import SASL_USER, StackInfo

EXIT_BAD, EXIT_REFUSED, EXIT_UNAVAILABLE = 2, 3, 4

KAFKA_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["replay", "--topic", "events", "--to-earliest", "--dry-run"],
    ["produce", "--count", "1"],
    ["dlq", "replay", "--id", "1"],
]
DATABASE_COMMANDS = [
    ["migrate"],
    ["trim", "--once"],
    ["dlq", "list"],
    ["dlq", "replay", "--id", "1"],
    ["status"],
    ["status", "--json"],
    ["replay", "--topic", "events", "--to-earliest", "--dry-run"],
]
ALL_COMMANDS = [["run"], *DATABASE_COMMANDS, ["produce", "--count", "1"]]


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (held bound, not listening)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


def call(args: list[str], env: dict[str, str], timeout_s: float = 60) -> tuple[int, list[str]]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSISTER_") and k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    proc = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**clean, "PERSISTER_METRICS_HOST": "127.0.0.1", "PERSISTER_METRICS_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return proc.returncode, proc.stderr.splitlines()


def base(info: StackInfo) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": info.kafka_bootstrap_servers,
        "DATABASE_URL": info.database_url,
    }


def wrong_password(info: StackInfo) -> dict[str, str]:
    return {
        **base(info),
        "KAFKA_BOOTSTRAP_SERVERS": info.kafka_sasl_bootstrap_servers,
        "PERSISTER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PERSISTER_KAFKA_SASL_MECHANISM": "PLAIN",
        "PERSISTER_KAFKA_SASL_USERNAME": SASL_USER,
        "PERSISTER_KAFKA_SASL_PASSWORD": "not-the-password",
    }


@pytest.fixture
async def one_dead_letter(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(dead_letters).values(
                id=1,
                group_id="event-persister",
                topic="events",
                partition=0,
                offset=0,
                value=b"{}",
                error_class="InvalidEnvelope",
                error="missing id",
            )
        )


@pytest.mark.parametrize("args", KAFKA_COMMANDS, ids=" ".join)
def test_kafka_unreachable(
    args: list[str], stack_info: StackInfo, closed_port: int, one_dead_letter: None
) -> None:
    env = {**base(stack_info), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port}"}
    assert call(args, env) == (
        EXIT_UNAVAILABLE,
        [
            f"Kafka is unreachable at 127.0.0.1:{closed_port}; check KAFKA_BOOTSTRAP_SERVERS, "
            "PERSISTER_KAFKA_SECURITY_PROTOCOL and that the brokers run"
        ],
    )


@pytest.mark.parametrize("args", KAFKA_COMMANDS, ids=" ".join)
def test_kafka_refuses_the_login(
    args: list[str], stack_info: StackInfo, one_dead_letter: None
) -> None:
    code, lines = call(args, wrong_password(stack_info))
    assert code == EXIT_UNAVAILABLE
    assert lines == [
        f"Kafka refused the login at {stack_info.kafka_sasl_bootstrap_servers}: [Error 58] "
        "SaslAuthenticationFailed: Authentication failed: Invalid username or password; check "
        "PERSISTER_KAFKA_SASL_USERNAME, PERSISTER_KAFKA_SASL_PASSWORD and "
        "PERSISTER_KAFKA_SASL_MECHANISM"
    ]
    assert "not-the-password" not in "".join(lines)


@pytest.mark.parametrize("args", DATABASE_COMMANDS, ids=" ".join)
def test_database_unreachable(args: list[str], stack_info: StackInfo, closed_port: int) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{closed_port}/events"
    code, lines = call(args, {**base(stack_info), "DATABASE_URL": url})
    assert code == EXIT_UNAVAILABLE
    assert lines == [
        f"database postgresql+asyncpg://postgres:***@127.0.0.1:{closed_port}/events is "
        f"unreachable (ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', "
        f"{closed_port})); check DATABASE_URL and that PostgreSQL runs"
    ]


@pytest.mark.parametrize("args", DATABASE_COMMANDS, ids=" ".join)
def test_database_missing(args: list[str], stack_info: StackInfo) -> None:
    url = make_url(stack_info.database_url).set(database="nosuch")
    shown = url.render_as_string(hide_password=True)
    env = {**base(stack_info), "DATABASE_URL": url.render_as_string(hide_password=False)}
    assert call(args, env) == (
        EXIT_UNAVAILABLE,
        [f'database {shown} refused: database "nosuch" does not exist; check DATABASE_URL'],
    )


@pytest.mark.parametrize("args", ALL_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "PERSISTER_TOPIC_PATTERN",
            "([",
            "invalid setting PERSISTER_TOPIC_PATTERN=([: is not a regular expression "
            "(unterminated character set at position 1)",
        ),
        (
            "PERSISTER_RETENTION_OVERRIDES",
            "not json",
            "invalid setting PERSISTER_RETENTION_OVERRIDES: is not valid JSON",
        ),
        ("PERSISTER_BATCH_SIZE", "0", "invalid setting PERSISTER_BATCH_SIZE=0: must be at least 1"),
    ],
    ids=["pattern", "overrides", "batch-size"],
)
def test_bad_setting_before_connecting(
    args: list[str], variable: str, value: str, line: str, closed_port: int
) -> None:
    # Nothing listens where it would connect: the setting is found first.
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port}",
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/events",
        variable: value,
    }
    assert call(args, env) == (EXIT_BAD, [line])


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["status", "--watch", "true"],
            "error: got unexpected extra argument(s) (true); see `persister status --help`",
        ),
        (
            ["replay", "--topic", "events"],
            "error: invalid value: give exactly one of --to-earliest, --to-offset, "
            "--to-timestamp, --by-duration; see `persister replay --help`",
        ),
        (["trim"], "error: trim runs once per call: pass --once (the service trims periodically)"),
        (["nosuch"], "error: no such command 'nosuch'; see `persister --help`"),
    ],
    ids=["extra-argument", "replay-target", "trim-once", "unknown-command"],
)
def test_bad_arguments(args: list[str], line: str, stack_info: StackInfo) -> None:
    code, lines = call(args, base(stack_info))
    assert code == EXIT_BAD
    assert lines == [line]


def test_an_unknown_variable_is_warned_about(stack_info: StackInfo, engine: AsyncEngine) -> None:
    code, lines = call(["dlq", "list"], {**base(stack_info), "PERSISTER_BATCHSIZE": "5"})
    assert code == 0
    assert len(lines) == 1
    assert lines[0].endswith(
        "WARNING worker.core.settings: PERSISTER_BATCHSIZE is not a setting and is ignored; "
        "did you mean PERSISTER_BATCH_SIZE?"
    )


def test_run_with_a_busy_metrics_port_stops_before_joining(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **base(stack_info),
            "PERSISTER_METRICS_PORT": str(port),
            "PERSISTER_LOG_LEVEL": "ERROR",
        }
        code, lines = call(["run"], env)
    assert code == EXIT_BAD
    assert lines == [
        f"cannot serve metrics on 127.0.0.1:{port} (error while attempting to bind on address "
        f"('127.0.0.1', {port}): address already in use); set PERSISTER_METRICS_PORT to a free "
        "port (or PERSISTER_METRICS_HOST)"
    ]


def test_run_waits_for_its_database_before_joining(stack_info: StackInfo, closed_port: int) -> None:
    """A replica whose database does not answer logs one WARNING, does not
    join the group, and stops cleanly on SIGTERM."""
    env = {
        **base(stack_info),
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/events",
        "PERSISTER_LOG_FORMAT": "json",
        "PERSISTER_SERVICES__RETENTION_TRIMMER__ENABLED": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        env={
            **os.environ,
            "PERSISTER_METRICS_HOST": "127.0.0.1",
            "PERSISTER_METRICS_PORT": "0",
            **env,
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any("database not usable yet" in line for line in lines):
            assert time.monotonic() < deadline, lines
            lines.append(proc.stderr.readline())
        # Several retries happen in this time (0.5, 1, 2 s apart); none may log.
        time.sleep(3.5)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [orjson.loads(line) for line in [*lines, *rest.splitlines()] if line.strip()]
    messages = [r["message"] for r in records]
    assert proc.returncode == 0
    assert sum("database not usable yet" in m for m in messages) == 1, messages
    assert not any(m.startswith("consuming") or "database answers" in m for m in messages)
    assert all(r["time"].endswith("Z") for r in records)
