"""The load tools' /proc reader: parsing, labelling command lines, and a sampler over a fake /proc."""
import os
import shutil

import pytest

from tests.load import procstats
from tests.load.procstats import classify, listening_inodes, local_port, parse_cmdline, parse_stat

REAL_STAT = ("31471 (python3) S 31386 31386 31386 0 -1 4194368 14884 0 1 0 848 76 0 0 20 0 1 0 942586 "
             "794951680 18046 18446744073709551615 94527235702784 94527235703125 140734749372992 0 0 0 0 "
             "16781312 137380390 1 0 0 17 1 0 0 0 0 0 94527235714480 94527235715096 94527542775808 "
             "140734749374234 140734749374332 140734749374332 140734749376463 0\n")


def stat_line(pid: int, comm: str, ppid: int = 1, utime: int = 0, stime: int = 0, starttime: int = 1000,
              rss_pages: int = 0) -> str:
    rest = ["0"] * 50
    rest[0], rest[1], rest[11], rest[12], rest[19], rest[21] = "S", str(ppid), str(utime), str(stime), \
        str(starttime), str(rss_pages)
    return f"{pid} ({comm}) {' '.join(rest)}\n"


def test_parse_stat_of_a_real_line():
    stat = parse_stat(REAL_STAT)
    assert (stat.pid, stat.comm, stat.ppid) == (31471, "python3", 31386)
    assert (stat.ticks, stat.starttime, stat.rss_pages) == (848 + 76, 942586, 18046)


@pytest.mark.parametrize("comm", ["Web Content", "a) S 1 2 (b", "((", "x)"])
def test_parse_stat_reads_the_fields_after_the_last_parenthesis(comm):
    stat = parse_stat(stat_line(42, comm, ppid=7, utime=10, stime=5, starttime=99, rss_pages=321))
    assert (stat.pid, stat.comm, stat.ppid, stat.ticks, stat.starttime, stat.rss_pages) == \
        (42, comm, 7, 15, 99, 321)


def test_children_are_found_by_parent_pid_whatever_their_names(tmp_path):
    for pid, comm, ppid in ((10, "gunicorn: master [app]", 1), (11, "gunicorn: worker [app]", 10),
                            (12, "python3", 11), (13, "other", 10)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid, comm, ppid=ppid))
    (tmp_path / "14").mkdir()  # a process gone between the listing and the read
    (tmp_path / "net").mkdir()
    assert sorted(procstats.children(10, str(tmp_path))) == [11, 13]
    assert procstats.children(99, str(tmp_path)) == []


def test_parse_cmdline():
    assert parse_cmdline(b"python3\0-m\0functions\0send\0") == ["python3", "-m", "functions", "send"]
    assert parse_cmdline(b"redis-server 127.0.0.1:16379\0\0\0") == ["redis-server 127.0.0.1:16379"]
    assert parse_cmdline(b"") == []


@pytest.mark.parametrize("cmdline, label", [
    ("/usr/bin/python3 -m gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app", "gateway"),
    ("/venv/bin/gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app", "gateway"),
    ("/usr/bin/python3 -m gunicorn other.wsgi:app", None),
    ("python3 -m functions send", "send"),
    ("/root/.pyenv/versions/3.11.7/bin/python3 -m functions deliver", "deliver"),
    ("python -m functions retry", "retry"),
    ("python -m functions all", "supervisor"),
    ("python -m functions", "supervisor"),
    ("python -m functions send deliver", "supervisor"),
    ("/usr/bin/java -Xmx1g -cp /opt/kafka/libs/* kafka.Kafka /state/server.properties", "kafka"),
    ("/usr/bin/java -cp x.jar org.apache.zookeeper.server.quorum.QuorumPeerMain", None),
    ("/usr/sbin/mariadbd --no-defaults --port=13306", "mariadb"),
    ("/usr/sbin/mysqld --port=3306", "mariadb"),
    ("python -m tests.load.chat_load --url http://127.0.0.1:8080", None),
    ("grep gateway.wsgi:app", None),
    (["pgrep", "-f", "-m functions send"], None),
    (["gunicorn: master [gateway.wsgi:app]"], "gw-master"),
    (["gunicorn: worker [gateway.wsgi:app]"], "gw"),
    (["redis-server 127.0.0.1:16379"], "redis"),
    ([], None),
])
def test_classify(cmdline, label):
    assert classify(cmdline.split(" ") if isinstance(cmdline, str) else cmdline) == label


TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 5556 1 0 20 4 30 10 -1
   2: 0100007F:1B9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7777 1 0 100 0 0 10 0
