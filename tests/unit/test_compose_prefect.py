"""compose/prefect.yml, Prefect on Kafka beside the worker, checked as far as
can be without a Docker engine: merged onto docker-compose.yml as
`docker compose -f ... -f ...` merges it, every setting it names exists, and
the start order lets Prefect's migrations run before the worker's."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.core.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "compose"
BROKER = ROOT / "worker" / "prefect_messaging"


def merged() -> dict[str, Any]:
    """The two files as Compose merges them: maps key by key."""

    def merge(base: Any, extra: Any) -> Any:
        if isinstance(base, dict) and isinstance(extra, dict):
            return {k: merge(base.get(k), extra[k]) if k in base else extra[k] for k in extra} | {
                k: v for k, v in base.items() if k not in extra
            }
        return extra

    base = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    extra = yaml.safe_load((COMPOSE / "prefect.yml").read_text())
    document: dict[str, Any] = merge(base, extra)
    return document


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    found: dict[str, Any] = merged()["services"]
    return found


def broker_settings_fields() -> set[str]:
    # Loaded from its file: the package's __init__ imports Prefect.
    spec = importlib.util.spec_from_file_location("broker_settings", BROKER / "settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(module.MessagingSettings.model_fields)


def test_prefect_runs_its_api_and_its_services_on_the_kafka_broker(
    services: dict[str, Any],
) -> None:
    for name in ("prefect-server", "prefect-services"):
        env = services[name]["environment"]
        assert env["PREFECT_MESSAGING_BROKER"] == "worker.prefect_messaging"
        assert env["PREFECT_MESSAGING_CACHE"] == "worker.prefect_messaging"
        assert env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED"] == "false"
    assert services["prefect-server"]["command"][-1] == "--no-services"
    assert services["prefect-services"]["command"][1:] == ["server", "services", "start"]
    assert (BROKER / "__init__.py").exists()


def test_prefect_and_the_worker_share_one_database_and_one_topic(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in services["worker"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    prefect_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_url == settings.database_url
    assert settings.event_tables == "prefect"
    assert services["migrate"]["environment"]["PERSISTER_EVENT_TABLES"] == "prefect"
    prefix = services["prefect-server"]["environment"].get("PERSISTER_PREFECT_TOPIC_PREFIX", "")
    assert settings.topics == (f"{prefix}events",)
    assert settings.group_id == "event-persister"


def test_environment_names_are_settings(services: dict[str, Any]) -> None:
    fields = broker_settings_fields()
    known = {f"{ENV_PREFIX}{name.upper()}" for name in fields}
    for name in ("prefect-server", "prefect-services"):
        env = services[name]["environment"]
        ours = {k for k in env if not k.startswith("PREFECT_")}
        assert ours <= known, ours - known


def test_prefect_migrates_before_the_worker_and_the_services_start_after(
    services: dict[str, Any],
) -> None:
    assert services["migrate"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    deps = services["prefect-services"]["depends_on"]
    assert deps["prefect-server"]["condition"] == "service_healthy"
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])


def test_the_prefect_image_pins_what_the_tests_ran() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    stage = dockerfile[dockerfile.index("AS prefect") :]
    prefect = (ROOT / "tests/prefect_side/requirements.txt").read_text()
    [version] = re.findall(r"^prefect==(\S+)$", prefect, flags=re.MULTILINE)
    assert f"prefecthq/prefect:{version}-python3.11 AS prefect" in dockerfile
    constraints = (COMPOSE / "constraints.txt").read_text()
    [aiokafka] = re.findall(r"^aiokafka==\S+$", constraints, flags=re.MULTILINE)
    assert f"pip install --no-cache-dir {aiokafka} " in stage
    assert "--no-deps ." in stage
