"""A real Prefect server (the pinned Prefect, from `.venv-prefect`), for the
tests and benchmarks that share its database.

The server runs with its defaults: only its database, its home, its event
persister off (the worker persists its events) and its telemetry off (this
machine has no network but loopback). It migrates its database on start, as
it does out of the box. Use it as a context manager: the process it started
is stopped when the block ends, whether the test passed or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).parents[2]
PREFECT_BIN = Path(os.environ.get("PREFECT_VENV", ROOT / ".venv-prefect")) / "bin" / "prefect"
FLOW = Path(__file__).with_name("prefect_flow.py")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 30.0


def prefect_env(database_url: str, home: Path) -> dict[str, str]:
    """The test's environment without any PREFECT_ or PERSISTER_ setting,
    plus what a Prefect server beside the worker needs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "PERSISTER_")) and k not in ("DATABASE_URL",)
    }
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=database_url,
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def kafka_broker_env(bootstrap_servers: str, topic_prefix: str = "") -> dict[str, str]:
    """What a Prefect server needs to use this project's Kafka broker, with
    `persister run` as its event persister (prefect_env turns Prefect's off).
    The repository goes on PYTHONPATH: `.venv-prefect` has aiokafka, not the
    project."""
    return {
        "PYTHONPATH": str(ROOT),
        "PREFECT_MESSAGING_BROKER": "worker.prefect_messaging",
        "PREFECT_MESSAGING_CACHE": "worker.prefect_messaging",
        "PERSISTER_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "PERSISTER_PREFECT_TOPIC_PREFIX": topic_prefix,
    }


def run_flow(api_url: str, env: Mapping[str, str], out: Path) -> dict[str, str]:
    """One real flow run (prefect_flow.py) through Prefect's client: its ids."""
    done = subprocess.run(
        [str(PREFECT_BIN.with_name("python")), str(FLOW), str(out)],
        env={**env, "PREFECT_API_URL": api_url},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the flow run failed: {done.stderr[-3000:]}")
    ids: dict[str, str] = json.loads(out.read_text())
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_upgrade(database_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    """`prefect server database upgrade -y`, as an operator runs it."""
    assert PREFECT_BIN.exists(), f"{PREFECT_BIN} is missing: run `make prefect-venv`"
    return subprocess.run(
        [str(PREFECT_BIN), "server", "database", "upgrade", "-y"],
        env=prefect_env(database_url, home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class PrefectServer:
    """`prefect server start`; `options` are added to its command line and
    `env` to its environment (e.g. a messaging broker)."""

    def __init__(
        self,
        database_url: str,
        home: Path,
        env: Mapping[str, str] | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.database_url = database_url
        self.home = home
        self.env = dict(env or {})
        self.options = options
        self.log = home / "server.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def __enter__(self) -> PrefectServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        assert PREFECT_BIN.exists(), f"{PREFECT_BIN} is missing: run `make prefect-venv`"
        self.home.mkdir(parents=True, exist_ok=True)
        command = [str(PREFECT_BIN), "server", "start", "--host", "127.0.0.1", *self.options]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "--port", str(self.port)],
                env=prefect_env(self.database_url, self.home) | self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"Prefect server exited: {self.tail()}"
            with contextlib.suppress(OSError, ValueError):
                if self.request("GET", "/health") == (200, True):
                    return
            time.sleep(0.25)
        raise AssertionError(f"Prefect server not healthy in {START_TIMEOUT_S} s: {self.tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def tail(self, lines: int = 40) -> str:
        text_lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text_lines[-lines:])

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """(status, parsed JSON body) of one API call."""
        url = path if path.startswith("http") else f"{self.api}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
