"""Shared by the unit and lab tests: when a pytest-xdist worker dies in the middle of a test,
say how it ended (the signal or exit status), which pytest-xdist itself does not."""

from __future__ import annotations

import signal

import pytest


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's hook on the controller (only registered when xdist runs the session)."""
    if not error:
        return
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    if popen is None:
        return
    try:
        code = popen.wait(timeout=5)
    except Exception:                               # still running or not ours to wait for
        return
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    reporter = node.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[{node.gateway.id}] worker process {popen.pid} {how}")
