"""`make install` (so `make test` and `make demo`) on a machine that lacks a
prerequisite stops within seconds, before making anything, with one line for
the missing tool saying how to get it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from worker.devtools.prerequisites import PG_BINARIES, PROMTOOL_MISSING, pg_bin

ROOT = Path(__file__).parents[2]
STOPS_WITHIN_S = 30.0


def base_python() -> Path:
    """The interpreter the venv was made from: what `make install` starts from."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return Path(sys.base_prefix) / "bin" / version


def test_make_install_without_promtool_stops_at_once_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.mkdir()
    found = {name: shutil.which(name) for name in ("make", "java")}
    found |= {name: pg_bin(name) for name in PG_BINARIES}
    for name, where in found.items():
        assert where is not None, name
        (path / name).symlink_to(where)
    venv = tmp_path / "venv"
    started = time.monotonic()
    done = subprocess.run(
        ["make", "install", f"PYTHON={base_python()}", f"VENV={venv}"],
        cwd=ROOT,
        env={"PATH": str(path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=STOPS_WITHIN_S * 2,
        check=False,
    )
    took_s = time.monotonic() - started

    assert done.returncode != 0
    assert took_s < STOPS_WITHIN_S
    lines = done.stderr.splitlines()
    assert lines[0] == PROMTOOL_MISSING, done.stderr
    # The rest is make's own word that the target failed.
    assert [line for line in lines[1:] if not line.startswith("make: ***")] == []
    assert not venv.exists()
