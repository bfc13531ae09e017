"""Bad input to pyctdbd's clustered databases, on a real 3-node LocalCluster (no root).

The clustered-database issue asks: "each has a test; no crash, nothing lost that was
acknowledged". Every test here feeds one kind of bad input to running daemons through the ways a
real client or a real disk delivers it — raw bytes on the daemon's Unix socket (`Client` below
speaks just enough of the CTDB client protocol), a second process opening the node's TDB file
with the flags the daemon reports (as smbd does), bytes written over a file — and then checks
three things:

* the daemons are alive and still answer, for the database concerned and for the others;
* what was acknowledged before (a `ctdb pstore` that returned 0, a record a migration landed)
  is still there, identical on every node where it should be;
* the daemon said what happened: a clear error to the client and a line in its log.

One cluster serves the whole module (each test uses databases of its own); `check_alive` after
each test makes a daemon that died show up in the test that killed it.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctdblab.daemon.protocol import (
    CURRENT_NODE, Control, LtdbHeader, Operation, PacketReader, RecBuffer, RecData, ReqCall,
    ReqControl, TraverseStartExt, decode_packet, encode_packet, jenkins_hash, pack_request,
    unpack_reply,
)
from ctdblab.daemon.protocol.constants import CallFlag, CallFunc
from ctdblab.daemon.protocol.ltdb import DB_SEQNUM_TDB_KEY, LTDB_HEADER_SIZE, pack_seqnum
from ctdblab.daemon.store import TdbFile

from pyctdbd_cluster import LocalCluster, have_ctdb_cli

pytestmark = [pytest.mark.skipif(not have_ctdb_cli(), reason="Debian's ctdb tool is not installed"),
              pytest.mark.timeout(240, method="thread")]

N = 3
NULL_FUNC = int(CallFunc.NULL_FUNC)
FETCH_FUNC = int(CallFunc.FETCH_FUNC)
MIGRATE = int(CallFlag.IMMEDIATE_MIGRATION)


# =============================================================================================
# a raw CTDB client
# =============================================================================================

class Client:
    """One connection to a node's Unix socket: controls, REQ_CALLs, messages, raw bytes."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(timeout)
        self.reader = PacketReader()
        self.pending: list[bytes] = []
        self.other: list = []              # packets read while looking for another reqid
        self.reqid = 1000

    def close(self) -> None:
        self.sock.close()

    def next_packet(self, timeout: float | None = None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        while not self.pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("the daemon closed the connection")
            self.pending += self.reader.feed(data)
        return decode_packet(self.pending.pop(0))

    def send(self, body, dest: int = CURRENT_NODE) -> int:
        self.reqid += 1
        self.sock.sendall(encode_packet(body, destnode=dest, srcnode=0, reqid=self.reqid))
        return self.reqid

    def wait_reply(self, reqid: int, timeout: float = 10.0):
        for i, packet in enumerate(self.other):
            if packet.header.reqid == reqid:
                return self.other.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to reqid {reqid} within {timeout} s")
            packet = self.next_packet(left)
            if packet.header.reqid == reqid and packet.header.operation != Operation.REQ_MESSAGE:
                return packet
            self.other.append(packet)

    def control(self, opcode: int, data: bytes = b"", srvid: int = 0, timeout: float = 10.0):
        reqid = self.send(ReqControl(opcode, srvid, 0, 0, data))
        return self.wait_reply(reqid, timeout).body

    def value(self, opcode: int, value) -> object:
        reply = self.control(opcode, pack_request(opcode, value))
        assert reply.status == 0, f"{Control(opcode).name}: {reply}"
        return unpack_reply(opcode, reply.data)

    def attach(self, name: str, persistent: bool = False) -> int:
        opcode = Control.DB_ATTACH_PERSISTENT if persistent else Control.DB_ATTACH
        return self.value(opcode, name)

    def health(self, ident: int) -> str | None:
        return self.value(Control.DB_GET_HEALTH, ident)

    def call(self, ident: int, key: bytes, callid: int = NULL_FUNC, flags: int = MIGRATE,
             timeout: float = 10.0):
        return self.wait_reply(self.send(ReqCall(flags, ident, callid, 0, key)), timeout)


def clients(cluster: LocalCluster) -> list[Client]:
    return [Client(cluster.socket(p)) for p in range(N)]


# =============================================================================================
# the cluster and checks shared by the tests
# =============================================================================================

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("dbbad"), N)
    c.start()
    try:
        c.wait_for("a settled cluster", c.settled, timeout=40)
        yield c
    finally:
        c.stop()


