"""The demo's summary is one line whatever the width: a pipe or a file has no
terminal width to wrap it at."""

from __future__ import annotations

import pytest

from worker.devtools import demo


def test_the_summary_is_one_line_on_a_narrow_console(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo.console, "width", 60)
    counts = {"events": 99_990, "event_resources": 199_980, "dead_letters": 10}
    demo.report([(0, 25_000, 25_000), (1, 24_990, 25_000)], counts, 12.34)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (
        "99990 events, 199980 resource rows, 10 dead letters; produced and persisted in 12.3 s"
    )
    assert lines[0].strip() == "group 'event-persister' on topic 'events'"
    assert "│         1 │         24990 │      25000 │  10 │" in lines
