"""The `pyctdbd` command: load the configuration, daemonise (unless -i), set up logging, the pid
file, signals and real-time scheduling, then run the daemon until SIGTERM/SIGINT or
`ctdb shutdown`.

    pyctdbd [-i] [--config-dir DIR] [--socket PATH] [--pidfile PATH] [--logging LOCATION]
            [--debug LEVEL] [--node-address ADDR] [--port N] [--no-realtime] [--fake-ip-effects]

Defaults are ctdbd's: configuration in /etc/ctdb, socket /run/ctdb/ctdbd.socket (or
$CTDB_SOCKET), pid file /run/ctdb/ctdbd.pid, logging as `[logging] location` in ctdb.conf.
A broken configuration file is reported on stderr with its file and line, and the command exits
with status 1 before it daemonises.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import logging
import logging.handlers
import os
import resource
import signal
import socket
import sys
import time
import warnings
from collections.abc import Mapping
from datetime import datetime

from . import spawn
from .config import (
    ConfigError, DaemonConfig, check_ctdb_conf_paths, debug_level_name, find_my_node, load_config,
    parse_debug_level, parse_log_location,
)
from .config.ctdbconf import LogLocation
from .controls import registry
from .failover.effects import HostEffects, RecordingEffects
from .log import NOTICE, python_level
from .server.daemon import Daemon, DaemonOptions

PROGRAM = "pyctdbd"


class CtdbFormatter(logging.Formatter):
    """`2026-11-23T21:52:40.999974+00:00 host pyctdbd[1234]: message`: the RFC 3339 stamp and
    host name that ctdbd 4.17 writes to its log file, so tools that read CTDB logs read ours."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self.with_time = with_time
        self.host = socket.gethostname().split(".")[0]

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        prefix = f"{PROGRAM}[{os.getpid()}]: "
        if not self.with_time:
            return prefix + message
        stamp = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds")
        return f"{stamp} {self.host} {prefix}{message}"


class ReopenableFileHandler(logging.FileHandler):
    """A log file that SIGHUP reopens (for logrotate)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors)
        finally:
            self.release()


class QuietSysLogHandler(logging.handlers.SysLogHandler):
    """syslog that, when there is no syslog daemon, says so once on stderr and then drops
    records instead of printing a traceback per record."""

    _complained = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._complained:
            self._complained = True
            sys.stderr.write(f"{PROGRAM}: cannot log to syslog ({self.address}); log lines are lost\n")


def setup_logging(location: LogLocation, level: int) -> logging.Handler:
    if location.kind == "file" and location.path:
        os.makedirs(os.path.dirname(location.path) or ".", exist_ok=True)
        handler: logging.Handler = ReopenableFileHandler(location.path, delay=False)
        handler.setFormatter(CtdbFormatter())
    elif location.kind == "syslog":
        facility = logging.handlers.SysLogHandler.LOG_DAEMON
        if location.syslog_method in ("udp", "udp-rfc5424"):
            handler = QuietSysLogHandler(address=("localhost", 514), facility=facility)
        else:
            handler = QuietSysLogHandler(address="/dev/log", facility=facility)
        handler.setFormatter(CtdbFormatter(with_time=False))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(CtdbFormatter())
    root = logging.getLogger("ctdblab")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(python_level(level))
    root.propagate = False
    return handler


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROGRAM, description="A CTDB-compatible cluster daemon.")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="stay in the foreground (default: daemonise)")
    p.add_argument("--config-dir", help="configuration directory (default /etc/ctdb)")
    p.add_argument("--socket", help="local socket (default $CTDB_SOCKET or /run/ctdb/ctdbd.socket)")
    p.add_argument("--pidfile", help="pid file (default <rundir>/ctdbd.pid)")
    p.add_argument("--logging", help="log location, as ctdb.conf [logging] location "
                   "(file:PATH, file: for stderr, syslog)")
    p.add_argument("-d", "--debug", help="log level (ERROR, WARNING, NOTICE, INFO, DEBUG)")
    p.add_argument("--node-address", help="this node's address ([cluster] node address)")
    p.add_argument("--port", type=int, default=4379, help="node transport port (default 4379)")
    p.add_argument("--no-realtime", action="store_true", help="do not use real-time scheduling")
    p.add_argument("--fake-ip-effects", action="store_true",
                   help="manage public IPs without touching the host (for tests)")
    return p.parse_args(argv)


def find_my_address(config: DaemonConfig, override: str | None) -> str:
    """[cluster] node address (or --node-address), else the first nodes-list address this host
    can bind, as ctdbd does."""
    if override or config.conf.node_address:
        return str(config.my_node().address) if not override else override
    for entry in config.nodes:
        if entry.deleted or entry.address is None:
            continue
        family = socket.AF_INET6 if entry.address.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((str(entry.address), 0))
            except OSError:
                continue
            return str(entry.address)
    raise ConfigError("none of this host's addresses is in the nodes list "
                      "(set [cluster] node address, or fix the nodes file)", config.nodes_source)


class PidFile:
    """An fcntl-locked pid file: a second daemon on the same file refuses to start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise RuntimeError(f"another daemon (pid {other or '?'}) holds the pid file {self.path}")
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def set_realtime(log: logging.Logger) -> None:
    """Real-time priority 1, as ctdbd, so heartbeats beat ordinary load. Round-robin rather
    than ctdbd's SCHED_FIFO: among real-time tasks of equal priority FIFO lets a busy one run
    until it blocks (a flat-out daemon of another lab cluster stalled every other loop for
    200-700 ms, until the kernel's real-time throttling), while RR hands the CPU on after each
    time slice (100 ms). Against ordinary tasks the two are the same."""
    try:
        flags = os.SCHED_RR | getattr(os, "SCHED_RESET_ON_FORK", 0)
        os.sched_setscheduler(0, flags, os.sched_param(1))
        log.log(NOTICE, "Set real-time scheduler priority")
    except (OSError, AttributeError) as exc:
        log.warning("Unable to set real-time scheduler priority: %s", exc)


