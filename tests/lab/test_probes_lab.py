"""The probes as the lab runs them: processes in a client netns against a standalone smbd.

Two network namespaces joined by a veth pair (server 198.19.240.1, client 198.19.240.2), an
smbd with every state directory private to the test (lab.md §9.1), and the probes started with
``ip netns exec``.  "The server vanishes" is an nftables drop-everything table in the server
namespace (what a powered-off host looks like to the client: no answer, no RST); "the
connection is reset" is ``ss -K`` on the server side.  Measured figures (attempt-start gaps,
CPU) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from ctdblab.cluster.procs import kill_netns, named_netns

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

SERVER_IP = "198.19.240.1"
CLIENT_IP = "198.19.240.2"
PASSWORD = "probe-Pass-1"
SMALL_FILE = "probe.dat"     # 256 KiB
BIG_FILE = "big.dat"         # 2 MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")
_serial = itertools.count()


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


class NetnsPair:
    """Server and client namespaces and the veth between them; names unique per test."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000:05d}{next(_serial) % 100:02d}"
        self.server = f"prb{tag}s"     # netns and interface names (≤ 15 characters)
        self.client = f"prb{tag}c"
        self.silenced = False

    def create(self) -> None:
        run("ip", "netns", "add", self.server)
        run("ip", "netns", "add", self.client)
        run("ip", "link", "add", self.server, "type", "veth", "peer", "name", self.client)
        for ns, ip in ((self.server, SERVER_IP), (self.client, CLIENT_IP)):
            run("ip", "link", "set", ns, "netns", ns)
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", ns, "up")

    def destroy(self) -> None:
        for ns in (self.server, self.client):
            try:
                ident = named_netns(ns)
                if ident is not None:
                    kill_netns(ident)
            finally:
                run("ip", "netns", "del", ns, check=False)

    def silence_server(self) -> float:
        """Drop every packet in and out of the server: it looks powered off, sends no RST."""
        rules = ("table inet prbsilence {\n"
                 " chain in { type filter hook input priority 0; policy drop; }\n"
                 " chain out { type filter hook output priority 0; policy drop; }\n}\n")
        subprocess.run(["ip", "netns", "exec", self.server, "nft", "-f", "-"], input=rules,
                       text=True, check=True, timeout=10)
        self.silenced = True
        return time.time()

    def unsilence_server(self) -> float:
        """Lift the silence; returns the instant just before, the earliest the server can
        answer again (the rules vanish before `ip netns exec nft` has even exited)."""
        t = time.time()
        run("ip", "netns", "exec", self.server, "nft", "delete", "table", "inet", "prbsilence")
        self.silenced = False
        return t

    def kill_connections(self, client_port: int) -> float:
        """``ss -K`` the server side of one client connection: the client gets an RST."""
        t = time.time()
        run("ip", "netns", "exec", self.server, "ss", "-K", "-tn", "dst", CLIENT_IP,
            "dport", "=", f":{client_port}")
        return t