@pytest.fixture
def alive(cluster):
    """Afterwards: every daemon still runs, answers and is out of recovery."""
    yield cluster
    check_alive(cluster)


def check_alive(cluster: LocalCluster) -> None:
    for pnn in range(N):
        assert cluster.procs[pnn].poll() is None, f"node {pnn} died\n{cluster.describe()}"
    cluster.wait_for("every node answering, recovery mode NORMAL",
                     lambda: all(recovery_normal(cluster, p) for p in range(N)), timeout=30)


def recovery_normal(cluster: LocalCluster, pnn: int) -> bool:
    return "Recovery mode:NORMAL" in cluster.ctdb(pnn, "status", timeout=10).stdout


def log_text(cluster: LocalCluster, pnn: int) -> str:
    return cluster.log(pnn).read_text(errors="replace")


def log_mark(cluster: LocalCluster) -> list[int]:
    return [len(log_text(cluster, p)) for p in range(N)]


def new_log(cluster: LocalCluster, mark: list[int], pnn: int) -> str:
    return log_text(cluster, pnn)[mark[pnn]:]


def wait_log(cluster: LocalCluster, mark: list[int], pnn: int, *needles: str, timeout: float = 10.0) -> str:
    """The node's log written since `mark`, once it holds every needle (case-insensitive)."""
    found = ""

    def check() -> bool:
        nonlocal found
        found = new_log(cluster, mark, pnn)
        return all(n.lower() in found.lower() for n in needles)

    cluster.wait_for(f"node {pnn} to log {needles}", check, timeout=timeout, interval=0.1)
    return found


def db_file(client: Client, ident: int) -> tuple[str, int]:
    """(path, libtdb flags) of a database on the client's node: GETDBPATH and DB_OPEN_FLAGS, as
    smbd asks before it opens the file itself."""
    return client.value(Control.GETDBPATH, ident), client.value(Control.DB_OPEN_FLAGS, ident)


def open_like_smbd(client: Client, ident: int) -> TdbFile:
    path, flags = db_file(client, ident)
    return TdbFile(path, 0, flags, os.O_RDWR)


def pstore(cluster: LocalCluster, pnn: int, name: str, key: str, value: str) -> None:
    cluster.ok(pnn, "pstore", name, key, value)


def pfetch(cluster: LocalCluster, pnn: int, name: str, key: str) -> str:
    return cluster.ok(pnn, "pfetch", name, key).rstrip("\n")


def key_with_lmaster(lmaster: int, prefix: bytes) -> bytes:
    for i in range(10000):
        key = prefix + str(i).encode()
        if jenkins_hash(key) % N == lmaster:
            return key
    raise AssertionError("no key found")


def daemon_children(cluster: LocalCluster, pnn: int) -> list[int]:
    """PIDs of the daemon's forked children (same command line: transaction and traverse
    children), lock helpers and event scripts excluded."""
    pid = cluster.procs[pnn].pid
    try:
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                if Path(f"/proc/{kid}/cmdline").read_bytes() == own:
                    out.append(int(kid))
            except OSError:
                pass
    return out


def persistent_copy(cluster: LocalCluster, pnn: int, name: str) -> dict[bytes, bytes]:
    """A node's whole copy of a persistent database as key -> value (header included), read
    straight from its file."""
    path = cluster.node_dir(pnn) / "db" / "persistent" / f"{name}.{pnn}"
    with TdbFile(str(path), 0, 0, os.O_RDONLY) as tdb:
        return dict(tdb.items())


