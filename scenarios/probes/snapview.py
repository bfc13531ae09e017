"""What an SMB client sees of one file's previous versions and attributes through one server IP.

Run inside a lab client; prints one JSON object (cluster/snapshots.py reads it):

``snapshots``          FSCTL_SRV_ENUMERATE_SNAPSHOTS on the open file (the @GMT tokens, in the
                       server's order) — what Windows' "Previous Versions" tab asks for;
``allinfo_snapshots``  the same list as Samba's own client shows it (``smbclient -c allinfo``);
``smbclient_versions`` per snapshot, the content smbclient gets from ``@GMT-.../NAME`` (it turns
                       the path into a timewarp token itself);
``attributes``         the file's attributes in the SMB2 CREATE response;
``listed_attributes``  its attributes in a directory listing (FileDirectoryInformation);
``content``            the file's content now (UTF-8, the lab writes small text files);
``versions``           per snapshot: content and attributes of the file opened at that time
                       (an SMB2_CREATE_TIMEWARP_TOKEN create context, which is what a client
                       sends for an ``@GMT-...`` path), or the error of that open.

``--attributes-only`` prints just ``attributes``, ``listed_attributes`` and ``content`` (for a
share without shadow_copy2, where the FSCTL has nothing to answer).

Every SMB step runs under one deadline (smbops.Deadline): a server that stops answering ends
the probe with exit 1 instead of hanging.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

from smbprotocol.create_contexts import (CreateContextName, SMB2CreateContextRequest,
                                         SMB2CreateTimewarpToken)
from smbprotocol.exceptions import EndOfFile
from smbprotocol.file_info import FileInformationClass
from smbprotocol.ioctl import CtlCode, IOCTLFlags, SMB2IOCTLRequest, SMB2IOCTLResponse
from smbprotocol.open import (CreateDisposition, CreateOptions, DirectoryAccessMask,
                              FileAttributes, FilePipePrinterAccessMask, ImpersonationLevel,
                              Open, ShareAccess)

from .common import ipv4_address, port_number
from .smbops import SmbClient, SmbTarget, Watchdog, failure_text

GMT_TOKEN = re.compile(r"^@GMT-\d{4}\.\d\d\.\d\d-\d\d\.\d\d\.\d\d$")
GMT_FORMAT = "@GMT-%Y.%m.%d-%H.%M.%S"
SNAPSHOT_ARRAY_MAX = 64 * 1024
MAX_CONTENT = 1 << 20


def parse_snapshot_array(buffer: bytes) -> list[str]:
    """The @GMT tokens of an SRV_SNAPSHOT_ARRAY ([MS-SMB2] 2.2.32.2): three 32-bit counts, then
    UTF-16LE names, each NUL-terminated, and a final NUL."""
    if len(buffer) < 12:
        raise ValueError(f"SRV_SNAPSHOT_ARRAY of {len(buffer)} bytes (needs at least 12)")
    _number, returned, size = struct.unpack_from("<III", buffer, 0)
    names = buffer[12:12 + size].decode("utf-16-le").split("\0")
    tokens = [n for n in names if n]
    if len(tokens) != returned:
        raise ValueError(f"SRV_SNAPSHOT_ARRAY says {returned} snapshots but holds {tokens}")
    return tokens


def parse_allinfo_snapshots(text: str) -> list[str]:
    """The @GMT lines of ``smbclient -c 'allinfo NAME'`` (one per previous version)."""
    return [line.strip() for line in text.splitlines() if GMT_TOKEN.match(line.strip())]


def token_time(token: str) -> datetime:
    return datetime.strptime(token, GMT_FORMAT).replace(tzinfo=timezone.utc)


def enumerate_snapshots(handle: Open) -> list[str]:
    request = SMB2IOCTLRequest()
    request["ctl_code"] = CtlCode.FSCTL_SRV_ENUMERATE_SNAPSHOTS
    request["file_id"] = handle.file_id
    request["max_output_response"] = SNAPSHOT_ARRAY_MAX
    request["flags"] = IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL
    tree = handle.tree_connect
    sent = handle.connection.send(request, tree.session.session_id, tree.tree_connect_id)
    response = SMB2IOCTLResponse()
    response.unpack(handle.connection.receive(sent)["data"].get_value())
    return parse_snapshot_array(response["buffer"].get_value())


def open_file(client: SmbClient, name: str, at: datetime | None = None) -> Open:
    contexts = None
    if at is not None:
        token = SMB2CreateTimewarpToken()
        token["timestamp"] = at
        context = SMB2CreateContextRequest()
        context["buffer_name"] = CreateContextName.SMB2_CREATE_TIMEWARP_TOKEN
        context["buffer_data"] = token
        contexts = [context]
    handle = Open(client.tree, name)
    handle.create(ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_READ,
                  FileAttributes.FILE_ATTRIBUTE_NORMAL,
                  ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
                  | ShareAccess.FILE_SHARE_DELETE,
                  CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE,
                  create_contexts=contexts)
    return handle


def read_all(handle: Open) -> str:
    size = min(handle.end_of_file, MAX_CONTENT)
    if size == 0:
        return ""
    try:
        return handle.read(0, size).decode("utf-8", errors="replace")
    except EndOfFile:
        return ""


def listed_attributes(client: SmbClient, name: str) -> int:
    root = Open(client.tree, "")
    root.create(ImpersonationLevel.Impersonation,
                DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.FILE_READ_ATTRIBUTES,
                FileAttributes.FILE_ATTRIBUTE_DIRECTORY,
                ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE)
    try:
        entries = root.query_directory(name, FileInformationClass.FILE_DIRECTORY_INFORMATION)
    finally:
        root.close()
    if len(entries) != 1:
        raise RuntimeError(f"listing {name!r} gave {len(entries)} entries")
    return int(entries[0]["file_attributes"].get_value())


def smb_view(client: SmbClient, name: str, *, attributes_only: bool = False) -> dict:
    handle = open_file(client, name)
    try:
        view = {"attributes": int(handle.file_attributes), "content": read_all(handle)}
        if not attributes_only:
            view["snapshots"] = enumerate_snapshots(handle)
    finally:
        handle.close()
    view["listed_attributes"] = listed_attributes(client, name)
    if attributes_only:
        return view
    versions = {}
    for token in view["snapshots"]:
        try:
            old = open_file(client, name, at=token_time(token))
        except Exception as exc:                    # reported per version, compared by the test
            versions[token] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        try:
            versions[token] = {"content": read_all(old), "attributes": int(old.file_attributes)}
        finally:
            old.close()
    view["versions"] = versions
    return view


def smbclient(target: SmbTarget, commands: str, timeout: float) -> str:
    result = subprocess.run(
        ["smbclient", f"//{target.server}/{target.share}", "-U", f"{target.user}%{target.password}",
         "-p", str(target.port), "-c", commands],
        capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"smbclient -c '{commands}' exit {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()[-300:]}")
    return result.stdout


def smbclient_versions(target: SmbTarget, name: str, tokens: list[str],
                       timeout: float) -> dict[str, str]:
    """The content of ``TOKEN/NAME`` for every token, fetched by smbclient in one session."""
    if not tokens:
        return {}
    with tempfile.TemporaryDirectory(prefix="snapview-") as tmp:
        smbclient(target, "; ".join(f'get "{t}\\{name}" "{tmp}/{t}"' for t in tokens), timeout)
        return {t: open(f"{tmp}/{t}", encoding="utf-8", errors="replace").read() for t in tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("target", type=ipv4_address)
    parser.add_argument("--port", type=port_number, default=445)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", required=True)
    parser.add_argument("--share", default="snap")
    parser.add_argument("--file", required=True, help="file name in the share's root")
    parser.add_argument("--timeout", type=float, default=20.0, help="deadline of the SMB steps")
    parser.add_argument("--attributes-only", action="store_true",
                        help="only the live file's attributes and content (no snapshots)")
    args = parser.parse_args(argv)
    target = SmbTarget(server=args.target, share=args.share, user=args.user,
                       password=args.password, port=args.port)
    watchdog = Watchdog()
    client = SmbClient(target, watchdog)
    deadline = watchdog.guard(client.conn, args.timeout)
    try:
        with deadline:
            client.connect(deadline, connect_timeout=min(5.0, args.timeout))
            view = smb_view(client, args.file, attributes_only=args.attributes_only)
            deadline.check()
    except Exception as exc:
        print(f"snapview {args.target}: {client.phase}: {failure_text(exc, deadline)}",
              file=sys.stderr)
        return 1
    finally:
        client.drop()
        watchdog.close()
    if not args.attributes_only:
        try:
            view["allinfo_snapshots"] = parse_allinfo_snapshots(
                smbclient(target, f'allinfo "{args.file}"', args.timeout))
            view["smbclient_versions"] = smbclient_versions(target, args.file,
                                                            view["allinfo_snapshots"], args.timeout)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"snapview {args.target}: {exc}", file=sys.stderr)
            return 1
    view["ip"] = args.target
    print(json.dumps(view, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
