"""Kafka security settings reach every client, and secrets stay secret."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from worker.cli.common import JsonFormatter
from worker.core.settings import Settings


def test_plaintext_by_default() -> None:
    assert Settings(kafka_bootstrap_servers="k:9092").kafka_options() == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_scram_over_ssl(tmp_path: Path) -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="persister",
        kafka_sasl_password="s3cret",
    )
    options = settings.kafka_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "persister",
        "s3cret",
    )
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("missing", ["kafka_sasl_mechanism", "kafka_sasl_password"])
def test_sasl_without_credentials_is_refused(missing: str) -> None:
    values = {
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "u",
        "kafka_sasl_password": "p",
    }
    del values[missing]
    with pytest.raises(ValidationError, match="needs PERSISTER_KAFKA_SASL_MECHANISM"):
        Settings.model_validate(values)


def test_ssl_files_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="kafka_ssl_cafile"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "missing.pem")


def test_json_log_lines() -> None:
    record = logging.LogRecord("worker.x", logging.WARNING, "f.py", 1, "wrote %d", (3,), None)
    line = orjson.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "worker.x", "wrote 3")
