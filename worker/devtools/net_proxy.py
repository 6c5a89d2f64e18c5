"""A TCP proxy on 127.0.0.1 to one target, which a test can freeze, heal and
reset: the network faults that do not fail fast.

- **freeze**: nothing is forwarded in either direction; every connection
  stays open, and new ones are accepted but not passed on (the target sees
  them only after the heal). To an application this is a network that drops
  packets: no error, no reset, no answer.
- **heal**: forwarding resumes, starting with what was sent meanwhile (it
  waited in the socket buffers), as TCP retransmission delivers it.
- **reset**: every connection, to the client and to the target, is closed
  with a RST (SO_LINGER 0), as a firewall or a NAT that forgot them does;
  forwarding resumes for new connections.

In a test, `NetProxy` runs it on an event loop in a daemon thread
(`start()`/`stop()`, or `with NetProxy(...) as proxy:`); its `freeze()`,
`heal()` and `reset()` return once the proxy has done it.

As a process (what `persister stack up --proxy` leaves running):

    python -m worker.devtools.net_proxy --listen PORT --target HOST:PORT [--control PATH]

controlled by one-line commands on the Unix socket `--control`
(`freeze`, `heal`, `reset`, `status`; each answered with the state, e.g.
`frozen 3` for frozen with 3 connections; see `send_command`), or by
signals: SIGUSR1 freezes, SIGUSR2 heals, SIGHUP resets, SIGTERM/SIGINT stop
it (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
CHUNK = 64 * 1024
COMMAND_TIMEOUT_S = 5.0
COMMANDS = ("freeze", "heal", "reset", "status")
T = TypeVar("T")


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _abort_with_rst(writer)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger on, timeout 0: close() sends a RST instead of a FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Forwarder:
    """The proxy itself, on the running event loop (see `NetProxy` for a thread)."""

    def __init__(self, target: tuple[str, int], listen_port: int = 0) -> None:
        self.target = target
        self.listen_port = listen_port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def status(self) -> str:
        return f"{'frozen' if self.frozen else 'flowing'} {len(self._connections)}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.listen_port)
        log.info("proxy on %s:%d to %s:%d", HOST, self.port, *self.target)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [task for connection in self._connections for task in connection.tasks]
        self.reset()
        # Let the cancelled connections finish before the loop goes away.
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def freeze(self) -> None:
        self._flowing.clear()
        log.info("proxy to %s:%d frozen", *self.target)

    def heal(self) -> None:
        self._flowing.set()
        log.info("proxy to %s:%d healed", *self.target)

    def reset(self) -> None:
        count = len(self._connections)
        for connection in list(self._connections):
            connection.reset()
        self._connections.clear()
        self._flowing.set()
        log.info("proxy to %s:%d reset %d connections", *self.target, count)

    def command(self, name: str) -> str:
        """Run one control command by name; the state after it."""
        if name not in COMMANDS:
            return f"error unknown command {name!r}; one of {', '.join(COMMANDS)}"
        if name != "status":
            getattr(self, name)()
        return self.status()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        self._connections.add(connection)
        task = asyncio.current_task()
        assert task is not None
        connection.tasks.add(task)
        try:
            await self._serve(connection, reader)
        except (OSError, asyncio.IncompleteReadError):
            connection.reset()
        finally:
            self._connections.discard(connection)
            for writer_ in (connection.client, connection.upstream):
                if writer_ is not None:
                    writer_.close()

    async def _serve(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        # A connection accepted while frozen reaches the target only after
        # the heal: a target with a login deadline must not see it before.
        await self._flowing.wait()
        up_reader, connection.upstream = await asyncio.open_connection(*self.target)
        pumps = [
            asyncio.create_task(self._pump(reader, connection.upstream)),
            asyncio.create_task(self._pump(up_reader, connection.client)),
        ]
        connection.tasks.update(pumps)
        try:
            await asyncio.gather(*pumps)
        finally:
            for pump in pumps:
                pump.cancel()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy one direction until end of file, holding whatever arrives
        while frozen (an end of file too) until the heal."""
        while True:
            await self._flowing.wait()
            data = await source.read(CHUNK)
            await self._flowing.wait()
            if not data:
                if sink.can_write_eof():
                    with contextlib.suppress(OSError):
                        sink.write_eof()
                return
            sink.write(data)
            await sink.drain()


class NetProxy:
    """A `Forwarder` on its own event loop in a daemon thread, for tests."""

    def __init__(self, target: tuple[str, int], listen_port: int = 0) -> None:
        self._forwarder = Forwarder(target, listen_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._forwarder.port

    @property
    def frozen(self) -> bool:
        return self._forwarder.frozen

    def start(self) -> NetProxy:
        self._thread.start()
        self._call(self._forwarder.start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):
            self._call(self._forwarder.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(COMMAND_TIMEOUT_S)
        self._loop.close()

    def freeze(self) -> None:
        self._command("freeze")

    def heal(self) -> None:
        self._command("heal")

    def reset(self) -> None:
        self._command("reset")

    def status(self) -> str:
        return self._command("status")

    def _command(self, name: str) -> str:
        async def run() -> str:
            return self._forwarder.command(name)

        return self._call(run())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(COMMAND_TIMEOUT_S)

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- as a process -------------------------------------------------------------


def send_command(control: Path, command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Send one command to a proxy process's control socket; its answer
    (e.g. "frozen 3"), once the proxy has done it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(control))
        sock.sendall(command.encode() + b"\n")
        answer = sock.makefile("rb").readline().decode().strip()
    if not answer or answer.startswith("error"):
        raise RuntimeError(f"proxy at {control}: {answer or 'no answer'}")
    return answer


def wait_answering(control: Path, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Wait until a proxy process answers on its control socket (it listens
    on its port by then); its status."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return send_command(control, "status")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


async def _serve_control(forwarder: Forwarder, path: Path) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), COMMAND_TIMEOUT_S)
            writer.write(forwarder.command(line.decode().strip()).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError, UnicodeDecodeError):
            pass  # a client that went away or spoke something else
        finally:
            writer.close()

    return await asyncio.start_unix_server(handle, str(path))


async def serve(target: tuple[str, int], listen_port: int, control: Path | None) -> None:
    """Run the proxy until SIGTERM or SIGINT."""
    forwarder = Forwarder(target, listen_port)
    await forwarder.start()
    control_server = None if control is None else await _serve_control(forwarder, control)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig, action in (
        (signal.SIGUSR1, forwarder.freeze),
        (signal.SIGUSR2, forwarder.heal),
        (signal.SIGHUP, forwarder.reset),
        (signal.SIGTERM, stopping.set),
        (signal.SIGINT, stopping.set),
    ):
        loop.add_signal_handler(sig, action)
    try:
        await stopping.wait()
    finally:
        if control_server is not None:
            control_server.close()
        await forwarder.stop()


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or HOST, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT")
    parser.add_argument("--control", type=Path, help="Unix socket taking commands")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.control is not None:
        args.control.unlink(missing_ok=True)  # left by a proxy that was killed
    try:
        asyncio.run(serve(args.target, args.listen, args.control))
    finally:
        if args.control is not None:
            args.control.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
