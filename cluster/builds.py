"""Builds of pyctdbd to upgrade between, and a launcher that starts each node from its own build.

    old, new = prepare_builds(run_dir / "builds", from_rev=None, to_rev=None)
    launcher = InstalledBuildLauncher(old)        # every node starts with `old` installed
    launcher.install(node, new)                   # the next start of `node` runs `new`

A build is what ``packaging/build`` makes of one tree of this repository (the daemon-only wheel),
unpacked the way the Debian package lays it out::

    <builds>/<label>-<version>/sbin/pyctdbd           packaging/pyctdbd.launcher of that tree
    <builds>/<label>-<version>/lib/pyctdbd/pyctdbd/   the wheel's package
    <builds>/<label>-<version>/lib/pyctdbd/pyctdbd-<version>.dist-info/

so a node runs exactly the files an operator would install, from a path that names the version
(the history proves which build a node ran by the daemon's command line).  A tree is the working
tree as it is (``rev`` None: uncommitted edits included) or a git revision (``git archive``).
When both builds come out with the same version, the "to" build's pyproject.toml version gets a
``.post1`` so the two can be told apart — the only difference between them then.

The event scripts stay the node's configuration (/etc/ctdb/events, linked by the lab from this
checkout), as they do on a real host across a package upgrade.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ctdblab.errors import UserError

from .launchers import PyctdbdLauncher
from .node import LabHost

REPO = Path(__file__).resolve().parent.parent
TREE_PARTS = ("daemon", "packaging", "pyproject.toml")    # what packaging/build reads
_VERSION_LINE = re.compile(r'^version\s*=\s*"([^"]+)"', re.MULTILINE)


@dataclass(frozen=True)
class Build:
    label: str            # "from" or "to"
    version: str
    revision: str         # a git commit id, or "working tree"
    root: Path

    @property
    def executable(self) -> Path:
        return self.root / "sbin" / "pyctdbd"

    def as_dict(self) -> dict[str, str]:
        return {"label": self.label, "version": self.version, "revision": self.revision,
                "root": str(self.root)}


def resolve_revision(rev: str, repo: Path = REPO) -> str:
    result = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                             f"{rev}^{{commit}}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"--from/--to {rev!r}: not a git revision of {repo}")
    return result.stdout.strip()


def export_tree(rev: str | None, dest: Path, repo: Path = REPO) -> str:
    """The files packaging/build needs, from the working tree (rev None) or a commit; returns
    what was exported ("working tree" or the commit id)."""
    dest.mkdir(parents=True)
    if rev is None:
        for part in TREE_PARTS:
            source = repo / part
            if source.is_dir():
                shutil.copytree(source, dest / part,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, dest / part)
        return "working tree"
    commit = resolve_revision(rev, repo)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit, *TREE_PARTS],
                             capture_output=True)
    if archive.returncode != 0:
        raise UserError(f"git archive {commit[:12]} failed: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive.stdout)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            # Our own repository's archive; the "data" filter where this Python has it (3.11.4+).
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
    if not (dest / "packaging" / "build").exists():
        raise UserError(f"revision {commit[:12]} has no packaging/build: it cannot be built")
    return commit


def tree_version(tree: Path) -> str:
    return tomllib.loads((tree / "pyproject.toml").read_text())["project"]["version"]


def set_tree_version(tree: Path, version: str) -> None:
    path = tree / "pyproject.toml"
    text, count = _VERSION_LINE.subn(f'version = "{version}"', path.read_text(), count=1)
    if count != 1:
        raise UserError(f"{path}: no version line to bump")
    path.write_text(text)


def bumped(version: str) -> str:
    """A later PEP 440 version: 0.1.0 -> 0.1.0.post1, 0.1.0.post1 -> 0.1.0.post2."""
    m = re.fullmatch(r"(.*)\.post(\d+)", version)
    return f"{m.group(1)}.post{int(m.group(2)) + 1}" if m else f"{version}.post1"


def build_wheel(tree: Path, out: Path) -> Path:
    """Run the tree's own packaging/build; return the wheel it wrote."""
    result = subprocess.run([sys.executable, str(tree / "packaging" / "build"), "--out", str(out)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"packaging/build of {tree} failed: {result.stderr.strip()}")
    wheels = sorted(out.glob("pyctdbd-*.whl"))
    if len(wheels) != 1:
        raise UserError(f"packaging/build left {len(wheels)} wheels in {out}, expected one")
    return wheels[0]


def unpack(wheel: Path, launcher_script: Path, root: Path) -> None:
    """Lay a wheel out as the Debian package installs it (see the module docstring)."""
    lib = root / "lib" / "pyctdbd"
    lib.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(lib)
    sbin = root / "sbin"
    sbin.mkdir()
    shutil.copyfile(launcher_script, sbin / "pyctdbd")
    os.chmod(sbin / "pyctdbd", 0o755)


def installed_version(root: Path) -> str:
    """The version a build directory holds, from its wheel's METADATA."""
    metas = list((root / "lib" / "pyctdbd").glob("pyctdbd-*.dist-info/METADATA"))
    if len(metas) != 1:
        raise UserError(f"{root}: expected one pyctdbd-*.dist-info, found {len(metas)}")
    for line in metas[0].read_text().splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise UserError(f"{metas[0]}: no Version line")


def make_build(label: str, rev: str | None, builds_dir: Path, version: str | None = None) -> Build:
    """Export, (re)version, build and unpack one tree under ``builds_dir``."""
    with tempfile.TemporaryDirectory(prefix=f"pyctdbd-{label}-") as tmp:
        tree = Path(tmp) / "tree"
        revision = export_tree(rev, tree)
        if version is not None:
            set_tree_version(tree, version)
        wheel = build_wheel(tree, Path(tmp) / "dist")
        actual = tree_version(tree)
        root = builds_dir / f"{label}-{actual}"
        unpack(wheel, tree / "packaging" / "pyctdbd.launcher", root)
    return Build(label=label, version=installed_version(root), revision=revision, root=root)


def prepare_builds(builds_dir: Path, from_rev: str | None = None,
                   to_rev: str | None = None) -> tuple[Build, Build]:
    """The "from" and "to" builds (see the module docstring for the version bump)."""
    if builds_dir.exists():
        raise UserError(f"{builds_dir} exists already; choose a new run directory")
    builds_dir.mkdir(parents=True)
    old = make_build("from", from_rev, builds_dir)
    new = make_build("to", to_rev, builds_dir)
    if new.version == old.version:
        shutil.rmtree(new.root)
        new = make_build("to", to_rev, builds_dir, version=bumped(old.version))
    return old, new


class InstalledBuildLauncher(PyctdbdLauncher):
    """pyctdbd started from the build installed on each node (``install``); ``initial`` on a
    node that had none installed yet."""

    def __init__(self, initial: Build, smb_clustered: bool | None = None):
        super().__init__(smb_clustered=smb_clustered)
        self.initial = initial
        self._installed: dict[str, Build] = {}

    def install(self, node: LabHost, build: Build) -> None:
        self._installed[node.name] = build

    def installed(self, node: LabHost) -> Build:
        return self._installed.get(node.name, self.initial)

    def check_installed(self) -> None:
        super().check_installed()
        if not self.initial.executable.exists():
            raise UserError(f"{self.initial.executable} is missing")

    def start_command_for(self, node: LabHost) -> list[str]:
        # Executed directly (its #! is `/usr/bin/python3 -I`): the process is then named
        # pyctdbd, which is how the lab's chaos tools find the daemon.
        return [str(self.installed(node).executable)]