"""


def test_listening_inodes_are_the_listening_sockets_of_the_port():
    assert listening_inodes(TCP, 8080) == {"5555"}
    assert listening_inodes(TCP, 7070) == {"7777"}
    assert listening_inodes(TCP, 9999) == set()


def test_local_port():
    assert local_port("http://127.0.0.1:8080") == 8080
    assert local_port("http://localhost") == 80
    assert local_port("http://gateway.example:8080") is None


class FakeProc:
    """A /proc tree in a directory: stat, cmdline, environ and socket fds per process."""

    def __init__(self, root):
        self.root = root
        (root / "net").mkdir(parents=True)
        (root / "net" / "tcp").write_text(TCP)

    def add(self, pid, cmdline, ticks=0, rss_pages=0, ppid=1, env=None, sockets=()):
        d = self.root / str(pid)
        (d / "fd").mkdir(parents=True, exist_ok=True)
        self.set(pid, ticks, rss_pages, ppid)
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline.split(" ")) + b"\0")
        (d / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in (env or {}).items()))
        for n, inode in enumerate(sockets):
            os.symlink(f"socket:[{inode}]", d / "fd" / str(n + 3))

    def set(self, pid, ticks, rss_pages=0, ppid=1):
        (self.root / str(pid) / "stat").write_text(stat_line(pid, "python3", ppid, ticks, 0, 1000 + pid, rss_pages))

    def remove(self, pid):
        shutil.rmtree(self.root / str(pid))


GUNICORN = "python3 -m gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app"
OURS, THEIRS = {"PINGME_NAMESPACE": "ns1"}, {"PINGME_NAMESPACE": "other"}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(procstats.time, "monotonic", lambda: clock[0])
    proc = FakeProc(tmp_path / "proc")
    proc.clock = clock
    proc.add(141, GUNICORN, ppid=140, env=OURS, sockets=[5555])       # the gateway under load
    proc.add(140, GUNICORN, env=OURS, sockets=[5555])
    proc.add(131, GUNICORN, ppid=130, env=OURS, sockets=[7777])       # a second gateway of the system
    proc.add(130, GUNICORN, env=OURS, sockets=[7777])
    proc.add(201, GUNICORN, ppid=200, env=THEIRS)                      # another system's
    proc.add(200, GUNICORN, env=THEIRS)
    proc.add(110, "python3 -m functions send", ticks=50, rss_pages=1000, env=OURS)
    proc.add(111, "python3 -m functions deliver", rss_pages=500, env=OURS)
    proc.add(210, "python3 -m functions send", env=THEIRS)
    proc.add(300, "/usr/bin/java -cp libs/* kafka.Kafka server.properties", env=THEIRS)
    proc.add(301, "redis-server 127.0.0.1:16379")
    proc.add(999, "python3 -m tests.load.chat_load")
    proc.add(5, "bash")
    return proc


def test_sampler_scopes_labels_and_accounts_across_restarts_and_exits(fake):
    clk = procstats.CLOCK_TICKS
    sampler = procstats.Sampler(gateway_port=8080, proc=str(fake.root), own_pid=999)
    sampler.start()
    assert "PINGME_NAMESPACE=ns1" in sampler.scope

    fake.clock[0] = 1.0
    fake.set(110, 50 + clk, rss_pages=3000)       # send: one core for the second
    fake.set(141, clk // 2)
    sampler.tick()
    assert sampler.rates()["send"] == pytest.approx(100)
    assert sampler.brief(2) == "send 100% gw 50%"

    fake.clock[0] = 2.0
    fake.remove(110)                              # send is killed and restarted
    fake.add(112, "python3 -m functions send", ticks=clk // 10, rss_pages=2000, env=OURS)
    sampler.tick()

    fake.clock[0] = 4.0
    fake.set(112, clk // 2, rss_pages=2000)
    fake.remove(111)                              # deliver exits
    sampler.stop()

    report = sampler.report()
    assert set(report) == {"gw", "gw-master", "gw-2", "gw-master-2", "send", "deliver", "kafka", "redis", "load"}
    assert report["gw"]["pids"] == [141] and report["gw-master"]["pids"] == [140]
    assert report["gw-2"]["pids"] == [131] and report["gw-master-2"]["pids"] == [130]
    assert report["send"]["pids"] == [110, 112]
    assert report["send"]["cpu_pct"] == pytest.approx((clk + clk // 2) / clk / 4 * 100, abs=0.1)
    assert report["gw"]["cpu_pct"] == pytest.approx((clk // 2) / clk / 4 * 100, abs=0.1)
    page_mb = procstats.PAGE_BYTES / 2**20
    assert report["send"]["rss_mb_peak"] == round(3000 * page_mb, 1)
    assert report["send"]["rss_mb_end"] == round(2000 * page_mb, 1)
    assert report["deliver"]["rss_mb_end"] is None and report["deliver"]["cpu_pct"] == 0


def test_sampler_without_a_local_gateway_takes_every_system(fake):
    sampler = procstats.Sampler(gateway_port=None, proc=str(fake.root), own_pid=999)
    sampler.start()
    sampler.stop()
    labels = set(sampler.report())
    assert {"gw", "gw-2", "gw-3", "send", "send-2"} <= labels
