"""Settings errors and unknown variables in an operator's words."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.core.setting_names import describe_errors, known_variables, unknown_variables, variable
from worker.core.settings import Settings


def lines(**values: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, _secrets_dir=None, **values)
    return describe_errors(info.value.errors(include_url=False))


def test_errors_name_the_variable_in_plain_words() -> None:
    assert lines(batch_size=0, log_level="LOUD", metrics_port="x", topic_pattern="([") == [
        "invalid setting PERSISTER_TOPIC_PATTERN=([: is not a regular expression "
        "(unterminated character set at position 1)",
        "invalid setting PERSISTER_BATCH_SIZE=0: must be at least 1",
        "invalid setting PERSISTER_METRICS_PORT=x: must be a whole number",
        "invalid setting PERSISTER_LOG_LEVEL=LOUD: must be one of DEBUG, INFO, WARNING or ERROR",
    ]


def test_secret_values_are_never_echoed() -> None:
    assert lines(database_url="mysql://u:hunter2@h/db") == [
        "invalid setting DATABASE_URL: unsupported database 'mysql'; use postgresql or sqlite"
    ]


def test_nested_and_aliased_variables() -> None:
    assert variable(("services", "metrics_server", "enabled")) == (
        "PERSISTER_SERVICES__METRICS_SERVER__ENABLED"
    )
    assert variable(("PERSISTER_KAFKA_BOOTSTRAP_SERVERS",)) == "KAFKA_BOOTSTRAP_SERVERS"


def test_unknown_variables_are_reported_with_the_closest_name() -> None:
    environ = {
        "PERSISTER_BATCHSIZE": "5",
        "PERSISTER_BATCH_SIZE": "5",
        "PERSISTER_STACK_DIR": "/tmp/x",
        "PERSISTER_SERVICES__EVENT_PERSISTER__ENABLED": "true",
        "PERSISTER_ZZZ": "1",
        "HOME": "/root",
    }
    assert unknown_variables(environ, known_variables(Settings)) == [
        "warning: PERSISTER_BATCHSIZE is not a setting and is ignored; "
        "did you mean PERSISTER_BATCH_SIZE?",
        "warning: PERSISTER_ZZZ is not a setting and is ignored",
    ]
