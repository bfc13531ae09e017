"""Lab tests: everything under tests/lab is marked `lab` (root + Mininet).

The fixtures (`lab_cluster`, `lab_network`) and the skip-when-unavailable logic come from the
ctdblab pytest plugin (ctdblab/testing.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)
