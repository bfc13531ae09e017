"""SMB file steps the data probes need beyond smbops: open for writing with a chosen share
mode, byte-range locks, write+FLUSH, and whole-file reads.

Every step runs on an :class:`smbops.SmbClient` already connected, under the caller's
:class:`smbops.Deadline` (the watchdog shuts the socket down when it passes).
"""

from __future__ import annotations

from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                              FilePipePrinterAccessMask, ImpersonationLevel, LockFlags, Open,
                              ShareAccess, SMB2LockElement)

from .smbops import Deadline, SmbClient

# The whole range a data writer covers (and the contention probe asks for).
LOCK_OFFSET = 0
LOCK_LENGTH = 1 << 40

SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
DENY_WRITE = ShareAccess.FILE_SHARE_READ

# NTSTATUS codes that mean "another open holds it": a conflict, as opposed to a broken server.
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_FILE_LOCK_CONFLICT = 0xC0000054
STATUS_LOCK_NOT_GRANTED = 0xC0000055
CONFLICTS = {STATUS_SHARING_VIOLATION: "sharing_violation",
             STATUS_FILE_LOCK_CONFLICT: "file_lock_conflict",
             STATUS_LOCK_NOT_GRANTED: "lock_not_granted"}


def conflict_of(exc: BaseException) -> str | None:
    """``sharing_violation``/``lock_not_granted``/... when ``exc`` is such a refusal, else None."""
    return CONFLICTS.get(getattr(exc, "status", None))


def open_rw(client: SmbClient, name: str, deadline: Deadline, share_access: int = SHARE_ALL,
            create: bool = True) -> Open:
    """Open (or create) ``name`` for reading and writing with ``share_access``."""
    assert client.tree is not None, "connect() first"
    handle = Open(client.tree, name)
    handle.create(ImpersonationLevel.Impersonation,
                  FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
                  FileAttributes.FILE_ATTRIBUTE_NORMAL, share_access,
                  CreateDisposition.FILE_OPEN_IF if create else CreateDisposition.FILE_OPEN,
                  CreateOptions.FILE_NON_DIRECTORY_FILE)
    deadline.check()
    return handle


def lock_exclusive(handle: Open, deadline: Deadline, offset: int = LOCK_OFFSET,
                   length: int = LOCK_LENGTH) -> None:
    """An exclusive byte-range lock that fails at once when another open holds one."""
    element = SMB2LockElement()
    element["offset"] = offset
    element["length"] = length
    element["flags"] = (LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
                        | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)
    handle.lock([element])
    deadline.check()


def write_flushed(handle: Open, offset: int, data: bytes, deadline: Deadline) -> None:
    """WRITE then FLUSH; returns only once the server answered both."""
    written = handle.write(data, offset)
    deadline.check()
    if written != len(data):
        raise OSError(f"short write: {written} of {len(data)} bytes at {offset}")
    handle.flush()
    deadline.check()


def read_all(handle: Open, deadline: Deadline, chunk: int = 1 << 16) -> bytes:
    """The whole file, read in chunks until end of file."""
    from smbprotocol.exceptions import EndOfFile

    parts: list[bytes] = []
    offset = 0
    while True:
        try:
            data = handle.read(offset, chunk)
        except EndOfFile:
            break
        deadline.check()
        if not data:
            break
        parts.append(data)
        offset += len(data)
        if len(data) < chunk:
            break
    return b"".join(parts)
