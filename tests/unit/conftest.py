"""Shared fixtures of the unit tests."""

from __future__ import annotations

import pytest
from hypothesis import settings

from ctdblab.daemon import native

# Property tests check what is decided, not how fast: hypothesis's default 200 ms deadline per
# example failed test_request_round_trip on a loaded 2-vCPU machine (the full suite beside lab
# clusters). Timing belongs to the benchmarks.
settings.register_profile("ctdblab", deadline=None)
settings.load_profile("ctdblab")


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
