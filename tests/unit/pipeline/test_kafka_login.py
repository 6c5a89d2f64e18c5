"""The login check before the consumer starts (`worker.pipeline.kafka_login`)."""

from __future__ import annotations

import socket

import pytest
from aiokafka.errors import SaslAuthenticationFailed, TopicAuthorizationFailedError

from worker.core.kafka_connection import KafkaConnection
from worker.pipeline.kafka_login import refuse_bad_login, refused_line


async def test_without_sasl_nothing_is_asked() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        listening.setblocking(False)
        servers = f"127.0.0.1:{listening.getsockname()[1]}"
        await refuse_bad_login(KafkaConnection(kafka_bootstrap_servers=servers))
        with pytest.raises(BlockingIOError):  # no connection came
            listening.accept()


async def test_an_unreachable_broker_is_left_to_the_consumer() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        settings = KafkaConnection(
            kafka_bootstrap_servers=f"127.0.0.1:{held.getsockname()[1]}",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="persister",
            kafka_sasl_password="secret",
        )
        await refuse_bad_login(settings)  # returns: the consumer's start waits it out


def test_the_lines_say_what_to_check() -> None:
    refused = SaslAuthenticationFailed("Authentication failed: Invalid username or password")
    assert refused_line(refused, "b:9092") == (
        "Kafka refused the login at b:9092: [Error 58] SaslAuthenticationFailed: Authentication "
        "failed: Invalid username or password; check PERSISTER_KAFKA_SASL_USERNAME, "
        "PERSISTER_KAFKA_SASL_PASSWORD and PERSISTER_KAFKA_SASL_MECHANISM"
    )
    assert refused_line(TopicAuthorizationFailedError(), "b:9092") == (
        "Kafka at b:9092 refused access: [Error 29] TopicAuthorizationFailedError; grant "
        "PERSISTER_KAFKA_SASL_USERNAME read on the topics and the consumer group"
    )
