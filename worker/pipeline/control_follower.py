"""A worker following its group's partition controls (`worker.pipeline.controls`):
which of its partitions an operator paused, and which to reload because a
replay moved their stored offset under it."""

from __future__ import annotations

import logging
from collections.abc import Container

from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core import metrics
from worker.core.topic_partition import TP
from worker.pipeline.batching import Accumulator
from worker.pipeline.controls import ControlWatcher
from worker.pipeline.partition_state import Owned

logger = logging.getLogger(__name__)


class ControlFollower:
    def __init__(self, engine: AsyncEngine, group: str, accumulator: Accumulator) -> None:
        self.watcher = ControlWatcher(engine, group)
        self.accumulator = accumulator
        # Partitions whose stored offset an operator moved: reloaded as soon
        # as no write of theirs is in flight.
        self._reload: set[TP] = set()
        self._reloaded: set[TP] = set()

    async def follow(self, owned: dict[TP, Owned], writing: Container[TP]) -> None:
        """Mark for reloading (not ready: sought again to the stored offset)
        the partitions whose offset was moved, once none of their writes is
        in flight (`writing`, or its lock held)."""
        self._reload |= set(await self.watcher.refresh())
        for tp in sorted(self._reload):
            state = owned.get(tp)
            if state is None:
                self._reload.discard(tp)
            elif tp not in writing and not state.lock.locked():
                self._reload.discard(tp)
                if state.ready:
                    logger.info("%s[%d]: stored offset moved by an operator; reloading", *tp)
                    state.ready, state.retry_at = False, 0.0
                    self.accumulator.reset(tp, None)
                    self._reloaded.add(tp)

    def reloaded(self, tp: TP) -> bool:
        """True once `tp` is positioned again at an offset an operator set:
        Kafka's committed offset should follow it."""
        if tp in self._reloaded:
            self._reloaded.discard(tp)
            return True
        return False

    def held_back(self, owned: dict[TP, Owned]) -> set[TP]:
        """The owned partitions an operator paused."""
        paused = self.watcher.paused(owned)
        metrics.operator_paused.set(len(paused))
        return paused
