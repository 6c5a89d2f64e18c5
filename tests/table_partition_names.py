"""Which tables are table partitions, by the names `schemas.table_partitions`
gives them: a schema comparison leaves them out, as tables of the parents."""

from __future__ import annotations

import re

PARTITION_NAME = re.compile(r"^(events|event_resources)_(p\d{8}_\d{4}(_expired)?|default)$")


def is_partition(name: str) -> bool:
    """A partition's name (not a table of the schema's own)."""
    return PARTITION_NAME.match(name) is not None
