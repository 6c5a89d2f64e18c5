"""A network that goes silent: packets dropped, connections left open, no
reset. Two real `persister run` replicas read through proxies of a stack of
their own (`LocalStack(proxy=True)`), which freeze the network to PostgreSQL
or to Kafka mid-run; during each silence one replica gets SIGTERM.

Each scenario checks what an operator sees: a WARNING naming the stall
within PERSISTER_STALL_WARN_S + 5 s of the freeze, `/readyz` 503 (naming the
stall) within 2 s of that warning and every probe answered within 1 s while
the network is silent, the signalled replica gone within its grace, and rows
growing within 10 s of the heal. It ends with exact counts: every event
once, every bad message dead-lettered once, the stored offsets at the end
offsets. The operator-facing checks are collected and reported together
after the counts, so one run shows every broken promise at once.

And a shell user's `persister stack net freeze|heal postgres` does that to
the same stack.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.migrate import upgrade
from schemas.tables import events
from tests.integration.conftest import emptied, partitions_ahead
from tests.integration.silence import Prober, first_line, happens, last_line, metrics_port
from tests.integration.support import count, create_topic, end_offsets, send, unique, wait_until
from tests.integration.test_faults import (
    Position,
    assert_exact,
    chunked,
    no_crashes,
    progressed,
    send_paced,
    tally,
    wait_ready,
    wait_stored,
)
from tests.integration.workers import WorkerPool, worker_env
from worker.devtools.loadgen import messages
from worker.devtools.stack import LocalStack

pytestmark = pytest.mark.faults

STALL_WARN_S = 5.0
SHUTDOWN_GRACE_S = 10.0
# From SIGTERM to the process being gone, beyond the grace: closing the
# database pool and the Kafka clients, the interpreter's own shutdown, on a
# loaded two-core machine.
EXIT_MARGIN_S = 3.0
WARN_WITHIN_S = STALL_WARN_S + 5.0
READYZ_AFTER_WARNING_S = 2.0
READYZ_ANSWER_S = 1.0
PROGRESS_AFTER_HEAL_S = 10.0
MESSAGES = 25_000
INVALID_EVERY = 500  # 50 bad messages, one of each kind ten times
PARTITIONS = 4


@pytest.fixture(scope="module")
def proxied_stack() -> Iterator[LocalStack]:
    """A stack whose Kafka and PostgreSQL clients go through proxies; the
    session's stack stays as it is."""
    with tempfile.TemporaryDirectory(prefix="persister-silent-") as tmp:
        stack = LocalStack(Path(tmp), proxy=True)
        try:
            stack.start()
            stack.save()  # for `persister stack net --state-dir`
            upgrade(stack.info.database_url)
            asyncio.run(partitions_ahead(stack.info.database_url))
            yield stack
        finally:
            stack.stop()


@pytest.fixture
async def direct_engine(proxied_stack: LocalStack) -> AsyncIterator[AsyncEngine]:
    """The database itself, not through its proxy, so the test can count
    while the workers' network to it is frozen; emptied before each test."""
    engine = await emptied(proxied_stack.info.direct_database_url)
    yield engine
    await engine.dispose()


@dataclass
class Silence:
    """One scenario: which network goes silent, for how long, how it ends."""

    service: str  # "postgres" or "kafka"
    seconds: float
    ends_by: str  # "heal" or "reset"
    seed: int
    broken: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.broken.append(what)

    def __str__(self) -> str:
        return f"{self.service} silent {self.seconds:.0f}s, then {self.ends_by}"


