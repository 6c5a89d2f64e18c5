from __future__ import annotations

import io
import logging
import sys
import warnings
from collections.abc import Iterator

import orjson
import pytest

from worker.cli.common import configure_logging


@pytest.fixture
def json_logging() -> Iterator[io.StringIO]:
    """What `configure_logging` writes to stderr, written here instead."""
    hooks = sys.excepthook, sys.unraisablehook
    configure_logging("INFO", "json")
    written = io.StringIO()
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(written)
    yield written
    logging.captureWarnings(False)
    sys.excepthook, sys.unraisablehook = hooks
    logging.basicConfig(force=True, handlers=[logging.NullHandler()])


def lines(err: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in err.splitlines()]


def test_a_warning_from_python_is_a_json_line(json_logging: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("unclosed client", ResourceWarning, stacklevel=1)
    [line] = lines(json_logging.getvalue())
    assert line["level"] == "WARNING"
    assert "ResourceWarning: unclosed client" in str(line["message"])


def test_an_uncaught_exception_is_one_json_line_naming_it(json_logging: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    [line] = lines(json_logging.getvalue())
    assert line["level"] == "CRITICAL"
    assert line["message"] == "crashed: RuntimeError('boom')"
    assert "RuntimeError: boom" in str(line["exception"])


def test_fields_given_to_a_line_are_json_fields(json_logging: io.StringIO) -> None:
    logging.getLogger("worker.test").info(
        "t[1]: written", extra={"topic": "t", "partition": 1, "batch_size": 500}
    )
    [line] = lines(json_logging.getvalue())
    assert {k: line[k] for k in ("topic", "partition", "batch_size")} == {
        "topic": "t",
        "partition": 1,
        "batch_size": 500,
    }
    assert str(line["time"]).endswith("Z")
