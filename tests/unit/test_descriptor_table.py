"""daemon/main.py grow_descriptor_table: the table is grown at start-up, nothing in use closed."""

from __future__ import annotations

import subprocess
import sys


def test_the_table_grows_and_a_descriptor_in_use_at_the_top_stays_open():
    script = r"""
import fcntl, os
from ctdblab.daemon.main import grow_descriptor_table
def fdsize():
    for line in open('/proc/self/status'):
        if line.startswith('FDSize:'):
            return int(line.split()[1])
r, w = os.pipe()
top = fcntl.fcntl(w, fcntl.F_DUPFD, 255)     # a descriptor in use where the growth aims
before_size, before_fds = fdsize(), sorted(os.listdir('/proc/self/fd'))
grow_descriptor_table(256)
after_size, after_fds = fdsize(), sorted(os.listdir('/proc/self/fd'))
os.write(top, b'x')
print(before_size, after_size, before_fds == after_fds, os.read(r, 1) == b'x')
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    before, after, same_fds, still_open = out.stdout.split()
    assert int(after) >= 256, out.stderr
    assert same_fds == "True" and still_open == "True"


def test_the_table_grows_to_its_limit_without_a_descriptor_at_the_top():
    script = r"""
import os
from ctdblab.daemon.main import grow_descriptor_table
def fdsize():
    for line in open('/proc/self/status'):
        if line.startswith('FDSize:'):
            return int(line.split()[1])
before = fdsize()
grow_descriptor_table(512)
print(before, fdsize())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    before, after = map(int, out.stdout.split())
    assert before < 512 <= after, out.stderr
