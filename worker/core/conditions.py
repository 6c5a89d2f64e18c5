"""Conditions that repeat until something changes (a partition that cannot be
fetched, a dead letter that cannot be published, ...), reported once.

A condition is raised by key every time it is seen, but logged only when it
starts and when it clears; while it lasts, `/readyz` shows its reason (when
it makes the replica unready) and `persister_conditions{kind}` counts it.
"""

from __future__ import annotations

import logging

from worker.core import metrics

logger = logging.getLogger(__name__)


class Conditions:
    """The conditions of one component; `kind` labels its metric series."""

    def __init__(self, kind: str, unready: bool = True) -> None:
        self.kind = kind
        self.unready = unready
        self._active: dict[str, str] = {}
        metrics.conditions.labels(kind).set(0)

    def __contains__(self, key: str) -> bool:
        return key in self._active

    def raise_(self, key: str, reason: str, level: int = logging.ERROR) -> bool:
        """Report `reason` for `key`; logged only if it is new or changed.
        True if it was logged."""
        if self._active.get(key) == reason:
            return False
        self._active[key] = reason
        logger.log(level, "%s", reason)
        self._publish()
        return True

    def clear(self, key: str, resolved: str | None = None) -> bool:
        """End the condition `key`, logging `resolved` if it was active."""
        if self._active.pop(key, None) is None:
            return False
        if resolved:
            logger.info("%s", resolved)
        self._publish()
        return True

    def clear_where(self, prefix: str) -> None:
        """End, silently, every condition whose key starts with `prefix`
        (e.g. a partition that was revoked)."""
        for key in [k for k in self._active if k.startswith(prefix)]:
            del self._active[key]
        self._publish()

    def _publish(self) -> None:
        metrics.conditions.labels(self.kind).set(len(self._active))
        if self.unready:
            prefix = f"{self.kind}:"
            for key in [k for k in metrics.readiness.conditions if k.startswith(prefix)]:
                del metrics.readiness.conditions[key]
            for key, reason in self._active.items():
                metrics.readiness.conditions[prefix + key] = reason
