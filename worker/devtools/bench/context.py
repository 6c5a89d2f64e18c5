"""What every phase of a run needs: the stack, the topics and the events loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.devtools.bench.dataset import Dataset
from worker.devtools.stack import StackInfo

PARTITIONS = 8


@dataclass(frozen=True)
class Bench:
    info: StackInfo
    dataset: Dataset
    # The loaded topic, and its end offsets by partition.
    topic: str
    ends: dict[int, int]
    # Empty until the latency phase sends fresh events to it, so the loaded
    # topic stays exactly the dataset for every run.
    latency_topic: str
    log_dir: Path

    @property
    def size(self) -> int:
        return self.dataset.size

    @property
    def catch_up_timeout_s(self) -> float:
        # Far beyond any plausible rate, but a hung worker still fails the run.
        return 60.0 + self.size / 500
