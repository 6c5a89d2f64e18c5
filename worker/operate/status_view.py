"""How `persister status` shows a `Status`: a table like
`kafka-consumer-groups --describe`, or JSON for scripts."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Group
from rich.table import Table
from rich.text import Text

from worker.operate.status import Status, leader_name


def flush_time(when: datetime | None, now: datetime) -> str:
    """Compact: the time of day for today's, the date for older ones."""
    if when is None:
        return "-"
    when = when.astimezone(UTC)
    return when.strftime("%H:%M:%S" if when.date() == now.date() else "%Y-%m-%d")


def status_table(status: Status) -> Group:
    # The state Kafka gives the group (Stable, Empty, ...), when it gives one.
    state = f" ({status.state})" if status.state else ""
    table = Table(title=f"group {status.group!r}{state}")
    for column in ("topic", "part", "member", "stored", "committed", "end", "lag"):
        table.add_column(column, justify="left" if column in ("topic", "member") else "right")
    table.add_column("last flush (UTC)")
    now = datetime.now(UTC)
    for p in status.partitions:
        member = p.member or "-"
        if p.paused:
            member += " (paused)"
        cells = [p.topic, p.partition, member, p.stored, p.committed, p.end, p.lag]
        flushed = flush_time(p.updated, now)
        table.add_row(*("-" if v is None else str(v) for v in cells), flushed)
    members = ", ".join(m.client_id for m in status.members) or "none"
    leader = (
        f"{leader_name(status.leader.holder)} (epoch {status.leader.epoch})"
        if status.leader
        else "nobody"
    )
    lines = [
        f"total lag {status.lag}; members ({len(status.members)}): {members}",
        f"trimmer leader: {leader}; dead letters: {status.dead_letters}",
    ]
    lines += [f"topic {topic} does not exist" for topic in status.missing_topics]
    return Group(table, Text("\n".join(lines)))


def status_json(status: Status) -> str:
    document: dict[str, Any] = asdict(status)
    document["lag"] = status.lag
    for row, p in zip(document["partitions"], status.partitions, strict=True):
        row["lag"] = p.lag
    for row in document["members"]:
        row["partitions"] = [f"{tp[0]}[{tp[1]}]" for tp in row["partitions"]]
    if status.leader is not None:
        document["leader"]["holder"] = leader_name(status.leader.holder)
    return orjson.dumps(document, default=str, option=orjson.OPT_INDENT_2).decode()
