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

from worker.core.metrics import registry
from worker.core.settings import ENV_PREFIX, Settings
from worker.devtools.stack import kafka_version

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


def test_only_the_producer_runs_the_development_tools(compose: dict[str, Any]) -> None:
    # The package leaves worker/devtools out; the `tools` stage runs the CLI
    # from the source tree, where `persister produce` finds the load generator.
    services = compose["services"]
    assert services["migrate"]["build"]["target"] == "worker"
    assert services["producer"]["build"]["target"] == "tools"
    assert services["producer"]["command"][0] == "produce"
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert "FROM worker AS tools\nENV PYTHONPATH=/app\n" in dockerfile


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
    suffixes |= {"info": ["_info"]}
    exported = {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, [""])
    }
    titles = set()
    for panel in dashboard["panels"]:
        titles.add(panel["title"])
        for target in panel["targets"]:
            for name in re.findall(r"persister_[a-z_]+", target["expr"]):
                assert name in exported, (panel["title"], name)
    assert len(titles) == 12


# Published once for the whole group (by the trimmer leader), whichever
# instance that is: only the job applies.
GROUP_WIDE = ("persister_group_lag_records", "persister_trim_last_success_timestamp_seconds")


def test_dashboard_has_job_and_instance_variables_that_every_query_uses() -> None:
    dashboard = json.loads((COMPOSE / "grafana/dashboards/event-persister.json").read_text())
    variables = {v["name"]: v["query"] for v in dashboard["templating"]["list"]}
    assert variables == {
        "job": "label_values(persister_build_info, job)",
        "instance": 'label_values(persister_build_info{job=~"$job"}, instance)',
    }
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name, selector in re.findall(r"(persister_[a-z_]+)\{([^}]*)\}", target["expr"]):
                wanted = (
                    'job=~"$job"' if name in GROUP_WIDE else 'job=~"$job", instance=~"$instance"'
                )
                assert selector.startswith(wanted), (panel["title"], target["expr"])
            n_metrics = len(re.findall(r"persister_[a-z_]+", target["expr"]))
            n_selected = len(re.findall(r"persister_[a-z_]+\{", target["expr"]))
            assert n_metrics == n_selected, (panel["title"], target["expr"])


def test_dashboard_shows_what_an_operator_is_alerted_about() -> None:
    dashboard = json.loads((COMPOSE / "grafana/dashboards/event-persister.json").read_text())
    shown = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"persister_[a-z_]+", target["expr"])
    }
    assert {
        "persister_group_lag_records",
        "persister_write_failures_total",
        "persister_paused_partitions",
        "persister_operator_paused_partitions",
        "persister_rebalances_total",
        "persister_trim_last_success_timestamp_seconds",
        "persister_ready",
    } <= shown
    places = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    assert len(set(places)) == len(places), "panels overlap"


def test_the_image_ships_the_code_and_runs_the_cli() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    for line in ("COPY worker ./worker", "COPY schemas ./schemas", 'ENTRYPOINT ["persister"]'):
        assert line in dockerfile


def test_migrate_retries_until_the_database_answers_over_tcp(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["restart"] == "on-failure"
    check = services["postgres"]["healthcheck"]["test"]
    assert check == ["CMD-SHELL", "pg_isready -h 127.0.0.1 -p 5432 -U postgres -d events"]


def test_the_image_installs_pinned_versions_of_every_dependency() -> None:
    import tomllib

    from packaging.requirements import Requirement

    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert "RUN pip install --no-cache-dir -c constraints.txt ." in dockerfile
    lines = (COMPOSE / "constraints.txt").read_text().splitlines()
    pins = dict(
        line.split(" ;")[0].split("==") for line in lines if line and not line.startswith("#")
    )
    # The same versions as uv.lock, which `make install` and CI install.
    lock = tomllib.loads((COMPOSE.parent / "uv.lock").read_text())
    locked = {(p["name"], p["version"]) for p in lock["package"]}
    assert {(name, version) for name, version in pins.items()} <= locked
    assert all(re.fullmatch(r"[0-9][0-9a-z.]*", version) for version in pins.values())
    project = tomllib.loads((COMPOSE.parent / "pyproject.toml").read_text())["project"]
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, name
        assert requirement.specifier.contains(pins[name]), (name, pins[name])
    assert "greenlet" in pins  # sqlalchemy[asyncio]


def test_only_the_code_reaches_the_image_build() -> None:
    ignored = (COMPOSE.parent / ".dockerignore").read_text().splitlines()
    assert "*" in ignored
    allowed = {line[1:] for line in ignored if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "worker/",
        "schemas/",
        "compose/constraints.txt",
    }
