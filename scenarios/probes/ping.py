"""ping probe: ``ping -D -n -i 0.02 IP`` as history events.

    python -m ctdblab.scenarios.probes.ping 198.19.8.1 [--interval 0.02] [--process NAME]

Events (``kind: capture``, ``probe: ping``):

``start``        once, when ping printed its header (``t``: our clock)
``reply``        per echo reply: ``seq``, ``rtt_ms``, ``ttl``, ``dup`` (only when true);
                 ``t`` is ping's own ``-D`` timestamp
``unreachable``  an ICMP error ping printed (``seq``, ``from``, ``text``); ``t`` from ``-D``
``stop``         once at the end: ``transmitted``/``received`` from ping's summary when it
                 printed one, ``exit_code``

SIGTERM/SIGINT: ping gets SIGINT (it prints its summary), we report ``stop`` and exit 0.
Intervals below 0.2 s need root (the lab runs as root).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

from .common import Emitter, add_process_option, ipv4_address, positive_float, run_main

REPLY_RE = re.compile(
    r"^\[(?P<ts>\d+\.\d+)\]\s+\d+\s+bytes from (?P<src>[^:\s]+):\s+icmp_seq=(?P<seq>\d+)"
    r"\s+ttl=(?P<ttl>\d+)\s+time=(?P<rtt>[\d.]+)\s*ms(?P<dup>\s*\(DUP!\))?")
ERROR_RE = re.compile(
    r"^\[(?P<ts>\d+\.\d+)\]\s+From (?P<src>\S+)\s+icmp_seq=(?P<seq>\d+)\s+(?P<text>.+?)\s*$")
HEADER_RE = re.compile(r"^PING \S+ \(")
SUMMARY_RE = re.compile(r"^(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (packets )?received")


@dataclass
class PingLine:
    """One parsed line of ``ping -D`` output."""

    what: str                # "header", "reply", "unreachable", "summary" or "other"
    fields: dict[str, Any]
    t: float | None = None   # ping's -D timestamp, when the line has one


def parse_ping_line(line: str) -> PingLine:
    """Parse one line of iputils ``ping -D -n`` output (without trusting its shape)."""
    line = line.rstrip("\r\n")
    m = REPLY_RE.match(line)
    if m:
        fields: dict[str, Any] = {"seq": int(m["seq"]), "rtt_ms": float(m["rtt"]),
                                  "ttl": int(m["ttl"]), "from": m["src"]}
        if m["dup"]:
            fields["dup"] = True
        return PingLine("reply", fields, float(m["ts"]))
    m = ERROR_RE.match(line)
    if m:
        return PingLine("unreachable", {"seq": int(m["seq"]), "from": m["src"], "text": m["text"]},
                        float(m["ts"]))
    if HEADER_RE.match(line):
        return PingLine("header", {})
    m = SUMMARY_RE.match(line)
    if m:
        return PingLine("summary", {"transmitted": int(m["tx"]), "received": int(m["rx"])})
    return PingLine("other", {"text": line})


def ping_command(target: str, interval: float, ping_bin: str = "ping") -> list[str]:
    return [ping_bin, "-D", "-n", "-i", f"{interval:g}", target]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.scenarios.probes.ping",
                                     description="ping -D as history capture events")
    parser.add_argument("target", type=ipv4_address, help="IPv4 address to ping")
    parser.add_argument("--interval", type=positive_float, default=0.02,
                        help="seconds between echo requests (default 0.02; < 0.2 needs root)")
    parser.add_argument("--ping-bin", default="ping", help="ping executable (default: ping)")
    add_process_option(parser, "ping")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Emitter("ping", args.process)
    try:
        child = subprocess.Popen(ping_command(args.target, args.interval, args.ping_bin),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    except OSError as e:
        out.capture("stop", target=args.target, error=f"cannot run {args.ping_bin}: {e}")
        return 1

    stopping = threading.Event()

    def kill_if_stuck() -> None:
        if child.poll() is None:
            child.kill()

    def on_signal(_signum: int, _frame: object) -> None:
        # ping prints its summary on SIGINT and exits; the read loop below then sees EOF.
        if not stopping.is_set():
            stopping.set()
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
            timer = threading.Timer(2.0, kill_if_stuck)
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    out.on_broken = lambda: on_signal(signal.SIGTERM, None)

    summary: dict[str, Any] = {}
    started = False
    assert child.stdout is not None
    for raw in child.stdout:
        parsed = parse_ping_line(raw.decode("utf-8", "replace"))
        if parsed.what == "header" and not started:
            started = True
            out.capture("start", target=args.target, interval_s=args.interval)
        elif parsed.what == "reply":
            out.capture("reply", t=parsed.t, target=args.target, **parsed.fields)
        elif parsed.what == "unreachable":
            out.capture("unreachable", t=parsed.t, target=args.target, **parsed.fields)
        elif parsed.what == "summary":
            summary = parsed.fields
        elif parsed.what == "other" and parsed.fields["text"] and not started:
            # Anything before the header is an error message of ping's (bad address, no root).
            out.capture("error", target=args.target, text=parsed.fields["text"])
    code = child.wait()
    out.capture("stop", target=args.target, exit_code=code, **summary)
    # Killed by our own SIGINT/SIGTERM is a clean stop; ping's exit 1 = "no reply at all".
    return 0 if stopping.is_set() or code in (0, 1) else code


if __name__ == "__main__":
    run_main(main)
