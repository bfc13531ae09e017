"""daemon/main.py grow_descriptor_table: the table is grown at start-up, nothing in use closed."""

from __future__ import annotations

import subprocess
import sys

# Run in a child interpreter: the table only ever grows, so this process's would tell nothing.
PRELUDE = r"""
import fcntl, os
from ctdblab.daemon.main import grow_descriptor_table
def fdsize():
    for line in open('/proc/self/status'):
        if line.startswith('FDSize:'):
            return int(line.split()[1])
"""


def run(script: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PRELUDE + script], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_table_grows_to_the_asked_size():
    before, after = map(int, run("before = fdsize()\ngrow_descriptor_table(512)\n"
                                 "print(before, fdsize())"))
    assert before < 512 <= after


def test_a_descriptor_in_use_at_the_top_stays_open_and_none_is_left_behind():
    script = r"""
r, w = os.pipe()
top = fcntl.fcntl(w, fcntl.F_DUPFD, 255)     # in use where the growth aims
before = sorted(os.listdir('/proc/self/fd'))
grow_descriptor_table(256)
after = sorted(os.listdir('/proc/self/fd'))
os.write(top, b'x')
print(before == after, os.read(r, 1) == b'x')
"""
    assert run(script) == ["True", "True"]
