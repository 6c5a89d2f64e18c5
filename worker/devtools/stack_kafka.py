"""Local KRaft Kafka without Docker: one node, or a cluster of several, from
the official jars on Maven Central, on loopback ports.

Every node of a cluster is broker and controller at once (combined mode):
three JVMs instead of six on a small machine, and the quorum of three
controllers still survives the loss of any one node, so a controller
failover is stopping the node that leads the quorum.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from worker.devtools import kafka_jars
from worker.devtools.stack_files import StackError, cache_dir, read_since, runs, tail

log = logging.getLogger(__name__)

POM = Path(__file__).with_name("kafka_pom.xml")
# Templates (str.format) for the broker's configuration files.
LOG4J2 = Path(__file__).with_name("kafka_log4j2.properties")
SERVER_PROPERTIES = Path(__file__).with_name("kafka_server.properties")
START_DEADLINE_S = 90.0
KAFKA_STOP_GRACE_S = 20.0
SASL_USER = "persister"
SASL_PASSWORD = "local-stack-only"
# Per node; a cluster's three share two cores with the rest of the stack.
HEAP = {1: "-Xmx512m"}
CLUSTER_HEAP = "-Xmx384m"
# Topics of a cluster survive the loss of one node and refuse writes that
# would live on one node only.
CLUSTER_REPLICATION = 3
CLUSTER_MIN_INSYNC = 2


def kafka_version(pom: Path = POM) -> str:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", namespace)
    if node is None or not node.text:
        raise StackError(f"no <kafka.version> in {pom}")
    return node.text.strip()


def kafka_libs() -> Path:
    """The broker's jars, fetched from Maven Central on first use (`kafka_jars`)."""
    libs = cache_dir() / f"kafka-{kafka_version()}" / "libs"
    if libs.is_dir() and any(libs.iterdir()):
        return libs
    jars = kafka_jars.pinned()
    if (pinned := kafka_jars.broker_version(jars)) != kafka_version():
        raise StackError(
            f"{kafka_jars.LOCK.name} pins Kafka {pinned} but {POM.name} says {kafka_version()}:"
            " run `python -m worker.devtools.kafka_jars`"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the final place and rename, so an interrupted download never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=".libs-", dir=libs.parent))
    log.info("downloading Kafka %s jars into %s", kafka_version(), libs)
    try:
        try:
            kafka_jars.fetch_all(jars, tmp)
        except kafka_jars.JarError as e:
            raise StackError(str(e)) from e
        with contextlib.suppress(OSError):
            libs.rmdir()  # an empty leftover would block the rename
        with contextlib.suppress(OSError):  # a concurrent download may have won the race
            tmp.rename(libs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return libs


def new_cluster_id() -> str:
    """A random KRaft cluster id (a UUID in URL-safe base64), never starting
    with "-": the storage tool would read that as an option, as Kafka's own
    id generator knows."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_answers(port: int) -> bool:
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


def port_names(node: int) -> tuple[str, str, str]:
    """The keys of a node's ports (client, controller, SASL client) in the
    stack's port table; node 1 keeps the names of a single-node stack."""
    suffix = "" if node == 1 else f"-{node}"
    return f"kafka{suffix}", f"controller{suffix}", f"sasl{suffix}"


def all_port_names(brokers: int) -> list[str]:
    return [name for node in range(1, brokers + 1) for name in port_names(node)]


class KafkaCluster:
    """`brokers` KRaft nodes (ids 1..brokers) under `kafka_dir`, on the ports
    of `ports` (see `port_names`); `pids` are those of nodes already running."""

    def __init__(
        self, kafka_dir: Path, ports: dict[str, int], brokers: int, pids: dict[int, int]
    ) -> None:
        if brokers < 1:
            raise StackError(f"a cluster needs at least one broker, not {brokers}")
        self.kafka_dir = kafka_dir
        self.ports = ports
        self.brokers = brokers
        self.pids = dict(pids)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def nodes(self) -> list[int]:
        return list(range(1, self.brokers + 1))

    def node_dir(self, node: int) -> Path:
        return self.kafka_dir if self.brokers == 1 else self.kafka_dir / f"node-{node}"

    def port(self, node: int, kind: int = 0) -> int:
        return self.ports[port_names(node)[kind]]

    def client_port(self, node: int) -> int:
        """The port a node advertises to clients: a proxy's, if the stack
        put one in front of it (`<name>-proxy` in the port table)."""
        name = port_names(node)[0]
        return self.ports.get(f"{name}-proxy", self.ports[name])

    def bootstrap(self, sasl: bool = False) -> str:
        ports = (self.port(n, 2) if sasl else self.client_port(n) for n in self.nodes)
        return ",".join(f"127.0.0.1:{port}" for port in ports)

    def partition_dir(self, topic: str, partition: int, node: int = 1) -> Path:
        """Where `node` keeps a partition's log segments."""
        return self.node_dir(node) / "data" / f"{topic}-{partition}"

    # --- looking ----------------------------------------------------------

    def alive(self, node: int) -> bool:
        if (proc := self._procs.get(node)) is not None:
            return proc.poll() is None
        pid = self.pids.get(node)
        if pid is None:
            return False
        return runs(pid, "kafka.Kafka", str(self.node_dir(node) / "server.properties"))

    def any_alive(self) -> bool:
        return any(self.alive(n) for n in self.nodes)

    def quorum_leader(self) -> int | None:
        """The node leading the controller quorum (the active controller), as
        the running nodes last wrote it down; None while none knows one."""
        best: tuple[int, int] | None = None
        for node in self.nodes:
            if not self.alive(node):
                continue
            path = self.node_dir(node) / "data" / "__cluster_metadata-0" / "quorum-state"
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(path.read_text())
                leader, epoch = int(state.get("leaderId", -1)), int(state.get("leaderEpoch", -1))
                if leader > 0 and self.alive(leader) and (best is None or epoch > best[1]):
                    best = (leader, epoch)
        return None if best is None else best[0]

    def log_tail(self, lines: int = 80) -> str:
        parts = []
        for node in self.nodes:
            text = tail(self.node_dir(node) / "server.log", lines)
            if out := tail(self.node_dir(node) / "kafka.out", lines):
                text += f"\n--- kafka.out ---\n{out}"
            parts.append(text if self.brokers == 1 else f"--- node {node} ---\n{text}")
        return "\n".join(parts)

    # --- starting ---------------------------------------------------------

    def start(self, nodes: list[int] | None = None) -> None:
        """Start the given nodes (default: all) that are not running, and
        wait until each serves clients. The nodes of a new cluster start
        together: none is ready before a majority of the quorum is up."""
        chosen = [n for n in (nodes or self.nodes) if not self.alive(n)]
        offsets = {n: self._spawn(n) for n in chosen}
        try:
            for node, offset in offsets.items():
                self._wait(node, offset)
        except BaseException:
            self.stop(chosen, signal.SIGKILL)
            raise

    def _java(self, node: int) -> list[str]:
        log4j = self.node_dir(node) / "log4j2.properties"
        return ["java", "-cp", f"{kafka_libs()}/*", f"-Dlog4j2.configurationFile={log4j}"]

    def _spawn(self, node: int) -> int:
        """Start one node's process; returns where its new log lines begin."""
        java = self._java(node)
        props = self._write_config(node)
        data = self.node_dir(node) / "data"
        if not (data / "meta.properties").exists():
            shutil.rmtree(data, ignore_errors=True)
            fmt = [*java, "kafka.tools.StorageTool", "format", "-t", self._cluster_id(), "-c"]
            done = subprocess.run([*fmt, props], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{done.stdout}{done.stderr}")
        log_file = self.node_dir(node) / "server.log"
        offset = log_file.stat().st_size if log_file.exists() else 0
        heap = HEAP.get(self.brokers, CLUSTER_HEAP)
        with (self.node_dir(node) / "kafka.out").open("ab") as out:
            proc = subprocess.Popen(
                [java[0], heap, *java[1:], "kafka.Kafka", props],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.node_dir(node),
                start_new_session=True,  # outlives us after `stack up`
            )
        self._procs[node], self.pids[node] = proc, proc.pid
        log.info("Kafka node %d starting (pid %d, port %d)", node, proc.pid, self.port(node))
        return offset

    def _cluster_id(self) -> str:
        """One id for every node of the cluster, kept beside their directories."""
        path = self.kafka_dir / "cluster-id"
        if not path.exists():
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    def _write_config(self, node: int) -> str:
        directory = self.node_dir(node)
        directory.mkdir(parents=True, exist_ok=True)
        log4j = LOG4J2.read_text().format(log_file=directory / "server.log")
        (directory / "log4j2.properties").write_text(log4j)
        voters = ",".join(f"{n}@127.0.0.1:{self.port(n, 1)}" for n in self.nodes)
        replication = min(CLUSTER_REPLICATION, self.brokers)
        config = SERVER_PROPERTIES.read_text().format(
            node_id=node,
            voters=voters,
            kafka=self.port(node, 0),
            advertised=self.client_port(node),
            controller=self.port(node, 1),
            sasl=self.port(node, 2),
            data=directory / "data",
            sasl_user=SASL_USER,
            sasl_password=SASL_PASSWORD,
            replication=replication,
            min_insync=min(CLUSTER_MIN_INSYNC, replication),
        )
        props = directory / "server.properties"
        props.write_text(config)
        return str(props)

    def _wait(self, node: int, offset: int) -> None:
        log_file = self.node_dir(node) / "server.log"
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if not self.alive(node):
                raise self._error(node, "Kafka exited during start-up", offset)
            started = "Kafka Server started" in read_since(log_file, offset)
            if started and kafka_answers(self.port(node)):
                log.info("Kafka node %d ready on 127.0.0.1:%d", node, self.port(node))
                return
            time.sleep(0.2)
        raise self._error(node, f"Kafka not ready after {START_DEADLINE_S:.0f} s", offset)

    def _error(self, node: int, reason: str, offset: int) -> StackError:
        # The shutdown that follows a fatal error pushes the cause out of the tail, so quote it.
        lines = read_since(self.node_dir(node) / "server.log", offset).splitlines()
        errors = [line for line in lines if "] ERROR " in line or line.startswith("Caused by:")]
        where = "" if self.brokers == 1 else f" (node {node})"
        head = [f"{reason}{where}; errors logged:", *errors[:20], "--- server.log tail ---"]
        return StackError("\n".join([*head, self.log_tail(40)]))

    # --- stopping ---------------------------------------------------------

    def stop(self, nodes: list[int] | None = None, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the given nodes (default: all) and wait for them to exit.
        SIGTERM is a controlled shutdown (leaderships handed over, no log
        recovery on the next start); a node that ignores it is killed."""
        chosen = [n for n in (nodes or self.nodes) if self.alive(n)]
        if not self._signal(chosen, sig) and sig != signal.SIGKILL:
            log.warning("Kafka ignored %s for %.0f s; killing it", sig.name, KAFKA_STOP_GRACE_S)
            self._signal(chosen, signal.SIGKILL)
        for node in chosen:
            self._procs.pop(node, None)
            self.pids.pop(node, None)

    def _signal(self, nodes: list[int], sig: signal.Signals) -> bool:
        """Send `sig` to the nodes and wait; whether all exited within the grace period."""
        for node in nodes:
            log.info("sending %s to Kafka node %d (pid %s)", sig.name, node, self.pids.get(node))
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(self.pids[node], sig)
        deadline = time.monotonic() + KAFKA_STOP_GRACE_S
        while any(self.alive(n) for n in nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not any(self.alive(n) for n in nodes)
