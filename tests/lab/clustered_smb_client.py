"""SMB client checks of a clustered Samba, run inside a lab client (smbprotocol).

    python clustered_smb_client.py login IP --user U --password P
    python clustered_smb_client.py hold IP --file NAME            (until stdin closes)
    python clustered_smb_client.py sharing IP_A IP_B --file NAME
    python clustered_smb_client.py brlock IP_A IP_B --file NAME --share SHARE
    python clustered_smb_client.py oplock IP_A IP_B --file NAME
    python clustered_smb_client.py lease IP_A IP_B --file NAME
    python clustered_smb_client.py opens IP --file PREFIX --count N   (N new files, each closed)

Each command prints JSON lines; the last one is the result.  The program only observes and
reports (NT status names, timings); tests/lab/test_clustered_samba.py decides.  A and B are two
public IPs held by two different nodes, so every conflict seen here crossed the cluster: share
modes through locking.tdb, byte-range locks through brlock.tdb, break requests as CTDB
messages between the two nodes' smbd.

Signing is required, so a guest session (what "map to guest = Bad User" makes of an unknown user)
fails instead of passing for a login.  smbprotocol has no handler for a server's oplock or lease
break notification (message id 0xFFFFFFFFFFFFFFFF); :class:`BreakCatcher` registers one.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import threading
import time
import uuid

from smbprotocol.connection import Connection, Request
from smbprotocol.create_contexts import (CreateContextName, LeaseState, SMB2CreateContextRequest,
                                         SMB2CreateRequestLease)
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.header import NtStatus, SMB2HeaderRequest
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask, ImpersonationLevel, LockFlags, Open,
                              RequestedOplockLevel, ShareAccess, SMB2LockElement, SMB2LockRequest)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

BREAK_MESSAGE_ID = 0xFFFFFFFFFFFFFFFF
SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
READ_WRITE = (FilePipePrinterAccessMask.FILE_READ_DATA | FilePipePrinterAccessMask.FILE_WRITE_DATA
              | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES)


def emit(**fields) -> None:
    print(json.dumps(fields, sort_keys=True), flush=True)


# NT status names: smbprotocol's own, plus the lock statuses it does not name.
STATUS_NAMES = {v: k for k, v in vars(NtStatus).items() if k.startswith("STATUS_")}
STATUS_NAMES.update({0xC0000054: "STATUS_FILE_LOCK_CONFLICT", 0xC0000055: "STATUS_LOCK_NOT_GRANTED",
                     0xC0000022: "STATUS_ACCESS_DENIED"})


def status_name(exc: BaseException) -> str:
    """``STATUS_SHARING_VIOLATION`` for an SMB error response, else the exception's type: text."""
    if isinstance(exc, SMBResponseException):
        return STATUS_NAMES.get(exc.status, f"0x{exc.status:08X}")
    return f"{type(exc).__name__}: {exc}"


class Client:
    """One TCP connection + session + tree connect to one public IP."""

    def __init__(self, ip: str, share: str, user: str, password: str):
        self.ip = ip
        self.conn = Connection(uuid.uuid4(), ip, 445, require_signing=True)
        self.conn.connect(timeout=5)
        self.session = Session(self.conn, user, password)
        self.session.connect()
        self.guest = self.session.signing_key is None
        self.tree = TreeConnect(self.session, rf"\\{ip}\{share}")
        self.tree.connect()

    def open(self, name: str, *, access: int = READ_WRITE, share: int = SHARE_ALL,
             disposition: int = CreateDisposition.FILE_OPEN_IF,
             oplock: int = RequestedOplockLevel.SMB2_OPLOCK_LEVEL_NONE,
             contexts: list | None = None) -> Open:
        handle = Open(self.tree, name)
        handle.create(ImpersonationLevel.Impersonation, access,
                      FileAttributes.FILE_ATTRIBUTE_NORMAL, share, disposition,
                      CreateOptions.FILE_NON_DIRECTORY_FILE, create_contexts=contexts,
                      oplock_level=oplock)
        return handle

    def lock(self, handle: Open, offset: int, length: int, flags: int) -> None:
        element = SMB2LockElement()
        element["offset"] = offset
        element["length"] = length
        element["flags"] = flags
        request = SMB2LockRequest()
        request["file_id"] = handle.file_id
        request["locks"] = [element]
        sent = self.conn.send(request, self.session.session_id, self.tree.tree_connect_id)
        self.conn.receive(sent)

    def close(self) -> None:
        try:
            self.conn.disconnect(True)
        except Exception:
            pass


