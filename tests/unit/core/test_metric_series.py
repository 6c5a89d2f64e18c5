"""What /metrics shows before anything happened: process metrics, build info,
and every labelled series whose labels are known, at 0."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker import __version__
from worker.core import metrics


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_process_metrics_and_build_info() -> None:
    found = samples()
    names = {name for name, _ in found}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert name in names
    builds = [labels for name, labels in found if name == "persister_build_info"]
    assert len(builds) == 1 and ("version", __version__) in builds[0]


def test_known_labels_start_at_zero() -> None:
    found = samples()
    for error_class in ("InvalidJson", "InvalidEnvelope", "MessageTooLarge", "Tombstone"):
        assert (("error_class", error_class),) in {
            labels for name, labels in found if name == "persister_dead_letters_total"
        }
    for table in ("events", "event_resources"):
        assert ("persister_trimmed_rows_total", (("table", table),)) in found
    for reason in ("past_end", "before_start"):
        assert ("persister_offset_resets_total", (("reason", reason),)) in found
