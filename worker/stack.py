"""A local Kafka broker (jars from Maven Central) and PostgreSQL server, without Docker.

For tests, the demo and the benchmark; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POM = Path(__file__).with_name("kafka_pom.xml")
# Templates (str.format) for the broker's configuration files.
LOG4J2 = Path(__file__).with_name("kafka_log4j2.properties")
SERVER_PROPERTIES = Path(__file__).with_name("kafka_server.properties")
STATE_FILE = "stack.json"
START_DEADLINE_S = 60.0
KAFKA_STOP_GRACE_S = 10.0
PG_STOP_DEADLINE_S = 30.0
DATABASE = "events"
SASL_USER = "persister"
SASL_PASSWORD = "local-stack-only"


@dataclass(frozen=True)
class StackInfo:
    kafka_bootstrap_servers: str
    database_url: str
    # A second listener of the same broker that wants SASL/PLAIN with
    # SASL_USER and SASL_PASSWORD (for testing Kafka security settings).
    kafka_sasl_bootstrap_servers: str = ""

    def exports(self) -> str:
        """Shell lines that point the persister at this stack."""
        return (
            f"export KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers}\n"
            f"export DATABASE_URL={self.database_url}\n"
        )


class StackError(RuntimeError):
    """A service of the local stack failed; the message ends with its log tail."""


def cache_dir() -> Path:
    if env := os.environ.get("PERSISTER_STACK_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "event-persister"


def default_state_dir() -> Path:
    # Under /tmp rather than the home directory: PostgreSQL runs as its own
    # user and must be able to reach its data directory.
    env = os.environ.get("PERSISTER_STACK_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"event-persister-{os.getuid()}"


def kafka_version(pom: Path = POM) -> str:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", namespace)
    if node is None or not node.text:
        raise StackError(f"no <kafka.version> in {pom}")
    return node.text.strip()


def kafka_libs() -> Path:
    """The broker's jars, downloaded by Maven on first use."""
    libs = cache_dir() / f"kafka-{kafka_version()}" / "libs"
    if libs.is_dir() and any(libs.iterdir()):
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the final place and rename, so an interrupted download never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=".libs-", dir=libs.parent))
    log.info("downloading Kafka %s jars into %s", kafka_version(), libs)
    try:
        cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies"]
        cmd += ["-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
            raise StackError(f"mvn failed (exit {done.returncode}):\n{output}")
        with contextlib.suppress(OSError):
            libs.rmdir()  # an empty leftover would block the rename
        with contextlib.suppress(OSError):  # a concurrent download may have won the race
            tmp.rename(libs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return libs


def _tail(path: Path, lines: int = 80) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 256 * 1024))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _read_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is read, so the ports differ from each other.
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _kafka_answers(port: int) -> bool:
    """Whether the broker replies to an ApiVersions request (a real answer, not just a listen)."""
    client_id = b"stack-check"
    request = struct.pack(">hhih", 18, 0, 42, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            reply = sock.recv(10, socket.MSG_WAITALL)
    except OSError:
        return False
    return len(reply) == 10 and struct.unpack(">iih", reply)[1:] == (42, 0)


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
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        if (path := Path(out.stdout.strip()) / name).exists():
            return str(path)
    return name


class LocalStack:
    """One single-node KRaft broker plus, unless a database URL is given, one PostgreSQL cluster."""

    def __init__(
        self,
        state_dir: Path,
        database_url: str | None = None,
        server_settings: Mapping[str, str] = SERVER_SETTINGS,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self._external_db = database_url
        # On the command line, so ALTER SYSTEM cannot change them: a benchmark
        # that switches settings passes none and sets them itself.
        self._server_settings = dict(server_settings)
        self._kafka_dir = self.state_dir / "kafka"
        self._pg_dir = self.state_dir / "postgres"
        self._pgdata = self._pg_dir / "pgdata"
        self._ports: dict[str, int] = {}
        self._kafka_proc: subprocess.Popen[bytes] | None = None
        self._kafka_pid: int | None = None

    @classmethod
    def load(cls, state_dir: Path) -> LocalStack:
        """The stack described by `state_dir`/stack.json, e.g. one started by another process."""
        saved = json.loads((state_dir / STATE_FILE).read_text())
        stack = cls(state_dir, saved["external_database_url"])
        stack._ports = {name: int(port) for name, port in saved["ports"].items()}
        stack._kafka_pid = saved["kafka_pid"]
        return stack

    def save(self) -> None:
        state: dict[str, Any] = {
            "external_database_url": self._external_db,
            "ports": self._ports,
            "kafka_pid": self._kafka_pid,
            "postgres_pid": self._postgres_pid(),
            "dirs": {"kafka": str(self._kafka_dir), "postgres": str(self._pg_dir)},
            "info": asdict(self.info),
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def kafka_partition_dir(self, topic: str, partition: int) -> Path:
        """Where the broker keeps a partition's log segments."""
        return self._kafka_dir / "data" / f"{topic}-{partition}"

    @property
    def info(self) -> StackInfo:
        if not self._ports:
            raise StackError("the stack has not been started")
        pg = f"postgresql+asyncpg://postgres@127.0.0.1:{self._ports['postgres']}/{DATABASE}"
        return StackInfo(
            f"127.0.0.1:{self._ports['kafka']}",
            self._external_db or pg,
            f"127.0.0.1:{self._ports['sasl']}",
        )

    def start(self) -> StackInfo:
        """Start whatever is not running yet; return where to find it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self._ports:
            names = ("kafka", "controller", "postgres", "sasl")
            self._ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.start_postgres()
        self.start_kafka()
        return self.info

    def stop(self) -> None:
        self.stop_kafka()
        self.stop_postgres()

    def running(self) -> bool:
        return self._kafka_alive() or (not self._external_db and self._postgres_running())

    def kafka_log_tail(self, lines: int = 80) -> str:
        tail = _tail(self._kafka_dir / "server.log", lines)
        if out := _tail(self._kafka_dir / "kafka.out", lines):
            tail += f"\n--- kafka.out ---\n{out}"
        return tail

    def _kafka_alive(self) -> bool:
        if self._kafka_proc is not None:
            return self._kafka_proc.poll() is None
        if self._kafka_pid is None:
            return False
        # Checking the command line guards against a recycled pid from an old stack.json.
        try:
            args = Path(f"/proc/{self._kafka_pid}/cmdline").read_bytes().decode().split("\0")
        except (OSError, UnicodeDecodeError):
            return False
        return "kafka.Kafka" in args and str(self._kafka_dir / "server.properties") in args

    def start_kafka(self) -> None:
        if self._kafka_alive():
            return
        log4j = self._kafka_dir / "log4j2.properties"
        java = ["java", "-cp", f"{kafka_libs()}/*", f"-Dlog4j2.configurationFile={log4j}"]
        props = self._write_kafka_config()
        if not (self._kafka_dir / "data" / "meta.properties").exists():
            shutil.rmtree(self._kafka_dir / "data", ignore_errors=True)
            cluster_id = new_cluster_id()
            fmt = [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", props]
            done = subprocess.run(fmt, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{done.stdout}{done.stderr}")
        log_file = self._kafka_dir / "server.log"
        offset = log_file.stat().st_size if log_file.exists() else 0
        with (self._kafka_dir / "kafka.out").open("ab") as out:
            self._kafka_proc = subprocess.Popen(
                [java[0], "-Xmx512m", *java[1:], "kafka.Kafka", props],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._kafka_dir,
                start_new_session=True,  # outlives us after `stack up`
            )
        self._kafka_pid = self._kafka_proc.pid
        log.info("Kafka starting (pid %d, port %d)", self._kafka_pid, self._ports["kafka"])
        self._wait_for_kafka(log_file, offset)

    def _write_kafka_config(self) -> str:
        self._kafka_dir.mkdir(parents=True, exist_ok=True)
        log4j = LOG4J2.read_text().format(log_file=self._kafka_dir / "server.log")
        (self._kafka_dir / "log4j2.properties").write_text(log4j)
        props = self._kafka_dir / "server.properties"
        config = SERVER_PROPERTIES.read_text().format(
            data=self._kafka_dir / "data",
            sasl_user=SASL_USER,
            sasl_password=SASL_PASSWORD,
            **self._ports,
        )
        props.write_text(config)
        return str(props)

    def _wait_for_kafka(self, log_file: Path, offset: int) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if not self._kafka_alive():
                raise self._kafka_error("Kafka exited during start-up", log_file, offset)
            started = "Kafka Server started" in _read_since(log_file, offset)
            if started and _kafka_answers(self._ports["kafka"]):
                log.info("Kafka ready on 127.0.0.1:%d", self._ports["kafka"])
                return
            time.sleep(0.2)
        self.stop_kafka()
        raise self._kafka_error(f"Kafka not ready after {START_DEADLINE_S:.0f} s", log_file, offset)

    def _kafka_error(self, reason: str, log_file: Path, offset: int) -> StackError:
        # The shutdown that follows a fatal error pushes the cause out of the tail, so quote it.
        lines = _read_since(log_file, offset).splitlines()
        errors = [line for line in lines if "] ERROR " in line or line.startswith("Caused by:")]
        head = [f"{reason}; errors logged:", *errors[:20], "--- server.log tail ---"]
        return StackError("\n".join([*head, self.kafka_log_tail(40)]))

    def stop_kafka(self) -> None:
        # SIGTERM first: a controlled shutdown spares the broker log recovery on the next start.
        if self._kafka_alive() and not self._signal_kafka(signal.SIGTERM):
            log.warning("Kafka ignored SIGTERM for %.0f s; killing it", KAFKA_STOP_GRACE_S)
            self._signal_kafka(signal.SIGKILL)
        self._kafka_proc = None
        self._kafka_pid = None

    def _signal_kafka(self, sig: signal.Signals) -> bool:
        """Send `sig` to the broker and wait; whether it exited within the grace period."""
        log.info("sending %s to Kafka (pid %s)", sig.name, self._kafka_pid)
        if self._kafka_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._kafka_pid, sig)
        deadline = time.monotonic() + KAFKA_STOP_GRACE_S
        while self._kafka_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self._kafka_alive()

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
            pg_log = _tail(self._pg_dir / "postgres.log")
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
        while port and _accepts("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)


def new_cluster_id() -> str:
    """A random KRaft cluster id (a UUID in URL-safe base64), never starting
    with "-": the storage tool would read that as an option, as Kafka's own
    id generator knows."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def stack_up(state_dir: Path, database_url: str | None) -> StackInfo:
    """Start a stack that outlives this process and record it in `state_dir`/stack.json."""
    if (state_dir / STATE_FILE).exists():
        stack = LocalStack.load(state_dir)  # resume it as configured, on the same ports and data
    else:
        stack = LocalStack(state_dir, database_url)
    try:
        info = stack.start()
    except BaseException:
        stack.stop()
        raise
    stack.save()
    return info


def stack_down(state_dir: Path) -> bool:
    """Stop the stack recorded in `state_dir` and delete its data; False if nothing was running."""
    if not (state_dir / STATE_FILE).exists():
        return False
    stack = LocalStack.load(state_dir)
    was_running = stack.running()
    stack.stop()
    shutil.rmtree(state_dir, ignore_errors=True)
    return was_running
