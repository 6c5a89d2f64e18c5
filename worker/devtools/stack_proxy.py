"""The proxies of a stack started with `proxy=True` (`persister stack up
--proxy`): one `worker.devtools.net_proxy` process in front of Kafka and one
in front of PostgreSQL, so a test or a shell user can make either network
silent (freeze), bring it back (heal) or reset its connections.

They are processes, not threads, so they outlive `stack up` as the servers
do; each takes commands on a Unix socket in the stack's directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from worker.devtools.net_proxy import send_command, wait_answering
from worker.devtools.stack_files import StackError, runs, tail

log = logging.getLogger(__name__)

SERVICES = ("kafka", "postgres")
ACTIONS = ("freeze", "heal", "reset")
START_DEADLINE_S = 15.0
STOP_GRACE_S = 5.0
# A Unix socket's path is limited to 108 bytes on Linux.
MAX_SOCKET_PATH = 100


def proxy_port_name(service: str) -> str:
    """The key of a service's proxy port in the stack's port table."""
    return f"{service}-proxy"


class StackProxies:
    """The proxy processes under `state_dir`, listening on the `<service>-proxy`
    ports of `ports`; `pids` are those of proxies already running."""

    def __init__(self, state_dir: Path, ports: dict[str, int], pids: dict[str, int]) -> None:
        self.state_dir = state_dir
        self.ports = ports
        self.pids = dict(pids)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def control(self, service: str) -> Path:
        return self.state_dir / f"proxy-{service}.sock"

    def alive(self, service: str) -> bool:
        if (proc := self._procs.get(service)) is not None:
            return proc.poll() is None  # and reaped once it exits
        pid = self.pids.get(service)
        if pid is None:
            return False
        return runs(pid, "worker.devtools.net_proxy", str(self.control(service)))

    def any_alive(self) -> bool:
        return any(self.alive(s) for s in SERVICES)

    def start(self, targets: dict[str, int]) -> None:
        """Start a proxy to 127.0.0.1:<port> for each service of `targets`
        that has none running, and wait until each answers."""
        for service, target in targets.items():
            if not self.alive(service):
                self._spawn(service, target)
        for service in targets:
            try:
                wait_answering(self.control(service), START_DEADLINE_S)
            except OSError as exc:
                logs = tail(self.state_dir / f"proxy-{service}.log")
                raise StackError(f"the {service} proxy did not start ({exc}):\n{logs}") from None

    def _spawn(self, service: str, target: int) -> None:
        control = self.control(service)
        if len(str(control)) > MAX_SOCKET_PATH:
            raise StackError(f"the stack directory's path is too long for a Unix socket: {control}")
        port = self.ports[proxy_port_name(service)]
        command = [sys.executable, "-m", "worker.devtools.net_proxy", "--listen", str(port)]
        command += ["--target", f"127.0.0.1:{target}", "--control", str(control)]
        with (self.state_dir / f"proxy-{service}.log").open("ab") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives us after `stack up`
            )
        self._procs[service], self.pids[service] = proc, proc.pid
        log.info("%s proxy on 127.0.0.1:%d (pid %d)", service, port, proc.pid)

    def stop(self) -> None:
        """SIGTERM every proxy (it resets its connections), SIGKILL one that
        outlives the grace period."""
        running = [s for s in SERVICES if self.alive(s)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for service in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pids[service], sig)
            deadline = time.monotonic() + STOP_GRACE_S
            while any(self.alive(s) for s in running) and time.monotonic() < deadline:
                time.sleep(0.05)
            running = [s for s in running if self.alive(s)]
        for service in SERVICES:
            self._procs.pop(service, None)
            self.pids.pop(service, None)
            self.control(service).unlink(missing_ok=True)

    def command(self, service: str, action: str) -> str:
        """freeze, heal or reset the network of `service`; the proxy's state
        after it (e.g. "frozen 4": frozen, with 4 connections open)."""
        if service not in SERVICES:
            raise StackError(f"no proxy for {service!r}: one of {', '.join(SERVICES)}")
        if action not in (*ACTIONS, "status"):
            raise StackError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        if not self.alive(service):
            raise StackError(f"the {service} proxy is not running")
        return send_command(self.control(service), action)
