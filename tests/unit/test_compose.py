"""The Docker Compose files, checked as far as can be without a Docker engine:
services, replicas, health checks, and that every setting and metric they
name exists in the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.metrics import registry
from worker.settings import ENV_PREFIX, Settings
from worker.stack import kafka_version

COMPOSE = Path(__file__).parents[2] / "compose"


def load(name: str) -> Any:
    return yaml.safe_load((COMPOSE / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load("docker-compose.yml")
    return document


def test_services_and_replicas(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "kafka",
        "kafka-init",
        "postgres",
        "migrate",
        "worker",
        "producer",
        "prometheus",
        "grafana",
    }
    assert services["worker"]["deploy"]["replicas"] == 3
    assert services["migrate"]["command"] == ["migrate"]
    assert services["worker"]["command"] == ["run"]


def test_health_checks_gate_the_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "postgres", "worker"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["migrate"]["condition"] == "service_completed_successfully"
    assert worker_deps["kafka-init"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(services["worker"]["healthcheck"]["test"])


def test_environment_names_are_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    known |= {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}
    for name in ("migrate", "worker", "producer"):
        env = compose["services"][name]["environment"]
        assert set(env) <= known, set(env) - known
    for key, value in compose["services"]["worker"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.database_url.startswith("postgresql+asyncpg://postgres:postgres@postgres:")
    assert settings.topics == ("events",)


def test_images_match_the_pinned_versions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version()}"
    assert services["postgres"]["image"] == "postgres:15"


def test_prometheus_scrapes_the_workers_metrics_port(compose: dict[str, Any]) -> None:
    port = int(compose["services"]["worker"]["environment"]["PERSISTER_METRICS_PORT"])
    scrape = load("prometheus.yml")["scrape_configs"][0]["dns_sd_configs"][0]
    assert (scrape["names"], scrape["port"]) == (["worker"], port)


def test_dashboard_queries_name_existing_metrics() -> None:
    dashboard = json.loads((COMPOSE / "grafana/dashboards/event-persister.json").read_text())
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {
        family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]
    }
    titles = set()
    for panel in dashboard["panels"]:
        titles.add(panel["title"])
        for target in panel["targets"]:
            for name in re.findall(r"persister_[a-z_]+", target["expr"]):
                assert name in exported, (panel["title"], name)
    assert len(titles) == 6


def test_the_image_ships_the_code_and_runs_the_cli() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    for line in ("COPY worker ./worker", "COPY schemas ./schemas", 'ENTRYPOINT ["persister"]'):
        assert line in dockerfile
