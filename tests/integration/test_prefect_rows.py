"""The worker's rows are Prefect's own, column for column, on 10,000 generated
events; and the messages it dead-letters are ones Prefect refuses too, but for
the forms listed in APART.

The same bytes go through the worker's decoding (`to_rows`, one batch) and,
in the pinned Prefect's venv (tests/prefect_side/prefect_rows.py, one
subprocess), through Prefect's `ReceivedEvent` / `Event` as its own services
read them, to `as_database_row()` and `as_database_resource_rows()`. An event
without `received` is received, on both sides, at its record's timestamp. The
events are described in tests/integration/event_forms.py, the refused forms in
event_refusals.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from base64 import b64encode
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.integration.event_forms import FORMS, Case, valid_cases
from tests.integration.event_refusals import TIMES, refusal_cases
from tests.integration.test_prefect_readback import PINNED
from tests.records import Msg
from worker.core.settings import Limits, Settings
from worker.devtools.prefect_server import PREFECT_BIN
from worker.pipeline.decoding import (
    EVENT_FIELDS,
    JSON_COLUMNS,
    RESOURCE_FIELDS,
    Rejection,
    Row,
    event_key,
    to_rows,
)
from worker.pipeline.inserts import EVENT_COLUMNS, RESOURCE_COLUMNS

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "tests" / "prefect_side" / "prefect_rows.py"
PREFECT_PYTHON = PREFECT_BIN.with_name("python")
N_VALID = 10_000
MAX_MESSAGE_BYTES: int = Settings.model_fields["max_message_bytes"].default
TIMESTAMPS = {"occurred", "received"}
UUIDS = {"id", "follows", "event_id"}
# `recorded` is the time of the write, not a function of the event: Prefect's
# `as_database_row()` reads the clock per event, the worker stamps it once per
# batch when it inserts (inserts.py `_stamp`), so `to_rows` has none. The
# resource rows' `id` and both tables' `created` and `updated` are the
# database's defaults: neither side's rows hold them.
WRITE_TIME = {"recorded"}

# The forms one side takes and the other refuses: (worker takes, Prefect takes).
APART = {
    # Prefect's datetime falls back to pendulum's parser, which reads more of
    # ISO 8601 than pydantic (the envelope's rules): the worker dead-letters
    # these, Prefect stores them.
    "occurred offset hours only": (False, True),
    "occurred hour only": (False, True),
    "occurred basic format": (False, True),
    "occurred week date": (False, True),
    "occurred ordinal date": (False, True),
    # Prefect keeps the offset; the worker converts to UTC, out of range.
    "occurred before year 1 in UTC": (False, True),
    "occurred after year 9999 in UTC": (False, True),
    # Prefect's persister (`ReceivedEvent`) refuses a null `received`; the
    # worker reads it as absent and stamps the record's time.
    "received null": (True, False),
    # Prefect reads NaN and Infinity as floats (its write then fails: they
    # are not JSON); the worker dead-letters them as invalid JSON.
    "payload NaN": (False, True),
    "payload Infinity": (False, True),
    "payload -Infinity": (False, True),
    # Prefect's JSON reader stops at 200 levels; the worker's msgspec path
    # near 1,000 (Python's recursion limit, less the caller's stack), its
    # pydantic path at 200: "payload 200 deep, id in braces" is refused by both.
    "payload 200 deep": (True, False),
    "payload 500 deep": (True, False),
    # Prefect's `Event` sets no minimum length on the name.
    "event empty": (False, True),
    # Bounds the worker adds, in UTF-8 bytes, for its indexes (schemas/limits.py).
    "event 2049 bytes": (False, True),
    "resource id 1025 bytes": (False, True),
    "related role 257 bytes": (False, True),
    "related id 1025 bytes": (False, True),
}

# What the generated events show, each in some of them (see Case.kind).
SHOWN = {
    *(
        f"{field} {form} {digits} digits"
        for field in TIMESTAMPS
        for form in FORMS
        if form != "epoch"
        for digits in (0, 3, 6, 7, 12)
    ),
    *(
        f"{field} {form}"
        for field in TIMESTAMPS
        for form in [
            "date only",
            "Z minutes",
            "naive minutes",
            "epoch seconds",
            "epoch fraction",
            "epoch ms",
            "epoch ms fraction",
            "epoch text",
        ]
    ),
    "received absent",
    *(f"follows {state}" for state in ["absent", "null", "set"]),
    *(f"{n} related" for n in [0, 1, 2, 50]),
    *(f"payload {kind}" for kind in ["absent", "empty", "raw text", "deep", "large", "small"]),
}

Ours = tuple[Row, list[Row]] | Rejection
# An event's rows, "table.column" -> value (see `rows_of`).
Flat = dict[str, Any]


def start_prefect(tmp_path: Path) -> subprocess.Popen[str]:
    """Prefect's side, one run of its venv's python: it imports Prefect, then
    reads the records (`send`). Its output goes to a file: nothing reads a
    pipe while the worker's side runs."""
    assert PREFECT_PYTHON.exists(), f"{PREFECT_PYTHON} is missing: run `make prefect-venv`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    with (tmp_path / "prefect.log").open("w") as log:
        return subprocess.Popen(
            [str(PREFECT_PYTHON), str(SCRIPT), str(tmp_path / "rows.json")],
            env=env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def send(run: subprocess.Popen[str], cases: Sequence[Case]) -> None:
    assert run.stdin is not None
    records = [{"value": b64encode(c.value).decode(), "timestamp": c.timestamp} for c in cases]
    try:
        with run.stdin:
            json.dump(records, run.stdin)
    except BrokenPipeError:
        pass  # Prefect's side ended early: its exit status and log say why


def prefect_results(run: subprocess.Popen[str], tmp_path: Path, n: int) -> list[dict[str, Any]]:
    """Prefect's rows, or why it refused, for every case."""
    run.wait(timeout=300)
    assert run.returncode == 0, (tmp_path / "prefect.log").read_text()
    result = json.loads((tmp_path / "rows.json").read_text())
    assert result["prefect"] == PINNED
    results: list[dict[str, Any]] = result["results"]
    assert len(results) == n
    return results


def our_results(cases: Sequence[Case]) -> list[Ours]:
    """The worker's rows (or rejection) for every case, from one batch."""
    rows = to_rows(
        [Msg("events", 0, i, c.value, timestamp=c.timestamp) for i, c in enumerate(cases)],
        Limits(),
        MAX_MESSAGE_BYTES,
    )
    found: dict[int, Ours] = {r.record.offset: r for r in rows.rejections}
    for row in rows.events:
        key = event_key(row)
        found[rows.sources[key].offset] = (row, rows.resources[key])
    # Every case is a row or a dead letter: no two share an event's key.
    assert sorted(found) == list(range(len(cases)))
    return [found[i] for i in range(len(cases))]


def normal(column: str, value: Any, ours: bool) -> Any:
    """A column's value in one form for both sides: timestamps as UTC text to
    the microsecond, UUIDs as text, JSON columns parsed (the worker's are
    JSON text, Prefect's objects). The event's JSON is then written with
    sorted keys, as JSONB keeps no key order; 1, 1.0 and true stay apart."""
    if value is None:
        return None
    if column in TIMESTAMPS:
        if ours and not (isinstance(value, datetime) and value.utcoffset() is not None):
            return f"not an aware datetime: {value!r}"
        moment = value if ours else datetime.fromisoformat(value)
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    if column in UUIDS:
        return str(value)
    if column in JSON_COLUMNS and ours:
        return json.loads(value)
    return value


def flat(row: dict[str, Any], ours: bool, table: str) -> Flat:
    return {f"{table}.{c}": normal(c, v, ours) for c, v in row.items()}


def first_of_each(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Prefect's resource rows, the first of each (role, id): Prefect writes a
    row each time a (role, id) appears in `related`, the table's key
    (occurred, event_id, resource_role, resource_id) holds one, and the
    worker keeps the first."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        found.setdefault((row["resource_role"], row["resource_id"]), row)
    return found


def named(row: Row, fields: Sequence[str]) -> dict[str, Any]:
    """A row by column: the writer COPYs a row's values to these columns."""
    return dict(zip(fields, row, strict=True))


def rows_of(row: dict[str, Any], resources: list[dict[str, Any]], ours: bool) -> Flat:
    """An event's rows as one flat mapping, "table.column" -> value; resource
    rows by their (role, id), in that order."""
    keys = [(r["resource_role"], r["resource_id"]) for r in resources]
    found = {"event_resources (role, id)": sorted(keys), **flat(row, ours, "events")}
    for key, resource in sorted(zip(keys, resources, strict=True)):
        found |= flat(resource, ours, f"event_resources{list(key)}")
    return found


def ours_by_column(ours: Ours) -> Flat:
    assert not isinstance(ours, Rejection)
    resources = [named(r, RESOURCE_FIELDS) for r in ours[1]]
    return rows_of(named(ours[0], EVENT_FIELDS), resources, True)


def prefect_by_column(prefect: dict[str, Any]) -> Flat:
    row = {k: v for k, v in prefect["row"].items() if k not in WRITE_TIME}
    return rows_of(row, [*first_of_each(prefect["resource_rows"]).values()], False)


def differences(ours: Flat, prefect: Flat) -> list[tuple[str, str, str]]:
    """(column, the worker's value, Prefect's) for each that differs."""
    return [
        (column, mine, theirs)
        for column in [*prefect, *(c for c in ours if c not in prefect)]
        if (mine := text(ours.get(column, "<no such column>")))
        != (theirs := text(prefect.get(column, "<no such column>")))
    ]


def text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def clip(value: str, limit: int = 400) -> str:
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def report(diffs: list[tuple[int, Case, list[tuple[str, str, str]]]], total: int) -> str:
    lines = [f"{total} events differ from Prefect's rows; the first {len(diffs)}:"]
    for index, case, found in diffs:
        lines += [f"#{index} ({case.kind}): {clip(case.value.decode(errors='replace'), 1500)}"]
        lines += [
            f"  {column}:\n    worker:  {clip(a)}\n    Prefect: {clip(b)}" for column, a, b in found
        ]
    return "\n".join(lines)


def takes(ours: Ours, prefect: dict[str, Any]) -> tuple[bool, bool]:
    return not isinstance(ours, Rejection), "error" not in prefect


def test_the_workers_rows_are_prefects_own(tmp_path: Path) -> None:
    # The rows are compared by the columns the writer puts their values in.
    assert ([*EVENT_FIELDS, *WRITE_TIME], [*RESOURCE_FIELDS]) == (EVENT_COLUMNS, RESOURCE_COLUMNS)
    run = start_prefect(tmp_path)
    try:
        # While Prefect starts, then while it works.
        valid, refused = valid_cases(N_VALID), refusal_cases()
        cases = valid + refused
        send(run, cases)
        ours = our_results(cases)
        mine = [None if isinstance(o, Rejection) else ours_by_column(o) for o in ours]
        my_text = [None if m is None else text(m) for m in mine]
        prefect = prefect_results(run, tmp_path, len(cases))
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    outcomes = [takes(o, p) for o, p in zip(ours, prefect, strict=True)]
    shown = {part for case in valid for part in case.kind.split("; ")}
    assert SHOWN - shown == set()

    # Every generated event is taken by both; each refused form has one
    # outcome, on both sides, in all its events.
    assert Counter(outcomes[:N_VALID]) == {(True, True): N_VALID}
    by_form: dict[str, set[tuple[bool, bool]]] = {}
    for case, outcome in zip(refused, outcomes[N_VALID:], strict=True):
        by_form.setdefault(case.kind, set()).add(outcome)
    assert Counter(case.kind for case in refused).most_common(1)[0][1] == TIMES
    forms = {form: found.pop() for form, found in by_form.items() if len(found) == 1}
    assert forms.keys() == by_form.keys(), {f: o for f, o in by_form.items() if f not in forms}
    assert {f: o for f, o in forms.items() if o != (False, False)} == APART
    assert Counter(outcomes[N_VALID:])[(False, False)] == 398

    # Where both take an event, the rows are the same: the whole event is
    # compared at once, column by column only when it differs.
    diffs: list[tuple[int, Case, list[tuple[str, str, str]]]] = []
    total = 0
    for index, (flat_mine, theirs, outcome) in enumerate(zip(mine, prefect, outcomes, strict=True)):
        if outcome != (True, True):
            continue
        assert flat_mine is not None
        flat_theirs = prefect_by_column(theirs)
        if my_text[index] != text(flat_theirs):
            total += 1
            if len(diffs) < 5:
                diffs.append((index, cases[index], differences(flat_mine, flat_theirs)))
    assert total == 0, report(diffs, total)

    # The repeated (role, id) pairs were there, one row each.
    dropped = sum(
        len(p["resource_rows"]) - len(first_of_each(p["resource_rows"])) for p in prefect[:N_VALID]
    )
    assert dropped == sum(c.repeats for c in valid) > 0
