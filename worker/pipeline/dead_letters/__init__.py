"""The dead-letter sender: it feeds the dead-letter topic from the
`dead_letters` table (the outbox), in the background, one sender task per
source partition this worker owns, through one idempotent producer. Each
partition, once requested, is first checked on the topic (the first attempt
looks there for what a previous owner sent but did not mark, and marks it
instead of sending it again; it stays checked while attempts end sure of what
reached the topic), then sending (each send in flight until the broker
answers; one unanswered by the deadline is awaited again, not repeated, and
rows whose sends the database may have lost, after a fence, are looked for on
the topic first); once revoked it is letting go (its sender hands nothing
more to the producer, and the partition waits until its sends in flight are
answered), then released (what it sent and what is in doubt are forgotten,
and a partition taken again is checked on the topic first). The producer may
be replaced: when the broker refuses a record (a gap in its sequence), when a
send stays unanswered too long, or when a revoked partition's sends are not
answered in time. What the old one held may reach the topic or be dropped, so
its sends in flight are forgotten and every partition is checked on the topic
again before sending."""

from worker.pipeline.dead_letters.records import request_bytes
from worker.pipeline.dead_letters.sender import TOO_LARGE, DeadLetterPublisher

__all__ = ["TOO_LARGE", "DeadLetterPublisher", "request_bytes"]