def commit_payload(ident: int, writes: dict[bytes, bytes], base: dict[bytes, bytes], pnn: int) -> bytes:
    """A TRANS3_COMMIT marshall buffer as smbd builds it: each record's header is the stored one
    with rsn + 1 and dmaster = this node, then __db_sequence_number__ = old + 1."""
    def header_of(key: bytes) -> LtdbHeader:
        old = base.get(key)
        rsn = LtdbHeader.split(old)[0].rsn if old and len(old) >= LTDB_HEADER_SIZE else 0
        return LtdbHeader(rsn + 1, pnn)

    old_seq = base.get(DB_SEQNUM_TDB_KEY)
    seq = struct.unpack("<Q", old_seq[LTDB_HEADER_SIZE:])[0] if old_seq and len(old_seq) == 32 else 0
    records = [RecData.with_header(0, k, header_of(k), v) for k, v in writes.items()]
    records.append(RecData.with_header(0, DB_SEQNUM_TDB_KEY, header_of(DB_SEQNUM_TDB_KEY),
                                       pack_seqnum(seq + 1)))
    return RecBuffer(ident, records).pack()


# =============================================================================================
# (1) a malformed TRANS3_COMMIT buffer
# =============================================================================================

def test_malformed_trans3_commit_is_refused_with_a_reason_and_changes_nothing(alive):
    cluster = alive
    name = "bad_trans3.tdb"
    c = Client(cluster.socket(0))
    ident = c.attach(name, persistent=True)
    pstore(cluster, 0, name, "k1", "acknowledged")
    before = [persistent_copy(cluster, p, name) for p in range(N)]
    seqnum = c.value(Control.GET_DB_SEQNUM, ident)
    mark = log_mark(cluster)

    good = commit_payload(ident, {b"k1": b"NEVER"}, before[0], 0)
    rng = random.Random(4379)
    header = LtdbHeader(99, 0).pack()
    garbage = {
        "empty": b"",
        "text": b"garbage!",
        "count beyond the buffer": struct.pack("<II", ident, 0x0FFFFFFF) + b"x" * 20,
        "record length overruns": struct.pack("<II", ident, 1) + struct.pack("<IIII", 4096, 0, 2, 40) + b"k1",
        "record shorter than its ltdb header": RecBuffer(ident, [RecData(0, b"k1", b"short")]).pack(),
        "truncated valid buffer": good[:-7],
        "random bytes": bytes(rng.getrandbits(8) for _ in range(300)),
        "random tail after a valid head": good[:8] + bytes(rng.getrandbits(8) for _ in range(200)),
        "unknown database": RecBuffer(0xDEADBEEF, [RecData(0, b"k1", header + b"v")]).pack(),
    }
    for what, payload in garbage.items():
        reply = c.control(Control.TRANS3_COMMIT, payload, srvid=ident)
        assert reply.status != 0, what
        assert reply.errmsg, f"{what}: refused without a reason"
    # The connection still serves, the commit path still works, nothing was written anywhere.
    assert c.control(Control.GET_PNN).status == 0
    assert c.value(Control.GET_DB_SEQNUM, ident) == seqnum
    assert [persistent_copy(cluster, p, name) for p in range(N)] == before
    text = new_log(cluster, mark, 0)
    assert "bad payload" in text, text
    assert all(recovery_normal(cluster, p) for p in range(N))        # no recovery forced
    pstore(cluster, 1, name, "k2", "after")
    for p in range(N):
        assert pfetch(cluster, p, name, "k1") == "acknowledged"
        assert pfetch(cluster, p, name, "k2") == "after"
    c.close()


# =============================================================================================
# (2) database names: '/' and absurd length
# =============================================================================================

