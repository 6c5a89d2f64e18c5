"""The Kafka client library's own lines, collapsed: it logs the same error
every few milliseconds while a broker is down (and on every rebalance). Each
distinct line (digits aside) becomes one condition: logged once as a WARNING
when first seen, counted in persister_conditions{kind="kafka_client"}, and
logged as cleared once it has not been seen for `quiet_s`."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from worker.core.conditions import Conditions

QUIET_S = 30.0
SWEEP_EVERY_S = 5.0
DIGITS = re.compile(r"\d+")


@dataclass
class Seen:
    message: str
    first: float
    last: float
    count: int = 1


class CollapsingHandler(logging.Handler):
    """Put on the client library's logger (which then does not propagate)."""

    def __init__(self, quiet_s: float = QUIET_S) -> None:
        super().__init__(logging.WARNING)
        self.quiet_s = quiet_s
        self.seen: dict[str, Seen] = {}
        self.conditions = Conditions("kafka_client", unready=False)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0] if record.getMessage() else record.name
        key = DIGITS.sub("#", message)
        now = time.monotonic()
        seen = self.seen.get(key)
        if seen is not None:
            seen.last, seen.count = now, seen.count + 1
            return
        self.seen[key] = Seen(message, now, now)
        self.conditions.raise_(
            key,
            f"Kafka client: {message} (repeats are not logged; a line follows when it "
            f"has not been seen for {self.quiet_s:.0f} s)",
            logging.WARNING,
        )

    def sweep(self, now: float | None = None) -> None:
        """Clear what has not been seen for `quiet_s`."""
        now = time.monotonic() if now is None else now
        for key, seen in list(self.seen.items()):
            if now - seen.last >= self.quiet_s:
                del self.seen[key]
                self.conditions.clear(
                    key,
                    f"Kafka client: cleared after {seen.count} times in "
                    f"{seen.last - seen.first:.0f} s: {seen.message}",
                )


def collapse_client_logs(quiet_s: float = QUIET_S) -> CollapsingHandler:
    client = logging.getLogger("aiokafka")
    handler = CollapsingHandler(quiet_s)
    client.handlers = [handler]
    client.propagate = False
    return handler


async def sweep_forever(handler: CollapsingHandler, every_s: float = SWEEP_EVERY_S) -> None:
    while True:
        await asyncio.sleep(every_s)
        handler.sweep()
