"""Prefect's deduplication cache, shared by every process of a Prefect server
through the PostgreSQL database they share: an event sent to two API
processes (a client retrying through a load balancer) is published once.

A message's key is seen for `LOOKBACK_S`, as Prefect's own caches keep it.
The cache fails open: while the database cannot answer, messages pass as not
seen (one WARNING, and a line when it answers again), because everything
downstream tolerates a duplicate (the worker writes an event id once, and
Prefect's triggers skip an event they have seen) while a lost event is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import TypeVar

import asyncpg
from prefect.server.utilities.messaging import Cache as PrefectCache
from prefect.server.utilities.messaging import Message
from prefect.server.utilities.messaging.memory import Cache as MemoryCache
from prefect.settings import get_current_settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

LOOKBACK_S = 300.0
FORGET_EVERY_S = 60.0
QUERY_TIMEOUT_S = 5.0

# Checked before publishing; marked only once Kafka has the message
# (Publisher._confirm), so a send that failed marks nothing.
SEEN = """
SELECT key FROM persister_seen_messages
WHERE key = ANY($1::text[]) AND seen >= now() - make_interval(secs => $2)
"""
MARK = """
INSERT INTO persister_seen_messages (key, seen)
SELECT k, now() FROM unnest($1::text[]) AS k
ON CONFLICT (key) DO UPDATE SET seen = excluded.seen
"""
UNMARK = "DELETE FROM persister_seen_messages WHERE key = ANY($1::text[])"
EXPIRE = "DELETE FROM persister_seen_messages WHERE seen < now() - make_interval(secs => $1)"


def asyncpg_dsn(sqlalchemy_url: str) -> str | None:
    """The DSN asyncpg takes for a SQLAlchemy PostgreSQL URL; None for any
    other database."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        return None
    return f"postgresql://{rest}"


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncpg.Pool] = (
    weakref.WeakKeyDictionary()
)


class Cache(PrefectCache):
    _failing = False
    _expired_at = 0.0

    def __init__(self) -> None:
        url = get_current_settings().server.database.connection_url
        self._dsn = asyncpg_dsn(url.get_secret_value()) if url else None
        # Without PostgreSQL there is no shared place: one process's memory.
        self._memory = MemoryCache() if self._dsn is None else None

    async def clear_recently_seen_messages(self) -> None:
        if self._memory is not None:
            await self._memory.clear_recently_seen_messages()

    async def without_duplicates(self, attribute: str, messages: Iterable[M]) -> list[M]:
        """The messages not published in the last LOOKBACK_S, and the first of
        several with one key. Two processes given one event at the same
        moment may both publish it: downstream takes that, not a loss."""
        if self._memory is not None:
            kept: list[M] = await self._memory.without_duplicates(attribute, messages)
            return kept
        keyed = [(m, _key(attribute, m)) for m in messages]
        keys = sorted({k for _, k in keyed if k is not None})
        seen = await self._query(SEEN, keys, LOOKBACK_S) if keys else []
        if seen is None:
            return [m for m, _ in keyed]
        taken = set(seen)
        kept = []
        for message, key in keyed:
            if key is None or key not in taken:
                kept.append(message)
                if key is not None:
                    taken.add(key)
        return kept

    async def remember(self, attribute: str, messages: Iterable[Message]) -> None:
        """Mark messages Kafka has taken as seen."""
        if self._memory is not None:
            return  # the memory cache marked them when it let them through
        keys = sorted({k for k in (_key(attribute, m) for m in messages) if k is not None})
        if keys:
            await self._query(MARK, keys)
        if time.monotonic() - Cache._expired_at > FORGET_EVERY_S:
            Cache._expired_at = time.monotonic()
            await self._query(EXPIRE, None, LOOKBACK_S)

    async def forget_duplicates(self, attribute: str, messages: Iterable[Message]) -> None:
        if self._memory is not None:
            await self._memory.forget_duplicates(attribute, messages)
            return
        keys = [k for k in (_key(attribute, m) for m in messages) if k is not None]
        if keys:
            await self._query(UNMARK, keys)

    async def _query(self, sql: str, keys: Sequence[str] | None, *args: float) -> list[str] | None:
        """The keys `sql` returns, or None when the database did not answer."""
        params = ([list(keys)] if keys is not None else []) + list(args)
        try:
            pool = await self._connected()
            rows = await pool.fetch(sql, *params, timeout=QUERY_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            if not Cache._failing:
                Cache._failing = True
                log.warning("message cache unavailable, publishing without it: %r", exc)
            return None
        if Cache._failing:
            Cache._failing = False
            log.warning("message cache available again")
        return [row["key"] for row in rows]

    async def _connected(self) -> asyncpg.Pool:
        """This loop's pool: Prefect may run its services on other loops."""
        loop = asyncio.get_running_loop()
        if loop not in _pools:
            assert self._dsn is not None
            _pools[loop] = await asyncpg.create_pool(
                self._dsn, min_size=0, max_size=2, timeout=QUERY_TIMEOUT_S
            )
        return _pools[loop]


def _key(attribute: str, message: Message) -> str | None:
    """The attribute's value, hashed: an index entry of bounded size
    (schemas.limits.SEEN_MESSAGE_KEY_CHARS) whatever a client sent."""
    value = (message.attributes or {}).get(attribute)
    if value is None:
        log.warning("message has no %r attribute to deduplicate by", attribute)
        return None
    return hashlib.sha256(f"{attribute}:{value}".encode()).hexdigest()
