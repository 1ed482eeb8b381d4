"""The plan's bulk helpers: the collector pause."""

from __future__ import annotations

import gc

import pytest

from popvault.plan import _collection_paused


def test_collection_is_paused_and_turned_back_on() -> None:
    assert gc.isenabled()
    with _collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collection_is_turned_back_on_after_an_error() -> None:
    with pytest.raises(RuntimeError), _collection_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_held_off_elsewhere_stays_off() -> None:
    gc.disable()
    try:
        with _collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # another thread's pause (or the user's) still holds
    finally:
        gc.enable()
