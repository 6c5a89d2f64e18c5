"""The docs' settings tables match the settings the code reads, and the
architecture names modules and functions that exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

from tests.unit.test_doc_links import section
from worker.core.kafka_connection import KafkaConnection
from worker.core.settings import ENV_PREFIX, Settings
from worker.services.service import Service

ROOT = Path(__file__).parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"
PREFECT = ROOT / "docs" / "prefect.md"


def documented_variables() -> set[str]:
    table = section(CONFIGURATION, "# Settings")
    return set(re.findall(r"^\| `([A-Z_]+)`", table, flags=re.MULTILINE))


def test_every_setting_is_in_the_settings_table() -> None:
    expected = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    expected -= {f"{ENV_PREFIX}SERVICES"}
    # The two conventional names stand first in their rows.
    expected -= {f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS", f"{ENV_PREFIX}DATABASE_URL"}
    expected |= {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}
    expected |= {service.environment_variable_name() for service in Service.all_services()}
    assert documented_variables() == expected


def test_every_broker_setting_is_in_the_prefect_section_table() -> None:
    text = section(PREFECT, "## Run it with Prefect")
    documented = set(re.findall(r"^\| `([A-Z_*]+)`", text, flags=re.MULTILINE))
    spec = importlib.util.spec_from_file_location(
        "broker_settings", ROOT / "worker" / "prefect_messaging" / "settings.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    own = set(module.MessagingSettings.model_fields) - set(KafkaConnection.model_fields)
    assert documented == {f"{ENV_PREFIX}{name.upper()}" for name in own} | {"PERSISTER_KAFKA_*"}


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _defines(path: Path, name: str) -> bool:
    """`path` defines `name` (a function or class) or `Class.method`."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in name.split("."):
        found = [
            node
            for node in scope
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.name == part
        ]
        if not found:
            return False
        scope = found[0].body
    return True


def test_every_module_path_in_the_architecture_exists() -> None:
    root = ARCHITECTURE.parents[1]
    paths = set(re.findall(r"\bworker/[\w/]*[\w.]+", ARCHITECTURE.read_text()))
    assert len(paths) > 10
    assert sorted(p for p in paths if not (root / p).exists()) == []


def test_every_dotted_name_in_the_architecture_exists() -> None:
    names = set(re.findall(r"\bworker(?:\.\w+)+", ARCHITECTURE.read_text()))
    assert names
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        # The longest prefix that is a module; the rest are names in it.
        for cut in range(len(parts), 0, -1):
            try:
                module = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            target: object = module
            for attribute in parts[cut:]:
                target = getattr(target, attribute, None)
            if target is None:
                missing.append(name)
            break
    assert missing == []


def test_the_path_of_one_event_names_real_functions() -> None:
    root = ARCHITECTURE.parents[1]
    diagram = section(ARCHITECTURE, "## The path of one event").split("```")[1]
    steps = re.findall(r"^[ |v]*([A-Za-z_][\w.]*)\b.*?\s(worker/\S+\.py)$", diagram, re.MULTILINE)
    assert len(steps) >= 6
    assert [(n, p) for n, p in steps if not _defines(root / p, n)] == []


def test_the_package_table_names_existing_modules() -> None:
    root = ARCHITECTURE.parents[1]
    rows = re.findall(r"^\| `(worker/\w+/)` \| (.+) \|$", ARCHITECTURE.read_text(), re.MULTILINE)
    assert len(rows) == 7
    missing = []
    for package, owns in rows:
        # A module, a subpackage, a module of one (`dead_letters/sender`), or a name defined.
        for name in re.findall(r"`(\w[\w/]*)`", owns):
            module = root / package / f"{name}.py"
            found = module.exists() or (root / package / name).is_dir()
            if not found and not _defines_any(root / package, name):
                missing.append(f"{package}{name}")
    assert missing == []


def _defines_any(package: Path, name: str) -> bool:
    return any(_defines(path, name) for path in package.rglob("*.py"))
