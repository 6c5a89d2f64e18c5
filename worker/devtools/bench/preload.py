"""Tables that already hold events: rows made by the server itself
(generate_series), in the shape of the benchmark's events (~1 KB, 0-3
related resources, random ids), `occurred` spread evenly over a time range
in insertion order, as they would arrive."""

from __future__ import annotations

import logging
import time
from datetime import datetime

from worker.devtools.bench import db

log = logging.getLogger(__name__)

CHUNK_EVENTS = 200_000
# As the dataset's: a ~609-byte note makes the event ~1 KB.
NOTE_BYTES = 609

# $1 first occurred, $2 step between events, $3 index of the first one, $4 count.
_SQL = """
WITH src AS (
    SELECT g, gen_random_uuid() AS id,
           $1::timestamptz + (g + random()) * $2::interval AS occurred,
           'prefect.flow-run.' || gen_random_uuid() AS rid
    FROM generate_series($3::bigint, $3::bigint + $4::bigint - 1) AS g
), ev AS (
    INSERT INTO {schema}.events (id, occurred, event, resource_id, resource,
                                 related_resource_ids, related, payload, received)
    SELECT s.id, s.occurred,
           CASE WHEN s.g % 2 = 0 THEN 'prefect.flow-run.Running'
                ELSE 'prefect.flow-run.Completed' END,
           s.rid,
           jsonb_build_object('prefect.resource.id', s.rid,
                              'prefect.resource.name', 'run-' || (s.g % 1000000)),
           r.ids, r.related,
           jsonb_build_object('note', repeat('x', {note}), 'attempt', 1 + s.g % 5),
           s.occurred
    FROM src AS s
    CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_agg(x.rel_id ORDER BY x.i), '[]') AS ids,
               coalesce(jsonb_agg(jsonb_build_object('prefect.resource.id', x.rel_id,
                                                     'prefect.resource.role', x.role)
                                  ORDER BY x.i), '[]') AS related
        FROM (SELECT i, (ARRAY['flow', 'deployment', 'tag'])[i % 3 + 1] AS role,
                     'prefect.tag.t' || i || '-' || (hashint8(s.g * 4 + i) & 63) AS rel_id
              FROM generate_series(0, (s.g * 7919) % 4 - 1) AS i) AS x
    ) AS r
    RETURNING id, occurred, resource_id, resource, related
)
INSERT INTO {schema}.event_resources (event_id, resource_role, resource_id, occurred, resource)
SELECT id, '', resource_id, occurred, resource - 'prefect.resource.id' FROM ev
UNION ALL
SELECT ev.id, x ->> 'prefect.resource.role', x ->> 'prefect.resource.id', ev.occurred, '{{}}'
FROM ev CROSS JOIN LATERAL jsonb_array_elements(ev.related) AS x
"""


async def preload(
    conn: db.Connection, schema: str, events: int, start: datetime, end: datetime
) -> float:
    """`events` events with `occurred` spread over [start, end), in
    transactions of CHUNK_EVENTS; the seconds it took."""
    sql = _SQL.format(schema=schema, note=NOTE_BYTES)
    step = (end - start) / max(events, 1)
    started = time.monotonic()
    for first in range(0, events, CHUNK_EVENTS):
        count = min(CHUNK_EVENTS, events - first)
        await conn.execute(sql, start, step, first, count)
        log.info("preload %s: %d of %d events", schema, first + count, events)
    await conn.execute("CHECKPOINT")
    return time.monotonic() - started