class BreakCatcher:
    """Receives the first oplock/lease break notification the server sends on a connection."""

    def __init__(self, client: Client):
        self.request = Request(SMB2HeaderRequest(), None, client.conn)
        client.conn.outstanding_requests[BREAK_MESSAGE_ID] = self.request

    def wait(self, timeout: float) -> dict | None:
        if not self.request.response_event.wait(timeout):
            return None
        data = self.request.response["data"].get_value()
        size = struct.unpack_from("<H", data, 0)[0]
        if size == 24:        # oplock break notification
            return {"kind": "oplock", "new_level": data[2]}
        if size == 44:        # lease break notification
            flags, = struct.unpack_from("<I", data, 4)
            current, new = struct.unpack_from("<II", data, 24)
            return {"kind": "lease", "flags": flags, "current_state": current, "new_state": new}
        return {"kind": f"unknown (structure size {size})"}


def timed(fn) -> tuple[str, float]:
    """Run ``fn``; return ("OK" or the status name, seconds it took)."""
    t0 = time.monotonic()
    try:
        fn()
        return "OK", time.monotonic() - t0
    except Exception as e:
        return status_name(e), time.monotonic() - t0


# -- commands ---------------------------------------------------------------------------------------
def cmd_login(args) -> dict:
    """Session setup + tree connect: ok, and whether the session is a guest's."""
    try:
        client = Client(args.ip, args.share, args.user, args.password)
    except Exception as e:
        return {"ok": False, "error": status_name(e)}
    client.close()
    return {"ok": True, "guest": client.guest}


def cmd_hold(args) -> dict:
    client = Client(args.ip, args.share, args.user, args.password)
    handle = client.open(args.file)
    if args.lock:
        client.lock(handle, 0, 10, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
                    | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)
    emit(event="opened", ip=args.ip, file=args.file, local=list(client.conn.transport._sock.getsockname())
         if getattr(client.conn.transport, "_sock", None) else None)
    sys.stdin.read()          # hold until the test closes our stdin
    handle.close()
    client.close()
    return {"ok": True}


def cmd_opens(args) -> dict:
    """Create `count` new files PREFIX-0 .. and close each: new records in locking.tdb and
    smbXsrv_open_global.tdb."""
    client = Client(args.ip, args.share, args.user, args.password)
    errors = []
    opened = 0
    for i in range(args.count):
        status, _ = timed(lambda i=i: client.open(f"{args.file}-{i}",
                                                  disposition=CreateDisposition.FILE_CREATE).close())
        if status == "OK":
            opened += 1
        else:
            errors.append(status)
    client.close()
    return {"opened": opened, "errors": errors}


def cmd_sharing(args) -> dict:
    a = Client(args.ip_a, args.share, args.user, args.password)
    b = Client(args.ip_b, args.share, args.user, args.password)
    out: dict = {}
    held = a.open(args.file, share=0)                       # share access: none
    out["b_open_while_a_exclusive"], _ = timed(lambda: b.open(args.file).close())
    held.close()
    out["b_open_after_a_closed"], _ = timed(lambda: b.open(args.file).close())
    a.close()
    b.close()
    return out


def kernel_locks(inode: int) -> list[str]:
    """Lines of /proc/locks (every process's fcntl/OFD/flock locks) on the file with ``inode``."""
    found = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            ident = next((x for x in fields if x.count(":") == 2), None)
            if ident is not None and ident.rsplit(":", 1)[1] == str(inode):
                found.append(line.strip())
    return found