class SmbServer:
    """A standalone smbd in the server namespace with private state dirs (lab.md §9.1)."""

    def __init__(self, pair: NetnsPair, root: Path):
        self.pair = pair
        self.root = root
        self.conf = root / "smb.conf"
        self.share = root / "share"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        for sub in ("lock", "state", "cache", "pid", "private", "ncalrpc", "share"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(f"""[global]
server role = standalone server
netbios name = PRB{os.getpid() % 100000}
workgroup = WORKGROUP
disable netbios = yes
smb ports = 445
load printers = no
printing = bsd
printcap name = /dev/null
disable spoolss = yes
passdb backend = tdbsam
lock directory = {r}/lock
state directory = {r}/state
cache directory = {r}/cache
pid directory = {r}/pid
private dir = {r}/private
ncalrpc dir = {r}/ncalrpc
log file = {r}/log.smbd

[share]
path = {self.share}
read only = no
force user = root
""")
        (self.share / SMALL_FILE).write_bytes(os.urandom(256 * 1024))
        (self.share / BIG_FILE).write_bytes(os.urandom(2 * 1024 * 1024))
        subprocess.run(["smbpasswd", "-c", str(self.conf), "-s", "-a", "root"],
                       input=f"{PASSWORD}\n{PASSWORD}\n", text=True, check=True,
                       capture_output=True, timeout=30)

    def start(self) -> None:
        self.write_config()
        log = open(self.root / "smbd.out", "wb")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.pair.server, "smbd", "--foreground",
             "--no-process-group", "-s", str(self.conf), "--debug-stdout"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = run("ip", "netns", "exec", self.pair.server, "ss", "-Hltn", "sport", "=",
                      ":445").stdout
            if out.strip():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"smbd did not listen on :445: "
                             f"{(self.root / 'smbd.out').read_text()[-2000:]}")

    def stop(self) -> None:
        """Kill smbd and its children (every process of the server namespace)."""
        kill_netns(named_netns(self.pair.server))
        if self.process is not None:
            self.process.wait(10)


class Probe:
    """A probe process in a namespace; its JSON lines are collected as they come."""

    def __init__(self, ns: str, name: str, args: list[str]):
        self.name = name
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", f"ctdblab.scenarios.probes.{name}",
             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._cond = threading.Condition()
        self._done = False
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid   # ip netns exec execs the command: same pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                 count: int = 1) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if predicate(e)]
                if len(found) >= count:
                    return found
                left = end - time.monotonic()
                if left <= 0 or self._done:
                    raise AssertionError(
                        f"{self.name}: expected {count} matching events, got {len(found)}; "
                        f"last events {self.events[-5:]}; stderr {self.stderr[-2000:]!r}")
                self._cond.wait(left)

    def captured(self, what: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        return self.wait_for(lambda e: e["kind"] == "capture" and e["what"] == what, timeout,
                             count)

    def ops(self, op_type: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events
                    if e["kind"] == "op" and (op_type is None or e["type"] == op_type)]

    def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took to exit)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - began

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Lab:
    def __init__(self, pair: NetnsPair, server: SmbServer):
        self.pair = pair
        self.server = server
        self.probes: list[Probe] = []

    def client_probe(self, name: str, *args: str) -> Probe:
        probe = Probe(self.pair.client, name, list(args))
        self.probes.append(probe)
        return probe

    def server_probe(self, name: str, *args: str) -> Probe:
        probe = Probe(self.pair.server, name, list(args))
        self.probes.append(probe)
        return probe

    def smb_args(self, *extra: str, file: str = SMALL_FILE) -> list[str]:
        return [SERVER_IP, "--password", PASSWORD, "--file", file, *extra]


