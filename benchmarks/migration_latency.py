"""Record migration latency, pyctdbd against real ctdbd 4.17, measured in the same run.

    .venv/bin/python -m benchmarks.migration_latency [--daemons pyctdbd,ctdb] [--clients 2]
        [--rounds 1000] [--duration 10] [--modes turns,contend]

What smbd does for every record of a volatile database (``dbwrap_ctdb.c`` fetch_locked), done by
one client process per node on one shared key: take the chain lock on the node's own copy of
the TDB file (opened with the path from GETDBPATH and the flags from DB_OPEN_FLAGS), read the
24-byte record header; if this node is the dmaster use the record (here: add 1 to a counter
after the header, header unchanged) and unlock; else unlock, send REQ_CALL NULL_FUNC +
IMMEDIATE_MIGRATION on the node's Unix socket, wait for the REPLY_CALL and start again.

Measured per use, in the client:

* **call**: REQ_CALL sent -> REPLY_CALL received (one per migration asked for);
* **lock-to-use**: first chain-lock attempt -> the record locked here with dmaster == this node
  (all the migrations it took included).

Measured per migration, in the daemons: **daemon CPU**, user + system time of every node's
daemon process (the pid each answers to GET_PID; all its threads and the children it reaped)
from ``/proc``, over the mode's run, divided by the migrations asked for.

Modes: ``turns`` — the clients use the record in strict turn (a coordinator hands the turn on), so
every use needs exactly one migration and nothing contends: the latency of one migration, the
next one asked for right after the last use (pyctdbd pins a record that landed for a local
client for 2 ms, core/db/migration.py ``local_grace``: a call meeting the pin waits it out);
``spaced`` — the same with --gap ms between turns (default 5: past that pin);
``contend`` — every client loops as fast as it can for --duration seconds: smbd's hot-record
pattern, with the daemons' lock helpers and deferrals in play (latencies, uses/s, migrations per
use); ``fresh`` — the first client alone, each use on a *new* random key whose lmaster is another
node, deleted after the use as smbd deletes (an empty record stored, SCHEDULE_FOR_DELETION sent
NOREPLY): what every SMB open does to smbXsrv_open_global, the contended-opens benchmark's
migration (--rounds uses). By default the clients sit on nodes 1 and 2 and the key's lmaster is node 0, so a
migration crosses all three nodes (REQ_CALL via the lmaster, REQ_DMASTER, REPLY_DMASTER).
The counter is checked at the end: every use must be in it.

pyctdbd runs as a LocalCluster (tests/unit/pyctdbd_cluster.py: loopback addresses, its default
tunables); real ctdbd as tests/lab/compare_cli.py's RealCluster (network namespaces, a bridge,
CTDB_TEST_MODE; needs root), with ``--pyctdbd-net netns`` pyctdbd runs in the same namespace
topology instead. Both on this machine, one after the other. Figures are printed with the ratio
pyctdbd / ctdbd; there is no pass/fail (DESIGN.md: speed targets are met in benchmarks).

``worker`` is the client process (started by the coordinator; not for direct use).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctdblab.daemon.protocol import (
    CURRENT_NODE, Control, Operation, PacketReader, ReqCall, ReqControl, decode_packet,
    encode_packet, jenkins_hash, pack_request, unpack_reply,
)
from ctdblab.daemon.protocol.constants import CallFlag, CallFunc, ControlFlag
from ctdblab.daemon.protocol.types import KeyData, LtdbHeader
from ctdblab.daemon.protocol.ltdb import LTDB_HEADER_SIZE
from ctdblab.daemon.store import TdbFile
from ctdblab.stats import percentile

from .common import TICK, cpu_ticks, progress, table

REPO = Path(__file__).resolve().parents[1]
DB_NAME = "migration_bench.tdb"
COUNTER = struct.Struct("<Q")


# =============================================================================================
# the client: CTDB's client protocol on the Unix socket + the node's TDB file
# =============================================================================================

class CtdbConnection:
    """One client connection to a node's daemon (what smbd's ctdbd_conn is)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(timeout)
        self.reader = PacketReader()
        self.frames: list[bytes] = []
        self.reqid = random.randint(1, 1 << 20)

    def close(self) -> None:
        self.sock.close()

    def _send(self, body) -> int:
        self.reqid = (self.reqid + 1) & 0xFFFFFFFF
        # smbd sends its packets unpadded, destnode/srcnode zero for REQ_CALL.
        self.sock.sendall(encode_packet(body, destnode=0 if isinstance(body, ReqCall) else CURRENT_NODE,
                                        srcnode=0, reqid=self.reqid, pad=False))
        return self.reqid

    def _reply(self, reqid: int):
        while True:
            while not self.frames:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("the daemon closed the connection")
                self.frames += self.reader.feed(data)
            packet = decode_packet(self.frames.pop(0))
            if packet.header.reqid == reqid and packet.header.operation != Operation.REQ_MESSAGE:
                return packet

    def control(self, opcode: int, value=None, srvid: int = 0):
        reqid = self._send(ReqControl(opcode, srvid, 0, 0, pack_request(opcode, value)))
        reply = self._reply(reqid).body
        if reply.status != 0 and opcode not in (Control.GET_PNN, Control.GET_PID):   # status = the answer
            raise RuntimeError(f"{Control(opcode).name} failed: status {reply.status} {reply.errmsg}")
        return reply

    def value(self, opcode: int, value=None):
        return unpack_reply(opcode, self.control(opcode, value).data)

    def schedule_for_deletion(self, db_id: int, key: bytes, header: bytes) -> None:
        """What smbd's db_ctdb_delete sends after storing the empty record (no reply)."""
        data = KeyData(db_id, LtdbHeader.unpack_from(header)[0], key).pack()
        self._send(ReqControl(Control.SCHEDULE_FOR_DELETION, 0, 0, int(ControlFlag.NOREPLY), data))

    def migrate(self, db_id: int, key: bytes) -> tuple[int, int]:
        """REQ_CALL NULL_FUNC + IMMEDIATE_MIGRATION: (status, ns from send to reply)."""
        body = ReqCall(int(CallFlag.IMMEDIATE_MIGRATION), db_id, int(CallFunc.NULL_FUNC), 0, key)
        started = time.perf_counter_ns()
        reqid = self._send(body)
        packet = self._reply(reqid)
        took = time.perf_counter_ns() - started
        if packet.header.operation != Operation.REPLY_CALL:
            raise RuntimeError(f"migration answered {packet.header.operation!r}: {packet.body}")
        return packet.body.status, took


