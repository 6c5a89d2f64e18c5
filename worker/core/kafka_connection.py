"""How every Kafka client of the project connects: the bootstrap servers and
the security settings, read from `PERSISTER_KAFKA_*`.

Shared by the worker's settings and by the Prefect messaging broker
(`worker.prefect_messaging`), which runs inside a Prefect server and reads
nothing else of the worker's settings.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from aiokafka.helpers import create_ssl_context
from pydantic import AliasChoices, Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings


class KafkaConnection(BaseSettings):
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(
            "PERSISTER_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    # Passed through to aiokafka. SASL_* needs a mechanism, a user name and
    # a password; SSL and SASL_SSL take the files below (none: the system's
    # trusted CAs).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = None
    kafka_ssl_certfile: FilePath | None = None
    kafka_ssl_keyfile: FilePath | None = None

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"PERSISTER_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "PERSISTER_KAFKA_SASL_MECHANISM, PERSISTER_KAFKA_SASL_USERNAME and "
                "PERSISTER_KAFKA_SASL_PASSWORD"
            )
        return self

    def kafka_options(self) -> dict[str, Any]:
        """Connection keyword arguments for every aiokafka client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None  # checked at start-up
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile,
                certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile,
            )
        return options