@pytest.fixture
def lab(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    pair = NetnsPair()
    server = SmbServer(pair, tmp_path / "smbd")
    the_lab = Lab(pair, server)
    try:
        pair.create()
        server.start()
        yield the_lab
    finally:
        for probe in the_lab.probes:
            probe.kill()
        pair.destroy()


def check_op_pairs(probe: Probe) -> None:
    """Every invoked op has exactly one ok or fail, and ids are unique."""
    invoked = [e["id"] for e in probe.ops("invoke")]
    completed = [e["id"] for e in probe.ops() if e["type"] in ("ok", "fail")]
    assert len(invoked) == len(set(invoked))
    assert sorted(invoked) == sorted(completed)


def invoke_gaps(probe: Probe, after: float, before: float) -> list[float]:
    starts = sorted(e["t"] for e in probe.ops("invoke") if after <= e["t"] <= before)
    return [b - a for a, b in zip(starts, starts[1:])]


# --- smb_retry -------------------------------------------------------------------------------


def test_smb_retry_warms_up_waits_for_go_and_stops_after_successes(lab: Lab):
    retry = lab.client_probe("smb_retry", *lab.smb_args("--process", "c1-retry"))
    (warmup,) = retry.captured("warmup")
    assert warmup["ok"] is True and warmup["value"] == 65536
    retry.captured("ready")
    cpu0, t0 = cpu_seconds(retry.pid), time.monotonic()
    time.sleep(1.0)
    idle_cpu = (cpu_seconds(retry.pid) - cpu0) / (time.monotonic() - t0)
    assert retry.ops() == []                      # nothing happens before the trigger
    retry.send_line("go")
    (stop,) = retry.captured("stop")
    assert retry.wait_exit() == 0
    assert stop["reason"] == "successes" and stop["successes"] >= 3
    assert retry.captured("trigger")[0]["source"] == "stdin"
    oks = retry.ops("ok")
    assert len(oks) >= 3
    for ok in oks:
        assert ok["value"] == 65536 and ok["f"] == "smb_connect_read"
        assert ok["process"] == "c1-retry" and ok["role"] == "victim" and ok["target"] == SERVER_IP
        assert 0 < ok["latency_s"] < 2.0
        assert set(ok["steps"]) == {"connect", "session", "tree", "open", "read", "close"}
    check_op_pairs(retry)
    print(f"\nsmb_retry idle CPU before the trigger: {idle_cpu * 100:.2f} % of a core; "
          f"attempt latency {[round(o['latency_s'], 3) for o in oks]}")
    assert idle_cpu < 0.05


def test_smb_retry_sees_the_server_return_within_50ms(lab: Lab):
    retry = lab.client_probe("smb_retry", *lab.smb_args("--no-warmup"))
    retry.captured("ready")
    lab.pair.silence_server()
    retry.proc.send_signal(signal.SIGUSR1)
    assert retry.captured("trigger")[0]["source"] == "sigusr1"
    time.sleep(0.6)                                 # every loop has started
    cpu0, t0 = cpu_seconds(retry.pid), time.time()
    time.sleep(4.0)
    down_cpu = (cpu_seconds(retry.pid) - cpu0) / (time.time() - t0)
    threads = thread_count(retry.pid)
    t_up = lab.pair.unsilence_server()
    retry.captured("stop", timeout=15)
    assert retry.wait_exit() == 0
    check_op_pairs(retry)

    # While the server was silent every attempt timed out in its TCP connect, within ~0.5 s.
    down_fails = [e for e in retry.ops("fail") if e["t"] < t_up - 0.05 and not e.get("aborted")]
    assert len(down_fails) >= 60
    for fail in down_fails:
        assert fail["phase"] == "connect" and "timed out" in fail["error"]
        assert 0.2 <= fail["latency_s"] <= 0.9
    # Attempts started every ~50 ms, all the time.
    gaps = invoke_gaps(retry, t0, t_up)
    gaps.sort()
    print(f"\nsmb_retry while the server is silent: {len(gaps) + 1} attempt starts in "
          f"{t_up - t0:.2f} s, gap median {gaps[len(gaps) // 2] * 1000:.1f} ms, "
          f"max {gaps[-1] * 1000:.1f} ms; CPU {down_cpu * 100:.1f} % of a core; "
          f"{threads} threads")
    assert gaps[len(gaps) // 2] == pytest.approx(0.05, abs=0.005)
    assert gaps[-1] < 0.1
    assert threads < 40
    # The first success started within one stagger step (plus slack) of the server's return.
    oks = retry.ops("ok")
    invoked_at = {e["id"]: e["t"] for e in retry.ops("invoke")}
    first_ok = min(oks, key=lambda e: e["t"])
    first_start = min(invoked_at[e["id"]] for e in oks)
    print(f"server back at t_up; first successful attempt started {first_start - t_up:+.3f} s, "
          f"first ok at {first_ok['t'] - t_up:+.3f} s (latency {first_ok['latency_s']:.3f} s)")
    assert first_start - t_up < 0.15
    assert first_ok["t"] - t_up < 1.0


def test_smb_retry_deadline_cuts_a_silent_smb_server_and_sigterm_is_prompt(lab: Lab):
    # A server that accepts TCP but never says a word: every attempt must end at its deadline.
    mute = lab.server_probe("tcp_listener", "--port", "4445")
    mute.captured("listening")
    retry = lab.client_probe("smb_retry", *lab.smb_args("--port", "4445", "--deadline", "0.8",
                                                        "--start-now"))
    time.sleep(3.0)
    threads = thread_count(retry.pid)
    code, took = retry.terminate()
    assert code == 0 and took < 1.5, took
    (stop,) = retry.captured("stop")
    assert stop["reason"] == "signal" and stop["successes"] == 0
    check_op_pairs(retry)
    fails = [e for e in retry.ops("fail") if not e.get("aborted")]
    assert len(fails) >= 15
    for fail in fails:
        assert fail["error"].startswith("DeadlineExceeded"), fail["error"]
        assert fail["phase"] == "connect"           # negotiate never answered
        assert 0.78 <= fail["latency_s"] < 1.2, fail["latency_s"]
    aborted = [e for e in retry.ops("fail") if e.get("aborted")]
    assert 1 <= len(aborted) <= 10                  # the attempts in flight at SIGTERM
    print(f"\nsmb_retry vs mute server: {len(fails)} attempts cut at their 0.8 s deadline, "
          f"{threads} threads, SIGTERM -> exit in {took:.3f} s")
    assert threads < 40


def test_smb_retry_does_not_spin_when_connections_are_refused(lab: Lab):
    lab.server.stop()                               # nothing listens on :445 any more
    retry = lab.client_probe("smb_retry", *lab.smb_args("--start-now"))
    time.sleep(0.3)
    cpu0, t0 = cpu_seconds(retry.pid), time.time()
    time.sleep(2.0)
    t1 = time.time()
    cpu = (cpu_seconds(retry.pid) - cpu0) / (t1 - t0)
    code, took = retry.terminate()
    assert code == 0 and took < 1.0
    fails = [e for e in retry.ops("fail") if t0 <= e["t"] <= t1]
    assert all("Connection refused" in e["error"] for e in fails)
    rate = len(fails) / (t1 - t0)
    print(f"\nsmb_retry vs refused port: {rate:.1f} attempts/s, CPU {cpu * 100:.1f} % of a core")
    assert 15 <= rate <= 25                          # K / interval = 20 attempts per second


# --- smb_hold --------------------------------------------------------------------------------


def test_smb_hold_reports_the_reset_at_once(lab: Lab):
    hold = lab.client_probe("smb_hold", *lab.smb_args("--process", "c1-hold"))
    (opened,) = hold.captured("opened")
    assert opened["local_ip"] == CLIENT_IP
    hold.wait_for(lambda e: e["kind"] == "op" and e["type"] == "ok", count=3)
    cpu0, t0 = cpu_seconds(hold.pid), time.monotonic()
    time.sleep(1.0)
    cpu = (cpu_seconds(hold.pid) - cpu0) / (time.monotonic() - t0)
    t_kill = lab.pair.kill_connections(opened["local_port"])
    (closed,) = hold.captured("closed")
    assert hold.wait_exit() == 0
    assert closed["cause"] == "connection_closed" and closed["how"] == "reset"
    assert "SMBConnectionClosed" in closed["error"]
    assert t_kill - 0.01 <= closed["t"] <= t_kill + 0.2, closed["t"] - t_kill
    assert hold.captured("stop")[0]["reason"] == "closed"
    assert hold.ops("fail")[-1]["error"] == closed["error"]
    check_op_pairs(hold)
    for ok in hold.ops("ok"):
        assert ok["value"] == 4096 and ok["f"] == "smb_read" and ok["process"] == "c1-hold"
    print(f"\nsmb_hold: closed {closed['t'] - t_kill:+.4f} s after ss -K; CPU while holding "
          f"{cpu * 100:.2f} % of a core")
    assert cpu < 0.05


def test_smb_hold_deadline_when_the_server_goes_silent(lab: Lab):
    hold = lab.client_probe("smb_hold", *lab.smb_args("--op-deadline", "0.6"))
    hold.captured("opened")
    hold.wait_for(lambda e: e["kind"] == "op" and e["type"] == "ok")
    t_silent = lab.pair.silence_server()
    (closed,) = hold.captured("closed", timeout=5)
    assert hold.wait_exit() == 0
    assert closed["cause"] == "deadline" and closed["error"].startswith("DeadlineExceeded")
    assert 0.55 <= closed["t"] - closed["invoked_t"] <= 1.0
    assert closed["invoked_t"] <= t_silent + 0.25
    check_op_pairs(hold)


def test_smb_hold_sigterm_while_blocked(lab: Lab):
    hold = lab.client_probe("smb_hold", *lab.smb_args())
    hold.captured("opened")
    lab.pair.silence_server()
    time.sleep(0.5)                                 # a read is now stuck (120 s deadline)
    code, took = hold.terminate()
    assert code == 0 and took < 1.0
    assert hold.captured("stop")[0]["reason"] == "signal"
    assert not [e for e in hold.events if e["kind"] == "capture" and e["what"] == "closed"]
    check_op_pairs(hold)
    assert hold.ops("fail")[-1]["aborted"] is True


# --- smb_stall -------------------------------------------------------------------------------


def test_smb_stall_shows_a_stall_and_recovers(lab: Lab):
    stall = lab.client_probe("smb_stall", *lab.smb_args("--op-deadline", "5", file=BIG_FILE))
    stall.wait_for(lambda e: e["kind"] == "op" and e["type"] == "ok", count=5)
    cpu0, t0 = cpu_seconds(stall.pid), time.monotonic()
    time.sleep(2.0)
    cpu = (cpu_seconds(stall.pid) - cpu0) / (time.monotonic() - t0)
    t_silent = lab.pair.silence_server()
    time.sleep(1.0)
    t_back = lab.pair.unsilence_server()
    count_before = len(stall.ops("ok"))
    stall.wait_for(lambda e: e["kind"] == "op" and e["type"] == "ok", count=count_before + 3,
                   timeout=10)
    code, took = stall.terminate()
    assert code == 0 and took < 1.0
    check_op_pairs(stall)
    oks = stall.ops("ok")
    assert all(e["value"] == 1 << 20 and e["role"] == "survivor" for e in oks)
    quiet = [e for e in oks if e["t"] < t_silent]
    worst = max(oks, key=lambda e: e["latency_s"])
    assert max(e["latency_s"] for e in quiet) < 0.5
    assert worst["latency_s"] >= (t_back - t_silent) * 0.8   # the op stuck across the silence
    assert stall.captured("stop")[0]["ok"] == len(oks)
    period = [b["t"] - a["t"] for a, b in zip(quiet, quiet[1:])]
    print(f"\nsmb_stall: worst op {worst['latency_s']:.3f} s across a {t_back - t_silent:.2f} s "
          f"silence; quiet ops every {sum(period) / len(period):.3f} s, CPU "
          f"{cpu * 100:.1f} % of a core (1 MiB per 0.1 s)")
    assert cpu < 0.5


# --- tcp_hold / tcp_listener -----------------------------------------------------------------


def test_tcp_hold_reset_eof_and_a_silent_server(lab: Lab):
    listener = lab.server_probe("tcp_listener", "--port", "7777", "--greeting", "hello")
    listener.captured("listening")
    smb_conn = lab.client_probe("tcp_hold", f"{SERVER_IP}:445", f"{SERVER_IP}:445")
    greeted = lab.client_probe("tcp_hold", f"{SERVER_IP}:7777", "--greeting")
    held = smb_conn.captured("connected", count=2)
    (g,) = greeted.captured("connected")
    assert g["greeting"] == "hello" and g["remote_port"] == 7777
    (accepted,) = listener.captured("accepted")
    assert accepted["remote_port"] == g["local_port"] and accepted["remote_ip"] == CLIENT_IP

    # A silent (powered-off) server: nothing happens to idle connections.
    lab.pair.silence_server()
    time.sleep(1.0)
    lab.pair.unsilence_server()
    for probe in (smb_conn, greeted):
        assert [e["what"] for e in probe.events if e["kind"] == "capture"] == ["connected"] * (
            2 if probe is smb_conn else 1)

    # ss -K on the server: the client blocked in recv() gets ECONNRESET.
    t_kill = lab.pair.kill_connections(held[0]["local_port"])
    (reset,) = smb_conn.captured("reset")
    assert reset["errno"] == 104 and reset["conn"] == held[0]["conn"]
    assert t_kill - 0.01 <= reset["t"] <= t_kill + 0.2

    # The listener dies: the kernel closes its sockets with a FIN.
    os.kill(listener.pid, signal.SIGKILL)
    (eof,) = greeted.captured("eof")
    assert greeted.wait_exit() == 0
    assert greeted.captured("stop")[0]["finals"] == ["eof"]

    # The second smbd connection is still held: SIGTERM reports it as stopped.
    code, took = smb_conn.terminate()
    assert code == 0 and took < 1.0
    finals = sorted(e["what"] for e in smb_conn.events
                    if e["kind"] == "capture" and e["what"] in ("reset", "eof", "timeout",
                                                                "error", "stopped"))
    assert finals == ["reset", "stopped"]


# --- ping ------------------------------------------------------------------------------------


def test_ping_probe_sees_the_silence(lab: Lab):
    ping = lab.client_probe("ping", SERVER_IP, "--process", "c1-ping")
    ping.captured("start")
    ping.captured("reply", count=20)
    cpu0, t0 = cpu_seconds(ping.pid), time.monotonic()
    children = [int(p) for p in Path(f"/proc/{ping.pid}/task/{ping.pid}/children")
                .read_text().split()]
    child_cpu0 = sum(cpu_seconds(c) for c in children)
    time.sleep(1.0)
    t_silent = lab.pair.silence_server()
    time.sleep(0.5)
    t_back = lab.pair.unsilence_server()
    ping.wait_for(lambda e: e.get("what") == "reply" and e["t"] > t_back, count=10)
    cpu = (cpu_seconds(ping.pid) - cpu0) / (time.monotonic() - t0)
    child_cpu = (sum(cpu_seconds(c) for c in children) - child_cpu0) / (time.monotonic() - t0)
    code, took = ping.terminate()
    assert code == 0 and took < 1.0
    replies = [e for e in ping.events if e.get("what") == "reply"]
    assert all(e["target"] == SERVER_IP and e["process"] == "c1-ping" for e in replies)
    seqs = [e["seq"] for e in replies]
    assert seqs == sorted(seqs)
    in_gap = [e for e in replies if t_silent + 0.01 < e["t"] < t_back - 0.01]
    assert in_gap == []
    before = max(e["t"] for e in replies if e["t"] <= t_silent + 0.01)
    after = min(e["t"] for e in replies if e["t"] >= t_back - 0.01)
    assert after - before >= (t_back - t_silent) - 0.05
    assert after - t_back < 0.1                       # 20 ms interval: back within a few ticks
    (stop,) = ping.captured("stop")
    assert stop["transmitted"] > stop["received"] > 0
    print(f"\nping probe: first reply {after - t_back:+.3f} s after the server came back; "
          f"CPU probe {cpu * 100:.2f} % + ping {child_cpu * 100:.2f} % of a core")
    assert cpu < 0.1
