"""Differential check of the database commands: Debian's stock `ctdb` tool against real ctdbd
4.17 and against pyctdbd, both as 3-node clusters in network namespaces with the same addresses,
the same commands run on the same nodes in the same order. Built on compare_cli.py (clusters,
start order, `run_both`, `normalise`, `settle`).

    python tests/lab/compare_db_cli.py [--keep]     (tests/lab/test_compare_db_cli.py runs it)

Covered: attach (volatile, persistent, replicated, an existing name, the wrong kind, bad
arguments), detach, getdbmap (-X too), getdbstatus (by name and id), setdbreadonly/setdbsticky,
pstore/pfetch/pdelete/ptrans (stdin and file), catdb/cattdb, readkey/writekey/deletekey across
nodes, getdbseqnum, statisticsreset/statistics/dbstatistics (the output's shape on both daemons,
and on each daemon the counters that the traffic made must have moved),
backupdb/dumpdbbackup/restoredb/wipedb.

What is normalised, and why each differs by nature:
- the cluster's temporary directory (database paths, backup files) -> `<dir>`;
- the times of statistics and of a backup (`normalise`, BACKUP_DATE);
- the order of records in catdb/cattdb/dumpdbbackup (`sort_records`): catdb gathers the records
  of all nodes, which traverse in parallel; their TRAVERSE_DATA arrive in a race (the order
  changes between two runs of the same ctdbd). A local dump (cattdb, a backup) comes in the TDB
  file's hash-chain order, an artefact of the file's write history that no client relies on.
  rsn, dmaster and flags are compared as printed: they are the same on both daemons;
- the values of statistics counters (`counters_shape`): they count each daemon's own traffic
  (keepalives, the recovery daemon's controls, memory...). Shape is compared; the counters the
  commands must have moved are checked on each daemon separately (`check_counters`).

Setup difference, on both clusters alike: VacuumInterval is pushed beyond the test's lifetime.
ctdbd vacuums each volatile database every VacuumInterval (10 s) from its attach, deleting
tombstones and migrating empty records back to their lmaster at moments that race with the
commands (so record dumps and migration counters would vary between two runs of ctdbd itself);
pyctdbd does not vacuum yet (tombstones stay). Vacuuming is not what this test compares.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from compare_cli import AGGRESSIVE, RealCluster, normalise, run_both, same_topology, settle  # noqa: E402
from pyctdbd_netns import NetnsCluster  # noqa: E402

SUBNET = 78             # compare_cli.py uses 77: both tests can run at once
TUNABLES = dict(AGGRESSIVE, VacuumInterval=3600)
TOOL_TIMEOUT = 60

#: Checks known to be DIFFERENT today, with the diagnosis; test_compare_db_cli.py lets these
#: (and only these) differ, and says so. Labels are exactly those of the report.
KNOWN_DIFFERENT: dict[str, str] = {
    # Checks whose difference is understood and accepted go here, with the diagnosis: none now
    # (142 of 142 SAME). Every entry must name the cause; a listed check that turns SAME warns.
}


# -- the tool, with stdin and the cluster's directory shown as <dir> --------------------------------
class _DbTool:
    root: Path

    def tool_env(self, pnn: int) -> dict[str, str]:
        raise NotImplementedError

    def ctdb(self, pnn: int, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        # Each cluster lives in its own temporary directory: `<dir>` in an argument is this
        # cluster's, and database paths and file names in the output differ in that prefix only.
        cmd = ["ctdb", *(a.replace("<dir>", str(self.root)) for a in args)]
        try:
            # Its own session: a tool that runs out of time SIGTERMs its whole process group.
            r = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                               env=self.tool_env(pnn), timeout=TOOL_TIMEOUT, start_new_session=True)
        except subprocess.TimeoutExpired:
            r = subprocess.CompletedProcess(cmd, -9, "", f"<no answer in {TOOL_TIMEOUT} s>\n")
        r.stdout = r.stdout.replace(str(self.root), "<dir>")
        r.stderr = r.stderr.replace(str(self.root), "<dir>")
        return r


class DbRealCluster(_DbTool, RealCluster):
    def tool_env(self, pnn: int) -> dict[str, str]:
        return dict(os.environ, CTDB_TEST_MODE="1", CTDB_BASE=str(self.node_dir(pnn)),
                    CTDB_SOCKET=self.socket(pnn))


class DbNetnsCluster(_DbTool, NetnsCluster):
    def tool_env(self, pnn: int) -> dict[str, str]:
        return dict(os.environ, CTDB_SOCKET=self.socket(pnn), CTDB_BASE=str(self.node_dir(pnn)))


class _View:
    """A cluster whose tool output is seen through `view` (and fed `stdin`), for run_both."""

    def __init__(self, cluster: _DbTool, view=None, stdin: str | None = None) -> None:
        self.cluster, self.view, self.stdin = cluster, view, stdin

    def ctdb(self, pnn: int, *args: str) -> subprocess.CompletedProcess:
        r = self.cluster.ctdb(pnn, *args, stdin=self.stdin)
        if self.view is not None:
            r.stdout = self.view(r.stdout)
        return r


def compare_cmd(real, ours, pnn: int, args: list[str], report: list[tuple[str, bool]], *,
                view=None, stdin: str | None = None, label: str | None = None) -> None:
    """run_both through a view; `label` (appended to the command) tells repeated commands apart."""
    before = len(report)
    run_both(_View(real, view, stdin), _View(ours, view, stdin), pnn, args, report)
    if label is not None:
        name, same = report[before]
        report[before] = (f"{name} ({label})", same)
        print(f"    ^ {label}")


# -- views: what differs by nature ----------------------------------------------------------------
BACKUP_DATE = re.compile(r"from backup @ \d{4}/\d\d/\d\d \d\d:\d\d:\d\d")


def sort_records(text: str) -> str:
    """Records (a `key(..)` line up to the blank line after it) sorted; the lines before and
    after them (a backup's header, `Dumped N records`) stay where they are."""
    head: list[str] = []
    tail: list[str] = []
    records: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("key("):
            current = [line]
            records.append(current)
        elif current is not None:
            current.append(line)
            if not line.strip():
                current = None
        elif records:
            tail.append(line)
        else:
            head.append(line)
    return "".join(head + sorted("".join(r) for r in records) + tail)


def backup_view(text: str) -> str:
    return sort_records(BACKUP_DATE.sub("from backup @ <date>", text))


def counters_shape(text: str) -> str:
    """statistics / dbstatistics with every figure replaced: the labels, their order and the
    number of figures per line stay."""
    out = []
    for line in normalise(text).splitlines():
        line = re.sub(r"Count:\d+ Key:\S*", "Count:<n> Key:<key>", line)
        line = re.sub(r"(?<![\w<.])\d+(?:\.\d+)?(?![\w>])", "<n>", line)
        line = re.sub(r"\s+<n>", " <n>", line)          # alignment follows the figures' widths
        out.append(line)
    return "\n".join(out) + "\n"


def machine_shape(text: str) -> str:
    """-X output: the header line as it is, each value line as its number of fields."""
    lines = text.splitlines()
    return "\n".join(lines[:1] + [re.sub(r"[^|]+", "<v>", line) for line in lines[1:]]) + "\n"


# -- counters -------------------------------------------------------------------------------------
def machine_statistics(c: _DbTool, pnn: int) -> dict[str, float]:
    lines = c.ctdb(pnn, "-X", "statistics").stdout.splitlines()
    if len(lines) < 2:
        return {}
    names = lines[0].strip("|").split("|")
    values = lines[1].strip("|").split("|")
    return {n: float(v) for n, v in zip(names, values)}


def text_statistics(text: str) -> dict[str, object]:
    """hop_count_buckets (list) and hot keys ([(count, hex key)]) of statistics/dbstatistics."""
    found: dict[str, object] = {"hot_keys": []}
    for line in text.splitlines():
        m = re.match(r"\s*hop_count_buckets:((?: \d+)+)$", line)
        if m:
            found["hop_count_buckets"] = [int(x) for x in m.group(1).split()]
        m = re.match(r"\s*Count:(\d+) Key:(\S*)$", line)
        if m and m.group(2):
            found["hot_keys"].append((int(m.group(1)), m.group(2)))
    return found


def check_counters(real, ours, checks, report: list[tuple[str, bool]]) -> None:
    """Each check is (label, fn(cluster) -> (moved, what was read)); it is SAME when the counter
    moved on both daemons (values are not compared across daemons)."""
    for label, fn in checks:
        results = []
        for c in (real, ours):
            try:
                results.append(fn(c))
            except Exception as exc:          # a missing line is a failed check, not a crash
                results.append((False, f"error {exc!r}"))
        same = all(moved for moved, _ in results)
        report.append((f"counters: {label}", same))
        print(f"=== counters: {label}: {'SAME' if same else 'DIFFERENT'} "
              f"(real ctdbd: {'moved' if results[0][0] else 'NOT moved'} {results[0][1]}; "
              f"pyctdbd: {'moved' if results[1][0] else 'NOT moved'} {results[1][1]})")


def stat_at_least(pnn: int, name: str, minimum: float):
    def fn(c):
        value = machine_statistics(c, pnn)[name]
        return value >= minimum, f"{name}={value:g}"
    return fn


def stat_bucket(pnn: int, command: list[str], bucket: int):
    def fn(c):
        buckets = text_statistics(c.ctdb(pnn, *command).stdout)["hop_count_buckets"]
        return buckets[bucket] >= 1, f"hop_count_buckets={buckets}"
    return fn


def hot_key(pnn: int, db: str, key: str):
    def fn(c):
        keys = text_statistics(c.ctdb(pnn, "dbstatistics", db).stdout)["hot_keys"]
        return any(k == key.encode().hex() and n >= 1 for n, k in keys), f"hot keys={keys}"
    return fn


# -- the run --------------------------------------------------------------------------------------
def dbs_everywhere(c: _DbTool, names: list[str]) -> bool:
    return all(all(f"name:{n} " in c.ctdb(p, "getdbmap").stdout for n in names) for p in range(c.n))


def db_id(c: _DbTool, name: str) -> str:
    for line in c.ctdb(0, "-X", "getdbmap").stdout.splitlines()[1:]:
        fields = line.strip("|").split("|")
        if fields[1] == name:
            return fields[0].lower()
    raise AssertionError(f"{name} not in getdbmap")


def attach_and_map(real, ours, report) -> None:
    both = (real, ours)
    run_both(real, ours, 0, ["getdbmap"], report)
    run_both(real, ours, 0, ["attach", "vol1"], report)
    run_both(real, ours, 0, ["attach", "per1", "persistent"], report)
    run_both(real, ours, 0, ["attach", "rep1", "replicated"], report)
    for c in both:
        c.wait_for("attaches on every node", lambda c=c: dbs_everywhere(c, ["vol1", "per1", "rep1"]))
    run_both(real, ours, 1, ["attach", "vol1"], report)                  # an existing name
    run_both(real, ours, 2, ["attach", "vol1", "persistent"], report)    # the wrong kind
    run_both(real, ours, 1, ["attach", "per1", "replicated"], report)
    run_both(real, ours, 2, ["attach", "per1"], report)                  # volatile of a persistent
    run_both(real, ours, 0, ["attach"], report)
    run_both(real, ours, 0, ["attach", "x", "foo"], report)
    run_both(real, ours, 1, ["attach", "vol4"], report)                  # from another node
    for c in both:
        c.wait_for("vol4 on every node", lambda c=c: dbs_everywhere(c, ["vol4"]))
    for pnn in range(3):
        run_both(real, ours, pnn, ["getdbmap"], report)
    run_both(real, ours, 2, ["-X", "getdbmap"], report)
    run_both(real, ours, 2, ["getdbstatus", "vol1"], report)
    run_both(real, ours, 1, ["getdbstatus", "per1"], report)
    rep1 = db_id(real, "rep1")
    run_both(real, ours, 0, ["getdbstatus", rep1], report)
    run_both(real, ours, 1, ["getdbstatus", "nosuch"], report)
    run_both(real, ours, 1, ["setdbreadonly", "vol4"], report)
    run_both(real, ours, 1, ["setdbsticky", "vol4"], report)
    run_both(real, ours, 1, ["getdbmap"], report)
    run_both(real, ours, 1, ["getdbstatus", "vol4"], report)
    run_both(real, ours, 2, ["getdbstatus", "vol4"], report)             # set on node 1 only
    run_both(real, ours, 0, ["detach", "vol4"], report)


def persistent(real, ours, report) -> None:
    run_both(real, ours, 0, ["pstore", "per1", "k1", "v1"], report)
    run_both(real, ours, 2, ["pfetch", "per1", "k1"], report)
    run_both(real, ours, 1, ["pfetch", "per1", "nokey"], report)
    run_both(real, ours, 2, ["getdbseqnum", "per1"], report)
    # ptrans: "key" "value" lines from stdin (an empty value deletes the key).
    compare_cmd(real, ours, 1, ["ptrans", "per1"], report, label="stdin: k2 k3, k1 deleted",
                stdin='"k2" "v2"\n"k3" "v3"\n"k1" ""\n')
    run_both(real, ours, 0, ["getdbseqnum", "per1"], report)
    run_both(real, ours, 2, ["pfetch", "per1", "k3"], report)
    run_both(real, ours, 0, ["pfetch", "per1", "k1"], report)
    run_both(real, ours, 0, ["pdelete", "per1", "k2"], report)
    run_both(real, ours, 2, ["pfetch", "per1", "k2"], report)
    for c in (real, ours):
        (c.root / "ptrans.txt").write_text('"k4" "v4"\n"k5" "with space"\n')
    run_both(real, ours, 2, ["ptrans", "per1", "<dir>/ptrans.txt"], report)
    for pnn in range(3):
        run_both(real, ours, pnn, ["getdbseqnum", "per1"], report)
    compare_cmd(real, ours, 2, ["catdb", "per1"], report, view=sort_records)
    for pnn in range(3):
        compare_cmd(real, ours, pnn, ["cattdb", "per1"], report, view=sort_records)
    # Errors: the wrong kind of database for the command, an unknown one.
    run_both(real, ours, 0, ["pstore", "vol1", "k", "v"], report)
    run_both(real, ours, 0, ["pfetch", "vol1", "k"], report)
    run_both(real, ours, 0, ["pdelete", "vol1", "k"], report)
    run_both(real, ours, 0, ["pstore", "nosuch", "k", "v"], report)
    run_both(real, ours, 0, ["catdb", "nosuch"], report)
    run_both(real, ours, 0, ["writekey", "per1", "k", "v"], report)
    run_both(real, ours, 0, ["readkey", "per1", "k3"], report)
    run_both(real, ours, 0, ["deletekey", "per1", "k3"], report)
    # Replicated: transactions like persistent, every node has every record.
    run_both(real, ours, 0, ["pstore", "rep1", "r", "1"], report)
    run_both(real, ours, 2, ["pfetch", "rep1", "r"], report)
    run_both(real, ours, 1, ["getdbseqnum", "rep1"], report)
    compare_cmd(real, ours, 1, ["cattdb", "rep1"], report, view=sort_records)
    run_both(real, ours, 0, ["writekey", "rep1", "r", "2"], report)


def volatile(real, ours, report) -> None:
    # Keys a, c have lmaster 1 and b lmaster 2 (vnnmap [0, 1, 2]): every write, read and delete
    # below from another node migrates the record.
    run_both(real, ours, 0, ["writekey", "vol1", "a", "1"], report)
    run_both(real, ours, 1, ["writekey", "vol1", "b", "2"], report)
    run_both(real, ours, 2, ["writekey", "vol1", "c", "3"], report)
    run_both(real, ours, 2, ["readkey", "vol1", "a"], report)
    run_both(real, ours, 0, ["readkey", "vol1", "c"], report)
    run_both(real, ours, 1, ["readkey", "vol1", "zz"], report)          # missing
    run_both(real, ours, 1, ["writekey", "vol1", "a", "11"], report)
    run_both(real, ours, 0, ["readkey", "vol1", "a"], report)
    run_both(real, ours, 0, ["deletekey", "vol1", "b"], report)
    run_both(real, ours, 2, ["readkey", "vol1", "b"], report)
    run_both(real, ours, 2, ["deletekey", "vol1", "nokey"], report)
    compare_cmd(real, ours, 1, ["catdb", "vol1"], report, view=sort_records)
    for pnn in range(3):
        compare_cmd(real, ours, pnn, ["cattdb", "vol1"], report, view=sort_records)
    run_both(real, ours, 0, ["getdbseqnum", "vol1"], report)
    # Records mastered on three nodes: catdb gathers them from all.
    run_both(real, ours, 0, ["attach", "vol3"], report)
    for c in (real, ours):
        c.wait_for("vol3 on every node", lambda c=c: dbs_everywhere(c, ["vol3"]))
    for k in range(1, 7):
        run_both(real, ours, k % 3, ["writekey", "vol3", f"key{k}", f"value{k}"], report)
    compare_cmd(real, ours, 2, ["catdb", "vol3"], report, view=sort_records)
    compare_cmd(real, ours, 0, ["cattdb", "vol3"], report, view=sort_records)


def seqnum_side_effect(real, ours, report) -> None:
    """GET_DB_SEQNUM reads `__db_sequence_number__\\0` with ctdb_ltdb_fetch, which stores an
    initial (empty) record when the key is missing and this node is its lmaster (node 1 for that
    key, vnnmap [0, 1, 2]) or the database is persistent; a dump shows it."""
    run_both(real, ours, 0, ["attach", "vseq"], report)
    run_both(real, ours, 0, ["attach", "per3", "persistent"], report)
    for c in (real, ours):
        c.wait_for("vseq, per3 on every node", lambda c=c: dbs_everywhere(c, ["vseq", "per3"]))
    run_both(real, ours, 0, ["getdbseqnum", "vseq"], report)       # not the lmaster
    run_both(real, ours, 1, ["getdbseqnum", "vseq"], report)       # the lmaster
    for pnn in (0, 1):
        compare_cmd(real, ours, pnn, ["cattdb", "vseq"], report, view=sort_records,
                    label="after getdbseqnum")
    run_both(real, ours, 2, ["getdbseqnum", "per3"], report)       # no commit yet
    compare_cmd(real, ours, 2, ["cattdb", "per3"], report, view=sort_records,
                label="after getdbseqnum")
    compare_cmd(real, ours, 0, ["cattdb", "per3"], report, view=sort_records,
                label="not asked for its seqnum")


def statistics(real, ours, report) -> None:
    """Shape of statistics/dbstatistics, and on each daemon the counters the traffic moves.

    Traffic after statisticsreset on every node, in a fresh database vstat: `hot2` (lmaster 1)
    written on node 0 (node 0 asks its lmaster 1, which creates it and hands it to node 0), then
    read on node 2 (node 2 asks 1, 1 redirects to the dmaster 0 (hop 1), 0 sends REQ_DMASTER to
    1, 1 answers REPLY_DMASTER to 2); then a persistent commit from node 1 (UPDATE_RECORD applied
    on every node, in a child on ctdbd)."""
    both = (real, ours)
    run_both(real, ours, 0, ["attach", "vstat"], report)
    for c in both:
        c.wait_for("vstat on every node", lambda c=c: dbs_everywhere(c, ["vstat"]))
    for pnn in range(3):
        run_both(real, ours, pnn, ["statisticsreset"], report)
    run_both(real, ours, 0, ["writekey", "vstat", "hot2", "x"], report)
    run_both(real, ours, 2, ["readkey", "vstat", "hot2"], report)
    run_both(real, ours, 1, ["pstore", "per1", "kstat", "v"], report)
    for pnn in range(3):
        compare_cmd(real, ours, pnn, ["statistics"], report, view=counters_shape)
    compare_cmd(real, ours, 0, ["-X", "statistics"], report, view=machine_shape)
    for pnn in range(3):
        compare_cmd(real, ours, pnn, ["dbstatistics", "vstat"], report, view=counters_shape)
    compare_cmd(real, ours, 1, ["dbstatistics", "per1"], report, view=counters_shape)
    run_both(real, ours, 1, ["dbstatistics", "nosuch"], report)
    checks = [
        ("node 0 statistics client.req_call (writekey)", stat_at_least(0, "client.req_call", 1)),
        ("node 0 statistics total_calls (writekey)", stat_at_least(0, "total_calls", 1)),
        ("node 0 statistics num_call_latency (writekey)", stat_at_least(0, "num_call_latency", 1)),
        ("node 0 statistics node.reply_dmaster (record came here)",
         stat_at_least(0, "node.reply_dmaster", 1)),
        ("node 0 statistics node.req_call (redirected read)", stat_at_least(0, "node.req_call", 1)),
        ("node 0 statistics max_hop_count (redirected read)", stat_at_least(0, "max_hop_count", 1)),
        ("node 0 statistics hop_count_buckets[1]", stat_bucket(0, ["statistics"], 1)),
        ("node 1 statistics node.req_call (lmaster)", stat_at_least(1, "node.req_call", 2)),
        ("node 1 statistics node.req_dmaster (lmaster)", stat_at_least(1, "node.req_dmaster", 1)),
        ("node 1 statistics hop_count_buckets[0]", stat_bucket(1, ["statistics"], 0)),
        ("node 2 statistics client.req_call (readkey)", stat_at_least(2, "client.req_call", 1)),
        ("node 2 statistics node.reply_dmaster (record came here)",
         stat_at_least(2, "node.reply_dmaster", 1)),
        ("node 1 statistics client.req_control (pstore)", stat_at_least(1, "client.req_control", 1)),
        *((f"node {p} statistics childwrite_calls (UPDATE_RECORD applied)",
           stat_at_least(p, "childwrite_calls", 1)) for p in range(3)),
        ("node 0 statistics num_childwrite_latency (UPDATE_RECORD applied)",
         stat_at_least(0, "num_childwrite_latency", 1)),
        ("node 0 dbstatistics vstat hop_count_buckets[1]", stat_bucket(0, ["dbstatistics", "vstat"], 1)),
        ("node 1 dbstatistics vstat hop_count_buckets[0]", stat_bucket(1, ["dbstatistics", "vstat"], 0)),
        ("node 0 dbstatistics vstat hot key 'hot2' (migrated here)", hot_key(0, "vstat", "hot2")),
        ("node 2 dbstatistics vstat hot key 'hot2' (migrated here)", hot_key(2, "vstat", "hot2")),
    ]
    check_counters(real, ours, checks, report)


def backup_restore_wipe(real, ours, report) -> None:
    """The commands built on database recovery controls (freeze, transaction, wipe, push, thaw),
    last: on a daemon without them the tool's failure path forces a recovery."""
    run_both(real, ours, 0, ["backupdb", "per1", "<dir>/per1.bak"], report)
    compare_cmd(real, ours, 0, ["dumpdbbackup", "<dir>/per1.bak"], report, view=backup_view)
    run_both(real, ours, 1, ["backupdb", "vol1", "<dir>/vol1.bak"], report)
    compare_cmd(real, ours, 1, ["dumpdbbackup", "<dir>/vol1.bak"], report, view=backup_view)
    run_both(real, ours, 0, ["backupdb", "nosuch", "<dir>/x.bak"], report)
    run_both(real, ours, 0, ["wipedb", "vol3"], report)
    compare_cmd(real, ours, 1, ["catdb", "vol3"], report, view=sort_records, label="after wipedb")
    compare_cmd(real, ours, 1, ["restoredb", "<dir>/per1.bak", "per2"], report, view=backup_view)
    for c in (real, ours):      # restoredb attaches per2 first; where it failed, go on anyway
        try:
            c.wait_for("per2 on every node", lambda c=c: dbs_everywhere(c, ["per2"]), timeout=10)
        except AssertionError:
            print(f"--- {type(c).__name__}: per2 is not on every node")
    compare_cmd(real, ours, 2, ["catdb", "per2"], report, view=sort_records, label="after restoredb")
    compare_cmd(real, ours, 2, ["getdbseqnum", "per2"], report, label="after restoredb")
    run_both(real, ours, 0, ["wipedb", "per1"], report)
    compare_cmd(real, ours, 2, ["catdb", "per1"], report, view=sort_records, label="after wipedb")
    compare_cmd(real, ours, 0, ["restoredb", "<dir>/per1.bak"], report, view=backup_view)
    compare_cmd(real, ours, 1, ["pfetch", "per1", "k3"], report, label="after restoredb")


def compare(keep_dir: Path | None = None) -> list[tuple[str, bool]]:
    """Run both clusters through the same database commands; return (check, same) in order."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as t1, tempfile.TemporaryDirectory() as t2:
        real = DbRealCluster(Path(t1), 3, tunables=TUNABLES)
        ours = DbNetnsCluster(Path(t2), 3, tunables=TUNABLES)
        same_topology(real, SUBNET)
        same_topology(ours, SUBNET)
        report: list[tuple[str, bool]] = []
        try:
            # As compare_cli: node 0 first, the others 2 s later, in both clusters.
            for c in (real, ours):
                c.build_network()
                c.configure()
                c.start_node(0)
            time.sleep(2)
            for c in (real, ours):
                for pnn in range(1, c.n):
                    c.start_node(pnn)
            settle(real, real.healthy, 90)
            settle(ours, ours.healthy, 30)
            # Same vnnmap: same lmasters. Which node won the cluster lock as the nodes came up is
            # a race in both daemons (pyctdbd's node 0 cannot take it alone: the majority rule),
            # not something the database commands depend on.
            run_both(real, ours, 0, ["status"], report, mask=(r"^Leader:\d+$", "Leader:<n>"))
            attach_and_map(real, ours, report)
            persistent(real, ours, report)
            volatile(real, ours, report)
            seqnum_side_effect(real, ours, report)
            statistics(real, ours, report)
            backup_restore_wipe(real, ours, report)
        finally:
            real.stop()
            ours.stop()
            if keep_dir is not None:
                import shutil
                shutil.copytree(t1, keep_dir / "real", dirs_exist_ok=True, ignore_dangling_symlinks=True,
                                ignore=shutil.ignore_patterns("*.socket"))
                shutil.copytree(t2, keep_dir / "ours", dirs_exist_ok=True, ignore_dangling_symlinks=True,
                                ignore=shutil.ignore_patterns("*.socket"))
                print(f"logs kept in {keep_dir}")
        print(f"\nSUMMARY ({len(report)} checks, "
              f"{sum(same for _, same in report)} SAME, {time.monotonic() - t0:.0f} s)")
        for label, same in report:
            known = "" if same or label not in KNOWN_DIFFERENT else f"   [known: {KNOWN_DIFFERENT[label]}]"
            print(f"  {'SAME     ' if same else 'DIFFERENT'} {label}{known}")
        return report


def unexpected(report: list[tuple[str, bool]]) -> list[str]:
    """DIFFERENT checks that KNOWN_DIFFERENT does not explain."""
    return [label for label, same in report if not same and label not in KNOWN_DIFFERENT]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--keep", action="store_true", help="copy the node directories (logs) aside")
    args = p.parse_args()
    report = compare(Path(tempfile.mkdtemp(prefix="compare-db-cli-")) if args.keep else None)
    bad = unexpected(report)
    if bad:
        print("\nUNEXPECTED DIFFERENCES:\n  " + "\n  ".join(bad))
    return 0 if report and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
