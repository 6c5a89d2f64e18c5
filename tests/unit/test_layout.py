"""The folders tell the architecture: dependencies between the worker's
packages run one way (the order docs/architecture.md states), and the
runtime never loads the development tools."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]
WORKER = ROOT / "worker"
# Lowest first: a package imports only from itself and those before it.
ORDER = ["core", "pipeline", "operate", "services", "cli"]
DEVTOOLS = "devtools"
# Imported by a Prefect server, never by the worker: it needs Prefect.
PREFECT_BROKER = "prefect_messaging"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module (or package), dotted
    top_level: bool  # False: inside a function, run when it is called


def dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        here = here[: len(here) - node.level + 1]
        base = ".".join([*here, *([node.module] if node.module else [])])
    # `from worker.x import y` may name a module y of package worker.x.
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def imports(path: Path) -> Iterator[Import]:
    module = dotted(path)
    tree = ast.parse(path.read_text())
    functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
    nested = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, functions)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(node, module, path.name == "__init__.py"):
                yield Import(module, target, id(node) not in nested)


def package_of(module: str) -> str | None:
    """The worker package a dotted name belongs to (None: outside them)."""
    parts = module.split(".")
    if parts[0] != "worker" or len(parts) < 2:
        return None
    return "cli" if parts[1] == "__main__" else parts[1]


def worker_imports() -> list[Import]:
    return [i for path in sorted(WORKER.rglob("*.py")) for i in imports(path)]


def test_every_module_sits_in_one_of_the_packages() -> None:
    loose = {p.name for p in WORKER.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert loose == {"__init__.py", "__main__.py", DEVTOOLS, PREFECT_BROKER, *ORDER}


def test_packages_import_only_from_those_below_them() -> None:
    backwards = []
    for i in worker_imports():
        here, there = package_of(i.module), package_of(i.target)
        if here in ORDER and there in ORDER and ORDER.index(there) > ORDER.index(here):
            backwards.append(f"{i.module} imports {i.target}")
    assert backwards == []


def test_the_runtime_never_imports_the_development_tools() -> None:
    # The command line may, inside the commands that need them (`stack`,
    # `produce`): the package leaves worker/devtools out.
    found = [
        f"{i.module} imports {i.target}"
        for i in worker_imports()
        if package_of(i.module) in ORDER
        and package_of(i.target) == DEVTOOLS
        and (i.top_level or package_of(i.module) != "cli")
    ]
    assert found == []


def test_only_a_prefect_server_imports_the_prefect_broker() -> None:
    found = [
        f"{i.module} imports {i.target}"
        for i in worker_imports()
        if package_of(i.target) == PREFECT_BROKER and package_of(i.module) != PREFECT_BROKER
    ]
    assert found == []


def test_the_prefect_broker_uses_only_the_core() -> None:
    found = [
        f"{i.module} imports {i.target}"
        for i in worker_imports()
        if package_of(i.module) == PREFECT_BROKER
        and package_of(i.target) not in (None, "core", PREFECT_BROKER)
    ]
    assert found == []


def test_the_development_tools_do_not_use_the_command_line() -> None:
    found = [
        f"{i.module} imports {i.target}"
        for i in worker_imports()
        if package_of(i.module) == DEVTOOLS and package_of(i.target) == "cli"
    ]
    assert found == []


def test_the_data_contracts_import_nothing_from_the_worker() -> None:
    found = [
        f"{i.module} imports {i.target}"
        for path in sorted((ROOT / "schemas").rglob("*.py"))
        for i in imports(path)
        if i.target.split(".")[0] == "worker"
    ]
    assert found == []


def test_the_command_line_starts_without_the_development_tools() -> None:
    # As installed from the package: importing worker.devtools fails.
    code = (
        "import sys; sys.modules['worker.devtools'] = None; "
        "import worker.cli, worker.__main__; "
        "assert not [m for m in sys.modules if m.startswith('worker.devtools.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_architecture_document_states_the_enforced_order() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    stated = re.search(r"^Dependency order: (.+)$", text, flags=re.MULTILINE)
    assert stated is not None
    assert [name.strip(" `.") for name in stated.group(1).split("<")] == ORDER
