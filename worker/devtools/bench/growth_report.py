"""The growth run as a chart: events/s, bytes per million events and dead
tuples against the events stored, one line per schema."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def series(steps: list[dict[str, Any]], schema: str, key: str) -> tuple[list[float], list[float]]:
    """(millions of events stored, `key`) of `schema`'s steps."""
    rows = [s for s in steps if s["schema"] == schema]
    return [r["events_stored"] / 1e6 for r in rows], [float(r[key]) for r in rows]


def per_million(step: dict[str, Any], key: str) -> float:
    stored = step["events_stored"]
    return step[key] / 1e6 / (stored / 1e6) if stored else 0.0


def write_chart(steps: list[dict[str, Any]], out_dir: Path) -> Path | None:
    """growth.png; None when matplotlib (the `bench` extra) is missing."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        log.warning("matplotlib is not installed (the bench extra); no chart written")
        return None
    rows = [
        s | {"mb_table": per_million(s, "table_bytes"), "mb_index": per_million(s, "index_bytes")}
        for s in steps
    ]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [
        ("events_per_s", "COPY events/s", axes[0][0]),
        ("server_cpu_s_per_10k", "PostgreSQL CPU s per 10k events", axes[0][1]),
        ("mb_table", "table MB per million events (indexes: dashed)", axes[1][0]),
        ("dead_tuples", "dead tuples", axes[1][1]),
    ]
    for schema in sorted({s["schema"] for s in steps}):
        for key, title, ax in panels:
            x, y = series(rows, schema, key)
            (line,) = ax.plot(x, y, label=schema)
            if key == "mb_table":
                x, y = series(rows, schema, "mb_index")
                ax.plot(x, y, linestyle="--", color=line.get_color())
            ax.set_title(title)
            ax.set_xlabel("million events stored")
    axes[0][0].legend()
    figure.tight_layout()
    path = out_dir / "growth.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
