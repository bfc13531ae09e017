"""pyctdbd's Debian package (packaging/build): its contents, an install into a clean root with
dpkg, the unit under systemd's offline tooling (no booted systemd needed), the switch between
ctdb.service and pyctdbd.service with `systemctl --root`, and the installed daemon running on
Debian's python3 with no site-packages at all.

The clean root is built here: an empty dpkg database, Debian's merged-/usr links, the systemd
package's unit files and the ctdb package's files copied from this host (`dpkg -L`; without
/etc/init.d/ctdb, whose SysV sync would need update-rc.d inside the root). pyctdbd is then
installed with `dpkg --root` (maintainer scripts run without chroot; python3, libtdb1 and ctdb
are not in the root's dpkg database, hence --force-depends). Nothing touches this host's own
dpkg database or systemd.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "packaging" / "build"
HOST_PYTHON = "/usr/bin/python3"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("dpkg", "dpkg-deb", "systemd-analyze", "systemctl"))
    or not os.path.exists(HOST_PYTHON) or not os.path.exists("/usr/bin/ctdb"),
    reason="needs Debian's dpkg, systemd tools, /usr/bin/python3 and the ctdb package")


def run(argv, *, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    printed = run([HOST_PYTHON, str(BUILD), "--out", str(out)]).stdout.split()
    deb, wheel = out / f"pyctdbd_{VERSION}_all.deb", out / f"pyctdbd-{VERSION}-py3-none-any.whl"
    assert printed == [str(wheel), str(deb)]
    return {"deb": deb, "wheel": wheel}


def host_package_files(package: str) -> list[Path]:
    return [Path(line) for line in run(["dpkg-query", "-L", package]).stdout.splitlines()
            if line.startswith("/")]


def copy_into(root: Path, path: Path) -> None:
    if path.is_symlink() or path.is_file():
        target = root / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target, follow_symlinks=False)


@pytest.fixture(scope="module")
def clean_root(artefacts, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    dpkg_dir = root / "var" / "lib" / "dpkg"
    for d in ("info", "updates"):
        (dpkg_dir / d).mkdir(parents=True)
    for f in ("status", "available"):
        (dpkg_dir / f).touch()
    for d in ("bin", "sbin", "lib", "lib64"):            # Debian 12's merged /usr
        (root / "usr" / d).mkdir(parents=True)
        (root / d).symlink_to(f"usr/{d}")
    for path in host_package_files("ctdb"):
        if not str(path).startswith("/etc/init.d/"):
            copy_into(root, path)
    for path in host_package_files("systemd"):
        if str(path).startswith("/lib/systemd/system/"):
            copy_into(root, path)
    installed = run(["dpkg", f"--root={root}", "--force-not-root", "--force-script-chrootless",
                     "--force-depends", "-i", str(artefacts["deb"])])
    assert "Setting up pyctdbd" in installed.stdout
    return root


# -- the package ---------------------------------------------------------------------------------
def test_control_fields(artefacts) -> None:
    fields = dict(re.findall(r"^ (\S+): (.*)$", run(["dpkg-deb", "-I", str(artefacts["deb"])]).stdout, re.M))
    assert fields["Package"] == "pyctdbd" and fields["Version"] == VERSION
    assert fields["Architecture"] == "all"
    assert fields["Depends"] == "python3 (>= 3.11), libtdb1, ctdb"
    assert int(fields["Installed-Size"]) > 100


def daemon_sources() -> set[str]:
    """The daemon's files in the tree, without a local build of the native pacer (each host
    builds its own: postinst)."""
    return {p.relative_to(ROOT / "daemon").as_posix() for p in (ROOT / "daemon").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".so"}


def test_contents_are_the_daemon_alone(artefacts) -> None:
    listing = run(["dpkg-deb", "-c", str(artefacts["deb"])]).stdout.splitlines()
    files = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in listing
             if not line.startswith("d")}
    lib = "./usr/lib/pyctdbd/pyctdbd/"
    shipped = {name[len(lib):] for name in files if name.startswith(lib)}
    assert shipped == daemon_sources()
    assert set(files) - {lib + name for name in shipped} == {
        "./usr/sbin/pyctdbd", "./lib/systemd/system/pyctdbd.service",
        "./usr/share/pyctdbd/events/legacy/50.samba.script"}
    for name, line in files.items():
        assert " root/root " in line, line
        if name.endswith(".script") or name == "./usr/sbin/pyctdbd":
            assert line.startswith(("-rwxr-xr-x", "lrwxrwxrwx")), line
        elif name.endswith((".py", ".service")):
            assert line.startswith("-rw-r--r--"), line


def test_build_is_reproducible(artefacts, tmp_path) -> None:
    run([HOST_PYTHON, str(BUILD), "--out", str(tmp_path)])
    assert (tmp_path / artefacts["deb"].name).read_bytes() == artefacts["deb"].read_bytes()
    assert (tmp_path / artefacts["wheel"].name).read_bytes() == artefacts["wheel"].read_bytes()


# -- installed into a clean root -----------------------------------------------------------------
def test_installed_files(clean_root: Path) -> None:
    status = run(["dpkg-query", f"--admindir={clean_root}/var/lib/dpkg", "-W",
                  "-f=${Status} ${Version}", "pyctdbd"]).stdout
    assert status == f"install ok installed {VERSION}"
    lib = clean_root / "usr" / "lib" / "pyctdbd" / "pyctdbd"
    assert {p.relative_to(lib).as_posix() for p in lib.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts} == daemon_sources()
    # postinst byte-compiled every module (as py3compile would), so the daemon never writes there
    modules = list(lib.rglob("*.py"))
    compiled = list(lib.rglob("__pycache__/*.pyc"))
    assert len(compiled) == len(modules) > 50
    samba = clean_root / "usr" / "share" / "pyctdbd" / "events" / "legacy" / "50.samba.script"
    assert samba.resolve() == (lib / "events" / "scripts" / "50.samba.script").resolve()
    assert os.access(samba, os.X_OK)
    if os.geteuid() == 0:
        assert (clean_root / "usr" / "sbin" / "pyctdbd").stat().st_uid == 0


def unit_lines(path: Path) -> dict[tuple[str, str], list[str]]:
    section, values = "", {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault((section, key), []).append(value)
    return values


def test_unit_is_debians_ctdb_service_with_pyctdbd(clean_root: Path) -> None:
    ours = unit_lines(clean_root / "lib" / "systemd" / "system" / "pyctdbd.service")
    debian = unit_lines(clean_root / "lib" / "systemd" / "system" / "ctdb.service")
    differ = {key for key in set(ours) | set(debian) if ours.get(key) != debian.get(key)}
    assert differ == {("Unit", "Description"), ("Unit", "Documentation"), ("Unit", "After"),
                      ("Unit", "Conflicts"), ("Service", "ExecStart")}
    assert ours[("Service", "ExecStart")] == ["/usr/sbin/pyctdbd"]
    assert ours[("Unit", "Conflicts")] == ["ctdb.service"]
    assert ours[("Unit", "After")] == debian[("Unit", "After")] + ["ctdb.service"]
    for key, value in ((("Service", "Type"), ["forking"]), (("Service", "PIDFile"), ["/run/ctdb/ctdbd.pid"]),
                       (("Service", "ExecStop"), ["/usr/bin/ctdb shutdown"]),
                       (("Unit", "ConditionFileNotEmpty"), ["/etc/ctdb/nodes"])):
        assert ours[key] == value


def verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    return run(["systemd-analyze", "verify", f"--root={root}", "--man=no", *units], check=False,
               env=dict(os.environ, SYSTEMD_LOG_LEVEL="debug"), cwd=root)


def test_systemd_analyze_verify_passes(clean_root: Path) -> None:
    result = verify(clean_root, "pyctdbd.service", "ctdb.service")
    assert result.returncode == 0, result.stderr[-3000:]
    # the same check fails for a unit whose ExecStart is not in the root
    broken = clean_root / "etc" / "systemd" / "system" / "pyctdbd-broken.service"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text((clean_root / "lib" / "systemd" / "system" / "pyctdbd.service").read_text()
                      .replace("ExecStart=/usr/sbin/pyctdbd", "ExecStart=/usr/sbin/pyctdbd-missing"))
    try:
        failed = verify(clean_root, "pyctdbd-broken.service")
        assert failed.returncode != 0
        assert "Command /usr/sbin/pyctdbd-missing is not executable" in failed.stderr
    finally:
        broken.unlink()


def test_starting_either_unit_stops_the_other(clean_root: Path) -> None:
    """Conflicts= is only in pyctdbd.service, and works both ways: systemd's test manager
    (systemd-analyze verify queues a start job per unit, in order) replaces the first unit's
    start job with a stop job when the second starts."""
    for first, second in (("ctdb", "pyctdbd"), ("pyctdbd", "ctdb")):
        result = verify(clean_root, f"{first}.service", f"{second}.service")
        assert result.returncode == 0
        assert f"{first}.service: Job 1 {first}.service/start finished, result=canceled" in result.stderr
        assert re.search(rf"{first}\.service: Installed new job {first}\.service/stop as \d+", result.stderr)
        assert f"{second}.service: Enqueued job {second}.service/start" in result.stderr
    dump = verify(clean_root, "ctdb.service", "pyctdbd.service").stdout
    ctdb_unit = dump.split("-> Unit ctdb.service:")[1].split("-> Unit ")[0]
    assert "ConflictedBy: pyctdbd.service (destination-file)" in ctdb_unit


def enabled(root: Path, unit: str) -> str:
    return run(["systemctl", f"--root={root}", "is-enabled", unit], check=False).stdout.strip()


def test_systemctl_switches_the_node_between_the_daemons(clean_root: Path) -> None:
    wants = clean_root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    run(["systemctl", f"--root={clean_root}", "enable", "ctdb.service"])
    try:
        assert (enabled(clean_root, "ctdb.service"), enabled(clean_root, "pyctdbd.service")) == \
            ("enabled", "disabled")
        run(["systemctl", f"--root={clean_root}", "disable", "ctdb.service"])
        run(["systemctl", f"--root={clean_root}", "enable", "pyctdbd.service"])
        assert (enabled(clean_root, "ctdb.service"), enabled(clean_root, "pyctdbd.service")) == \
            ("disabled", "enabled")
        assert os.readlink(wants / "pyctdbd.service") == "/lib/systemd/system/pyctdbd.service"
        assert not (wants / "ctdb.service").exists()
        run(["systemctl", f"--root={clean_root}", "disable", "pyctdbd.service"])
        run(["systemctl", f"--root={clean_root}", "enable", "ctdb.service"])
        assert (enabled(clean_root, "ctdb.service"), enabled(clean_root, "pyctdbd.service")) == \
            ("enabled", "disabled")
    finally:
        for unit in ("ctdb.service", "pyctdbd.service"):
            run(["systemctl", f"--root={clean_root}", "disable", unit], check=False)


# -- the installed daemon runs on Debian's python3 alone -----------------------------------------
def test_installed_command_runs_isolated(clean_root: Path, tmp_path: Path) -> None:
    launcher = clean_root / "usr" / "sbin" / "pyctdbd"
    assert launcher.read_text().startswith("#!/usr/bin/python3 -I\n")
    helped = run([str(launcher), "--help"])                     # through its #! line
    assert helped.stdout.startswith("usage: pyctdbd ")
    broken = run([HOST_PYTHON, "-I", "-S", str(launcher), "-i", "--config-dir", str(tmp_path)], check=False)
    assert broken.returncode == 1
    assert broken.stderr.startswith(f"pyctdbd: configuration error: {tmp_path}/nodes: ")


def test_installed_package_imports_nothing_outside_itself_and_the_stdlib(clean_root: Path) -> None:
    lib = clean_root / "usr" / "lib" / "pyctdbd"
    probe = (
        "import sys, sysconfig, pkgutil, importlib\n"
        f"sys.path.insert(0, {str(lib)!r})\n"
        "import pyctdbd\n"
        "names = [m.name for m in pkgutil.walk_packages(pyctdbd.__path__, 'pyctdbd.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "stdlib = (sysconfig.get_paths()['stdlib'], sysconfig.get_paths()['platstdlib'])\n"
        "files = [getattr(m, '__file__', None) for m in list(sys.modules.values())]\n"
        f"outside = [f for f in files if f and not f.startswith({str(lib)!r}) and not f.startswith(stdlib)]\n"
        "print(len(names), outside)\n")
    count, outside = run([HOST_PYTHON, "-I", "-S", "-c", probe]).stdout.split(" ", 1)
    assert int(count) > 50 and outside.strip() == "[]"


def test_installed_daemon_starts_like_ctdbd_and_ctdb_shutdown_stops_it(clean_root: Path, tmp_path: Path) -> None:
    """What pyctdbd.service does, by hand: ExecStart forks (the parent exits once the pid file
    and socket exist), then ExecStop is `ctdb shutdown`. Debian's 10.interface, linked as the
    ctdb package links it, runs as pyctdbd's own."""
    address = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.1"
    (tmp_path / "run").mkdir()
    (tmp_path / "nodes").write_text(f"{address}\n")
    (tmp_path / "ctdb.tunables").write_text("")
    (tmp_path / "ctdb.conf").write_text(
        f"[logging]\n  location = file:{tmp_path / 'log'}\n[cluster]\n  node address = {address}\n"
        "[legacy]\n  realtime scheduling = false\n")
    legacy = tmp_path / "events" / "legacy"
    legacy.mkdir(parents=True)
    (legacy / "10.interface.script").symlink_to("/usr/share/ctdb/events/legacy/10.interface.script")
    socket_path = tmp_path / "run" / "ctdbd.socket"
    env = dict(os.environ, CTDB_SOCKET=str(socket_path))
    run([HOST_PYTHON, "-I", "-S", str(clean_root / "usr" / "sbin" / "pyctdbd"), "--config-dir", str(tmp_path),
         "--socket", str(socket_path), "--port", str(random.randint(20000, 60000)), "--fake-ip-effects"])
    pid = int((tmp_path / "run" / "ctdbd.pid").read_text())
    try:
        assert Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:4] == \
            [HOST_PYTHON, "-I", "-S", str(clean_root / "usr" / "sbin" / "pyctdbd")]
        assert run(["ctdb", "getpid"], env=env).stdout.strip() == str(pid)
        deadline = time.monotonic() + 20
        while "RUNNING" not in run(["ctdb", "runstate"], env=env, check=False).stdout:
            assert time.monotonic() < deadline, "pyctdbd did not reach RUNNING"
            time.sleep(0.2)
        run(["ctdb", "shutdown"], env=env)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}") and not (tmp_path / "run" / "ctdbd.pid").exists()
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)
    log = (tmp_path / "log").read_text()
    own = clean_root / "usr" / "lib" / "pyctdbd" / "pyctdbd" / "events" / "scripts" / "10.interface.script"
    assert f"Running {own} in place of Debian's {legacy}/10.interface.script" in log
    assert "Shutdown complete" in log


