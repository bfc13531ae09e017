"""What the remote-hosts backend copies to every host: pyctdbd and the probes, as one zip.

Why not packaging/build's wheel or .deb: the lab must test exactly the tree it runs from (the
Mininet backend runs the worktree's pyctdbd too), and the failover scenario also runs the lab's
probes on the client hosts and on the victim (``tcp_listener``), which neither package carries.
So the payload is the orchestrator's own ``ctdblab`` modules that run on a host — the daemon
(standard library + ctypes on libtdb1, event scripts included, and the native heartbeat pacer
as built here: a host that cannot load it paces its beats with the Python thread), the probes
and the two small modules they import — zipped from wherever this ``ctdblab`` is imported from.
Installing it touches nothing but ``install_dir`` (no dpkg, no systemd unit); ``ctdblab down
--hosts`` leaves it for the next run, and ``rm -rf install_dir`` removes it.

On the host (``INSTALL`` = the inventory's ``install_dir``)::

    INSTALL/lib/ctdblab/...        the modules (run with PYTHONPATH=INSTALL/lib)
    INSTALL/bin/pyctdbd            python3 running ctdblab.daemon.main (ps shows "pyctdbd")
    INSTALL/payload.sha256         the installed payload's hash: an unchanged payload is not re-sent
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path, PurePosixPath

import ctdblab

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# (package as imported, its path inside the zip); whole trees for packages, files for modules.
_PACKAGES = ("ctdblab.daemon", "ctdblab.scenarios.probes")
_MODULES = ("ctdblab/__init__.py", "ctdblab/events.py", "ctdblab/errors.py")

LAUNCHER = """#!/usr/bin/env python3
# written by ctdblab (remote-hosts backend): pyctdbd from {lib}
import sys
sys.path.insert(0, {lib!r})
from ctdblab.daemon.main import main
sys.exit(main())
"""

# Run on the host with the zip on stdin: unpack it next to the old lib, swap, write the launcher.
INSTALL_SCRIPT = r"""
import hashlib, io, os, shutil, sys, zipfile
install, digest, launcher = sys.argv[1], sys.argv[2], sys.argv[3]
data = sys.stdin.buffer.read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit("payload damaged in transit (sha256 mismatch)")
os.makedirs(os.path.join(install, "bin"), exist_ok=True)
new, lib = os.path.join(install, "lib.new"), os.path.join(install, "lib")
shutil.rmtree(new, ignore_errors=True)
with zipfile.ZipFile(io.BytesIO(data)) as z:
    z.extractall(new)
    for info in z.infolist():
        mode = info.external_attr >> 16
        if mode:
            os.chmod(os.path.join(new, info.filename), mode & 0o777)
shutil.rmtree(lib, ignore_errors=True)
os.rename(new, lib)
path = os.path.join(install, "bin", "pyctdbd")
with open(path, "w") as f:
    f.write(launcher)
os.chmod(path, 0o755)
with open(os.path.join(install, "payload.sha256"), "w") as f:
    f.write(digest + "\n")
"""


def package_root() -> Path:
    """The directory the zip's ``ctdblab/`` comes from (``ctdblab/__init__.py``'s)."""
    return Path(ctdblab.__file__).resolve().parent


def payload_files() -> list[tuple[str, Path]]:
    """(path inside the zip, source file), sorted; no caches."""
    import importlib

    files = [(name, package_root() / Path(name).name) for name in _MODULES]
    for package in _PACKAGES:
        module = importlib.import_module(package)
        root = Path(module.__path__[0]).resolve()
        prefix = package.replace(".", "/")
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append((f"{prefix}/{path.relative_to(root).as_posix()}", path))
    # scenarios/__init__ would pull the whole lab in; the probes need only a package marker.
    files.append(("ctdblab/scenarios/__init__.py", None))
    return sorted(files, key=lambda f: f[0])


def build_payload() -> bytes:
    """The zip, byte-identical for the same tree (fixed timestamps), so its hash says "unchanged"."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, source in payload_files():
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            if source is None:
                info.external_attr = 0o644 << 16
                z.writestr(info, '"""Probes only (remote-hosts payload)."""\n')
                continue
            info.external_attr = (0o755 if source.stat().st_mode & 0o111 else 0o644) << 16
            z.writestr(info, source.read_bytes())
    return buf.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def launcher_text(install_dir: str) -> str:
    return LAUNCHER.format(lib=str(PurePosixPath(install_dir) / "lib"))


def pyctdbd_path(install_dir: str) -> str:
    return str(PurePosixPath(install_dir) / "bin" / "pyctdbd")


def shipped_scripts_dir(install_dir: str) -> str:
    return str(PurePosixPath(install_dir) / "lib" / "ctdblab" / "daemon" / "events" / "scripts")
