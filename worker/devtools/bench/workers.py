"""Real `python -m worker run` processes: start, wait until caught up, measure, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from worker.core.startup import StartupSplit, read_split
from worker.devtools.bench import db
from worker.devtools.bench.context import Bench
from worker.devtools.bench.results import Check, Phase
from worker.devtools.bench.server import ServerCpu
from worker.devtools.stack import StackInfo

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
POLL_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class WorkerFailed(RuntimeError):
    """A worker exited early or did not catch up in time; the message quotes its log."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces; the fields after it do not.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_env(info: StackInfo, topics: list[str], group_id: str) -> dict[str, str]:
    """Default settings except where to connect and what to consume: nothing of
    the caller's PERSISTER_ variables leaks in."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PERSISTER_")
        and name not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=info.kafka_bootstrap_servers,
        DATABASE_URL=info.database_url,
        PERSISTER_TOPICS=",".join(topics),
        PERSISTER_GROUP_ID=group_id,
        # Replicas share the host: each takes a free port for its metrics.
        PERSISTER_METRICS_HOST="127.0.0.1",
        PERSISTER_METRICS_PORT="0",
    )
    return env


@dataclass
class Replicas:
    """Worker processes of one consumer group, each logging to its own file."""

    info: StackInfo
    topics: list[str]
    group_id: str
    log_dir: Path
    # Settings on top of the defaults, by variable name.
    settings: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, count: int) -> None:
        env = worker_env(self.info, self.topics, self.group_id) | self.settings
        for i in range(count):
            with (self.log_dir / f"{self.group_id}-{i}.log").open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "worker", "run"],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise WorkerFailed(f"worker {i} exited with {proc.returncode}:\n{self.log_tail(i)}")

    def startup(self, index: int = 0) -> StartupSplit | None:
        """What replica `index` said of its start-up (`worker.core.startup`)."""
        with contextlib.suppress(OSError):
            return read_split((self.log_dir / f"{self.group_id}-{index}.log").read_text())
        return None

    def log_tail(self, index: int, lines: int = 30) -> str:
        path = self.log_dir / f"{self.group_id}-{index}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(proc.pid) for proc in self.procs)

    def peak_rss_mib(self) -> list[float]:
        return [peak_rss_mib(proc.pid) for proc in self.procs]

    def stop(self) -> list[int]:
        """SIGTERM (flush, commit, leave the group), then SIGKILL if it hangs."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=STOP_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                log.warning("worker %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                codes.append(proc.wait())
        self.procs.clear()
        return codes

    async def wait_caught_up(
        self, conn: db.Connection, topic: str, ends: dict[int, int], timeout_s: float
    ) -> tuple[int, float] | None:
        """Until the stored offset of every partition of `topic` is its end
        offset. Returns the events stored and the replicas' CPU seconds spent
        between the first and the last poll that saw a stored offset short of
        the end, None without two such polls: the CPU of writing, start-up
        left out, with records fetched but not yet stored at both ends, so
        those do not bias it. The bench's topics start at offset 0, so the
        stored offsets add up to the events stored."""
        # An empty partition never gets a stored offset.
        ends = {partition: end for partition, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        first: tuple[int, float] | None = None
        last = first
        while (stored := await db.stored_offsets(conn, self.group_id, topic)) != ends:
            if stored:
                last = sum(stored.values()), self.cpu_seconds()
                first = first or last
            self.check_alive()
            if time.monotonic() > deadline:
                stored = await db.stored_offsets(conn, self.group_id, topic)
                raise WorkerFailed(
                    f"workers of {self.group_id} not caught up on {topic} after "
                    f"{timeout_s:.0f} s: stored {stored}, end {ends}\n{self.log_tail(0)}"
                )
            await asyncio.sleep(POLL_S)
        if first is None or last is None or last[0] <= first[0]:
            return None
        return last[0] - first[0], last[1] - first[1]


# Called once the replicas have caught up, while they still run: gets the
# connection, the replicas, the wall-clock time they were started and the
# seconds they took.
WhileRunning = Callable[[db.Connection, Replicas, datetime, float], Awaitable[None]]


@dataclass(frozen=True)
class BacklogRun:
    phase: Phase
    checks: list[Check]


async def run_backlog(
    bench: Bench,
    name: str,
    replicas: int,
    while_running: WhileRunning | None = None,
    *,
    on_empty: bool = True,
    settings: dict[str, str] | None = None,
) -> BacklogRun:
    """Start `replicas` workers of a fresh group on emptied tables (or, with
    `on_empty` False, on the rows there are); time them from start until
    every stored offset is the topic's end offset.

    With `while_running`, the workers also consume the (still empty) latency
    topic, for `while_running` to send to. `settings` go on top of the
    workers' defaults, by variable name."""
    group = f"bench-{replicas}r-{uuid.uuid4().hex[:8]}"
    topics = [bench.topic, bench.latency_topic] if while_running else [bench.topic]
    workers = Replicas(bench.info, topics, group, bench.log_dir, dict(settings or {}))
    timeout_s = bench.catch_up_timeout_s
    async with db.connect(bench.info.database_url) as conn:
        if on_empty:
            await db.truncate(conn)
        else:
            await conn.execute("CHECKPOINT")
        before = await db.counts(conn)
        server = await ServerCpu.of(conn)
        server_before = server.seconds()
        started_at = datetime.now(UTC)
        started = time.monotonic()
        try:
            workers.start(replicas)
            writing_cpu = await workers.wait_caught_up(conn, bench.topic, bench.ends, timeout_s)
            seconds = time.monotonic() - started
            # CPU at the moment they caught up: start-up plus the backlog, no idling.
            cpu = workers.cpu_seconds()
            server_cpu = server.seconds() - server_before
            after = await db.counts(conn)
            writing = await db.writing(conn, started_at)
            if while_running is not None:
                await while_running(conn, workers, started_at, seconds)
            rss = workers.peak_rss_mib()
        finally:
            codes = await asyncio.to_thread(workers.stop)
            startup = workers.startup()
    added = after.events - before.events
    log.info("%s: %d events in %.1f s, exit codes %s", name, added, seconds, codes)
    note = "default settings; timed from process start"
    phase = Phase(name, bench.size, seconds, note, rss, cpu, server_cpu, writing, startup)
    phase.writing_cpu = writing_cpu
    checks = _checks(name, bench, added, after, before, codes)
    return BacklogRun(phase, checks)


def _checks(
    name: str, bench: Bench, added: int, after: db.Counts, before: db.Counts, codes: list[int]
) -> list[Check]:
    return [
        Check(f"{name}: events rows", bench.size, added),
        Check(
            f"{name}: event_resources rows",
            bench.dataset.resource_rows,
            after.resources - before.resources,
        ),
        Check(f"{name}: dead_letters rows", 0, after.dead_letters - before.dead_letters),
        Check(f"{name}: replicas exiting non-zero", 0, sum(code != 0 for code in codes)),
    ]