class SmbdLike:
    """smbd's fetch_locked loop on one key of one volatile database of one node."""

    def __init__(self, socket_path: str, db_name: str, key: bytes) -> None:
        self.conn = CtdbConnection(socket_path)
        self.pnn = self.conn.control(Control.GET_PNN).status
        self.db_id = self.conn.value(Control.DB_ATTACH, db_name)
        path = self.conn.value(Control.GETDBPATH, self.db_id)
        flags = self.conn.value(Control.DB_OPEN_FLAGS, self.db_id)
        self.tdb = TdbFile(path, 0, flags, os.O_RDWR)
        self.key = key
        self.calls: list[int] = []          # ns, REQ_CALL -> REPLY_CALL
        self.uses: list[int] = []           # ns, first lock attempt -> usable
        self.migrations = 0

    def use(self) -> int:
        """One fetch_locked + use; returns the counter value it wrote."""
        return self.use_key(self.key)

    def use_key(self, key: bytes, delete: bool = False) -> int:
        """fetch_locked + use of `key`; `delete`: then delete it as smbd does (empty record,
        SCHEDULE_FOR_DELETION NOREPLY)."""
        started = time.perf_counter_ns()
        while True:
            self.tdb.chainlock(key)
            header = self.tdb.fetch_header(key)
            if header is not None and header.dmaster == self.pnn:
                self.uses.append(time.perf_counter_ns() - started)
                value = self.tdb.fetch(key) or b""
                count = COUNTER.unpack_from(value, LTDB_HEADER_SIZE)[0] + 1 \
                    if len(value) >= LTDB_HEADER_SIZE + COUNTER.size else 1
                self.tdb.store(key, value[:LTDB_HEADER_SIZE] + (b"" if delete else COUNTER.pack(count)))
                self.tdb.chainunlock(key)
                if delete:
                    self.conn.schedule_for_deletion(self.db_id, key, value[:LTDB_HEADER_SIZE])
                return count
            self.tdb.chainunlock(key)
            status, took = self.conn.migrate(self.db_id, key)
            self.calls.append(took)
            self.migrations += 1
            if status != 0:
                raise RuntimeError(f"migration status {status}")

    def reset(self) -> None:
        self.calls.clear()
        self.uses.clear()
        self.migrations = 0

    def results(self) -> dict:
        return {"pnn": self.pnn, "calls_ns": self.calls, "uses_ns": self.uses,
                "migrations": self.migrations}