def test_database_names_with_slash_or_absurd_length_are_refused_and_nothing_is_created(alive):
    cluster = alive
    c = Client(cluster.socket(1))

    def files() -> set[str]:
        return {str(p.relative_to(cluster.root)) for p in cluster.root.rglob("*")
                if "log.ctdb" not in p.name and p.name != "stderr"}

    def dbmaps() -> list:
        return [len(Client(cluster.socket(p)).value(Control.GET_DBMAP, None).dbs) for p in range(N)]

    before, maps = files(), dbmaps()
    mark = log_mark(cluster)
    names = ["a/b", "../escape", "/tmp/absolute", "sub/../../x", "x" * 245, "y" * 300, "z" * 60000, ""]
    for name in names:
        for opcode in (Control.DB_ATTACH, Control.DB_ATTACH_PERSISTENT, Control.DB_ATTACH_REPLICATED):
            reply = c.control(opcode, pack_request(opcode, name))
            assert reply.status == -1, (name[:20], opcode)
            assert reply.errmsg, f"{name[:20]!r}: refused without a reason"
            if "/" in name:
                assert "not a plain file name" in reply.errmsg
            elif len(name) > 244:
                assert "bytes long" in reply.errmsg
    time.sleep(0.5)                  # a broadcast attach, had there been one, would have landed
    assert files() == before
    assert dbmaps() == maps
    assert "DB Attach refused" in new_log(cluster, mark, 1)
    # 244 bytes is the longest name whose file `<name>.<pnn>` fits NAME_MAX for any pnn.
    longest = "w" * 244
    ident = c.attach(longest)
    # the attach reaches the other nodes as a NOREPLY broadcast (as ctdbd's): wait for node 2's
    other = Client(cluster.socket(2))
    cluster.wait_for("node 2 to attach it too",
                     lambda: other.control(Control.GET_DBNAME, pack_request(Control.GET_DBNAME, ident)).status == 0,
                     timeout=10)
    assert other.value(Control.GET_DBNAME, ident) == longest
    other.close()
    c.close()


# =============================================================================================
# (3) REQ_CALL for an unknown database
# =============================================================================================

def test_req_call_for_an_unknown_database_is_answered_with_reply_error(alive):
    cluster = alive
    unknown = 0x0BADDB1D
    for pnn in range(N):
        c = Client(cluster.socket(pnn))
        for callid, flags in ((NULL_FUNC, MIGRATE), (FETCH_FUNC, 0), (0x1234, 0)):
            packet = c.call(unknown, b"some-key", callid, flags, timeout=5)
            assert packet.header.operation == Operation.REPLY_ERROR, packet
            assert packet.body.status == -1
            assert b"0x0baddb1d" in packet.body.msg.lower()
        assert c.control(Control.GET_PNN).status == pnn          # still connected
        c.close()


# =============================================================================================
# (4) a record shorter than the 24-byte ltdb header
# =============================================================================================

def test_record_shorter_than_the_ltdb_header_is_logged_and_survived(alive):
    """smbd (or a stray tool) leaves a value of 4 bytes in node 1's copy. ctdbd reads such a
    value as "no record" (ctdb_ltdb_fetch); pyctdbd does too, and must say so in its log when a
    migration, a fetch or a traverse meets it."""
    cluster = alive
    name = "short_rec.tdb"
    cs = clients(cluster)
    ident = cs[0].attach(name)
    cluster.ok(1, "writekey", name, "good", "kept")                # an acknowledged record
    tdb = open_like_smbd(cs[1], ident)
    short = {lm: key_with_lmaster(lm, b"short") for lm in range(N)}
    for key in short.values():
        tdb.store(key, b"tiny")
    tdb.store(b"traversed-short", b"0123456789")
    mark = log_mark(cluster)

    for lmaster, key in short.items():
        for pnn, callid, flags in ((0, NULL_FUNC, MIGRATE), (1, NULL_FUNC, MIGRATE), (2, FETCH_FUNC, 0)):
            packet = cs[pnn].call(ident, key, callid, flags)
            assert packet.header.operation == Operation.REPLY_CALL, (lmaster, pnn, packet)
    dump = cluster.ok(0, "catdb", name)                             # a traverse meets it too
    assert 'key(4) = "good"' in dump and 'data(4) = "kept"' in dump
    assert "traversed-short" not in dump
    assert "Data: size:4 ptr:[kept]" in cluster.ok(2, "readkey", name, "good")
    tdb.close()
    for c in cs:
        c.close()
    text = wait_log(cluster, mark, 1, "shorter than", name)
    assert "traversed-short".encode().hex() in text or "traversed-short" in text, text


