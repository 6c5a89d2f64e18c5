"""The results as a table on the terminal, as JSON, and as a bar chart."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.devtools.bench.latency import UNDER_COUNT
from worker.devtools.bench.results import IndexCost, Results
from worker.devtools.bench.startup import startup_line
from worker.devtools.bench.targets import targets

log = logging.getLogger(__name__)


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_report(results: Results, console: Console) -> None:
    console.print(
        f"loaded {results.events:,} events ({results.load_bytes / 1e6:,.0f} MB) in "
        f"{results.load_seconds:.1f} s ({results.events / max(results.load_seconds, 1e-9):,.0f}"
        " events/s); not part of any row below"
    )
    table = Table(title=f"{results.events:,} events, {results.machine['nproc']} cores")
    for column in ("measurement", "events", "seconds", "events/s", "events/s\nonce writing"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    table.add_column("peak RSS MiB\n(per replica)", justify="right")
    table.add_column("CPU s / 10k\n(all replicas)", justify="right")
    table.add_column("PostgreSQL\nCPU s / 10k", justify="right")
    table.add_column("how")
    for phase in results.phases:
        rss = " + ".join(_num(m) for m in phase.peak_rss_mib) or "-"
        table.add_row(
            phase.name,
            f"{phase.events:,}",
            f"{phase.seconds:.1f}",
            _num(phase.rate),
            _num(phase.writing_rate),
            rss,
            _num(phase.cpu_s_per_10k, 2),
            _num(phase.server_cpu_s_per_10k, 2),
            phase.note,
        )
    console.print(table)
    ratios = "   ".join(
        f"{name.replace('_', ' ')}: {_num(value, 2)}" for name, value in results.ratios().items()
    )
    console.print(f"ratios (events/s once writing; server CPU per 10k)  {ratios}")
    if results.preloaded:
        console.print(
            f"stored {results.preloaded:,} events in each schema in "
            f"{results.preload_seconds:.0f} s before the rows marked 'stored'"
        )
    if line := startup_line(results):
        console.print(line)
    _print_targets(results, console)
    _print_latencies(results, console)
    _print_index_costs(results.index_costs, console)
    if results.error:
        console.print(f"[red]FAILED[/] the run stopped early: {results.error}")
    failed = [check for check in results.checks if not check.ok]
    for check in failed:
        console.print(f"[red]FAILED[/] {check.what}: expected {check.expected}, got {check.actual}")
    if not failed and not results.error:
        console.print(f"correctness: all {len(results.checks)} checks passed")


def _print_targets(results: Results, console: Console) -> None:
    found = targets(results)
    if not found:
        return
    table = Table(title="targets")
    for column in ("target", "measured", "limit", ""):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target in found:
        limit = f"{'>=' if target.at_least else '<='} {target.limit:g}"
        table.add_row(target.what, f"{target.value:,.2f}", limit, "met" if target.met else "MISSED")
    console.print(table)


def _print_latencies(results: Results, console: Console) -> None:
    table = Table(title="end-to-end latency, worker with 1 replica")
    for column in ("load", "rows", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "load" else "right")
    table.add_column("note")
    for latency in results.latencies:
        table.add_row(
            latency.name,
            f"{latency.rows:,}",
            _num(latency.p50_ms, 1),
            _num(latency.p99_ms, 1),
            latency.note,
        )
    console.print(table)
    console.print(f"note: {UNDER_COUNT}")


def _print_index_costs(costs: list[IndexCost], console: Console) -> None:
    if not costs:
        return
    table = Table(title=f"index costs: COPY of {costs[0].events:,} events into empty tables")
    for column in ("indexes", "events/s", "vs all indexes", "share of write time"):
        table.add_column(column, justify="left" if column == "indexes" else "right")
    base = costs[0]
    for cost in costs:
        share = 1 - cost.seconds / base.seconds if base.seconds else 0.0
        table.add_row(
            cost.config,
            _num(cost.rate),
            f"{cost.rate / base.rate:.2f}x" if base.rate else "-",
            "-" if cost is base else f"{share:.0%}",
        )
    console.print(table)


def as_json(results: Results) -> dict[str, Any]:
    base = results.index_costs[0] if results.index_costs else None
    return {
        "events": results.events,
        "started": results.started,
        "finished": results.finished,
        "total_seconds": round(results.total_seconds, 1),
        "machine": results.machine,
        "load": {
            "seconds": round(results.load_seconds, 3),
            "bytes": results.load_bytes,
            "events_per_s": round(results.events / max(results.load_seconds, 1e-9), 1),
        },
        "measurements": [phase.as_json() for phase in results.phases],
        "ratios": {k: None if v is None else round(v, 3) for k, v in results.ratios().items()},
        "preloaded": {"events": results.preloaded, "seconds": round(results.preload_seconds, 1)},
        "targets": [target.as_json() for target in targets(results)],
        "latency": [latency.as_json() for latency in results.latencies],
        "latency_note": UNDER_COUNT,
        "index_costs": [
            {
                "config": cost.config,
                "dropped": list(cost.dropped),
                "events": cost.events,
                "seconds": round(cost.seconds, 3),
                "events_per_s": round(cost.rate, 1),
                "share_of_write_time": (
                    round(1 - cost.seconds / base.seconds, 3) if base and base.seconds else None
                ),
            }
            for cost in results.index_costs
        ],
        "correct": results.correct,
        "error": results.error or None,
        "checks": [
            {"what": c.what, "expected": c.expected, "actual": c.actual, "ok": c.ok}
            for c in results.checks
        ],
    }


def write_json(results: Results, out_dir: Path) -> Path:
    path = out_dir / "bench.json"
    path.write_text(json.dumps(as_json(results), indent=2) + "\n")
    return path


def write_chart(results: Results, out_dir: Path) -> Path | None:
    """A bar chart of events/s; None when matplotlib (the `bench` extra) is missing."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        log.warning("matplotlib is not installed (the bench extra); no chart written")
        return None
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), height_ratios=(5, 7))
    title = f"events/s, {results.events:,} events of ~1 KB, {results.machine['nproc']} cores"
    phases = results.phases
    _bars(top, title, [p.name for p in phases], [p.rate for p in phases], "tab:blue")
    costs = results.index_costs
    title = "COPY events/s by the secondary indexes present"
    _bars(bottom, title, [c.config for c in costs], [c.rate for c in costs], "tab:gray")
    figure.tight_layout()
    path = out_dir / "bench.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _bars(axes: Any, title: str, labels: list[str], values: list[float], color: str) -> None:
    bars = axes.barh(labels, values, color=color)
    axes.bar_label(bars, fmt="{:,.0f}", padding=3, fontsize=8)
    axes.set_title(title)
    axes.set_xlabel("events/s")
    axes.invert_yaxis()
    axes.margins(x=0.15)
