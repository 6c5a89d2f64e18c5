"""A local Kafka (one broker or a cluster, see `worker.devtools.stack_kafka`) and
PostgreSQL server, without Docker.

For tests, the demo and the benchmark; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from worker.devtools.prerequisites import pg_bin
from worker.devtools.stack_files import StackError, accepts, default_state_dir, free_ports, tail
from worker.devtools.stack_kafka import (
    SASL_PASSWORD,
    SASL_USER,
    KafkaCluster,
    all_port_names,
    kafka_libs,
    kafka_version,
    new_cluster_id,
)
from worker.devtools.stack_proxy import SERVICES, StackProxies, proxy_port_name

__all__ = [
    "SASL_PASSWORD",
    "SASL_USER",
    "LocalStack",
    "StackError",
    "StackInfo",
    "default_state_dir",
    "kafka_libs",
    "kafka_version",
    "new_cluster_id",
    "stack_down",
    "stack_net",
    "stack_up",
]

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"
PG_STOP_DEADLINE_S = 30.0
DATABASE = "events"


@dataclass(frozen=True)
class StackInfo:
    kafka_bootstrap_servers: str
    database_url: str
    # A second listener of the same broker that wants SASL/PLAIN with
    # SASL_USER and SASL_PASSWORD (for testing Kafka security settings).
    kafka_sasl_bootstrap_servers: str = ""
    # With proxies: PostgreSQL itself, not through its proxy (for looking at
    # the database while its network is frozen).
    direct_database_url: str = ""

    def exports(self) -> str:
        """Shell lines that point the persister at this stack."""
        lines = (
            f"export KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers}\n"
            f"export DATABASE_URL={self.database_url}\n"
        )
        if self.direct_database_url != self.database_url:
            lines += f"# PostgreSQL without its proxy: {self.direct_database_url}\n"
        return lines


# The server settings that matter for this write load (docs/performance.md):
# whole index pages written to the WAL after each checkpoint are most of its
# volume, so checkpoints are spaced out and the WAL is compressed. All of them
# take effect on a reload, so a benchmark can compare with the defaults.
SERVER_SETTINGS = {
    "wal_compression": "lz4",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
}


def _pg_bin(name: str) -> str:
    """The path `prerequisites.pg_bin` finds, else the bare name (for the error to name)."""
    return pg_bin(name) or name


class LocalStack:
    """Kafka (one KRaft node, or a cluster of `brokers`) plus, unless a
    database URL is given, one PostgreSQL cluster.

    With `proxy`, clients reach both through proxies (`stack_proxy`) that
    `freeze`, `heal` and `reset` make silent, bring back or reset: the
    broker advertises its proxy's port, and `info.database_url` is the
    proxy's."""

    def __init__(
        self,
        state_dir: Path,
        database_url: str | None = None,
        brokers: int = 1,
        server_settings: Mapping[str, str] = SERVER_SETTINGS,
        proxy: bool = False,
    ) -> None:
        if proxy and (brokers != 1 or database_url):
            raise StackError("proxies need one broker and the stack's own PostgreSQL")
        self.state_dir = state_dir.resolve()
        self._external_db = database_url
        # On the command line, so ALTER SYSTEM cannot change them: a benchmark
        # that switches settings passes none and sets them itself.
        self._server_settings = dict(server_settings)
        self._pg_dir = self.state_dir / "postgres"
        self._pgdata = self._pg_dir / "pgdata"
        self._ports: dict[str, int] = {}
        self.kafka = KafkaCluster(self.state_dir / "kafka", self._ports, brokers, {})
        self.proxies = StackProxies(self.state_dir, self._ports, {}) if proxy else None

    @classmethod
    def load(cls, state_dir: Path) -> LocalStack:
        """The stack described by `state_dir`/stack.json, e.g. one started by another process."""
        saved = json.loads((state_dir / STATE_FILE).read_text())
        brokers, proxy = int(saved.get("brokers", 1)), bool(saved.get("proxy", False))
        stack = cls(state_dir, saved["external_database_url"], brokers, proxy=proxy)
        stack._ports.update({name: int(port) for name, port in saved["ports"].items()})
        pids = saved.get("kafka_pids") or {"1": saved.get("kafka_pid")}
        stack.kafka.pids = {int(n): int(pid) for n, pid in pids.items() if pid is not None}
        if stack.proxies is not None:
            stack.proxies.pids = {s: int(pid) for s, pid in saved.get("proxy_pids", {}).items()}
        return stack

    def save(self) -> None:
        state: dict[str, Any] = {
            "external_database_url": self._external_db,
            "brokers": self.kafka.brokers,
            "ports": self._ports,
            "kafka_pids": self.kafka.pids,
            "proxy": self.proxies is not None,
            "proxy_pids": {} if self.proxies is None else self.proxies.pids,
            "postgres_pid": self._postgres_pid(),
            "dirs": {"kafka": str(self.kafka.kafka_dir), "postgres": str(self._pg_dir)},
            "info": asdict(self.info),
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def kafka_partition_dir(self, topic: str, partition: int, node: int = 1) -> Path:
        """Where a broker keeps a partition's log segments."""
        return self.kafka.partition_dir(topic, partition, node)

    @property
    def info(self) -> StackInfo:
        if not self._ports:
            raise StackError("the stack has not been started")
        direct = self._external_db or self._postgres_url(self._ports["postgres"])
        proxied = self._ports.get(proxy_port_name("postgres"))
        url = direct if proxied is None else self._postgres_url(proxied)
        return StackInfo(self.kafka.bootstrap(), url, self.kafka.bootstrap(sasl=True), direct)

    @staticmethod
    def _postgres_url(port: int) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"

    def start(self) -> StackInfo:
        """Start whatever is not running yet; return where to find it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self._ports:
            names = ["postgres", *all_port_names(self.kafka.brokers)]
            if self.proxies is not None:
                names += [proxy_port_name(service) for service in SERVICES]
            self._ports.update(zip(names, free_ports(len(names)), strict=True))
        self.start_postgres()
        if self.proxies is not None:
            targets = {"kafka": self.kafka.port(1), "postgres": self._ports["postgres"]}
            self.proxies.start(targets)
        self.start_kafka()
        return self.info

    def stop(self) -> None:
        if self.proxies is not None:
            self.proxies.stop()
        self.stop_kafka()
        self.stop_postgres()

    def running(self) -> bool:
        proxies = self.proxies is not None and self.proxies.any_alive()
        postgres = not self._external_db and self._postgres_running()
        return proxies or self.kafka.any_alive() or postgres

    # --- the network, with proxies ----------------------------------------

    def freeze(self, service: str) -> str:
        """Make the network to `service` ("kafka" or "postgres") silent:
        connections stay open, nothing passes either way. Returns the
        proxy's state, e.g. "frozen 4" (4 connections open)."""
        return self._proxies().command(service, "freeze")

    def heal(self, service: str) -> str:
        """Forward again, first what was held."""
        return self._proxies().command(service, "heal")

    def reset(self, service: str) -> str:
        """Close every connection to `service` with a RST; forward new ones."""
        return self._proxies().command(service, "reset")

    def _proxies(self) -> StackProxies:
        if self.proxies is None:
            raise StackError(
                f"the stack in {self.state_dir} runs without proxies:"
                " `persister stack down`, then `persister stack up --proxy`"
            )
        return self.proxies

    def kafka_log_tail(self, lines: int = 80) -> str:
        return self.kafka.log_tail(lines)

    def start_kafka(self, nodes: list[int] | None = None) -> None:
        """Start the Kafka nodes (default: all) that are not running."""
        self.kafka.start(nodes)

    def stop_kafka(
        self, nodes: list[int] | None = None, sig: signal.Signals = signal.SIGTERM
    ) -> None:
        """Stop the Kafka nodes (default: all): SIGTERM for a controlled
        shutdown, SIGKILL for a crash."""
        self.kafka.stop(nodes, sig)

    def _pg(self, *args: str, what: str = "") -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the postgres user, since the server refuses to run as root."""
        cmd = [_pg_bin(args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
            # The postgres user must reach the directory, e.g. through
            # pytest's 0700 dirs (which another pytest run may reset).
            for parent in self._pg_dir.parents:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    log.info("allowing other users to traverse %s for PostgreSQL", parent)
                    parent.chmod(mode | stat.S_IXOTH)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if what and done.returncode != 0:
            pg_log = tail(self._pg_dir / "postgres.log")
            raise StackError(f"{what}:\n{done.stderr}\n--- postgres.log ---\n{pg_log}")
        return done

    def _postgres_running(self) -> bool:
        if not self._pgdata.is_dir():
            return False
        return self._pg("pg_ctl", "-D", str(self._pgdata), "status").returncode == 0

    def _postgres_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self._pgdata / "postmaster.pid").read_text().split()[0])
        return None

    def start_postgres(self) -> None:
        if self._external_db or self._postgres_running():
            return
        fresh = not (self._pgdata / "PG_VERSION").exists()
        if fresh:
            self._init_postgres()
        port = str(self._ports["postgres"])
        # pg_ctl hands -o to a shell, hence the quoting.
        opts = f"-p {port} -k {shlex.quote(str(self._pg_dir))} -c listen_addresses=127.0.0.1"
        opts += "".join(f" -c {name}={value}" for name, value in self._server_settings.items())
        pg_log = str(self._pg_dir / "postgres.log")
        args = ["-D", str(self._pgdata), "-l", pg_log, "-w", "-t", "60", "-o", opts, "start"]
        self._pg("pg_ctl", *args, what="PostgreSQL did not start")
        if fresh:
            args = ["-h", "127.0.0.1", "-p", port, "-U", "postgres", DATABASE]
            self._pg("createdb", *args, what=f"creating database {DATABASE} failed")
        log.info("PostgreSQL ready on 127.0.0.1:%s", port)

    def _init_postgres(self) -> None:
        shutil.rmtree(self._pgdata, ignore_errors=True)  # leftover of an interrupted initdb
        self._pg_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self._pg_dir, "postgres", "postgres")
            for path in self._pg_dir.iterdir():
                shutil.chown(path, "postgres", "postgres")
        args = ["-D", str(self._pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        args.append("--no-sync")  # only initdb's own writes; the server keeps fsync on
        self._pg("initdb", *args, what="initdb failed")

    def stop_postgres(self) -> None:
        if self._external_db or not self._postgres_running():
            return
        log.info("stopping PostgreSQL")
        args = ["-D", str(self._pgdata), "-m", "fast", "-w", "-t", "60", "stop"]
        self._pg("pg_ctl", *args, what="PostgreSQL did not stop")
        # pg_ctl returns once the pid file is gone, a moment before the
        # postmaster exits and closes its socket: a start on the same port
        # right away would find it taken.
        port = self._ports.get("postgres")
        deadline = time.monotonic() + PG_STOP_DEADLINE_S
        while port and accepts("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)


def stack_up(
    state_dir: Path, database_url: str | None, brokers: int = 1, proxy: bool = False
) -> StackInfo:
    """Start a stack that outlives this process and record it in
    `state_dir`/stack.json; one recorded there already is resumed as it was
    configured, on the same ports and data (refused if `brokers` or `proxy`
    differs)."""
    if (state_dir / STATE_FILE).exists():
        stack = LocalStack.load(state_dir)
        if stack.kafka.brokers != brokers:
            raise StackError(
                f"the stack in {state_dir} has {stack.kafka.brokers} broker(s), not {brokers}:"
                " `persister stack down` first"
            )
        if (stack.proxies is not None) != proxy:
            has = "has" if stack.proxies is not None else "has no"
            raise StackError(
                f"the stack in {state_dir} {has} proxies: `persister stack down` first"
            )
    else:
        stack = LocalStack(state_dir, database_url, brokers, proxy=proxy)
    try:
        info = stack.start()
    except BaseException:
        stack.stop()
        raise
    stack.save()
    return info


def stack_net(state_dir: Path, action: str, service: str) -> str:
    """freeze, heal or reset the network to one service of the stack recorded
    in `state_dir` (started with proxies); the proxy's state after it."""
    if not (state_dir / STATE_FILE).exists():
        raise StackError(f"no local stack in {state_dir}: `persister stack up --proxy` first")
    stack = LocalStack.load(state_dir)
    if action not in ("freeze", "heal", "reset"):
        raise StackError(f"unknown action {action!r}: freeze, heal or reset")
    return str(getattr(stack, action)(service))


def stack_down(state_dir: Path) -> bool:
    """Stop the stack recorded in `state_dir` and delete its data; False if nothing was running."""
    if not (state_dir / STATE_FILE).exists():
        return False
    stack = LocalStack.load(state_dir)
    was_running = stack.running()
    stack.stop()
    shutil.rmtree(state_dir, ignore_errors=True)
    return was_running