# =============================================================================================
# (5) TDB files corrupted on disk
# =============================================================================================

def test_persistent_file_of_garbage_is_kept_and_logged(alive):
    """Node 1 finds garbage where its copy of a persistent database should be when the attach
    reaches it. libtdb, opened with O_CREAT as ctdbd opens, takes a file without TDB magic for a
    new one and wipes it. Expected: the garbage is kept (ctdbd's backup
    `<path>.corrupted.<time>.0Z`), node 1 logs it, the other nodes and the other databases serve
    on, and node 1 reports the database unhealthy (DB_GET_HEALTH)."""
    cluster = alive
    name = "garbage_p.tdb"
    other = "healthy_p.tdb"
    cs = clients(cluster)
    cs[0].attach(other, persistent=True)
    pstore(cluster, 0, other, "k", "acknowledged")
    directory = cluster.node_dir(1) / "db" / "persistent"
    garbage = random.Random(1).randbytes(65536)
    (directory / f"{name}.1").write_bytes(garbage)
    mark = log_mark(cluster)

    ident = cs[0].attach(name, persistent=True)                     # healthy on node 0
    cluster.wait_for("node 1 attached it", lambda: cs[1].control(
        Control.GET_DBNAME, pack_request(Control.GET_DBNAME, ident)).status == 0, timeout=10)
    copies = [p for p in directory.iterdir() if p.name.startswith(name) and p.read_bytes() == garbage]
    assert copies, f"the garbage in {name}.1 was wiped: {sorted(p.name for p in directory.iterdir())}"
    assert copies[0].name.startswith(f"{name}.1.corrupted.") and copies[0].name.endswith(".0Z")
    assert cs[0].health(ident) is None
    wait_log(cluster, mark, 1, name, "corrupt", "Backup of corrupted TDB")
    cluster.wait_for("node 1 to report it unhealthy", lambda: cs[1].health(ident), timeout=5)
    assert "Backup of corrupted TDB" in cs[1].health(ident)
    # The other databases, on node 1 too.
    assert pfetch(cluster, 1, other, "k") == "acknowledged"
    pstore(cluster, 1, other, "k2", "v2")
    assert pfetch(cluster, 2, other, "k2") == "v2"
    for c in cs:
        c.close()


def test_persistent_file_with_a_corrupt_record_is_kept_and_logged(alive):
    """A real TDB whose header is intact but one record's header is not: tdb_check fails (ctdbd
    checks persistent databases at attach); the damaged file is kept as a backup and logged."""
    cluster = alive
    name = "badrec_p.tdb"
    cs = clients(cluster)
    path = cluster.node_dir(2) / "db" / "persistent" / f"{name}.2"
    with TdbFile(str(path), 1001, 0x400) as tdb:                    # ctdbd's persistent flags
        for i in range(20):
            tdb.store_ltdb(b"rec%d" % i, LtdbHeader(1, 2), b"value%d" % i)
    data = bytearray(path.read_bytes())
    at = data.find(b"rec7")
    data[at - 24:at] = b"\xaa" * 24                                 # that record's tdb header
    path.write_bytes(bytes(data))
    corrupted = bytes(data)
    mark = log_mark(cluster)

    ident = cs[0].attach(name, persistent=True)
    cluster.wait_for("node 2 attached it", lambda: cs[2].control(
        Control.GET_DBNAME, pack_request(Control.GET_DBNAME, ident)).status == 0, timeout=10)
    kept = [p for p in path.parent.iterdir() if p.name.startswith(name) and p.read_bytes() == corrupted]
    assert kept, "the corrupt file was changed without a copy"
    wait_log(cluster, mark, 2, name, "corrupt", "Bad magic")
    cluster.wait_for("node 2 to report it unhealthy", lambda: cs[2].health(ident), timeout=5)
    for c in cs:
        c.close()


