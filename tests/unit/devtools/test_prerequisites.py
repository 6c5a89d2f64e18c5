"""What the prerequisites check says about a machine: one exact line per
missing tool, nothing missing on a complete machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from worker.devtools import prerequisites
from worker.devtools.prerequisites import (
    MIN_JAVA,
    MIN_POSTGRES,
    MIN_PYTHON,
    PG_BINARIES,
    Facts,
    java_major,
    postgres_major,
    problems,
)

JAVA_17 = 'openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment (build 17.0.15+6)\n'
PG_15 = "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"
ALL_PG: dict[str, str | None] = {
    name: f"/usr/lib/postgresql/15/bin/{name}" for name in prerequisites.PG_BINARIES
}
COMPLETE = Facts(
    python=(3, 11, 2),
    has_venv=True,
    java_version=JAVA_17,
    java_compiler=True,
    pg_found=ALL_PG,
    postgres_version=PG_15,
    promtool="/usr/bin/promtool",
    root=True,
    postgres_user=True,
)

PYTHON_LINE = (
    "missing: Python 3.11+ (found 3.9.2) — Debian/Ubuntu: apt-get install python3.11-venv,"
    " then make PYTHON=python3.11; macOS: brew install python@3.11, then make PYTHON=python3.11"
)
VENV_LINE = (
    "missing: Python's venv module with ensurepip (makes .venv)"
    " — Debian/Ubuntu: apt-get install python3.11-venv; macOS: brew install python@3.11"
)
JAVA = (
    "missing: Java 17+ with its compiler, a JDK (runs the local Kafka broker){}"
    " — Debian/Ubuntu: apt-get install openjdk-17-jdk-headless"
    " (or a newer openjdk-NN-jdk-headless); macOS: brew install --cask temurin@17"
)
POSTGRES = (
    "missing: PostgreSQL 15+ server binaries (initdb, pg_ctl, postgres, createdb) ({})"
    " — Debian/Ubuntu: apt-get install postgresql-15 (or a newer postgresql-NN);"
    " macOS: brew install postgresql@15, then put its bin folder on PATH"
)
POSTGRES_USER_LINE = (
    "missing: a postgres user (run as root, the stack starts the server as that user)"
    " — Debian/Ubuntu: apt-get install postgresql-common, or useradd --system postgres;"
    " macOS: run make as yourself, not as root"
)
PROMTOOL_LINE = (
    "missing: promtool (Prometheus's rule checker, for the alert rules' tests)"
    " — Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus"
)


def test_a_complete_machine_misses_nothing() -> None:
    assert problems(COMPLETE) == []
    assert prerequisites.summary(COMPLETE) == (
        "prerequisites: Python 3.11, Java 17, PostgreSQL 15, promtool: ok"
    )


def test_a_bare_machine_gets_one_line_per_tool_in_order() -> None:
    bare = Facts(python=(3, 11, 2), has_venv=False, java_version=None, java_compiler=False)
    assert problems(bare) == [
        VENV_LINE,
        JAVA.format(""),
        POSTGRES.format("not found: initdb, pg_ctl, postgres, createdb"),
        PROMTOOL_LINE,
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"python": (3, 9, 2), "has_venv": False}, PYTHON_LINE),
        ({"has_venv": False}, VENV_LINE),
        ({"java_version": None}, JAVA.format("")),
        ({"java_version": 'java version "1.8.0_291"'}, JAVA.format(" (found java 8)")),
        ({"java_version": "no version here"}, JAVA.format(" (found java of unknown version)")),
        ({"java_compiler": False}, JAVA.format(" (found java 17 without jdk.compiler)")),
        ({"pg_found": {**ALL_PG, "initdb": None}}, POSTGRES.format("not found: initdb")),
        (
            {"postgres_version": "postgres (PostgreSQL) 14.9"},
            POSTGRES.format("found PostgreSQL 14"),
        ),
        ({"postgres_version": None}, POSTGRES.format("found PostgreSQL of unknown version")),
        ({"postgres_user": False}, POSTGRES_USER_LINE),
        ({"promtool": None}, PROMTOOL_LINE),
    ],
)
def test_each_missing_tool_is_one_exact_line(change: dict[str, object], expected: str) -> None:
    assert problems(dataclasses.replace(COMPLETE, **change)) == [expected]  # type: ignore[arg-type]


def test_without_root_no_postgres_user_is_needed() -> None:
    assert problems(dataclasses.replace(COMPLETE, root=False, postgres_user=False)) == []


@pytest.mark.parametrize(
    ("output", "major"),
    [
        (JAVA_17, 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ('java version "1.8.0_291"', 8),
        ("Unable to locate a Java Runtime.", None),
    ],
)
def test_the_java_major_version_is_read_from_java_version(output: str, major: int | None) -> None:
    assert java_major(output) == major


@pytest.mark.parametrize(
    ("output", "major"),
    [(PG_15, 15), ("postgres (PostgreSQL) 17.2 (Homebrew)", 17), ("postgres 9", None)],
)
def test_the_postgres_major_version_is_read(output: str, major: int | None) -> None:
    assert postgres_major(output) == major


def test_the_readme_names_what_the_check_checks() -> None:
    """The README's prerequisites are the check's: each version and program."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    two_commands = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    python = "Python {}.{}+".format(*MIN_PYTHON)
    named = [python, f"JDK {MIN_JAVA}+", f"PostgreSQL {MIN_POSTGRES}+", *PG_BINARIES, "promtool"]
    assert [name for name in named if name not in two_commands] == []
    assert "make prerequisites" in two_commands
