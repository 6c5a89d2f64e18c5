"""How `persister status` shows a `Status`: a table, or JSON for scripts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from rich.console import Group
from rich.table import Table
from rich.text import Text

from worker.status import Status


def status_table(status: Status) -> Group:
    table = Table(title=f"group {status.group!r}")
    for column in ("topic", "partition", "stored", "Kafka committed", "end", "lag"):
        table.add_column(column, justify="right")
    table.add_column("last flush")
    for p in status.partitions:
        cells = [p.topic, p.partition, p.stored, p.committed, p.end, p.lag]
        flushed = p.updated.strftime("%Y-%m-%d %H:%M:%S") if p.updated else "-"
        table.add_row(*("-" if v is None else str(v) for v in cells), flushed)
    members = ", ".join(f"{m.client_id}@{m.host}" for m in status.members) or "none"
    leader = f"{status.leader.holder} (epoch {status.leader.epoch})" if status.leader else "nobody"
    summary = Text(
        f"total lag {status.lag}; members ({len(status.members)}): {members}\n"
        f"trimmer leader: {leader}; dead letters: {status.dead_letters}"
    )
    return Group(table, summary)


def status_json(status: Status) -> str:
    document: dict[str, Any] = asdict(status)
    document["lag"] = status.lag
    for row, p in zip(document["partitions"], status.partitions, strict=True):
        row["lag"] = p.lag
    return orjson.dumps(document, default=str, option=orjson.OPT_INDENT_2).decode()