def test_volatile_file_corrupted_while_attached_is_logged_and_never_read_as_missing(alive):
    """Node 1's copy of a volatile database gets a record header overwritten on disk while the
    daemon has it open. libtdb's lookups answer such a chain as "no record" (only its log says
    why); read so, the record would be re-created empty and its value silently replaced.
    Expected: a migration of that record is answered with an error (no hang, no crash, no
    silent replacement), a traverse ends, node 1 logs the corruption, the other records and the
    other databases serve on, node 1 reports the database unhealthy."""
    cluster = alive
    name = "corrupt_v.tdb"
    other = "healthy_v.tdb"
    cs = clients(cluster)
    ident = cs[1].attach(name)
    cs[1].attach(other)
    for c in cs:                    # every node's smbd attaches (the broadcast may still be on its way)
        assert c.attach(name) == ident
        c.attach(other)
    for i in range(1, 6):
        cluster.ok(1, "writekey", name, f"rkey{i}", f"value{i}")
    cluster.ok(1, "writekey", other, "k", "v")
    path, _ = db_file(cs[1], ident)
    data = Path(path).read_bytes()
    at = data.find(b"rkey3")
    assert at > 24
    with open(path, "r+b") as f:                                    # in place, same size
        f.seek(at - 24)
        f.write(b"\xaa" * 24)
    mark = log_mark(cluster)

    packet = cs[0].call(ident, b"rkey3")                            # migrate it off node 1
    assert packet.header.operation == Operation.REPLY_ERROR, packet
    dump = cluster.ctdb(0, "catdb", name, timeout=30)              # a traverse meets it
    assert dump.returncode in (0, 1), dump
    for i in (1, 2, 4, 5):                                         # the other records serve on
        assert f"Data: size:6 ptr:[value{i}]" in cluster.ok(2, "readkey", name, f"rkey{i}")
    assert "Data: size:1 ptr:[v]" in cluster.ok(0, "readkey", other, "k")
    wait_log(cluster, mark, 1, name, "corrupt", "bad magic")
    cluster.wait_for("node 1 to report it unhealthy", lambda: cs[1].health(ident), timeout=5)
    assert "bad magic" in cs[1].health(ident)
    for c in cs:
        c.close()


# =============================================================================================
# (6) an smbd SIGKILLed while it holds a chain lock
# =============================================================================================

HOLDER = r"""
import os, sys, time
from ctdblab.daemon.store import TdbFile
tdb = TdbFile(sys.argv[1], 0, int(sys.argv[2]), os.O_RDWR)
tdb.chainlock(bytes.fromhex(sys.argv[3]))
print("held", flush=True)
time.sleep(600)
"""


def test_smbd_killed_holding_a_chain_lock_leaves_the_record_usable(alive):
    """A process opens node 1's copy with the daemon's flags (robust mutexes), takes the chain
    lock of a record node 1 holds, and is SIGKILLed while a migration from node 0 waits for that
    lock. The migration must complete (robust-mutex recovery in the lock helper), with the
    record's value, and the record stay usable on every node."""
    cluster = alive
    name = "robust.tdb"
    cs = clients(cluster)
    ident = cs[1].attach(name)
    key = b"held-record"
    cluster.ok(1, "writekey", name, key.decode(), "precious")
    path, flags = db_file(cs[1], ident)
    assert flags & 0x1000, f"not a mutex file: {flags:#x}"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(flags), key.hex()],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        reqid = cs[0].send(ReqCall(MIGRATE, ident, NULL_FUNC, 0, key))
        with pytest.raises(TimeoutError):
            cs[0].wait_reply(reqid, timeout=1.0)                    # waits for the lock
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(5)
        packet = cs[0].wait_reply(reqid, timeout=15)
        assert packet.header.operation == Operation.REPLY_CALL and packet.body.status == 0, packet
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # Landed on node 0 with its value; back to node 1 and on to node 2.
    tdb0 = open_like_smbd(cs[0], ident)
    header, value = tdb0.fetch_ltdb(key)
    assert header.dmaster == 0 and value == b"precious"
    tdb0.close()
    assert cs[1].call(ident, key).body.status == 0
    reply = cs[2].call(ident, key, FETCH_FUNC, 0)
    assert reply.header.operation == Operation.REPLY_CALL and reply.body.data == b"precious"
    # A later smbd on node 1 takes the same chain lock at once.
    check = subprocess.run([sys.executable, "-c", (
        "import os, sys; from ctdblab.daemon.store import TdbFile;"
        "t = TdbFile(sys.argv[1], 0, int(sys.argv[2]), os.O_RDWR); k = bytes.fromhex(sys.argv[3]);"
        "ok = t.chainlock_nonblock(k); print(ok); ok and t.chainunlock(k)"),
        path, str(flags), key.hex()], capture_output=True, text=True, timeout=30)
    assert check.stdout.strip() == "True", check
    for c in cs:
        c.close()


