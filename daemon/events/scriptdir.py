"""The event-script directory: which files are scripts, which are enabled, enable/disable.

CTDB 4.17 (``ctdb/common/event_script.c``) treats a directory entry as an event script when its
name matches the shell pattern ``[0-9][0-9].*.script`` (``fnmatch`` without ``FNM_PERIOD``, so
extra dots are allowed: ``10.a.b.script`` is the script ``10.a.b``; ``10.a.script~``, ``README``
and ``1.x.script`` are not scripts).  The script's name is the file name without ``.script``.
Scripts run in byte order of their names (``scandir`` + ``alphasort`` in the C locale).

A script is *enabled* when ``stat()`` (following symlinks) shows the owner-execute bit; a dangling
symlink is listed but disabled.  Enabling/disabling is ``chmod +x`` / ``chmod -x`` on a regular
file; CTDB refuses (``EINVAL``) to chmod through a symlink, and so do we.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

SCRIPT_SUFFIX = ".script"
SCRIPT_PATTERN = "[0-9][0-9].*.script"


class EventScriptError(Exception):
    """A script-directory or event request that cannot be served; ``errno`` says why
    (the value the event daemon would put in its reply)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


@dataclass(frozen=True)
class ScriptInfo:
    name: str          # "10.interface"
    path: Path         # <dir>/10.interface.script
    enabled: bool


def is_script_file_name(file_name: str) -> bool:
    return fnmatch.fnmatchcase(file_name, SCRIPT_PATTERN)


def script_name_of(file_name: str) -> str:
    return file_name[: -len(SCRIPT_SUFFIX)]


def _is_enabled(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IXUSR)
    except OSError:            # dangling symlink, or vanished meanwhile
        return False


def _read_dir(script_dir: Path) -> list[str]:
    try:
        return os.listdir(script_dir)
    except OSError as exc:
        raise EventScriptError(exc.errno or errno.EIO,
                               f"cannot read event script directory {script_dir}: "
                               f"{exc.strerror}") from None


def list_scripts(script_dir: Path) -> list[ScriptInfo]:
    """Every event script in ``script_dir`` in run order.

    Raises ``EventScriptError`` (ENOENT, ENOTDIR, ...) when the directory cannot be read.
    """
    names = _read_dir(script_dir)
    scripts = sorted((n for n in names if is_script_file_name(n)), key=os.fsencode)
    result = []
    for file_name in scripts:
        path = Path(script_dir) / file_name
        result.append(ScriptInfo(script_name_of(file_name), path, _is_enabled(path)))
    return result


def set_script_enabled(script_dir: Path, script: str, enable: bool) -> None:
    """``chmod ±x`` the script ``script`` (with or without ``.script``), as ctdb-eventd does.

    Errors (``EventScriptError.errno``): ENOENT no such script, EINVAL not a valid script name or
    a symlink (remove/create the link instead), others from the file system.
    """
    file_name = script if (len(script) > len(SCRIPT_SUFFIX) and script.endswith(SCRIPT_SUFFIX)) \
        else script + SCRIPT_SUFFIX
    if "/" in file_name or "\0" in file_name:
        raise EventScriptError(errno.EINVAL, f"script {script!r} is not a valid script name")
    entries = _read_dir(script_dir)
    if file_name not in entries:
        raise EventScriptError(errno.ENOENT, f"script {script} does not exist in {script_dir}")
    if not is_script_file_name(file_name):
        raise EventScriptError(errno.EINVAL, f"script {script} is not a valid script name")
    path = Path(script_dir) / file_name
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise EventScriptError(errno.EINVAL,
                                   f"script {script} is a symlink; (un)link it instead of chmod")
        mode = stat.S_IMODE(st.st_mode)
        mode = (mode | 0o111) if enable else (mode & ~0o111)
        os.chmod(path, mode)
    except OSError as exc:
        raise EventScriptError(exc.errno or errno.EIO,
                               f"cannot change mode of {path}: {exc.strerror}") from None
