"""Whether Kafka refuses the configured login, asked before the consumer
starts.

aiokafka's bootstrap logs a refused SASL login and raises only "Unable to
bootstrap" (the same as for a broker that is down), so a consumer cannot
tell a wrong password, which no retry mends, from an outage, which is waited
out. One connection of our own to a bootstrap server raises the login's own
error.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaError

from worker.core.errors import OperatorNeeded, needs_operator
from worker.core.kafka_connection import KafkaConnection

PROBE_TIMEOUT_S = 10.0
# What `create_conn` takes of the options every client gets.
CONNECTION_OPTIONS = (
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


def refused_line(exc: BaseException, servers: str) -> str:
    """The one line for a Kafka error `needs_operator` says no retry mends."""
    reason = str(exc) or type(exc).__name__
    if "Authorization" in type(exc).__name__:
        return (
            f"Kafka at {servers} refused access: {reason}; grant "
            "PERSISTER_KAFKA_SASL_USERNAME read on the topics and the consumer group"
        )
    return (
        f"Kafka refused the login at {servers}: {reason}; check "
        "PERSISTER_KAFKA_SASL_USERNAME, PERSISTER_KAFKA_SASL_PASSWORD and "
        "PERSISTER_KAFKA_SASL_MECHANISM"
    )


async def _login(host: str, port: int, options: dict[str, Any]) -> None:
    conn = await create_conn(host, port, request_timeout_ms=int(PROBE_TIMEOUT_S * 1000), **options)
    conn.close()


async def refuse_bad_login(settings: KafkaConnection) -> None:
    """Raise `OperatorNeeded` if a bootstrap server refuses the SASL login.
    Without SASL, or when no server answers, it returns: the consumer's own
    start then fails or waits as it would."""
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return
    options = {k: v for k, v in settings.kafka_options().items() if k in CONNECTION_OPTIONS}
    for host, port, _ in collect_hosts(settings.kafka_bootstrap_servers):
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await _login(host, port, options)
        except (KafkaError, OSError, TimeoutError) as exc:
            if needs_operator(exc):
                raise OperatorNeeded(refused_line(exc, settings.kafka_bootstrap_servers)) from exc
            continue
        return
