"""The test proxy forwards bytes, holds them while frozen, delivers them on
the heal and resets connections, in a thread and as a process."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.devtools.net_proxy import NetProxy, send_command, wait_answering
from worker.devtools.stack_files import free_ports

# How long a read must wait to show that nothing is forwarded.
SILENCE_S = 0.5
DEADLINE_S = 5.0


class Target:
    """A TCP echo server on loopback that counts what it receives and can
    push bytes to the client of its latest connection."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self.received = 0
        self.errors: list[BaseException] = []
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                with self._lock:
                    self.accepted += 1
                    self._connections.append(conn)
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                with self._lock:
                    self.received += len(data)
                conn.sendall(data)
        except OSError as exc:
            self.errors.append(exc)

    def push(self, data: bytes) -> None:
        with self._lock:
            self._connections[-1].sendall(data)

    def close(self) -> None:
        self._listener.close()
        for conn in self._connections:
            conn.close()


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    yield server
    server.close()


@pytest.fixture
def proxy(target: Target) -> Iterator[NetProxy]:
    with NetProxy(("127.0.0.1", target.port)) as running:
        yield running


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.settimeout(DEADLINE_S)
    return sock


def receive(sock: socket.socket, count: int) -> bytes:
    """Exactly `count` bytes, within the socket's timeout per read."""
    chunks, got = [], 0
    while got < count:
        chunk = sock.recv(count - got)
        assert chunk, f"connection closed after {got} of {count} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives on `sock` for SILENCE_S."""
    sock.settimeout(SILENCE_S)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(DEADLINE_S)


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_bytes_flow_both_ways(proxy: NetProxy, target: Target) -> None:
    payload = bytes(range(256)) * 800  # 204,800 bytes
    with connect(proxy.port) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        assert receive(client, len(payload)) == payload
        sender.join()
    assert target.received == len(payload)
    assert proxy.status() in ("flowing 0", "flowing 1")


def test_freeze_holds_bytes_and_the_heal_delivers_them(proxy: NetProxy, target: Target) -> None:
    with connect(proxy.port) as client:
        client.sendall(b"0123456789")
        assert receive(client, 10) == b"0123456789"

        proxy.freeze()
        assert proxy.status() == "frozen 1"
        client.sendall(b"x" * 5_000)
        assert_silent(client)
        assert target.received == 10, "bytes reached the target while frozen"

        proxy.heal()
        assert receive(client, 5_000) == b"x" * 5_000
        assert target.received == 5_010


def test_freeze_holds_what_the_target_sends(proxy: NetProxy, target: Target) -> None:
    with connect(proxy.port) as client:
        client.sendall(b"hello")
        assert receive(client, 5) == b"hello"
        proxy.freeze()
        target.push(b"y" * 3_000)
        assert_silent(client)
        proxy.heal()
        assert receive(client, 3_000) == b"y" * 3_000


def test_a_connection_made_while_frozen_reaches_the_target_after_the_heal(
    proxy: NetProxy, target: Target
) -> None:
    proxy.freeze()
    with connect(proxy.port) as client:  # accepted, as a dropped network's SYN is not refused
        client.sendall(b"z" * 100)
        assert_silent(client)
        assert (target.accepted, target.received) == (0, 0)
        proxy.heal()
        assert receive(client, 100) == b"z" * 100
    assert (target.accepted, target.received) == (1, 100)


def test_reset_gives_both_ends_a_connection_reset(proxy: NetProxy, target: Target) -> None:
    with connect(proxy.port) as client:
        client.sendall(b"ping")
        assert receive(client, 4) == b"ping"
        proxy.freeze()
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        wait_for(lambda: target.errors, "the target to see the reset")
        assert [type(e) for e in target.errors] == [ConnectionResetError]
    assert not proxy.frozen
    with connect(proxy.port) as client:  # new connections are forwarded again
        client.sendall(b"pong")
        assert receive(client, 4) == b"pong"
    assert (target.accepted, target.received) == (2, 8)


def test_as_a_process_it_takes_commands_on_its_control_socket(
    target: Target, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    control = tmp_path / "proxy.sock"
    command = [sys.executable, "-m", "worker.devtools.net_proxy", "--listen", str(port)]
    command += ["--target", f"127.0.0.1:{target.port}", "--control", str(control)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_answering(control) == "flowing 0"
        with connect(port) as client:
            client.sendall(b"abc")
            assert receive(client, 3) == b"abc"
            assert send_command(control, "freeze") == "frozen 1"
            client.sendall(b"d" * 1_000)
            assert_silent(client)
            assert send_command(control, "heal") == "flowing 1"
            assert receive(client, 1_000) == b"d" * 1_000
            assert send_command(control, "reset") == "flowing 0"
            with pytest.raises(ConnectionResetError):
                client.recv(1)
        with pytest.raises(RuntimeError, match="unknown command 'jam'"):
            send_command(control, "jam")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0
        assert not control.exists()
        assert target.received == 1_003
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
