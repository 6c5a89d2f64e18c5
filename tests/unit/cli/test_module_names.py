"""No command module shares its name with a package of the worker: `operate`
would be both `worker.operate` and `worker.cli.operate`."""

from __future__ import annotations

from pathlib import Path

WORKER = Path(__file__).parents[3] / "worker"


def test_no_command_module_is_named_like_a_package() -> None:
    packages = {p.name for p in WORKER.iterdir() if (p / "__init__.py").exists()}
    commands = {p.stem for p in (WORKER / "cli").glob("*.py")}
    assert len(packages) >= 5 and "common" in commands  # both were found
    assert commands & packages == set()