def load(args: argparse.Namespace) -> tuple[DaemonConfig, LogLocation, int]:
    config = load_config(args.config_dir, check_filesystem=False)
    errors = check_ctdb_conf_paths(config.conf, config.paths.etc_dir, startup=False)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigError("; ".join(str(e) for e in errors))
    location = parse_log_location(args.logging) if args.logging else config.log_location
    level = parse_debug_level(args.debug) if args.debug else config.conf.log_level
    return config, location, level


def daemonise() -> int:
    """Fork: the parent waits for the child's "ready" byte (or its error text) and exits with
    the child's verdict. Returns the write end of the status pipe in the child."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        chunks = []
        while True:
            data = os.read(read_fd, 4096)
            if not data:
                break
            chunks.append(data)
        status = b"".join(chunks).decode(errors="replace")
        if status.startswith("ok"):
            os._exit(0)
        sys.stderr.write(status.lstrip("x") or f"{PROGRAM}: the daemon exited during start-up\n")
        os._exit(1)
    os.close(read_fd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return write_fd


def watch_children_with_pidfds() -> None:
    """Reap event-script and helper processes through pidfds on the (running) event loop. asyncio's default
    watcher starts a thread per child that waits in waitpid(): with clustered Samba's monitor
    scripts that was the largest share of an idle daemon's CPU."""
    watcher_class = getattr(asyncio, "PidfdChildWatcher", None)
    if watcher_class is None or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return                   # a kernel without pidfds: keep asyncio's default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = watcher_class()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


def name_process(name: str = "ctdbd") -> None:
    """Give the process ctdbd's name (/proc/PID/comm), so tools that look for the daemon by
    name (`pgrep -x ctdbd`, `ps -C ctdbd`, `killall ctdbd`, `ctdb_diagnostics`) find it; its
    command line still says pyctdbd. What systemd, Debian's init script and CTDB's helpers rely
    on is the pid file and `ctdb getpid`, which match ctdbd's already."""
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write(name)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name_process()
    try:
        config, location, level = load(args)
        my_address = find_my_address(config, args.node_address)
        my_pnn = find_my_node(config.nodes, [my_address], my_address, config.nodes_source).pnn
    except ConfigError as exc:
        sys.stderr.write(f"{PROGRAM}: configuration error: {exc}\n")
        return 1
    except ValueError as exc:
        sys.stderr.write(f"{PROGRAM}: {exc}\n")
        return 1
    paths = config.paths
    socket_path = args.socket or paths.socket
    pidfile_path = args.pidfile or (os.path.join(os.path.dirname(socket_path), "ctdbd.pid")
                                    if args.socket else paths.pid_file)
    eventd_socket = (os.path.join(os.path.dirname(socket_path), "eventd.socket")
                     if args.socket else paths.eventd_socket)
    status_fd = None if args.interactive else daemonise()

    def report(text: str) -> None:
        nonlocal status_fd
        if status_fd is not None:
            try:
                os.write(status_fd, text.encode())
            except OSError:
                pass
            os.close(status_fd)
            status_fd = None

    handler = setup_logging(location, level)
    log = logging.getLogger("ctdblab.daemon")
    for warning in config.warnings:
        log.warning("%s", warning)
    pidfile = PidFile(pidfile_path)
    try:
        pidfile.acquire()
    except (RuntimeError, OSError) as exc:
        log.error("%s", exc)
        report(f"x{PROGRAM}: {exc}\n")
        return 1
    try:
        if config.conf.realtime_scheduling and not args.no_realtime:
            set_realtime(log)
        script_env = {"CTDB_BASE": config.paths.base_dir, "CTDB_SOCKET": socket_path,
                      # What ctdbd puts in its environment for event and debug scripts.
                      "CTDB_LOGGING": args.logging or config.conf.log_location,
                      "CTDB_DEBUGLEVEL": debug_level_name(level)}
        code = asyncio.run(_run(config, my_pnn, socket_path, eventd_socket, script_env, args, handler,
                                report))
    except Exception as exc:
        log.exception("pyctdbd failed: %s", exc)
        report(f"x{PROGRAM}: {exc}\n")
        code = 1
    finally:
        pidfile.release()
    report(f"x{PROGRAM}: exited with status {code} during start-up (see the log)\n")
    return code