def test_package_removal_leaves_nothing(artefacts, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("info", "updates"):
        (root / "var" / "lib" / "dpkg" / d).mkdir(parents=True)
    for f in ("status", "available"):
        (root / "var" / "lib" / "dpkg" / f).touch()
    dpkg = ["dpkg", f"--root={root}", "--force-not-root", "--force-script-chrootless", "--force-depends"]
    run([*dpkg, "-i", str(artefacts["deb"])])
    assert (root / "usr" / "lib" / "pyctdbd" / "pyctdbd" / "__pycache__").is_dir()
    removed = run([*dpkg, "--purge", "pyctdbd"])
    assert "warning" not in removed.stderr.lower(), removed.stderr
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())
    assert [p for p in left if not p.startswith("var/lib/dpkg/")] == []


# -- the wheel -----------------------------------------------------------------------------------
def test_wheel_installs_alone_into_a_fresh_venv(artefacts, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([HOST_PYTHON, "-m", "venv", str(venv)])               # no system site-packages
    pip = run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps",
               "--disable-pip-version-check", str(artefacts["wheel"])])
    assert f"Successfully installed pyctdbd-{VERSION}" in pip.stdout
    assert run([str(venv / "bin" / "pyctdbd"), "--help"]).stdout.startswith("usage: pyctdbd ")
    probe = ("import importlib, pkgutil, sys, pyctdbd, pyctdbd.events as e\n"
             "for m in pkgutil.walk_packages(pyctdbd.__path__, 'pyctdbd.'): importlib.import_module(m.name)\n"
             "print(e.SHIPPED_SCRIPTS_DIR)\n"
             "for lab in ('mininet', 'matplotlib', 'smbprotocol', 'psutil', 'pyroute2', 'ctdblab'):\n"
             "    assert importlib.util.find_spec(lab) is None, lab\n")
    scripts = Path(run([str(venv / "bin" / "python"), "-I", "-c", probe]).stdout.strip())
    assert scripts.is_relative_to(venv)
    assert sorted(p.name for p in scripts.iterdir()) == ["10.interface.script", "50.samba.script"]
    assert all(os.access(p, os.X_OK) for p in scripts.iterdir())
    listed = run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze",
                  "--disable-pip-version-check"]).stdout.split()
    assert [p for p in listed if not p.startswith(("pip==", "setuptools=="))] == [f"pyctdbd=={VERSION}"]
