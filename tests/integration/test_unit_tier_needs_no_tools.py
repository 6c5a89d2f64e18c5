"""`make unit-test` needs no program from the machine but make: with a PATH
that holds only make, so no java, mvn, initdb, postgres, pg_ctl, pg_config
or promtool, every unit test still runs and passes. A unit test that needs
one of them belongs in tests/integration.

The unit tests start Python as `sys.executable` and call no other program by
name; the Makefile runs the venv's pytest by its path."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
HIDDEN = ("java", "mvn", "initdb", "postgres", "pg_ctl", "pg_config", "createdb", "promtool")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) deselected in [\d.]+s$")


def test_the_unit_tier_passes_without_any_outside_tool(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.mkdir()
    make = shutil.which("make")
    assert make is not None
    (path / "make").symlink_to(make)
    assert [tool for tool in HIDDEN if shutil.which(tool, path=str(path))] == []
    done = subprocess.run(
        ["make", "-s", "unit-test", f"VENV={Path(sys.executable).parents[1]}"],
        cwd=ROOT,
        env={**os.environ, "PATH": str(path), "PYTEST_ADDOPTS": "-q -p no:cacheprovider"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, "\n".join(lines[-60:]) + done.stderr[-3000:]
    # Nothing failed, errored or was skipped (a unit test skipping for want
    # of a tool hides the same misfiling): only passed and deselected.
    found = SUMMARY.match(lines[-1])
    assert found, lines[-1]
    assert int(found.group(1)) > 0
    assert int(found.group(2)) > 0
