"""The ping probe's parser, fed with recorded iputils ``ping -D -n`` output."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ctdblab.scenarios.probes.ping import build_parser, parse_ping_line, ping_command

# Recorded in the lab (iputils 20221126): replies, a gap, ARP failure, a duplicate, the summary.
RECORDED = """\
PING 198.19.240.1 (198.19.240.1) 56(84) bytes of data.
[1795471424.654107] 64 bytes from 198.19.240.1: icmp_seq=1 ttl=64 time=0.039 ms
[1795471424.675629] 64 bytes from 198.19.240.1: icmp_seq=2 ttl=64 time=0.054 ms
[1795471423.195654] From 198.19.240.2 icmp_seq=3 Destination Host Unreachable
[1795471430.000001] 64 bytes from 198.19.240.1: icmp_seq=300 ttl=63 time=1234 ms
[1795471430.000002] 64 bytes from 198.19.240.1: icmp_seq=300 ttl=63 time=1.5 ms (DUP!)

--- 198.19.240.1 ping statistics ---
300 packets transmitted, 3 received, +1 duplicates, +1 errors, 99% packet loss, time 6000ms
rtt min/avg/max/mdev = 0.039/0.046/0.054/0.007 ms
"""


def parsed():
    return [parse_ping_line(line) for line in RECORDED.splitlines(keepends=True)]


def test_reply_lines_keep_ping_timestamp_seq_and_rtt():
    replies = [p for p in parsed() if p.what == "reply"]
    assert [(r.t, r.fields["seq"], r.fields["rtt_ms"]) for r in replies] == [
        (1795471424.654107, 1, 0.039), (1795471424.675629, 2, 0.054),
        (1795471430.000001, 300, 1234.0), (1795471430.000002, 300, 1.5)]
    assert replies[0].fields["ttl"] == 64 and replies[0].fields["from"] == "198.19.240.1"
    assert "dup" not in replies[0].fields
    assert replies[3].fields["dup"] is True


def test_unreachable_header_and_summary():
    kinds = [p.what for p in parsed()]
    assert kinds[0] == "header"
    unreachable = [p for p in parsed() if p.what == "unreachable"][0]
    assert unreachable.t == 1795471423.195654
    assert unreachable.fields == {"seq": 3, "from": "198.19.240.2",
                                  "text": "Destination Host Unreachable"}
    summary = [p for p in parsed() if p.what == "summary"][0]
    assert summary.fields == {"transmitted": 300, "received": 3}


@pytest.mark.parametrize("line", [
    "", "garbage", "[notatime] 64 bytes from x: icmp_seq=1 ttl=1 time=1 ms",
    "[1.0] 64 bytes from 198.19.240.1: icmp_seq=x ttl=64 time=0.1 ms",
    "ping: sendmsg: Network is unreachable", "\x00\xff\xfe",
])
def test_anything_else_is_other_and_never_raises(line):
    result = parse_ping_line(line)
    assert result.what == "other"
    assert result.t is None


def test_command_and_arguments():
    assert ping_command("198.19.8.1", 0.02) == ["ping", "-D", "-n", "-i", "0.02", "198.19.8.1"]
    args = build_parser().parse_args(["198.19.8.1"])
    assert args.interval == 0.02 and args.process == "ping"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["not-an-ip"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["198.19.8.1", "--interval", "0"])


def test_probe_emits_events_from_a_fake_ping(tmp_path: Path):
    """The whole probe, with a stand-in ping that prints the recorded output."""
    fake = tmp_path / "fakeping"
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + RECORDED + "EOF\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "ctdblab.scenarios.probes.ping", "198.19.240.1",
                          "--ping-bin", str(fake), "--process", "c1-ping"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in io.StringIO(out.stdout)]
    assert [e["what"] for e in events] == ["start", "reply", "reply", "unreachable", "reply",
                                           "reply", "stop"]
    for e in events:
        assert e["kind"] == "capture" and e["probe"] == "ping" and e["process"] == "c1-ping"
        assert e["target"] == "198.19.240.1" and isinstance(e["t"], float)
    assert events[1]["t"] == 1795471424.654107 and events[1]["seq"] == 1
    assert events[-1]["transmitted"] == 300 and events[-1]["received"] == 3