async def run_silence(
    stack: LocalStack, engine: AsyncEngine, tmp_path: Path, silence: Silence
) -> None:
    info = stack.info
    topic = unique(f"silent-{silence.service}")
    group = f"group-{topic}"
    await create_topic(info, topic, PARTITIONS)
    values = list(messages(MESSAGES, seed=silence.seed, invalid_every=INVALID_EVERY))
    first, rest = values[: MESSAGES * 2 // 3], values[MESSAGES * 2 // 3 :]
    positions: list[Position] = await send(info, topic, first)
    env = worker_env(
        info, topic, group, shutdown_grace_s=SHUTDOWN_GRACE_S, stall_warn_s=str(STALL_WARN_S)
    )

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(2)
        await wait_ready(pool, [0, 1], 60)
        ports = {i: metrics_port(pool, i) for i in (0, 1)}
        assert None not in ports.values(), pool.tail()
        prober = Prober({i: p for i, p in ports.items() if p is not None})
        await wait_until(progressed(engine, group, topic), 60, "the first stored offsets", 0.02)

        watching = asyncio.create_task(prober.run())
        try:
            healed_at = await silent_period(
                stack, engine, pool, prober, silence, topic, rest, positions
            )
        finally:
            prober.stop()
            await watching

        pool.restart(1)
        ends = await end_offsets(info, topic, PARTITIONS)
        assert sum(ends.values()) == len(values)
        await wait_stored(engine, group, topic, ends, 180, pool.tail)
        after = time.monotonic() - healed_at
        silence.seen.append(f"caught up {after:.1f}s after the {silence.ends_by}")
        print(f"\n{silence}: " + "; ".join(silence.seen))
        no_crashes(pool)
        await wait_ready(pool, [0, 1], 60)
        codes = await asyncio.to_thread(pool.stop_all)
        assert codes == [0, 0], f"exit codes after the scenario\n{pool.tail()}"

    expected = tally(values, positions)
    assert expected.dead_letters == MESSAGES // INVALID_EVERY
    await assert_exact(engine, group, topic, expected, ends)
    assert not silence.broken, "\n".join(silence.broken) + "\n" + pool.tail(40)


async def silent_period(
    stack: LocalStack,
    engine: AsyncEngine,
    pool: WorkerPool,
    prober: Prober,
    silence: Silence,
    topic: str,
    rest: Sequence[bytes | None],
    positions: list[Position],
) -> float:
    """Freeze, watch, SIGTERM replica 1, end the silence; when it ended (monotonic)."""
    frozen_wall, frozen_at = time.time(), time.monotonic()
    await asyncio.to_thread(stack.freeze, silence.service)
    # The rest of the records: while PostgreSQL is silent (Kafka answers), or
    # once Kafka answers again.
    chunks = chunked(rest, 1000)
    producer = None
    if silence.service == "postgres":
        producer = asyncio.create_task(send_paced(stack.info, topic, chunks, 0.5, positions))
    await warned_and_unready(pool, prober, silence, frozen_wall)
    await sigterm_one(pool, prober, silence)

    await asyncio.sleep(max(0.0, frozen_at + silence.seconds - time.monotonic()))  # the silence
    silent_until = time.time()
    slow = prober.unanswered(frozen_wall, silent_until, READYZ_ANSWER_S)
    silence.check(not slow, f"/readyz answered late or not at all during the silence: {slow[:5]}")
    answered = [p.took for p in prober.probes if frozen_wall <= p.started <= silent_until]
    silence.seen.append(f"{len(answered)} /readyz probes, slowest {max(answered, default=0):.2f}s")
    rows = await count(engine, events)
    await asyncio.to_thread(getattr(stack, silence.ends_by), silence.service)
    healed_at = time.monotonic()
    if producer is None:
        producer = asyncio.create_task(send_paced(stack.info, topic, chunks, 0.5, positions))

    async def grew() -> bool:
        return await count(engine, events) > rows

    progress = await happens(grew, PROGRESS_AFTER_HEAL_S, 0.1)
    silence.seen.append(
        f"rows grew {time.monotonic() - healed_at:.1f}s after the {silence.ends_by}"
    )
    silence.check(progress, f"no new rows within {PROGRESS_AFTER_HEAL_S}s of the {silence.ends_by}")
    await producer
    return healed_at


async def warned_and_unready(
    pool: WorkerPool, prober: Prober, silence: Silence, frozen_wall: float
) -> None:
    """A WARNING naming the stall, then /readyz 503 on that replica."""
    needles = (" WARNING ", "stalled")

    async def warned() -> bool:
        return first_line(pool, needles, frozen_wall)[0] >= 0

    if not await happens(warned, WARN_WITHIN_S + 1, 0.1):
        silence.check(False, f"no WARNING with 'stalled' within {WARN_WITHIN_S}s of the freeze")
        return
    slot, warned_at, line = first_line(pool, needles, frozen_wall)
    after = warned_at - frozen_wall
    silence.seen.append(f"stall WARNING {after:.1f}s after the freeze (worker {slot})")
    silence.check(
        after <= WARN_WITHIN_S, f"the stall warning came {after:.1f}s after the freeze: {line}"
    )

    async def unready() -> bool:
        return prober.first_stalled(slot, warned_at) is not None

    await happens(unready, READYZ_AFTER_WARNING_S + 1, 0.05)
    first = prober.first_stalled(slot, warned_at)
    if first is not None:
        silence.seen.append(f"/readyz 503 'stalled' {first.answered - warned_at:.1f}s after it")
    late = first is None or first.answered > warned_at + READYZ_AFTER_WARNING_S
    silence.check(
        not late,
        f"worker {slot}: /readyz not 503 'stalled' within {READYZ_AFTER_WARNING_S}s"
        f" of its warning ({first})",
    )


async def sigterm_one(pool: WorkerPool, prober: Prober, silence: Silence) -> None:
    """SIGTERM replica 1: gone within the grace; exit 0, or 4 saying what it abandoned."""
    prober.forget(1)
    signalled = time.monotonic()
    code = await asyncio.to_thread(pool.terminate, 1, SHUTDOWN_GRACE_S + 30)
    took = time.monotonic() - signalled
    silence.seen.append(f"replica 1 exited {code} {took:.1f}s after SIGTERM")
    silence.check(
        took < SHUTDOWN_GRACE_S + EXIT_MARGIN_S,
        f"replica 1 took {took:.1f}s to exit after SIGTERM (grace {SHUTDOWN_GRACE_S}s)",
    )
    last = last_line(pool, 1)
    silence.check(
        code == 0 or (code == 4 and "abandoned" in last),
        f"replica 1 exited {code} after SIGTERM; its last line: {last}",
    )


def stack_net(stack: LocalStack, action: str, service: str) -> str:
    """`persister stack net <action> <service>`, as a shell user runs it; its output."""
    command = [sys.executable, "-m", "worker", "stack", "net", action, service]
    done = subprocess.run(
        [*command, "--state-dir", str(stack.state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def select_one(url: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=2)
    try:
        return int(await conn.fetchval("SELECT 1", timeout=2))
    finally:
        await conn.close()


async def test_a_shell_user_freezes_and_heals_the_network_to_postgres(
    proxied_stack: LocalStack,
) -> None:
    info = proxied_stack.info
    assert await select_one(info.database_url) == 1
    frozen = await asyncio.to_thread(stack_net, proxied_stack, "freeze", "postgres")
    assert frozen.startswith("postgres: frozen "), frozen
    try:
        with pytest.raises(TimeoutError):  # no answer, no error: silence
            await select_one(info.database_url)
        assert await select_one(info.direct_database_url) == 1
    finally:
        healed = await asyncio.to_thread(stack_net, proxied_stack, "heal", "postgres")
    assert healed.startswith("postgres: flowing "), healed
    assert await select_one(info.database_url) == 1


async def test_postgres_silent_for_a_minute_then_healed(
    proxied_stack: LocalStack, direct_engine: AsyncEngine, tmp_path: Path
) -> None:
    silence = Silence("postgres", 60.0, "heal", seed=601)
    await run_silence(proxied_stack, direct_engine, tmp_path, silence)


async def test_postgres_silent_then_its_connections_reset(
    proxied_stack: LocalStack, direct_engine: AsyncEngine, tmp_path: Path
) -> None:
    silence = Silence("postgres", 25.0, "reset", seed=602)
    await run_silence(proxied_stack, direct_engine, tmp_path, silence)


async def test_kafka_silent_for_a_minute_then_healed(
    proxied_stack: LocalStack, direct_engine: AsyncEngine, tmp_path: Path
) -> None:
    silence = Silence("kafka", 60.0, "heal", seed=603)
    await run_silence(proxied_stack, direct_engine, tmp_path, silence)
