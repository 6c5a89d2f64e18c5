"""What `make install`, `make test` and `make demo` need from the machine
rather than from the package registries: one line for each tool missing, with
how to get it, and exit 1; one short line when all are there.

Runs as `python3 worker/devtools/prerequisites.py` before any venv exists, so
stdlib only, and on an older Python too (to tell that it is too old). The
local stack finds the PostgreSQL binaries with `pg_bin`, the one definition.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

MIN_PYTHON = (3, 11)
MIN_JAVA = 17
MIN_POSTGRES = 15
# What the local stack runs: the server, its tools, and createdb.
PG_BINARIES = ("initdb", "pg_ctl", "postgres", "createdb")
TOOL_TIMEOUT_S = 30


def pg_bin(name: str) -> str | None:
    """A PostgreSQL program: from `pg_config --bindir` (Debian keeps the
    server's binaries off PATH), else on PATH; None if neither has it."""
    try:
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        pass
    else:
        if (path := Path(out.stdout.strip()) / name).exists():
            return str(path)
    return shutil.which(name)


@dataclass(frozen=True)
class Facts:
    """What the machine has, as gathered by `gather`."""

    python: tuple[int, int, int]
    has_venv: bool
    # `java -version`'s output, None without a java that runs.
    java_version: str | None
    java_compiler: bool
    pg_found: dict[str, str | None] = field(default_factory=dict)
    # `postgres --version`'s output, None when it did not run.
    postgres_version: str | None = None
    promtool: str | None = None
    root: bool = False
    postgres_user: bool = True


def java_major(version_output: str) -> int | None:
    """17 from `openjdk version "17.0.15" 2025-04-15`, 8 from `java version "1.8.0_291"`."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def postgres_major(version_output: str) -> int | None:
    """15 from `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`."""
    found = re.search(r"\(PostgreSQL\) (\d+)", version_output)
    return int(found.group(1)) if found else None


def line(what: str, debian: str, macos: str, found: str = "") -> str:
    detail = f" ({found})" if found else ""
    return f"missing: {what}{detail} — Debian/Ubuntu: {debian}; macOS: {macos}"


def python_problems(facts: Facts) -> list[str]:
    if facts.python[:2] < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        found = "found " + ".".join(map(str, facts.python))
        return [
            line(
                f"Python {wanted}+",
                f"apt-get install python{wanted}-venv, then make PYTHON=python{wanted}",
                f"brew install python@{wanted}, then make PYTHON=python{wanted}",
                found,
            )
        ]
    if not facts.has_venv:
        version = "{}.{}".format(*facts.python)
        return [
            line(
                "Python's venv module with ensurepip (makes .venv)",
                f"apt-get install python{version}-venv",
                "brew install python@3.11",
            )
        ]
    return []


def java_problems(facts: Facts) -> list[str]:
    what = f"Java {MIN_JAVA}+ with its compiler, a JDK (runs the local Kafka broker)"
    debian = f"apt-get install openjdk-{MIN_JAVA}-jdk-headless (or a newer openjdk-NN-jdk-headless)"
    macos = f"brew install --cask temurin@{MIN_JAVA}"
    if facts.java_version is None:
        return [line(what, debian, macos)]
    major = java_major(facts.java_version)
    if major is None or major < MIN_JAVA:
        return [line(what, debian, macos, f"found java {major or 'of unknown version'}")]
    if not facts.java_compiler:
        return [line(what, debian, macos, f"found java {major} without jdk.compiler")]
    return []


def postgres_problems(facts: Facts) -> list[str]:
    what = f"PostgreSQL {MIN_POSTGRES}+ server binaries ({', '.join(PG_BINARIES)})"
    debian = f"apt-get install postgresql-{MIN_POSTGRES} (or a newer postgresql-NN)"
    macos = f"brew install postgresql@{MIN_POSTGRES}, then put its bin folder on PATH"
    if absent := [name for name in PG_BINARIES if not facts.pg_found.get(name)]:
        return [line(what, debian, macos, "not found: " + ", ".join(absent))]
    major = postgres_major(facts.postgres_version or "")
    if major is None or major < MIN_POSTGRES:
        return [line(what, debian, macos, f"found PostgreSQL {major or 'of unknown version'}")]
    if facts.root and not facts.postgres_user:
        return [
            line(
                "a postgres user (run as root, the stack starts the server as that user)",
                "apt-get install postgresql-common, or useradd --system postgres",
                "run make as yourself, not as root",
            )
        ]
    return []


# Also what the alert rules' tests fail with when promtool is missing.
PROMTOOL_MISSING = line(
    "promtool (Prometheus's rule checker, for the alert rules' tests)",
    "apt-get install prometheus",
    "brew install prometheus",
)


def promtool_problems(facts: Facts) -> list[str]:
    return [] if facts.promtool else [PROMTOOL_MISSING]


def problems(facts: Facts) -> list[str]:
    """One line per missing prerequisite, in a fixed order; empty when all are there."""
    checks = (python_problems, java_problems, postgres_problems, promtool_problems)
    return [found for check in checks for found in check(facts)]


def summary(facts: Facts) -> str:
    java = java_major(facts.java_version or "")
    postgres = postgres_major(facts.postgres_version or "")
    python = "{}.{}".format(*facts.python)
    return f"prerequisites: Python {python}, Java {java}, PostgreSQL {postgres}, promtool: ok"


def output_of(*cmd: str) -> str | None:
    """stdout and stderr of a command that ran and exited 0, else None."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout + done.stderr if done.returncode == 0 else None


def is_user(name: str) -> bool:
    import pwd  # POSIX only, and only asked about as root

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def gather() -> Facts:
    java_version = output_of("java", "-version")
    modules = output_of("java", "--list-modules") if java_version else None
    pg_found = {name: pg_bin(name) for name in PG_BINARIES}
    postgres = pg_found["postgres"]
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    return Facts(
        python=(sys.version_info[0], sys.version_info[1], sys.version_info[2]),
        has_venv=all(importlib.util.find_spec(m) for m in ("venv", "ensurepip")),
        java_version=java_version,
        java_compiler=bool(modules and "jdk.compiler" in modules),
        pg_found=pg_found,
        postgres_version=output_of(postgres, "--version") if postgres else None,
        promtool=shutil.which("promtool"),
        root=root,
        postgres_user=is_user("postgres") if root else True,
    )


def main() -> int:
    facts = gather()
    if missing := problems(facts):
        for found in missing:
            print(found, file=sys.stderr)
        return 1
    print(summary(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
