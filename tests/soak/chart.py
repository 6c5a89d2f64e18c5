"""soak.png: the sampled series over time, with the faults marked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.soak.verdict import Report


def plot(report: Report, path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    samples = report.samples
    minutes = [s.t / 60 for s in samples]
    slots = sorted({slot for s in samples for slot in s.workers})
    figure, axes = plt.subplots(3, 2, figsize=(13, 10), sharex=True)
    per_worker = (("RSS (MiB)", "rss_mib"), ("open fds", "fds"), ("asyncio tasks", "tasks"))
    for ax, (title, field) in zip(axes.flat, per_worker, strict=False):
        for slot in slots:
            values = [_field(s, slot, field) for s in samples]
            ax.plot(minutes, values, label=f"worker {slot}", linewidth=1)
        ax.set_title(title)
        ax.legend(fontsize=7)
    _series(axes.flat[3], minutes, [s.db_connections for s in samples], "database connections")
    _series(axes.flat[4], minutes, [s.lag for s in samples], "lag (records)")
    ax = axes.flat[5]
    ax.plot(minutes, [s.p50_s for s in samples], label="p50", linewidth=1)
    ax.plot(minutes, [s.p99_s for s in samples], label="p99", linewidth=1)
    ax.set_title("end-to-end latency (s)")
    ax.legend(fontsize=7)
    for ax in axes.flat:
        for began, _ended, label in report.faults:
            ax.axvline(began / 60, color="grey", linestyle=":", linewidth=0.8)
            if ax is axes.flat[4]:
                ax.annotate(label, (began / 60, 0), rotation=90, fontsize=6, va="bottom")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    rate = f"{report.rate:.0f} events/s"
    figure.suptitle(f"soak: {report.minutes:.0f} minutes, 3 workers, {rate}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _field(sample: Any, slot: int, field: str) -> float | None:
    worker = sample.workers.get(slot)
    return None if worker is None else getattr(worker, field)


def _series(ax: Any, minutes: list[float], values: list[Any], title: str) -> None:
    ax.plot(minutes, [float("nan") if v is None else v for v in values], linewidth=1)
    ax.set_title(title)
