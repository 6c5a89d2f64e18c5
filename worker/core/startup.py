"""How long `persister run` took to start, in parts, said in two lines:

    started in 0.95 s (imports 0.80 s, settings 0.03 s, connections 0.12 s); joining group 'g'
    first batch stored 1.62 s after start (start-up 0.95 s, group join 0.41 s,
    fetch and write 0.26 s)

The first line covers the process's own part, up to asking to join the group;
the second what the group and the first batch took on top. Each part ends
where the next begins, so the parts add up to the total (give or take their
rounding). "Start" is the process's start as the kernel recorded it: the
interpreter's own start-up counts too.

Only a process started by `persister run` says them (once each); a
persister run in-process (tests) has no process start to measure from."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

IMPORTS = "imports"
SETTINGS = "settings"
CONNECTIONS = "connections"
GROUP_JOIN = "group join"
FETCH_AND_WRITE = "fetch and write"
OWN_PARTS = (IMPORTS, SETTINGS, CONNECTIONS)

STARTED_LINE = (
    "started in %.2f s (imports %.2f s, settings %.2f s, connections %.2f s); joining group %r"
)
FIRST_BATCH_LINE = (
    "first batch stored %.2f s after start "
    "(start-up %.2f s, group join %.2f s, fetch and write %.2f s)"
)
# A process's start as read from /proc is trusted if it lies this little
# before the first line of our own code ran (a clock that disagrees more,
# e.g. in another time namespace, is not).
MAX_INTERPRETER_START_S = 30.0

_SECONDS = r"(\d+\.\d+) s"
STARTED_PATTERN = re.compile(
    rf"started in {_SECONDS} \(imports {_SECONDS}, settings {_SECONDS}, "
    rf"connections {_SECONDS}\); joining group "
)
FIRST_BATCH_PATTERN = re.compile(
    rf"first batch stored {_SECONDS} after start \(start-up {_SECONDS}, "
    rf"group join {_SECONDS}, fetch and write {_SECONDS}\)"
)


def process_start(first_code: float) -> float:
    """The process's start on the `time.monotonic()` clock: the kernel's
    record of it (clock ticks since boot) when there is one, else
    `first_code` (when our first line ran)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # The command name may hold spaces; the fields after it do not.
            ticks = int(stat.read().rpartition(")")[2].split()[19])
        age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return first_code
    started = time.monotonic() - age_s
    return started if 0 <= first_code - started <= MAX_INTERPRETER_START_S else first_code


@dataclass
class StartupClock:
    """When each part of the start ended, on the `time.monotonic()` clock."""

    began: float | None = None
    ends: dict[str, float] = field(default_factory=dict)

    def start(self, first_code: float) -> None:
        self.began = process_start(first_code)
        self.ends.clear()

    def end(self, part: str, now: float | None = None) -> bool:
        """Note that `part` ended (now); False if it had already ended or
        the clock was never started."""
        if self.began is None or part in self.ends:
            return False
        self.ends[part] = time.monotonic() if now is None else now
        return True

    def parts(self, names: tuple[str, ...]) -> list[float] | None:
        """The seconds each of `names` took, one after the other from the
        start; None unless each has ended."""
        if self.began is None or any(name not in self.ends for name in names):
            return None
        moments = [self.began, *(self.ends[name] for name in names)]
        return [max(0.0, after - before) for before, after in itertools.pairwise(moments)]

    def joining(self, group_id: str, now: float | None = None) -> None:
        """The process is about to ask to join `group_id`: say, once, how
        long it took to get here."""
        if not (self.ends.keys() >= {IMPORTS, SETTINGS} and self.end(CONNECTIONS, now)):
            return
        parts = self.parts(OWN_PARTS)
        if parts is not None:
            logger.info(STARTED_LINE, sum(parts), *parts, group_id)

    def joined(self, now: float | None = None) -> None:
        if CONNECTIONS in self.ends:
            self.end(GROUP_JOIN, now)

    def stored(self, now: float | None = None) -> None:
        """A batch was stored: the first one says, once, what the start took."""
        if GROUP_JOIN not in self.ends or not self.end(FETCH_AND_WRITE, now):
            return
        own = self.parts(OWN_PARTS)
        later = self.parts((CONNECTIONS, GROUP_JOIN, FETCH_AND_WRITE))
        if own is not None and later is not None:
            logger.info(FIRST_BATCH_LINE, sum(own) + sum(later[1:]), sum(own), *later[1:])


# The process's one clock, started by `worker.__main__`.
clock = StartupClock()


@dataclass(frozen=True)
class StartupSplit:
    """The start-up lines of one process's log, read back (seconds)."""

    # The process's own part: up to asking to join the group.
    own: float
    imports: float
    settings: float
    connections: float
    # None until the first batch was stored.
    first_batch: float | None = None
    group_join: float | None = None
    fetch_and_write: float | None = None


def read_split(log: str) -> StartupSplit | None:
    """The split the first start-up lines of `log` say; None without the first line."""
    started = STARTED_PATTERN.search(log)
    if started is None:
        return None
    own, imports, settings, connections = (float(v) for v in started.groups())
    first = FIRST_BATCH_PATTERN.search(log, started.end())
    if first is None:
        return StartupSplit(own, imports, settings, connections)
    stored, _, join, fetch = (float(v) for v in first.groups())
    return StartupSplit(own, imports, settings, connections, stored, join, fetch)


# Batches make many short-lived objects: the default collector thresholds
# would traverse the long-lived ones (modules, buffers) over and over.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """The collector as the worker runs: what is alive now frozen (never
    walked again), then the thresholds above."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