def worker(args: argparse.Namespace) -> int:
    """The client process: commands on stdin, one JSON line per answer on stdout."""
    client = SmbdLike(args.socket, args.db, bytes.fromhex(args.key))
    print(json.dumps({"ready": client.pnn}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "use":
            print(json.dumps({"count": client.use()}), flush=True)
        elif words[0] == "run":                      # run <seconds>: as fast as it can
            deadline = time.monotonic() + float(words[1])
            count = 0
            while time.monotonic() < deadline:
                count = client.use()
            print(json.dumps({"count": count}), flush=True)
        elif words[0] == "fresh":                    # fresh <n>: n new keys, used and deleted
            vnnmap = client.conn.value(Control.GETVNNMAP).map
            for _ in range(int(words[1])):
                key = os.urandom(16)
                while vnnmap[jenkins_hash(key) % len(vnnmap)] == client.pnn:
                    key = os.urandom(16)
                client.use_key(key, delete=True)
            print(json.dumps({"fresh": True}), flush=True)
        elif words[0] == "reset":
            client.reset()
            print(json.dumps({"reset": True}), flush=True)
        elif words[0] == "results":
            print(json.dumps(client.results()), flush=True)
        elif words[0] == "quit":
            break
    client.tdb.close()
    client.conn.close()
    return 0


class Worker:
    """The coordinator's handle on one client process."""

    def __init__(self, socket_path: str, key: bytes) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.migration_latency", "worker", "--socket", socket_path,
             "--db", DB_NAME, "--key", key.hex()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
        self.pnn = self.read()["ready"]

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark client exited (status {self.proc.wait()})")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.send(command)
        return self.read()

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# =============================================================================================
# clusters
# =============================================================================================

def _import_clusters():
    for sub in ("tests/unit", "tests/lab"):
        path = str(REPO / sub)
        if path not in sys.path:
            sys.path.insert(0, path)


def free_subnet() -> int:
    """A 198.18.S.0/24 (and 198.19.S.0/24) no namespace of this host uses yet."""
    used = set()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    for name in (line.split()[0] for line in names if line.strip()):
        out = subprocess.run(["ip", "-n", name, "-o", "-4", "addr"], capture_output=True, text=True).stdout
        for word in out.split():
            if word.startswith(("198.18.", "198.19.")):
                used.add(int(word.split(".")[2]))
    return random.choice([s for s in range(100, 251) if s not in used])


class Cluster:
    """A started 3-node cluster of one daemon: sockets, and stop()."""

    def __init__(self, daemon: str, root: Path, nodes: int, net: str) -> None:
        _import_clusters()
        self.daemon = daemon
        if daemon == "ctdb" or net == "netns":
            from compare_cli import AGGRESSIVE, RealCluster
            from pyctdbd_netns import NetnsCluster
            cls = RealCluster if daemon == "ctdb" else NetnsCluster
            # ctdbd with aggressive tunables only to start in seconds (no effect on migration).
            self.impl = cls(root, nodes, tunables=AGGRESSIVE if daemon == "ctdb" else None,
                            **({} if daemon == "ctdb" else {"realtime": False}))
            subnet = free_subnet()
            self.impl.subnet = subnet
            self.impl.node_ips = [f"198.18.{subnet}.{i + 1}" for i in range(nodes)]
            self.impl.public = [f"198.19.{subnet}.{k + 1}" for k in range(len(self.impl.public))]
            self.impl.client_ip = f"198.19.{subnet}.200"
            self.where = f"network namespaces {self.impl.prefix}*, 198.18.{subnet}.0/24"
        else:
            from pyctdbd_cluster import LocalCluster
            self.impl = LocalCluster(root, nodes)
            self.where = f"loopback {self.impl.addresses[0]}.."

    def start(self, timeout: float = 120.0) -> None:
        impl = self.impl
        if hasattr(impl, "build_network"):
            impl.build_network()
            impl.configure()
            impl.start_node(0)
            time.sleep(2)
            for pnn in range(1, impl.n):
                impl.start_node(pnn)
            impl.wait_for("a healthy cluster", impl.healthy, timeout=timeout)
        else:
            impl.start()
            impl.wait_for("a settled cluster", impl.settled, timeout=timeout)
        time.sleep(2)

    def socket(self, pnn: int) -> str:
        return self.impl.socket(pnn)

    def stop(self) -> None:
        self.impl.stop()


def key_with_lmaster(vnnmap: list[int], lmaster: int) -> bytes:
    for i in range(100000):
        key = b"share-mode:bench-%d" % i
        if vnnmap[jenkins_hash(key) % len(vnnmap)] == lmaster:
            return key
    raise RuntimeError("no key found")


# =============================================================================================
# the measurement
# =============================================================================================

def measure(cluster: Cluster, args: argparse.Namespace) -> dict:
    admin = CtdbConnection(cluster.socket(0))
    db_id = admin.value(Control.DB_ATTACH, DB_NAME)
    vnnmap = admin.value(Control.GETVNNMAP).map
    for pnn in range(args.nodes):                  # the attach reached every node
        conn = CtdbConnection(cluster.socket(pnn))
        deadline = time.monotonic() + 20
        while True:
            try:
                conn.value(Control.GETDBPATH, db_id)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        conn.close()
    admin.close()
    pids = daemon_pids(cluster, args.nodes)
    client_nodes = [int(x) for x in args.client_nodes.split(",")][:args.clients]
    key = key_with_lmaster(vnnmap, args.lmaster)
    workers = [Worker(cluster.socket(p), key) for p in client_nodes]
    out: dict = {"vnnmap": vnnmap, "client_nodes": client_nodes, "lmaster": args.lmaster}
    total = 0
    try:
        for mode in args.modes.split(","):
            for i in range(args.warmup):
                workers[i % len(workers)].ask("use")
                total += 1
            for w in workers:
                w.ask("reset")
            started = time.monotonic()
            cpu_before = cpu_seconds(pids)
            if mode == "fresh":
                workers[0].ask(f"fresh {args.rounds}")
            elif mode in ("turns", "spaced"):
                for i in range(args.rounds):
                    workers[i % len(workers)].ask("use")
                    if mode == "spaced":
                        time.sleep(args.gap / 1000)
                total += args.rounds
            else:
                for w in workers:
                    w.send(f"run {args.duration}")
                for w in workers:
                    w.read()
            elapsed = time.monotonic() - started
            daemon_cpu = cpu_seconds(pids) - cpu_before
            # fresh: the first client alone (fresh keys leave the shared counter alone)
            results = [w.ask("results") for w in (workers[:1] if mode == "fresh" else workers)]
            calls = [ns / 1e6 for r in results for ns in r["calls_ns"]]
            uses = [ns / 1e6 for r in results for ns in r["uses_ns"]]
            total += len(uses) if mode == "contend" else 0
            out[mode] = {"calls_ms": calls, "uses_ms": uses, "elapsed_s": elapsed,
                         "migrations": sum(r["migrations"] for r in results),
                         "daemon_cpu_s": daemon_cpu,
                         "uses_per_client": [len(r["uses_ns"]) for r in results]}
            progress(f"{cluster.daemon}: {mode}: {len(uses)} uses, {len(calls)} migrations in {elapsed:.1f} s")
        final = workers[0].ask("use")["count"]
        out["counter_ok"] = final == total + 1
        out["counter"] = (final, total + 1)
    finally:
        for w in workers:
            w.stop()
    return out


def daemon_pids(cluster: Cluster, nodes: int) -> list[int]:
    """Each node's daemon process, as it answers GET_PID (what `ctdb getpid` prints)."""
    pids = []
    for pnn in range(nodes):
        conn = CtdbConnection(cluster.socket(pnn))
        try:
            pids.append(conn.control(Control.GET_PID).status)
        finally:
            conn.close()
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (all their threads) and of the children they have
    reaped, from /proc/PID/stat."""
    return sum(sum(cpu_ticks(pid)) for pid in pids) / TICK


def summary(mode_result: dict) -> dict:
    calls, uses = mode_result["calls_ms"], mode_result["uses_ms"]
    pct = lambda values, q: percentile(values, q) if values else None
    return {"call_p50": pct(calls, 50), "call_p99": pct(calls, 99),
            "use_p50": pct(uses, 50), "use_p99": pct(uses, 99),
            "uses": len(uses), "fair": min(mode_result["uses_per_client"]) / max(mode_result["uses_per_client"])
            if uses else None, "migrations_per_use": (mode_result["migrations"] / len(uses)) if uses else None,
            "uses_per_s": len(uses) / mode_result["elapsed_s"] if mode_result["elapsed_s"] else None,
            # every node's daemon together, per migration asked for (µs)
            "cpu_us": (mode_result["daemon_cpu_s"] / len(calls) * 1e6) if calls else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    w = sub.add_parser("worker")
    w.add_argument("--socket", required=True)
    w.add_argument("--db", required=True)
    w.add_argument("--key", required=True)
    p.add_argument("--daemons", default="pyctdbd,ctdb")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=2, help="client processes, one per node (2 or 3)")
    p.add_argument("--client-nodes", default="1,2,0", help="nodes of the clients, in order")
    p.add_argument("--lmaster", type=int, default=0, help="the node that is the key's lmaster")
    p.add_argument("--modes", default="turns,spaced,contend,fresh")
    p.add_argument("--gap", type=float, default=5.0, help="ms between turns in spaced mode")
    p.add_argument("--rounds", type=int, default=1000, help="uses in turns mode")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of contend mode")
    p.add_argument("--pyctdbd-net", choices=("local", "netns"), default="local",
                   help="pyctdbd on loopback (LocalCluster) or in the ctdbd cluster's netns topology")
    p.add_argument("--json", type=Path, help="also write every sample here")
    args = p.parse_args(argv)
    if args.command == "worker":
        return worker(args)
    if "ctdb" in args.daemons.split(",") and os.geteuid() != 0:
        p.error("real ctdbd runs in network namespaces: run as root (or --daemons pyctdbd)")
    results: dict[str, dict] = {}
    for daemon in args.daemons.split(","):
        with tempfile.TemporaryDirectory(prefix=f"migbench-{daemon}-") as tmp:
            cluster = Cluster(daemon, Path(tmp), args.nodes, args.pyctdbd_net)
            progress(f"{daemon}: starting 3 nodes ({cluster.where})")
            try:
                cluster.start()
                results[daemon] = measure(cluster, args)
                results[daemon]["where"] = cluster.where
            finally:
                cluster.stop()
    print_results(results, args)
    if args.json:
        args.json.write_text(json.dumps(results))
    return 0 if all(r.get("counter_ok") for r in results.values()) else 1


def print_results(results: dict[str, dict], args: argparse.Namespace) -> None:
    rows = []
    for mode in args.modes.split(","):
        sums = {d: summary(r[mode]) for d, r in results.items() if mode in r}
        for daemon, s in sums.items():
            rows.append([daemon, mode, s["uses"], s["call_p50"], s["call_p99"], s["use_p50"], s["use_p99"],
                         s["migrations_per_use"], s["uses_per_s"], s["fair"], s["cpu_us"]])
        if "pyctdbd" in sums and "ctdb" in sums:
            a, b = sums["pyctdbd"], sums["ctdb"]
            ratio = lambda k: (a[k] / b[k]) if a[k] and b[k] else None
            rows.append(["ratio py/ctdb", mode, None, ratio("call_p50"), ratio("call_p99"), ratio("use_p50"),
                         ratio("use_p99"), ratio("migrations_per_use"), ratio("uses_per_s"), None,
                         ratio("cpu_us")])
    first = next(iter(results.values()))
    print(f"\nrecord migration latency, {args.nodes} nodes, {len(first['client_nodes'])} smbd-like clients "
          f"on nodes {first['client_nodes']}, key's lmaster node {first['lmaster']}; ms")
    for daemon, r in results.items():
        print(f"  {daemon}: {r['where']}; counter {'OK' if r['counter_ok'] else 'WRONG'} {r['counter']}")
    print(table(["daemon", "mode", "uses", "call p50", "call p99", "lock-to-use p50", "lock-to-use p99",
                 "migr/use", "uses/s", "min/max uses", "daemon CPU µs/migr"], rows))
    print("call: REQ_CALL sent -> REPLY_CALL; lock-to-use: first chain-lock attempt -> record usable here; "
          "min/max uses: the least served client's uses over the most served one's; daemon CPU: "
          "all nodes' daemon processes (user + system, 10 ms ticks), per migration asked for")


if __name__ == "__main__":
    raise SystemExit(main())
