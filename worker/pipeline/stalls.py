"""Waits on the network that have not finished, and the ones gone on too long.

A step (writing a batch, loading stored offsets, committing to Kafka,
fetching) has *begun* for a subject (a partition, the group) until it
*ends* in success: failed attempts and the backoff between them do not end
it, so a partition retrying against a silent database stalls as surely as
one whose write hangs. Once the oldest wait of a step is older than
`warn_s`, one WARNING names the step, the subjects and the wait (the
message says `stalled`), and `/readyz` is 503; when no wait of the step is
that old any more, one INFO line says `stall cleared` and for how long.

Pure state and one `Conditions`: the persister's watchdog calls `check`
every second, so a stall is reported even while the awaits themselves hang.
"""

from __future__ import annotations

import logging

from worker.core.conditions import Conditions

WRITING = "writing a batch"
LOADING = "loading stored offsets"
COMMITTING = "committing offsets to Kafka"
FETCHING = "fetching from Kafka"
READING_CONTROLS = "reading partition controls"
LISTING_TOPICS = "listing topics"


MAX_LISTED = 8


def listed(subjects: list[str]) -> str:
    if len(subjects) <= MAX_LISTED:
        return ", ".join(subjects)
    return f"{', '.join(subjects[:MAX_LISTED])} and {len(subjects) - MAX_LISTED} more"


class Stalls:
    def __init__(self, warn_s: float) -> None:
        self.warn_s = warn_s
        # step -> subject -> monotonic time the unfinished wait began
        self._since: dict[str, dict[str, float]] = {}
        # step -> when its current stall began (reported or not yet)
        self._stalled_at: dict[str, float] = {}
        self.conditions = Conditions("stall")

    def begin(self, step: str, subject: str, now: float) -> None:
        """A wait began, unless one of this step for `subject` is unfinished."""
        self._since.setdefault(step, {}).setdefault(subject, now)

    def end(self, step: str, subject: str, now: float) -> None:
        """The step succeeded for `subject`."""
        if self._since.get(step, {}).pop(subject, None) is not None:
            self._settle(step, now)

    def forget(self, subject: str, now: float) -> None:
        """`subject` is gone (a revoked partition): none of its waits count."""
        for step, waits in self._since.items():
            if waits.pop(subject, None) is not None:
                self._settle(step, now)

    def observe(self, step: str, since: dict[str, float], now: float) -> None:
        """Replace the waits of `step` (one known from elsewhere, such as the
        client library's last fetch answer of each partition)."""
        self._since[step] = dict(since)
        self._settle(step, now)

    def oldest_s(self, step: str, subject: str, now: float) -> float:
        """How long the unfinished wait of `step` for `subject` has lasted (0: none)."""
        began = self._since.get(step, {}).get(subject)
        return 0.0 if began is None else now - began

    def stalled(self, step: str, now: float) -> list[str]:
        return sorted(s for s, t in self._since.get(step, {}).items() if now - t >= self.warn_s)

    def check(self, now: float) -> None:
        """Report every step whose oldest wait is older than `warn_s`."""
        for step in list(self._since):
            self._settle(step, now)

    def _settle(self, step: str, now: float) -> None:
        stalled = self.stalled(step, now)
        if stalled and step not in self.conditions:
            began = min(self._since[step][s] for s in stalled)
            self._stalled_at[step] = began
            self.conditions.raise_(
                step,
                f"{step} stalled for {now - began:.0f} s on {listed(stalled)} "
                f"(PERSISTER_STALL_WARN_S={self.warn_s:g})",
                logging.WARNING,
            )
        elif not stalled and step in self.conditions:
            began = self._stalled_at.pop(step, now)
            self.conditions.clear(step, f"{step}: stall cleared after {now - began:.1f} s")
