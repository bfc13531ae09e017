"""A hostile peer for the safety lab tests, run inside a node's namespace:

    forge_peer.py election FROM TO PORT CLAIMED_PNN PRIORITY_TIME
    forge_peer.py dead FROM TO PORT DEAD REPORTER COUNT
    forge_peer.py idle FROM TO PORT COUNT SECONDS

`election` sends one CTDB election message naming CLAIMED_PNN as its sender; `dead` sends COUNT
pyctdbd node-dead reports; `idle` opens COUNT silent connections and holds them. Each dials
from address FROM (a node's private address) to TO:PORT, as a peer would.
"""

from __future__ import annotations

import socket
import sys
import time

from ctdblab.daemon.core.election import ElectionMessage
from ctdblab.daemon.protocol import ReqMessage, Srvid, encode_packet, internal, pack_message
from ctdblab.daemon.server.wire import election_to_wire


def dial(src: str, dst: str, port: int) -> socket.socket:
    s = socket.socket()
    s.bind((src, 0))
    s.connect((dst, port))
    return s


def main(argv: list[str]) -> int:
    kind, src, dst, port = argv[1], argv[2], argv[3], int(argv[4])
    if kind == "election":
        claimed, priority = int(argv[5]), float(argv[6])
        wire = election_to_wire(ElectionMessage(2, priority, claimed, 0))
        frame = encode_packet(ReqMessage(Srvid.ELECTION, pack_message(Srvid.ELECTION, wire)),
                              destnode=0xFFFFFFFF, srcnode=claimed, reqid=0)
        s = dial(src, dst, port)
        s.sendall(frame)
        time.sleep(1.0)
        s.close()
    elif kind == "dead":
        dead, reporter, count = int(argv[5]), int(argv[6]), int(argv[7])
        frame = encode_packet(ReqMessage(internal.NODE_DEAD, internal.NodeDead(dead, reporter).pack()),
                              destnode=0xFFFFFFFF, srcnode=reporter, reqid=0)
        s = dial(src, dst, port)
        for _ in range(count):
            s.sendall(frame)
            time.sleep(0.01)
        time.sleep(0.5)
        s.close()
    elif kind == "idle":
        count, seconds = int(argv[5]), float(argv[6])
        held = [dial(src, dst, port) for _ in range(count)]
        time.sleep(seconds)
        for s in held:
            s.close()
    else:
        print(f"unknown kind {kind}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
