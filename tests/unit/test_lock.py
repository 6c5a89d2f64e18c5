"""`make install` installs exactly what `uv.lock` pins: every package in this
environment is the locked version, and every locked dependency of the package
and its dev tools is here."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PROJECT = "event-persister"


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def locked() -> dict[str, set[str]]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(canonical(package["name"]), set()).add(package["version"])
    return versions


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_every_installed_package_is_the_locked_version() -> None:
    pinned = locked()
    drift = {
        name: (version, sorted(pinned.get(name, set())))
        for name, version in installed().items()
        if version not in pinned.get(name, set())
    }
    assert drift == {}, "installed (version, locked versions); run `make install`"


@pytest.mark.parametrize("extra", ["", "dev"])
def test_every_locked_requirement_is_installed(extra: str) -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    project = next(p for p in lock["package"] if p["name"] == PROJECT)
    wanted = project["dependencies"] if not extra else project["optional-dependencies"][extra]
    here = installed()
    assert [canonical(d["name"]) for d in wanted if canonical(d["name"]) not in here] == []
