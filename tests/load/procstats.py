"""CPU and memory of the system's processes during a load run, read from /proc (Linux; no psutil).

Processes are found by command line and labelled: ``gw`` (the gunicorn worker) and ``gw-master``,
one label per function (``send``, ``deliver``, …; ``supervisor`` for ``python -m functions all``),
``kafka``, ``redis``, ``mariadb``, and ``load`` for the load tool itself. A label that is already
held by a live process gets a suffix (``gw-2`` for a second gateway).

Several systems may run on one machine (``make dev`` beside a test session), so when the gateway
under load listens on this machine its own system is picked out: the gateway is the gunicorn
process holding the URL's listening socket, and another gateway or function belongs to the same
system when its PINGME_NAMESPACE and APP_CONF environment variables equal the gateway's. Kafka,
Redis and MariaDB are shared servers, matched by command line alone.

A :class:`Sampler` reads every process at ``start()``, on each ``tick()`` (about once a second) and
at ``stop()``. CPU is the utime+stime used between start and stop over the wall time (100 % = one
core); RSS is the ``rss`` field of /proc/PID/stat, the same counter as VmRSS in /proc/PID/status,
read together with the CPU times in one file. A process that appears during the run (a restarted
function) is picked up at the next tick and counted from zero; one that exits keeps what it had
used at its last sample.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SYSTEM_ENV = ("PINGME_NAMESPACE", "APP_CONF")
SHARED_SERVERS = frozenset({"kafka", "redis", "mariadb"})
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat a sampler needs."""
    pid: int
    comm: str
    ppid: int
    ticks: int       # utime + stime, in clock ticks
    starttime: int   # clock ticks after boot; with the pid, names a process across pid reuse
    rss_pages: int


def parse_stat(text: str) -> Stat:
    """Parse /proc/PID/stat. ``comm`` may hold spaces and parentheses, so the numeric fields are
    the ones after the last ``)``: field 3 (state) is ``rest[0]``, field N is ``rest[N - 3]``."""
    head, _, tail = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    rest = tail.split()
    return Stat(pid=int(pid), comm=comm, ppid=int(rest[1]), ticks=int(rest[11]) + int(rest[12]),
                starttime=int(rest[19]), rss_pages=int(rest[21]))


def read_stat(pid: int | str, proc: str = "/proc") -> Stat:
    with open(os.path.join(proc, str(pid), "stat"), encoding="utf-8", errors="replace") as f:
        return parse_stat(f.read())


def children(pid: int, proc: str = "/proc") -> list[int]:
    """The pids whose parent is ``pid`` (e.g. the worker of a gunicorn arbiter)."""
    found = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                stat = read_stat(entry, proc)
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            if stat.ppid == pid:
                found.append(stat.pid)
    return found


def parse_cmdline(raw: bytes) -> list[str]:
    return [arg.decode(errors="replace") for arg in raw.rstrip(b"\0").split(b"\0")] if raw else []


def parse_environ(raw: bytes) -> dict[str, str]:
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def system_key(environ: dict[str, str]) -> tuple:
    return tuple(environ.get(name) for name in SYSTEM_ENV)


def _module_args(argv: list[str]) -> list[str]:
    """What follows ``-m`` in a Python command line (``-m functions send`` → functions, send)."""
    return argv[argv.index("-m") + 1:] if "-m" in argv else []


def classify(argv: list[str]) -> str | None:
    """The label of a command line, or None when it is not part of the system. A plain gunicorn
    command line is ``gateway``: whether it is the master or a worker depends on its parent."""
    if not argv:
        return None
    first = argv[0]
    if first.startswith("gunicorn: ") and "gateway.wsgi" in first:  # a title set by setproctitle
        return "gw-master" if first.startswith("gunicorn: master") else "gw"
    program = os.path.basename(first.split(" ", 1)[0])
    module = _module_args(argv)
    if any(arg.startswith("gateway.wsgi") for arg in argv) and (
            program == "gunicorn" or module[:1] == ["gunicorn"]):
        return "gateway"
    if module[:1] == ["functions"]:
        names = module[1:]
        return names[0] if len(names) == 1 and names[0] != "all" else "supervisor"
    if program == "java" and "kafka.Kafka" in argv:
        return "kafka"
    if program == "redis-server":
        return "redis"
    if program in ("mariadbd", "mysqld"):
        return "mariadb"
    return None