def cmd_brlock(args) -> dict:
    exclusive = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
    a = Client(args.ip_a, args.share, args.user, args.password)
    b = Client(args.ip_b, args.share, args.user, args.password)
    out: dict = {}
    ha = a.open(args.file)
    hb = b.open(args.file)
    out["a_lock"], _ = timed(lambda: a.lock(ha, 100, 50, exclusive))
    if args.inode is not None:
        out["kernel_locks_while_a_holds"] = kernel_locks(args.inode)
    out["b_conflicting_lock"], _ = timed(lambda: b.lock(hb, 120, 10, exclusive))
    out["b_other_range"], _ = timed(lambda: b.lock(hb, 1000, 10, exclusive))
    out["a_unlock"], _ = timed(lambda: a.lock(ha, 100, 50, LockFlags.SMB2_LOCKFLAG_UNLOCK))
    out["b_lock_after_unlock"], _ = timed(lambda: b.lock(hb, 120, 10, exclusive))
    ha.close()
    hb.close()
    a.close()
    b.close()
    return out


def _break_check(args, *, lease: bool) -> dict:
    a = Client(args.ip_a, args.share, args.user, args.password)
    b = Client(args.ip_b, args.share, args.user, args.password)
    out: dict = {}
    catcher = BreakCatcher(a)
    if lease:
        request = SMB2CreateRequestLease()
        request["lease_key"] = uuid.uuid4().bytes
        request["lease_state"] = (LeaseState.SMB2_LEASE_READ_CACHING
                                  | LeaseState.SMB2_LEASE_WRITE_CACHING
                                  | LeaseState.SMB2_LEASE_HANDLE_CACHING)
        context = SMB2CreateContextRequest()
        context["buffer_name"] = CreateContextName.SMB2_CREATE_REQUEST_LEASE
        context["buffer_data"] = request
        ha = a.open(args.file, oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_LEASE, contexts=[context])
    else:
        ha = a.open(args.file, oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH)
    out["a_granted_oplock_level"] = ha.oplock_level
    done: dict = {}

    def b_write_open() -> None:
        done["status"], done["seconds"] = timed(
            lambda: b.open(args.file, access=FilePipePrinterAccessMask.FILE_WRITE_DATA).close())
        done["at"] = time.monotonic()

    t0 = time.monotonic()
    opener = threading.Thread(target=b_write_open, daemon=True)
    opener.start()
    notice = catcher.wait(args.break_timeout)
    t_break = time.monotonic()
    out["break"] = notice
    out["break_after_s"] = round(t_break - t0, 3) if notice else None
    # Did B's open finish before A even saw the break?  (Then it did not wait for it.)
    out["b_done_before_break"] = "at" in done
    if notice:
        ha.close()            # answers the break: the holder gives the file up
    opener.join(args.break_timeout + 40)
    out["b_write_open"] = done.get("status", "still waiting")
    out["b_write_open_s"] = round(done["seconds"], 3) if "seconds" in done else None
    if not notice:
        try:
            ha.close()
        except Exception:
            pass
    a.close()
    b.close()
    return out


def cmd_oplock(args) -> dict:
    return _break_check(args, lease=False)


def cmd_lease(args) -> dict:
    return _break_check(args, lease=True)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--user", default="root")
    common.add_argument("--password", default="ctdblab-Pass1")
    common.add_argument("--share", default="share")
    common.add_argument("--file", default="coherence.dat")
    common.add_argument("--deadline", type=float, default=120.0,
                        help="the whole command is stopped (SIGALRM) after this many seconds")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("login", parents=[common]).add_argument("ip")
    hold = sub.add_parser("hold", parents=[common])
    hold.add_argument("ip")
    hold.add_argument("--lock", action="store_true", help="also hold a byte-range lock (0..9)")
    opens = sub.add_parser("opens", parents=[common])
    opens.add_argument("ip")
    opens.add_argument("--count", type=int, default=10)
    for name in ("sharing", "brlock", "oplock", "lease"):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("ip_a")
        p.add_argument("ip_b")
        p.add_argument("--break-timeout", type=float, default=15.0)
        if name == "brlock":
            p.add_argument("--inode", type=int, default=None,
                           help="report /proc/locks lines on this inode while A holds its lock")
    return parser


COMMANDS = {"login": cmd_login, "hold": cmd_hold, "sharing": cmd_sharing, "brlock": cmd_brlock,
            "oplock": cmd_oplock, "lease": cmd_lease, "opens": cmd_opens}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGALRM, lambda *_: (emit(result="deadline"), sys.exit(3)))
    signal.alarm(int(args.deadline))
    try:
        result = COMMANDS[args.command](args)
    except Exception as e:
        emit(result="error", error=status_name(e))
        return 1
    emit(result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
