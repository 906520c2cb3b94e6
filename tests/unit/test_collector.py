"""The garbage collector paused while modules load (guest/collector.py), around a real
program's import as the init loads it: the program's own choices survive the pause."""

from __future__ import annotations

import gc

import pytest

from aleph_runtime.guest import collector


@pytest.fixture(autouse=True)
def restore_the_collector():
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*thresholds)
    (gc.enable if enabled else gc.disable)()


def test_pause_stops_automatic_collection_and_resume_restores_it():
    gc.set_threshold(700, 10, 10)
    paused = collector.pause()
    assert gc.get_threshold()[0] == 0
    collections = gc.get_stats()[0]["collections"]
    garbage = [[] for _ in range(10_000)]  # far past threshold 700: no collection runs
    assert gc.get_stats()[0]["collections"] == collections
    del garbage
    collector.resume(paused)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_program_is_imported_with_the_collector_paused(program):
    gc.set_threshold(700, 10, 10)
    app = program(
        """
        import gc
        seen = gc.get_threshold()

        async def app(scope, receive, send):
            pass
        """
    )
    assert __import__(app.__module__).seen[0] == 0
    assert gc.get_threshold() == (700, 10, 10)


def test_a_program_that_sets_its_own_thresholds_or_disables_the_collector_keeps_that(program):
    gc.set_threshold(700, 10, 10)
    program(
        """
        import gc
        gc.set_threshold(5000, 20, 20)
        gc.disable()

        async def app(scope, receive, send):
            pass
        """
    )
    assert gc.get_threshold() == (5000, 20, 20)
    assert not gc.isenabled()


def test_a_program_that_fails_to_import_leaves_the_collector_as_it_was(program):
    from aleph_runtime.guest.config import ConfigError

    gc.set_threshold(700, 10, 10)
    with pytest.raises(ConfigError):
        program("raise RuntimeError('broken at import')")
    assert gc.get_threshold() == (700, 10, 10)
