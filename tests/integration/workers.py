"""A pool of real `python -m worker run` processes for fault-injection tests.

Each slot of the pool runs at most one worker process at a time and logs to
its own file (every start of the slot appends to it, after a header line), so
a test can kill, restart, terminate and scale workers and quote their logs in
its assertion messages. The methods block (they wait for processes to exit):
call them through `asyncio.to_thread` from async tests. Use the pool as a
context manager (`with` or `async with`) so that every process it started is
stopped when the test ends, whether it passed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from worker.devtools.stack import StackInfo

# What a worker inherits from the test's environment is cleaned of these, so
# only the settings the test passes reach it.
_OWN_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
_OWN_PREFIX = "PERSISTER_"
STOP_TIMEOUT_S = 30.0
# From the line "consuming <topics> as group '<group>'", logged once the
# worker's consumer has started (its signal handlers are installed by then).
READY_MARKER = " as group '"


def worker_env(
    info: StackInfo,
    topic: str,
    group_id: str,
    *,
    session_timeout_s: float = 6.0,
    flush_every_s: float = 0.2,
    shutdown_grace_s: float = 10.0,
    **extra: str,
) -> dict[str, str]:
    """The settings of a worker of `group_id` consuming `topic` on this stack.

    `extra` adds PERSISTER_ settings by their lower-case name without the
    prefix, e.g. `metadata_max_age_s="1"`.
    """
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": info.kafka_bootstrap_servers,
        "DATABASE_URL": info.database_url,
        "PERSISTER_TOPICS": topic,
        "PERSISTER_GROUP_ID": group_id,
        "PERSISTER_SESSION_TIMEOUT_S": str(session_timeout_s),
        "PERSISTER_FLUSH_EVERY_S": str(flush_every_s),
        "PERSISTER_SHUTDOWN_GRACE_S": str(shutdown_grace_s),
        "PERSISTER_METRICS_HOST": "127.0.0.1",
        "PERSISTER_METRICS_PORT": "0",
    }
    env.update({f"{_OWN_PREFIX}{name.upper()}": value for name, value in extra.items()})
    return env


def run_command(
    info: StackInfo, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 60
) -> tuple[int, str, str]:
    """Run `persister <args>` against this stack with only the settings given
    (the test's own PERSISTER_ variables left out): (exit code, stdout, stderr)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in _OWN_VARIABLES and not k.startswith(_OWN_PREFIX)
    }
    clean |= {
        "KAFKA_BOOTSTRAP_SERVERS": info.kafka_bootstrap_servers,
        "DATABASE_URL": info.database_url,
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


@dataclass
class Exit:
    """How one worker process ended."""

    slot: int
    pid: int
    code: int
    # "kill", "terminate" or "stop_all" when the pool ended it; None when it
    # exited on its own.
    by: str | None


@dataclass
class _Slot:
    index: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # Set just before the pool signals the process, so an exit it caused is
    # not mistaken for a crash.
    ending: str | None = None


@dataclass
class WorkerPool:
    """Worker processes sharing one environment (and so one consumer group).

    With `static_membership`, slot i runs with PERSISTER_GROUP_INSTANCE_ID
    `<instance_prefix>-i`, so a restarted slot rejoins as the same member.
    """

    env: Mapping[str, str]
    log_dir: Path
    static_membership: bool = False
    instance_prefix: str = "worker"
    stop_timeout_s: float = STOP_TIMEOUT_S
    exits: list[Exit] = field(default_factory=list)
    _slots: list[_Slot] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # --- lifecycle -----------------------------------------------------------

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancelled test still waits for its processes to be gone.
        await asyncio.shield(asyncio.to_thread(self.stop_all))

    # --- starting ------------------------------------------------------------

    def start(self, count: int = 1) -> list[int]:
        """Start `count` workers in new slots; returns their slot numbers."""
        with self._lock:
            started = []
            for _ in range(count):
                index = len(self._slots)
                self._slots.append(_Slot(index, self.log_dir / f"worker-{index}.log"))
                self._spawn(self._slots[index])
                started.append(index)
            return started

    def restart(self, i: int) -> int:
        """Start slot i again (it must not be running); returns the new pid."""
        with self._lock:
            slot = self._slots[i]
            if slot.proc is not None and slot.proc.poll() is None:
                raise RuntimeError(f"worker {i} (pid {slot.proc.pid}) is still running")
            self._reap(slot)
            return self._spawn(slot)

    def _spawn(self, slot: _Slot) -> int:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _OWN_VARIABLES and not k.startswith(_OWN_PREFIX)
        }
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        if self.static_membership:
            env["PERSISTER_GROUP_INSTANCE_ID"] = f"{self.instance_prefix}-{slot.index}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        slot.starts += 1
        with slot.log.open("ab") as log:
            header = f"=== start {slot.starts} of worker {slot.index} at {time.time():.3f} ===\n"
            log.write(header.encode())
            log.flush()
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                env=env,
                # Away from the repository, so no `.env` file there applies.
                cwd=self.log_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        slot.ending = None
        return slot.proc.pid

    # --- stopping ------------------------------------------------------------

    def kill(self, i: int) -> int:
        """SIGKILL worker i and wait for it; returns its exit code (-9)."""
        with self._lock:
            slot = self._slots[i]
            proc = self._running(slot)
            slot.ending = "kill"
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=self.stop_timeout_s)
            return self._reap(slot)

    def terminate(self, i: int, timeout_s: float | None = None) -> int:
        """SIGTERM worker i, wait up to `timeout_s` (default: the pool's stop
        timeout) for it to exit and return its exit code. A worker that
        outlives the timeout is killed: its exit code is then -9."""
        with self._lock:
            slot = self._slots[i]
            proc = self._running(slot)
            slot.ending = "terminate"
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                self._append_note(slot, "did not exit after SIGTERM in time; SIGKILL")
                proc.kill()
                proc.wait()
            return self._reap(slot)

    def scale(self, n: int, timeout_s: float | None = None) -> list[int]:
        """Run exactly n workers: SIGTERM the highest running slots (all at
        once, as an orchestrator scaling down does), or start stopped slots
        (lowest first) and then new ones. Returns the exit codes of the
        workers it terminated."""
        with self._lock:
            running = self.alive()
            surplus = sorted(running, reverse=True)[: max(0, len(running) - n)]
            codes = self._terminate_all(surplus, "terminate", timeout_s)
            missing = n - len(self.alive())
            stopped = [s.index for s in self._slots if s.index not in self.alive()]
            for i in stopped[: max(0, missing)]:
                self.restart(i)
                missing -= 1
            if missing > 0:
                self.start(missing)
            return codes

    def stop_all(self) -> list[int]:
        """SIGTERM every running worker, SIGKILL whoever outlives the stop
        timeout; returns their exit codes. Safe to call more than once."""
        with self._lock:
            started = [s.index for s in self._slots if s.proc is not None]
            return self._terminate_all(started, "stop_all", None)

    def _terminate_all(self, slots: list[int], by: str, timeout_s: float | None) -> list[int]:
        """SIGTERM the running ones of `slots` together, SIGKILL whoever
        outlives the timeout; reap them all and return their exit codes."""
        procs = [(s, s.proc) for s in (self._slots[i] for i in slots) if s.proc is not None]
        for slot, proc in procs:
            if proc.poll() is None:
                slot.ending = slot.ending or by
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        for slot, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._append_note(slot, "did not exit after SIGTERM in time; SIGKILL")
                proc.kill()
                proc.wait()
        return [self._reap(slot) for slot, _ in procs]

    def _running(self, slot: _Slot) -> subprocess.Popen[bytes]:
        if slot.proc is None or not _running(slot.proc):
            raise RuntimeError(f"worker {slot.index} is not running")
        return slot.proc

    def _reap(self, slot: _Slot) -> int:
        """Record how the slot's finished process ended and clear the slot."""
        proc = slot.proc
        if proc is None:
            return 0
        code = proc.poll()
        if code is None:
            raise RuntimeError(f"worker {slot.index} (pid {proc.pid}) is still running")
        self.exits.append(Exit(slot.index, proc.pid, code, slot.ending))
        slot.proc, slot.ending = None, None
        return code

    def _append_note(self, slot: _Slot, note: str) -> None:
        with slot.log.open("ab") as log:
            log.write(f"=== harness: worker {slot.index}: {note} ===\n".encode())

    # --- looking ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slots)

    def alive(self) -> list[int]:
        """Slots whose process is running now. Takes no lock, so an async test
        can call it while another thread waits for a worker to exit."""
        return [s.index for s in list(self._slots) if _running(s.proc)]

    def pid(self, i: int) -> int | None:
        proc = self._slots[i].proc
        return None if proc is None else proc.pid

    def crashes(self) -> list[Exit]:
        """Processes that exited without the pool ending them, reaped or not.
        Takes no lock, like `alive`."""
        found = [e for e in list(self.exits) if e.by is None]
        for slot in list(self._slots):
            proc = slot.proc
            if proc is not None and slot.ending is None and (code := proc.poll()) is not None:
                found.append(Exit(slot.index, proc.pid, code, None))
        return found

    def logs(self, i: int) -> str:
        """Everything worker slot i has logged, over all its starts."""
        try:
            return self._slots[i].log.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def current_log(self, i: int) -> str:
        """What worker slot i has logged since its latest start."""
        text = self.logs(i)
        return text[text.rfind(f"=== start {self._slots[i].starts} of worker {i} ") :]

    def ready(self, i: int, marker: str = READY_MARKER) -> bool:
        """Whether worker i is running and its latest start has logged `marker`
        (by default: it is consuming, so its signal handlers are installed)."""
        slot = self._slots[i]
        return _running(slot.proc) and marker in self.current_log(i)

    def tail(self, lines: int = 25) -> str:
        """The last lines of every slot's log, for assertion messages."""
        parts = []
        for slot in self._slots:
            text = self.logs(slot.index).splitlines()[-lines:]
            parts.append(f"--- worker {slot.index} ({slot.log}) ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no workers were started)"

    def grep(self, needle: str) -> list[str]:
        """Log lines of every slot that contain `needle`, prefixed by the slot."""
        return [
            f"[{slot.index}] {line}"
            for slot in self._slots
            for line in self.logs(slot.index).splitlines()
            if needle in line
        ]


def _running(proc: subprocess.Popen[bytes] | None) -> bool:
    return proc is not None and proc.poll() is None
