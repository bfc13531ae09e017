"""Shared fixtures of the unit tests."""

from __future__ import annotations

import pytest

from ctdblab.daemon import native


@pytest.fixture(scope="session")
def native_pacer_library():
    """The native heartbeat pacer's library, built first if its source changed since set-up
    (./ctdblab.sh builds it; a test run straight after an edit of the C source does not)."""
    if native.heartbeat_pacer_library() is None:
        native.build()
        native.forget_load_error()
    lib = native.heartbeat_pacer_library()
    assert lib is not None, native.load_error()
    return lib
