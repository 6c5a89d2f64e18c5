"""The soak's end-to-end latency report: the run's histogram from its
windows, and the metric's figures beside the database's."""

from __future__ import annotations

from tests.soak.latency import Latency, from_metric, lines
from tests.soak.probes import accumulate, window

INF = float("inf")


def test_the_windows_add_up_to_the_run() -> None:
    run: dict[float, float] = {}
    # One worker scraped three times, restarted before the third scrape.
    scrapes = [{0.1: 4.0, 1.0: 9.0, INF: 10.0}, {0.1: 6.0, 1.0: 15.0, INF: 18.0}]
    scrapes.append({0.1: 1.0, 1.0: 2.0, INF: 2.0})
    previous: dict[float, float] = {}
    for now in scrapes:
        accumulate(run, window(previous, now))
        previous = now
    assert run == {0.1: 7.0, 1.0: 17.0, INF: 20.0}


def test_the_metric_figures_are_prometheus_quantiles_of_the_run() -> None:
    # 100 events: 50 up to 0.1 s, 49 more up to 1 s, one beyond.
    assert from_metric({0.1: 50.0, 1.0: 99.0, INF: 100.0}) == (100, 0.1, 1.0)
    assert from_metric({}) == (0, None, None)


def test_the_report_puts_metric_and_database_side_by_side() -> None:
    latency = Latency(1_000_000, 0.25, 1.1, 499_500, 0.2, 1.0)
    assert lines(latency) == [
        "end-to-end latency, whole run: metric p50 0.250 s, p99 1.100 s (1,000,000 events)",
        "  database (commit - received): p50 0.200 s, p99 1.000 s (499,500 recent events)",
        "  metric / database: p50 1.25, p99 1.10",
    ]
    nothing = Latency(0, None, None, 0, None, None)
    assert lines(nothing)[2] == "  metric / database: p50 -, p99 -"
