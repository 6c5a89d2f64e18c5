"""The Service framework, exercised on a test-local tree of services.

`Service.all_services()` lists the *direct* subclasses of the class it is
called on that are not abstract. The test services hang under `_TestRoot`, an
abstract subclass of `Service` (it leaves `start` abstract), so:

- `Service.all_services()` does not see `_TestRoot` (abstract) nor its
  children (not direct subclasses of `Service`): other tests still see only
  the real services;
- `_TestRoot.running()` / `_TestRoot.run_services()` run exactly the test
  services.

`_TestRoot` decides `enabled` from a class-level table instead of the settings
(the settings only know the real services' names).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from worker.core.settings import Settings
from worker.services.event_persister import EventPersister
from worker.services.metrics_server import MetricsServer
from worker.services.retention_trimmer import RetentionTrimmer
from worker.services.service import Service

TIMEOUT_S = 5.0


class _TestRoot(Service):
    instances: ClassVar[list[_TestRoot]] = []
    switched_off: ClassVar[set[str]] = set()
    # Set by any test service once it runs; made afresh for each test.
    one_started: ClassVar[asyncio.Event] = asyncio.Event()

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.stop_calls = 0
        self.finished = False
        _TestRoot.instances.append(self)

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return cls.name not in _TestRoot.switched_off

    async def stop(self) -> None:
        self.stop_calls += 1
        await super().stop()


class _Idle(_TestRoot):
    """Runs until stopped."""

    name = "idle"

    async def start(self) -> None:
        self.started_event.set()
        _TestRoot.one_started.set()
        await self._stopping.wait()
        self.finished = True


class _Crashes(_TestRoot):
    """Starts, then fails."""

    name = "crashes"

    async def start(self) -> None:
        self.started_event.set()
        raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def fresh_test_services() -> Iterator[None]:
    _TestRoot.instances.clear()
    _TestRoot.switched_off.clear()
    _TestRoot.one_started = asyncio.Event()
    yield
    _TestRoot.instances.clear()
    _TestRoot.switched_off.clear()


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERSISTER_SERVICES__EVENT_PERSISTER__ENABLED", raising=False)
    return Settings(_secrets_dir=tmp_path)


def instance(cls: type[_TestRoot]) -> _TestRoot:
    [found] = [s for s in _TestRoot.instances if type(s) is cls]
    return found


async def started(service: Service) -> None:
    await asyncio.wait_for(service.started_event.wait(), TIMEOUT_S)


# --- discovery -------------------------------------------------------------------


def test_event_persister_variable_name() -> None:
    assert (
        EventPersister.environment_variable_name() == "PERSISTER_SERVICES__EVENT_PERSISTER__ENABLED"
    )


def test_variable_name_follows_the_service_name() -> None:
    assert _Idle.environment_variable_name() == "PERSISTER_SERVICES__IDLE__ENABLED"


def test_all_services_lists_only_the_concrete_direct_subclasses() -> None:
    assert Service.all_services() == [EventPersister, RetentionTrimmer, MetricsServer]
    assert _TestRoot.all_services() == [_Idle, _Crashes]


def test_enabled_services_leaves_out_switched_off_ones(settings: Settings) -> None:
    _TestRoot.switched_off.add("crashes")
    assert _TestRoot.enabled_services(settings) == [_Idle]


def test_event_persister_toggle_comes_from_the_settings(settings: Settings) -> None:
    assert EventPersister.service_settings(settings) is settings.services.event_persister
    assert EventPersister.enabled(settings) is True


# --- running() -------------------------------------------------------------------


async def test_running_starts_the_enabled_services_and_stops_them_on_exit(
    settings: Settings,
) -> None:
    _TestRoot.switched_off.add("crashes")
    async with _TestRoot.running(settings) as tasks:
        assert [t.get_name() for t in tasks] == ["idle"]
        idle = instance(_Idle)
        await started(idle)
        assert idle.stop_calls == 0
        assert not tasks[0].done()
    assert idle.stop_calls == 1
    assert idle.finished is True
    assert all(t.done() for t in tasks)
    assert [type(s) for s in _TestRoot.instances] == [_Idle]


async def test_running_with_nothing_enabled_starts_nothing(settings: Settings) -> None:
    _TestRoot.switched_off.update({"idle", "crashes"})
    async with _TestRoot.running(settings) as tasks:
        assert tasks == []
    assert _TestRoot.instances == []


async def test_running_stops_every_service_even_when_the_body_fails(settings: Settings) -> None:
    _TestRoot.switched_off.add("crashes")
    with pytest.raises(KeyError):
        async with _TestRoot.running(settings):
            await started(instance(_Idle))
            raise KeyError("body")
    idle = instance(_Idle)
    assert (idle.stop_calls, idle.finished) == (1, True)


async def test_running_logs_a_failed_service_on_exit_instead_of_raising(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="worker.services.service"):
        async with _TestRoot.running(settings) as tasks:
            await started(instance(_Idle))
            await started(instance(_Crashes))
    assert [t.get_name() for t in tasks] == ["idle", "crashes"]
    assert [r.getMessage() for r in caplog.records if r.name == "worker.services.service"] == [
        "service crashes failed: RuntimeError('boom')"
    ]
    assert instance(_Idle).finished is True


# --- run_services() ----------------------------------------------------------------


async def test_run_services_reraises_a_failure_and_stops_the_others(settings: Settings) -> None:
    with pytest.raises(RuntimeError, match=r"^boom$"):
        await asyncio.wait_for(_TestRoot.run_services(settings), TIMEOUT_S)
    idle = instance(_Idle)
    assert idle.stop_calls == 1
    assert idle.finished is True
    assert instance(_Crashes).stop_calls == 1


async def test_run_services_runs_until_cancelled_then_stops_everything(
    settings: Settings,
) -> None:
    _TestRoot.switched_off.add("crashes")
    runner = asyncio.create_task(_TestRoot.run_services(settings))
    await asyncio.wait_for(_TestRoot.one_started.wait(), TIMEOUT_S)
    idle = instance(_Idle)
    assert idle.started_event.is_set()
    assert not runner.done()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert (idle.stop_calls, idle.finished) == (1, True)


async def test_run_services_with_nothing_enabled_returns_at_once(settings: Settings) -> None:
    _TestRoot.switched_off.update({"idle", "crashes"})
    await asyncio.wait_for(_TestRoot.run_services(settings), TIMEOUT_S)
    assert _TestRoot.instances == []
