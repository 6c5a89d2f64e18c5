"""A PostgreSQL primary and an asynchronous streaming standby of it, from the
machine's PostgreSQL binaries (as `worker.devtools.stack` runs them), each on
a free loopback port, for failover tests.

The standby can be held back (it stops receiving WAL, so what the primary
commits after that is not on it), the primary killed as a crash kills it
(SIGKILL to every process of the server at once), and the standby promoted.
Use it as a context manager: both servers are stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import asyncpg
import psutil

from worker.devtools.stack import DATABASE, _pg_bin

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """One server: its data directory, port and log."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.data = root / name
        self.log = root / f"{name}.log"
        self.sockets = root / f"{name}-sockets"
        self.port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host="127.0.0.1", port=self.port, user="postgres", database=DATABASE, timeout=10
        )

    async def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await self.connect()
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


class ReplicatedPostgres:
    """A primary and its standby; `url` names both, primary first."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="persister-failover-"))
        self.primary = Node(self.root, "primary")
        self.standby = Node(self.root, "standby")

    def url(self, query: str = "target_session_attrs=read-write") -> str:
        hosts = f"{self.primary.address},{self.standby.address}"
        return f"postgresql://postgres@{hosts}/{DATABASE}?{query}"

    # --- lifecycle -------------------------------------------------------------

    def __enter__(self) -> ReplicatedPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """initdb the primary, start it with a database, copy it to the
        standby with pg_basebackup -R (which makes it a streaming standby)
        and start that."""
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        args = ["-D", str(self.primary.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        self._run("initdb", *args, "--no-sync")
        self._start(self.primary)
        address = ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"]
        self._run("createdb", *address, DATABASE)
        self._run(
            "pg_basebackup",
            *address,
            "-D",
            str(self.standby.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        self._start(self.standby)

    def stop(self) -> None:
        """Stop whatever still runs (immediately: nothing in it is kept)."""
        for node in (self.primary, self.standby):
            if node.pid() is not None:
                self._run(
                    "pg_ctl", "-D", str(node.data), "-m", "immediate", "-w", "stop", check=False
                )
            self._kill_all(node)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- faults ----------------------------------------------------------------

    async def hold_back_standby(self) -> None:
        """The standby stops receiving WAL (and so stops replaying it): what
        the primary commits from now on is not on the standby."""
        await self.standby.query("ALTER SYSTEM SET primary_conninfo = ''")
        await self.standby.query("SELECT pg_reload_conf()")

    async def receiving(self) -> bool:
        """Whether the standby's WAL receiver is connected."""
        rows = await self.standby.query("SELECT count(*) AS n FROM pg_stat_wal_receiver")
        return int(rows[0]["n"]) > 0

    def kill_primary(self) -> None:
        """SIGKILL the primary's server processes, all at once, as a crash of
        its machine ends them."""
        self._kill_all(self.primary)

    def promote_standby(self) -> None:
        self._run("pg_ctl", "-D", str(self.standby.data), "-w", "-t", "60", "promote")

    # --- running the binaries --------------------------------------------------

    def _start(self, node: Node) -> None:
        node.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(node.sockets, "postgres", "postgres")
        # pg_ctl hands -o to a shell; the paths are mkdtemp's, without spaces.
        opts = f"-p {node.port} -k {node.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        args = ["-D", str(node.data), "-l", str(node.log), "-w", "-t", str(START_TIMEOUT_S)]
        self._run("pg_ctl", *args, "-o", opts, "start")

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        """A PostgreSQL tool, as the postgres user when run as root (the
        server refuses to run as root)."""
        cmd = [_pg_bin(tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=START_TIMEOUT_S * 2
        )
        if check and done.returncode != 0:
            logs = "\n".join(
                f"--- {n.log.name} ---\n{n.log.read_text()[-3000:]}"
                for n in (self.primary, self.standby)
                if n.log.exists()
            )
            raise RuntimeError(f"{tool} failed ({done.returncode}):\n{done.stderr}\n{logs}")

    @staticmethod
    def _kill_all(node: Node) -> None:
        pid = node.pid()
        if pid is None:
            return
        try:
            server = psutil.Process(pid)
            # A pid file a killed server left may name another process now.
            if "postgres" not in server.name():
                return
            processes = [server, *server.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(processes, timeout=10)
        # The port is free once the listening socket is closed with the process.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _accepts(node.port):
            time.sleep(0.05)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