# =============================================================================================
# (7) a client that disconnects in the middle of a persistent commit
# =============================================================================================

TRANSACTION_HOLDER = r"""
import os, sys
from ctdblab.daemon.store import TdbFile
tdb = TdbFile(sys.argv[1], 0, 0x400, os.O_RDWR)
tdb.transaction_start()
print("held", flush=True)
sys.stdin.readline()
tdb.transaction_cancel()
"""


def converged_copies(cluster: LocalCluster, name: str) -> dict[bytes, bytes]:
    def same() -> bool:
        copies = [persistent_copy(cluster, p, name) for p in range(N)]
        return all(c == copies[0] for c in copies)

    cluster.wait_for(f"identical copies of {name} on every node", same, timeout=30)
    return persistent_copy(cluster, 0, name)


@pytest.mark.parametrize("held", [False, True], ids=["at-once", "node-2-busy"])
def test_client_gone_mid_commit_leaves_every_node_with_one_whole_copy(alive, held):
    """A client sends TRANS3_COMMIT and disconnects before the answer: either at once, or while
    node 2's share is held up behind another process's transaction on its file. ctdbd's rule:
    the commit forces a recovery, which copies the database of the node with the highest
    sequence number to all. Afterwards every node holds the same copy — all of the commit or
    none of it — the acknowledged data is there, and commits work again."""
    cluster = alive
    name = f"midcommit_{int(held)}.tdb"
    c = Client(cluster.socket(0))
    ident = c.attach(name, persistent=True)
    pstore(cluster, 0, name, "base", "acknowledged")
    base = persistent_copy(cluster, 0, name)
    payload = commit_payload(ident, {b"k1": b"one", b"k2": b"two"}, base, 0)
    holder = None
    if held:
        path = cluster.node_dir(2) / "db" / "persistent" / f"{name}.2"
        holder = subprocess.Popen([sys.executable, "-c", TRANSACTION_HOLDER, str(path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  start_new_session=True)
        assert holder.stdout.readline().strip() == "held"
    try:
        c.send(ReqControl(Control.TRANS3_COMMIT, ident, 0, 0, payload))
        time.sleep(0.3 if held else 0.0)
        c.close()
        if holder is not None:
            time.sleep(0.5)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            holder.wait(10)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
    check_alive(cluster)
    copy = converged_copies(cluster, name)
    assert copy[b"base"][LTDB_HEADER_SIZE:] == b"acknowledged"
    committed = {k: copy.get(k, b"")[LTDB_HEADER_SIZE:] for k in (b"k1", b"k2")}
    assert committed in ({b"k1": b"one", b"k2": b"two"}, {b"k1": b"", b"k2": b""}), committed
    # No transaction child left behind, and commits work again.
    cluster.wait_for("no forked children left", lambda: not any(daemon_children(cluster, p) for p in range(N)),
                     timeout=10)
    pstore(cluster, 2, name, "after", "yes")
    for p in range(N):
        assert pfetch(cluster, p, name, "base") == "acknowledged"
        assert pfetch(cluster, p, name, "after") == "yes"


# =============================================================================================
# (8) a client that disconnects in the middle of a traverse
# =============================================================================================

def fill_volatile(cluster: LocalCluster, cs: list[Client], ident: int, per_node: int, size: int) -> int:
    """Records each node is dmaster of, written straight into its copy (as smbd would)."""
    total = 0
    for pnn, c in enumerate(cs):
        tdb = open_like_smbd(c, ident)
        for i in range(per_node):
            tdb.store_ltdb(b"n%d-%06d" % (pnn, i), LtdbHeader(1, pnn), bytes([65 + pnn]) * size)
            total += 1
        tdb.close()
    return total


def traverse_all(c: Client, ident: int, srvid: int, reqid: int = 77) -> list[RecData]:
    assert c.control(Control.REGISTER_SRVID, srvid=srvid).status == 0
    reply = c.control(Control.TRAVERSE_START_EXT,
                      pack_request(Control.TRAVERSE_START_EXT, TraverseStartExt(ident, reqid, srvid)))
    assert reply.status == 0, reply
    records = []
    while True:
        packet = c.other.pop(0) if c.other else c.next_packet(30)
        if packet.header.operation != Operation.REQ_MESSAGE:
            continue
        rec, _ = RecData.unpack_from(packet.body.data)
        if not rec.key and not rec.data:
            return records
        records.append(rec)


def test_client_gone_mid_traverse_stops_the_walks_and_loses_nothing(alive):
    cluster = alive
    name = "midtrav.tdb"
    cs = clients(cluster)
    ident = cs[0].attach(name)
    total = fill_volatile(cluster, cs, ident, per_node=3000, size=1000)
    srvid = 0xF00D000000000001
    for attempt in range(3):
        c = Client(cluster.socket(0))
        assert c.control(Control.REGISTER_SRVID, srvid=srvid).status == 0
        reply = c.control(Control.TRAVERSE_START_EXT,
                          pack_request(Control.TRAVERSE_START_EXT, TraverseStartExt(ident, 5 + attempt, srvid)))
        assert reply.status == 0
        got = 0
        while got < 10 * attempt:                 # 0, 10, 20 records read, then gone
            packet = c.next_packet(10)
            got += packet.header.operation == Operation.REQ_MESSAGE
        c.close()
    cluster.wait_for("every walk's child gone", lambda: not any(daemon_children(cluster, p) for p in range(N)),
                     timeout=20)
    check_alive(cluster)
    c = Client(cluster.socket(1))
    records = traverse_all(c, ident, srvid + 1)
    assert len(records) == total
    assert len({r.key for r in records}) == total
    c.close()
    for c in cs:
        c.close()


# =============================================================================================
# (9) a recovery of a volatile database bigger than one push "sync"
# =============================================================================================

def test_recovery_of_a_volatile_database_of_9_mb_completes_and_keeps_every_record(alive):
    """Found by the mid-traverse test under load (a recovery came while its 9 MB database was
    there): the recovery driver's push flow control (a GET_PNN to every peer after each 8 MiB)
    took GET_PNN's status, which is the answering node's PNN, for a failure, so every recovery
    of such a database failed and was retried for ever: recovery mode ACTIVE for good."""
    cluster = alive
    name = "bigrecover.tdb"
    cs = clients(cluster)
    ident = cs[0].attach(name)
    total = fill_volatile(cluster, cs, ident, per_node=3000, size=1000)
    env = dict(os.environ, CTDB_SOCKET=cluster.socket(0), CTDB_BASE=str(cluster.node_dir(0)))
    # Its own session: the tool SIGTERMs its process group when its runtime is exceeded.
    result = subprocess.run(["ctdb", "-T", "60", "recover"], env=env, capture_output=True, text=True,
                            timeout=90, start_new_session=True)
    assert result.returncode == 0, result.stderr
    check_alive(cluster)
    records = traverse_all(Client(cluster.socket(2)), ident, 0xF00D000000000009)
    assert len({r.key for r in records}) == total
    for c in cs:
        c.close()