def grow_descriptor_table(upto: int = 1024) -> None:
    """Make the descriptor table hold ``upto`` descriptors (or the soft limit) now, while the
    daemon has one thread: a process with several threads waits for an RCU grace period each
    time its table grows, and the loop slept 5-12 ms in pipe() when a freeze's lock helpers
    first took it past 64 descriptors."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return
    highest = min(upto, soft if soft != resource.RLIM_INFINITY else upto) - 1
    if highest < 3:
        return
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # The lowest free descriptor from `highest` up: never one in use.
        os.close(fcntl.fcntl(null, fcntl.F_DUPFD_CLOEXEC, highest))
    except OSError:
        pass
    finally:
        os.close(null)


def recovery_pause_from_env(environ: Mapping[str, str]) -> float:
    """PYCTDBD_RECOVERY_PAUSE_S: seconds (0..30) every recovery this node leads waits before its
    databases stage, so a lab test can land a second fault mid-recovery. Unset: 0."""
    text = environ.get("PYCTDBD_RECOVERY_PAUSE_S", "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise RuntimeError(f"PYCTDBD_RECOVERY_PAUSE_S={text!r} is not a number of seconds") from None
    if not 0 <= value <= 30:
        raise RuntimeError(f"PYCTDBD_RECOVERY_PAUSE_S={text!r} is outside 0..30 s")
    return value


async def _run(config: DaemonConfig, my_pnn: int, socket_path: str, eventd_socket: str, env: dict[str, str],
               args: argparse.Namespace, handler: logging.Handler, report) -> int:
    watch_children_with_pidfds()
    grow_descriptor_table()
    # The threads that start children, and run_in_executor(None, ...)'s, at the loop's own
    # priority and all made now: one made later by a busy daemon stalls the loop (daemon/spawn).
    spawn.start_spawner()
    asyncio.get_running_loop().set_default_executor(spawn.thread_pool(4, "worker"))
    log = logging.getLogger("ctdblab.daemon")
    fake = args.fake_ip_effects or os.environ.get("PYCTDBD_FAKE_IP_EFFECTS") == "1"
    if fake:
        effects = RecordingEffects()
        log.warning("Public IP effects are simulated (--fake-ip-effects): nothing on this host changes")
    else:
        try:
            effects = HostEffects()
        except Exception as exc:
            if config.conf.failover_disabled or not config.public_addresses:
                effects = RecordingEffects()
            else:
                raise RuntimeError(f"cannot open the sockets failover needs (root?): {exc}") from exc
    recovery_pause = recovery_pause_from_env(os.environ)
    if recovery_pause:
        log.warning("PYCTDBD_RECOVERY_PAUSE_S=%g: every recovery this node leads pauses that long "
                    "(lab fault injection; never set this in production)", recovery_pause)
    options = DaemonOptions(config=config, my_pnn=my_pnn, socket_path=socket_path, effects=effects,
                            event_dir=config.paths.event_scripts_dir, eventd_socket=eventd_socket,
                            port=args.port, script_env=env, recovery_pause=recovery_pause)
    daemon = Daemon(options, registry())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_shutdown, f"signal {signal.Signals(sig).name}")
    if isinstance(handler, ReopenableFileHandler):
        loop.add_signal_handler(signal.SIGHUP, handler.reopen)
    started = time.monotonic()
    code = await daemon.run(ready=lambda: (report("ok"), log.info(
        "start-up took %.0f ms", (time.monotonic() - started) * 1000)))
    return code


if __name__ == "__main__":
    sys.exit(main())
