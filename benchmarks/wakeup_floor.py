"""What this machine charges a Python daemon that only wakes up: the floor under pyctdbd's idle cost.

    .venv/bin/python -m benchmarks.wakeup_floor [--interval 0.015] [--datagrams 2] [--seconds 30]

An asyncio loop (the daemon's loop, nothing else on it) wakes every --interval seconds and, like a
heartbeat tick, sends --datagrams 64-byte UDP datagrams to itself over loopback and reads them
back.  Printed: wake-ups, CPU in % of one core and microseconds per wake-up.  On the 2-vCPU lab VM
the same loop cost 0.70 % of a core on one day and 1.65 % on another (15 ms, 2 datagrams), so an
idle figure means little without the floor measured beside it: `benchmarks.idle_cost` runs this
during its window for every profile whose heartbeats are faster than 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

FRAME = b"\0" * 64


def measure(interval: float, datagrams: int, seconds: float) -> dict:
    """Run the loop for `seconds`; its wake-ups and CPU."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    address = sock.getsockname()
    loop = asyncio.new_event_loop()
    wakeups = 0
    cpu0, wall0 = time.process_time(), time.monotonic()

    def tick() -> None:
        nonlocal wakeups
        wakeups += 1
        for _ in range(datagrams):
            sock.sendto(FRAME, address)
        try:
            while True:
                sock.recv(128)
        except BlockingIOError:
            pass
        if time.monotonic() - wall0 < seconds:
            loop.call_later(interval, tick)
        else:
            loop.stop()

    try:
        loop.call_soon(tick)
        loop.run_forever()
    finally:
        loop.close()
        sock.close()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {"interval_s": interval, "datagrams": datagrams, "wakeups": wakeups,
            "cpu_pct": 100 * cpu / wall, "us_per_wakeup": 1e6 * cpu / max(wakeups, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interval", type=float, default=0.015)
    p.add_argument("--datagrams", type=int, default=2)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="one JSON object instead of a line of text")
    args = p.parse_args()
    if args.interval <= 0 or args.seconds <= 0 or args.datagrams < 0:
        p.error("--interval and --seconds must be positive, --datagrams not negative")
    result = measure(args.interval, args.datagrams, args.seconds)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"asyncio loop every {args.interval * 1000:g} ms, {args.datagrams} datagrams per wake-up: "
              f"{result['wakeups']} wake-ups, {result['cpu_pct']:.2f} % of a core, "
              f"{result['us_per_wakeup']:.0f} µs per wake-up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
