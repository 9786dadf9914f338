"""The cycle-collector pause restores the state it found, also when its body raises."""

from __future__ import annotations

import gc

import pytest

from sockgate.bulk import no_cycle_collection


def test_pause_restores_the_state_it_found() -> None:
    assert gc.isenabled()
    with no_cycle_collection():
        assert not gc.isenabled()
        with no_cycle_collection():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause found it off
    assert gc.isenabled()
    with pytest.raises(RuntimeError), no_cycle_collection():
        raise RuntimeError("fails inside")
    assert gc.isenabled()
    gc.disable()
    try:
        with no_cycle_collection():
            pass
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()
