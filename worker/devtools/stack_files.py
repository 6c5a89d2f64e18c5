"""What both halves of the local stack share: where things are kept, reading
log tails, free loopback ports, the error type."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path


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


def tail(path: Path, lines: int = 80) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 256 * 1024))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def free_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is read, so the ports differ from each other.
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def runs(pid: int, *args: str) -> bool:
    """Whether process `pid` has all of `args` on its command line: a pid
    read from an old stack.json may have been recycled by another process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (OSError, UnicodeDecodeError):
        return False
    return all(arg in cmdline for arg in args)