def listening_inodes(proc_net_tcp: str, port: int) -> set[str]:
    """Socket inodes listening on ``port`` in the text of /proc/net/tcp or /proc/net/tcp6."""
    inodes = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def local_port(url: str) -> int | None:
    """The port of a URL served on this machine, or None for a remote one."""
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS and not (parts.hostname or "").startswith("127."):
        return None
    return parts.port or (443 if parts.scheme in ("https", "wss") else 80)


@dataclass
class _Tracked:
    label: str
    pid: int
    baseline: int   # ticks when the run started (0 for a process that started during it)
    ticks: int      # at the latest sample
    previous: int   # at the sample before, for the per-tick rate
    rss_pages: int
    alive: bool = True


class Sampler:
    """Per-label CPU and RSS of the system's processes between ``start()`` and ``stop()``."""

    def __init__(self, gateway_port: int | None = None, proc: str = "/proc", own_pid: int | None = None):
        self.proc = proc
        self.gateway_port = gateway_port
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.scope = "all systems (gateway not found on this machine)"
        self._key: tuple | None = None
        self._gateway_inodes: set[str] = set()
        self._tracked: dict[tuple[int, int], _Tracked] = {}
        self._ignored: set[tuple[int, int]] = set()
        self._peak_rss: dict[str, int] = {}
        self._rates: dict[str, float] = {}
        self._started = self._stopped = self._last = 0.0

    def _read(self, pid: int | str, name: str) -> bytes:
        with open(f"{self.proc}/{pid}/{name}", "rb") as f:
            return f.read()

    def _holds_gateway_socket(self, pid: int) -> bool:
        try:
            fds = os.listdir(f"{self.proc}/{pid}/fd")
        except OSError:
            return False
        for fd in fds:
            try:
                link = os.readlink(f"{self.proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in self._gateway_inodes:
                return True
        return False

    def _find_system(self) -> None:
        """Take the gateway's system key from the process that holds its listening socket."""
        for table in ("tcp", "tcp6"):
            try:
                self._gateway_inodes |= listening_inodes(self._read("net", table).decode(), self.gateway_port)
            except OSError:
                continue
        if not self._gateway_inodes:
            return
        for stat, argv in self._scan_new():
            if classify(argv) in ("gateway", "gw", "gw-master") and self._holds_gateway_socket(stat.pid):
                try:
                    self._key = system_key(parse_environ(self._read(stat.pid, "environ")))
                except OSError:
                    continue
                self.scope = "system of the gateway on port {} ({})".format(
                    self.gateway_port, ", ".join(f"{n}={v}" for n, v in zip(SYSTEM_ENV, self._key) if v) or "defaults")
                return

    def _stats(self) -> list[Stat]:
        stats = []
        try:
            entries = os.listdir(self.proc)
        except OSError:  # no /proc (not Linux): nothing to report
            return stats
        for entry in entries:
            if entry.isdigit():
                try:
                    stats.append(parse_stat(self._read(entry, "stat").decode(errors="replace")))
                except (OSError, ValueError, IndexError):
                    continue
        return stats

    def _scan_new(self, stats: list[Stat] | None = None):
        """(stat, argv) of every process not yet tracked or ignored."""
        for stat in self._stats() if stats is None else stats:
            if (stat.pid, stat.starttime) in self._tracked or (stat.pid, stat.starttime) in self._ignored:
                continue
            try:
                yield stat, parse_cmdline(self._read(stat.pid, "cmdline"))
            except OSError:
                continue

    def _in_system(self, pid: int, label: str) -> bool:
        if self._key is None or label in SHARED_SERVERS or pid == self.own_pid:
            return True
        try:
            return system_key(parse_environ(self._read(pid, "environ"))) == self._key
        except OSError:
            return False

    def _label(self, base: str) -> str:
        taken = {t.label for t in self._tracked.values() if t.alive}
        label, n = base, 1
        while label in taken:
            n += 1
            label = f"{base}-{n}"
        return label

    def _adopt(self, stats: list[Stat], at_start: bool) -> None:
        found: list[tuple[Stat, str]] = []
        for stat, argv in self._scan_new(stats):
            base = "load" if stat.pid == self.own_pid else classify(argv)
            if base is None or not self._in_system(stat.pid, base):
                self._ignored.add((stat.pid, stat.starttime))
            else:
                found.append((stat, base))
        gateways = {s.pid for s, base in found if base == "gateway"}
        gateways |= {t.pid for t in self._tracked.values() if t.alive and t.label.startswith("gw")}
        serving = {s.pid for s, base in found if base == "gateway" and self._holds_gateway_socket(s.pid)}
        for stat, base in sorted(found, key=lambda f: (f[0].pid not in serving, f[0].pid)):
            if base == "gateway":
                base = "gw" if stat.ppid in gateways else "gw-master"
            baseline = stat.ticks if at_start else 0
            self._tracked[(stat.pid, stat.starttime)] = _Tracked(
                self._label(base), stat.pid, baseline, stat.ticks, baseline, stat.rss_pages)

    def _sample(self, at_start: bool = False) -> None:
        now = time.monotonic()
        stats = self._stats()
        current = {(s.pid, s.starttime): s for s in stats}
        for key, tracked in self._tracked.items():
            stat = current.get(key)
            tracked.alive = stat is not None
            if stat is not None:
                tracked.previous, tracked.ticks, tracked.rss_pages = tracked.ticks, stat.ticks, stat.rss_pages
        self._adopt(stats, at_start)
        elapsed = max(now - self._last, 1e-9)
        rates: dict[str, float] = {}
        rss: dict[str, int] = {}
        for tracked in self._tracked.values():
            if tracked.alive:
                rates[tracked.label] = rates.get(tracked.label, 0) + (tracked.ticks - tracked.previous) / CLOCK_TICKS / elapsed * 100
                rss[tracked.label] = rss.get(tracked.label, 0) + tracked.rss_pages * PAGE_BYTES
        for label, value in rss.items():
            self._peak_rss[label] = max(self._peak_rss.get(label, 0), value)
        self._rates = rates
        self._last = now

    def start(self) -> None:
        if self.gateway_port is not None:
            self._find_system()
        self._started = self._last = time.monotonic()
        self._sample(at_start=True)
        self._rates = {}

    def tick(self) -> None:
        self._sample()

    def stop(self) -> None:
        self._sample()
        self._stopped = self._last

    def seconds_since_sample(self) -> float:
        return time.monotonic() - self._last

    def rates(self) -> dict[str, float]:
        """CPU % per label since the previous sample."""
        return dict(self._rates)

    def brief(self, count: int = 3) -> str:
        """The busiest labels of the latest sample: ``gw 85% send 40% deliver 30%``."""
        busiest = sorted(self._rates.items(), key=lambda item: -item[1])[:count]
        return " ".join(f"{label} {rate:.0f}%" for label, rate in busiest)

    def report(self) -> dict[str, dict]:
        """Per label: CPU % over the run, peak and end RSS in MB (end is None once it has exited)."""
        wall = max((self._stopped or self._last) - self._started, 1e-9)
        report: dict[str, dict] = {}
        for tracked in sorted(self._tracked.values(), key=lambda t: t.pid):
            entry = report.setdefault(tracked.label, {"cpu_pct": 0.0, "rss_mb_peak": 0.0, "rss_mb_end": None,
                                                      "pids": []})
            entry["cpu_pct"] += (tracked.ticks - tracked.baseline) / CLOCK_TICKS / wall * 100
            entry["pids"].append(tracked.pid)
            if tracked.alive:
                entry["rss_mb_end"] = (entry["rss_mb_end"] or 0) + tracked.rss_pages * PAGE_BYTES / 2**20
        for label, entry in report.items():
            entry["cpu_pct"] = round(entry["cpu_pct"], 1)
            entry["rss_mb_peak"] = round(self._peak_rss.get(label, 0) / 2**20, 1)
            if entry["rss_mb_end"] is not None:
                entry["rss_mb_end"] = round(entry["rss_mb_end"], 1)
        return dict(sorted(report.items(), key=lambda item: -item[1]["cpu_pct"]))
