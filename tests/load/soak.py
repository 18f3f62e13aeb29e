"""Soak and fault runs: the whole system on servers of its own, reconnecting clients, a fault every
``--every`` seconds, and the operation-history checker (tests/load/history.py) as the judge.

    python -m tests.load.soak --state-dir DIR [--kafka shared|private] [--duration 3600]
        [--every 180] [--first-fault S] [--faults worker,redis,gateway,mariadb,kafka,kafka-net]
        [--outage 3] [--cut 15]
        [--rate 20] [--pairs 8] [--drain 120] [--sample-every 30] [--keep-servers]
        [--out results/soak.json] [--history PATH]

Servers: Redis and MariaDB (and with ``--kafka private`` a Kafka broker) of the run's own, started
by deploy/local/services.sh in ``--state-dir`` on free ports (kept in DIR/ports.json, so a later
run on the same dir uses the same servers; ``--keep-servers`` leaves them running, otherwise they
are stopped at the end). The faults kill these servers, never the shared ones of ``make
services``; with ``--kafka shared`` (the default) the run uses the shared broker in a namespace of
its own and never faults it. Processes: register, login, send, deliver, retry and dlq as one
worker each with static group membership, restarted at once when killed (as a container runtime
does), and two gateways under gunicorn.

Clients: ``--pairs`` pairs of users, one device each, the two of a pair on different gateways.
Each device behaves as docs/PROTOCOL.md asks a client to: when its gateway dies it reconnects at
once to the other; when told to come back later (1013) to either, as a load balancer would pick
(with backoff while it is refused); it syncs each of its conversations
from the last seq it has, and resends every message not acknowledged, with the same ``msg_id``;
a send refused with a code that says "try again" (50008, 10008, 2000x) is resent a second later;
a push that skips a seq makes it sync the gap. Messages go round-robin both ways at ``--rate``.

Faults, in turn, the first at ``--first-fault`` seconds (default: ``--every``), each then
restored: ``worker`` SIGKILL of the send or deliver worker (in turn), restarted at once;
``redis`` and ``mariadb`` SIGKILL of the server, started again ``--outage`` seconds later;
``gateway`` SIGKILL of one gateway (its master and worker; in turn), its clients move to the
other, started again ``--outage`` seconds later on its port; ``kafka`` (``--kafka private``
only) SIGKILL of the broker, started again ``--outage`` seconds later; ``kafka-net`` (``--kafka
private`` only) the network between the send worker and Kafka cut for ``--cut`` seconds (the
worker reaches the broker through a TCP proxy of this tool, on a listener services.sh adds for
it; the proxy closes every connection and refuses new ones, then listens again).

At the end the load stops, devices catch up (up to ``--drain`` seconds: every message acked and in
its recipient's hands by push or sync), and a fresh connection reads every conversation whole. The
JSON report (``--out``) has the checker's verdict, counts, e2e latencies, each fault with how long
its server was down and what users saw (``stall_s``: the longest send → recipient wait of the
messages sent in the ``--window`` seconds after it began; ``ack_stall_s`` the same for the
sender's ack), reconnects by close code, dead letters, and per process RSS and open file
descriptors at start and end with their slope per hour (each process's last incarnation), the
gateways' open sockets and greenlets. Exit status 0 when the checker finds nothing, every send
was acknowledged and every acknowledged message reached its recipient.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import collections  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
import simple_websocket  # noqa: E402

from tests import wsclient  # noqa: E402
from tests.integration.conftest import REPO, Proc, free_port  # noqa: E402
from tests.integration.private_servers import PrivateServers, alive  # noqa: E402
from tests.load import history as history_mod, procstats  # noqa: E402
from tests.load.chat_load import next_frame, sync_all  # noqa: E402
from tests.load.stats import percentiles  # noqa: E402
from tests.load.users import healthy, post_retrying  # noqa: E402

FUNCTIONS = ("register", "login", "send", "deliver", "retry", "dlq")
FAULTS = ("worker", "redis", "gateway", "mariadb", "kafka", "kafka-net")
# Refusals a client answers by sending again (the message may or may not be stored; same msg_id).
RESEND_CODES = history_mod.AMBIGUOUS_CODES | {10007}
AUTH_CLOSES = (4001, 4003)  # the token was refused or revoked: log in again
PASSWORD = "soak-password"


def log(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", flush=True)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        gevent.sleep(interval)


# ----------------------------------------------------------------------------------- servers ---

def create_database(env: dict[str, str]) -> None:
    import pymysql
    conn = pymysql.connect(host=env["DB_HOST"], port=int(env["DB_PORT"]), user=env["DB_USERNAME"],
                           password=env["DB_PASSWORD"], connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{env['DB_NAME']}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    subprocess.run([sys.executable, "-m", "common.cli", "db", "migrate"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=120)


def dead_letters(env: dict[str, str]) -> dict[int, int]:
    import pymysql
    conn = pymysql.connect(host=env["DB_HOST"], port=int(env["DB_PORT"]), user=env["DB_USERNAME"],
                           password=env["DB_PASSWORD"], database=env["DB_NAME"], connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT code, COUNT(*) FROM dead_letter GROUP BY code")
            return {int(code): int(n) for code, n in cursor.fetchall()}
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ system ---

class System:
    """The functions (one static member each) and two gateways of the run."""

    def __init__(self, env: dict[str, str], gateways: int = 2, function_env: dict | None = None):
        self.env = env
        self.function_env = function_env or {}  # name -> settings of that function only
        self.functions: dict[str, Proc] = {}
        self.gateways: list[Proc | None] = [None] * gateways
        self.gateway_ids: list[str] = [""] * gateways
        self.ports = [free_port() for _ in range(gateways)]
        self.incarnations = collections.Counter()
        self.old: list[Proc] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start_function(self, name: str, ready: bool = True) -> Proc:
        self.incarnations[name] += 1
        env = {**self.env, "KAFKA_GROUP_INSTANCE_ID": f"soak-{name}", **self.function_env.get(name, {})}
        proc = Proc([sys.executable, "-m", "functions", name], env, f"soak-{name}")
        self.functions[name] = proc
        if ready:
            wait_until(lambda: "partitions assigned" in proc.log(), 90, f"{name} joining its group", 0.2)
        return proc

    def start_gateway(self, i: int) -> None:
        self.incarnations[f"gw{i}"] += 1
        self.gateway_ids[i] = f"{self.env['PINGME_NAMESPACE']}g{i}n{self.incarnations[f'gw{i}']}"
        proc = Proc([sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"],
                    {**self.env, "APP_HOST": "127.0.0.1", "APP_PORT": str(self.ports[i]),
                     "GATEWAY_ID": self.gateway_ids[i]}, f"soak-gw{i}")
        self.gateways[i] = proc
        wait_until(lambda: healthy(self.urls[i]) or proc.popen.poll() is not None, 60, f"gateway {i}", 0.2)
        if proc.popen.poll() is not None:
            raise RuntimeError(f"gateway {i} exited:\n{proc.log()[-3000:]}")

    def start(self) -> None:
        for name in FUNCTIONS:  # all at once, then each must have joined its group
            self.start_function(name, ready=False)
        for name, proc in self.functions.items():
            wait_until(lambda: "partitions assigned" in proc.log(), 120, f"{name} joining its group", 0.2)
        for i in range(len(self.ports)):
            self.start_gateway(i)

    def kill_function(self, name: str) -> None:
        proc = self.functions[name]
        proc.signal(signal.SIGKILL)
        proc.popen.wait()
        proc._log.close()
        self.old.append(proc)
        self.start_function(name, ready=False)

    def kill_gateway(self, i: int) -> str:
        """SIGKILL of gateway ``i``'s worker and master at once (a crash: no drain, no close
        frames); its id."""
        proc = self.gateways[i]
        workers = procstats.children(proc.popen.pid)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        proc.signal(signal.SIGKILL)
        proc.popen.wait()
        for pid in workers:
            wait_until(lambda: not alive(pid), 15, f"gateway worker {pid} to die")
        proc._log.close()
        self.old.append(proc)
        self.gateways[i] = None
        return self.gateway_ids[i]

    def pids(self) -> dict[str, int]:
        """Each process's role and pid now (a gateway's role is its gunicorn worker)."""
        out = {name: proc.popen.pid for name, proc in self.functions.items() if proc.popen.poll() is None}
        for i, proc in enumerate(self.gateways):
            if proc is not None and proc.popen.poll() is None:
                for pid in procstats.children(proc.popen.pid)[:1]:
                    out[f"gw{i}"] = pid
        return out

    def stop(self) -> None:
        for proc in [*self.gateways, *self.functions.values()]:
            if proc is not None:
                proc.stop()


# ----------------------------------------------------------------------------------- clients ---

class Load:
    """What every device sent, was acknowledged and received, and the operation history."""

    def __init__(self):
        self.history = history_mod.History()
        self.first_sent: dict[str, float] = {}
        self.recipient: dict[str, int] = {}
        self.acked: dict[str, tuple[float, int, int]] = {}  # msg_id -> (time, conversation, seq)
        self.received: dict[tuple[int, str], tuple[float, str]] = {}  # (user, msg_id) -> (time, how)
        self.refused: dict[str, int] = {}
        self.closes = collections.Counter()  # close code (1006: no close frame) -> count
        self.refusals = collections.Counter()  # failed connection attempts: close code or error

    def on_received(self, user_id: int, msg_id: str, how: str) -> None:
        if self.recipient.get(msg_id) == user_id:
            self.received.setdefault((user_id, msg_id), (time.time(), how))


class Device:
    """One user's one device: a client that follows docs/PROTOCOL.md through every fault."""

    def __init__(self, load: Load, user_id: int, token: str, username: str, urls: list[str], read_every: int = 4):
        self.load, self.user_id, self.token, self.urls = load, user_id, token, list(urls)
        self.username = username
        self.logins = 0  # logins again after the gateway refused the token (4001: the session ended)
        self.read_every = read_every
        self.ws = None
        self.conn = ""
        self.pending: dict[str, dict] = {}  # msg_id -> send payload, until acknowledged
        self.seqs: dict[int, set] = {}
        self.upto: dict[int, int] = {}  # conversation -> n: seqs 1..n all in hand
        self.connects = 0
        self.pushes = 0
        self.online = gevent.event.Event()
        self.reply: gevent.event.AsyncResult | None = None
        self.to_sync: set[int] = set()
        self.sync_wanted = gevent.event.Event()
        self.stopped = False
        self.workers = [gevent.spawn(self._life), gevent.spawn(self._syncer)]

    # -- connection ---------------------------------------------------------------------------
    def _life(self) -> None:
        failures = 0
        while not self.stopped:
            url = self.urls[0]
            try:
                ws = wsclient.connect(f"{url.replace('http://', 'ws://')}/ws?token={self.token}")
                first = next_frame(ws, 10, "auth_ok")
                if first["type"] == "auth_fail":  # the token was refused, e.g. its session is gone
                    self.load.refusals["auth_fail"] += 1
                    ws.close()
                    if not self._log_in_again(url):
                        gevent.sleep(1.0)
                    continue
                if first["type"] != "auth_ok":
                    raise ConnectionError(first)
            except simple_websocket.ConnectionClosed as exc:
                self.load.refusals[int(exc.reason or 0)] += 1
                if exc.reason in AUTH_CLOSES and self._log_in_again(url):
                    continue
                failures += 1
                self.urls.append(self.urls.pop(0))
                gevent.sleep(min(0.1 * 2 ** failures, 2.0))
                continue
            except Exception as exc:  # connection refused, a timeout
                self.load.refusals[type(exc).__name__] += 1
                failures += 1
                self.urls.append(self.urls.pop(0))  # the other gateway next
                gevent.sleep(min(0.1 * 2 ** failures, 2.0))
                continue
            failures = 0
            self.ws, self.conn = ws, first["payload"].get("conn_id") or f"u{self.user_id}-{self.connects}"
            self.connects += 1
            self.online.set()
            if self.connects > 1:  # a reconnect: sync what may have been missed, resend the unacknowledged
                for conversation_id in self.seqs:
                    self.want_sync(conversation_id)
                for msg_id in list(self.pending):
                    self._transmit(msg_id)
            self._read(ws)
            self.online.clear()
            self.ws = None
            if self.reply is not None:
                self.reply.set(None)
            self.load.closes[int(ws.close_reason)] += 1
            if not self.stopped and int(ws.close_reason) in (1005, 1006):
                self.urls.append(self.urls.pop(0))  # the gateway died: reconnect at once, to another
            elif not self.stopped:  # told to come back (1013, 1012): any gateway, as a load balancer picks
                random.shuffle(self.urls)

    def _log_in_again(self, url: str) -> bool:
        """The token was refused (its session is gone): log in with the password, as a user
        would be asked to."""
        try:
            login = post_retrying(url + "/api/v1/auth/login", {"username": self.username, "password": PASSWORD})
        except Exception:  # the gateway or a function is not back yet: the next attempt tries again
            return False
        self.token = login["data"]["token"]
        self.logins += 1
        return True

    def _read(self, ws) -> None:
        history = self.load.history
        while True:
            try:
                text = ws.receive()
            except (simple_websocket.ConnectionClosed, OSError):
                return
            if text is None:
                continue
            frame = json.loads(text)
            kind, payload = frame.get("type"), frame.get("payload") or {}
            if kind == "message_ack":
                msg_id, cid, seq = payload["msg_id"], payload["conversation_id"], payload["seq"]
                history.ack(self.conn, msg_id, cid, seq)
                self.load.acked.setdefault(msg_id, (time.time(), cid, seq))
                self.pending.pop(msg_id, None)
                self._have(cid, seq)
            elif kind == "message":
                cid, seq = payload["conversation_id"], payload["seq"]
                history.push(self.conn, payload["msg_id"], cid, seq)
                self.load.on_received(self.user_id, payload["msg_id"], "push")
                self._have(cid, seq, pushed=True)
                self.pushes += 1
                if self.read_every and self.pushes % self.read_every == 0:
                    self._send_frame("ack", {"conversation_id": cid, "seq": seq, "ack_type": "read"})
            elif kind == "receipt":
                history.receipt(self.conn, payload["conversation_id"], payload["user_id"], payload["seq"])
            elif kind == "sync":
                if self.reply is not None:
                    self.reply.set(payload)
            elif kind == "error":
                ref, code = payload.get("ref"), payload.get("code")
                if ref == "sync":
                    if self.reply is not None:
                        self.reply.set(None)
                elif ref in self.load.first_sent:
                    history.error(self.conn, ref, code)
                    if code in RESEND_CODES:
                        gevent.spawn_later(1.0, self._transmit, ref)
                    elif ref in self.pending:
                        self.pending.pop(ref)
                        self.load.refused[ref] = code

    def _send_frame(self, kind: str, payload: dict) -> bool:
        ws = self.ws
        if ws is None:
            return False
        try:
            ws.send(json.dumps({"type": kind, "payload": payload}))
            return True
        except Exception:  # the socket is going; the reconnect resends
            return False

    # -- sending --------------------------------------------------------------------------------
    def send(self, msg_id: str, to_user_id: int, content: str) -> None:
        self.load.first_sent[msg_id] = time.time()
        self.load.recipient[msg_id] = to_user_id
        self.pending[msg_id] = {"msg_id": msg_id, "to_user_id": to_user_id, "content": content}
        self._transmit(msg_id)

    def _transmit(self, msg_id: str) -> None:
        payload = self.pending.get(msg_id)
        if payload is None or self.ws is None:
            return
        self.load.history.send(self.conn, msg_id)
        self._send_frame("send", payload)

    # -- what the device has, and sync -----------------------------------------------------------
    def _have(self, cid: int, seq: int, pushed: bool = False) -> None:
        seqs = self.seqs.setdefault(cid, set())
        seqs.add(seq)
        upto = self.upto.get(cid, 0)
        while upto + 1 in seqs:
            upto += 1
        self.upto[cid] = upto
        if pushed and seq > upto + 1:  # a push past a gap: sync the gap if it is still open in a while
            gevent.spawn_later(2.0, self._gap_check, cid, seq)

    def _gap_check(self, cid: int, seq: int) -> None:
        if self.upto.get(cid, 0) < seq - 1:
            self.want_sync(cid)

    def want_sync(self, cid: int) -> None:
        self.to_sync.add(cid)
        self.sync_wanted.set()

    def _syncer(self) -> None:
        while not self.stopped:
            self.sync_wanted.wait()
            self.sync_wanted.clear()
            while self.to_sync and not self.stopped:
                cid = self.to_sync.pop()
                if not self._sync(cid):
                    self.to_sync.add(cid)
                    gevent.sleep(1.0)

    def _sync(self, cid: int) -> bool:
        """Sync ``cid`` after the last seq in hand; False when it has to be tried again."""
        self.online.wait()
        conn, after = self.conn, self.upto.get(cid, 0)
        while True:
            self.reply = gevent.event.AsyncResult()
            if not self._send_frame("sync", {"conversation_id": cid, "after_seq": after, "limit": 200}):
                return False
            answer = self.reply.wait(15)  # the sync frame; None: refused, timed out or the socket went
            self.reply = None
            if not answer:
                return False  # refused (a database outage), or the socket went
            messages = answer["messages"]
            self.load.history.sync(conn, cid, after, [(m["seq"], m["msg_id"]) for m in messages])
            for m in messages:
                self.load.on_received(self.user_id, m["msg_id"], "sync")
                self._have(cid, m["seq"])
            if not answer["has_more"] or not messages:
                return True
            after = messages[-1]["seq"]

    def close(self) -> None:
        self.stopped = True
        self.sync_wanted.set()
        gevent.killall(self.workers, block=False)
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass


# ------------------------------------------------------------------------------------ faults ---

class Proxy:
    """A TCP proxy from ``port`` to ``target`` on loopback. :meth:`cut` closes every connection
    through it and stops listening (the network between a worker and Kafka gone: reconnects are
    refused); :meth:`restore` listens again."""

    def __init__(self, port: int, target: int):
        self.port, self.target = port, target
        self.server = None
        self.links: set = set()

    def start(self) -> None:
        from gevent.server import StreamServer
        self.server = StreamServer(("127.0.0.1", self.port), self._link)
        self.server.start()

    def _link(self, client, _address) -> None:
        import gevent.socket
        try:
            upstream = gevent.socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            client.close()
            return
        link = (client, upstream)
        self.links.add(link)
        pipes = [gevent.spawn(self._pipe, client, upstream), gevent.spawn(self._pipe, upstream, client)]
        gevent.joinall(pipes, count=1)
        self._close(link)
        gevent.killall(pipes)

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    return
                sink.sendall(data)
        except OSError:
            return

    def _close(self, link) -> None:
        self.links.discard(link)
        for sock in link:
            try:
                sock.close()
            except OSError:
                pass

    def cut(self) -> None:
        self.server.close()
        for link in list(self.links):
            self._close(link)

    def restore(self) -> None:
        self.start()



class Faults:
    """Each fault kills something and restores it; ``records`` says when and for how long."""

    def __init__(self, servers: PrivateServers, system: System, load: Load, outage: float, cfg, users: list[int],
                 proxy=None, cut: float = 15, devices=()):
        self.servers, self.system, self.load, self.outage = servers, system, load, outage
        self.devices = devices
        self.proxy, self.cut = proxy, cut
        self.cfg, self.users = cfg, users
        self.records: list[dict] = []
        self.turns = collections.Counter()
        self.started = time.time()

    def inject(self, kind: str) -> dict:
        turn = self.turns[kind]
        self.turns[kind] += 1
        record = {"kind": kind, "t": round(time.time() - self.started, 1)}
        self.records.append(record)
        began = time.time()
        if kind == "worker":
            record["target"] = ("send", "deliver")[turn % 2]
            self.system.kill_function(record["target"])
        elif kind == "gateway":
            i = turn % len(self.system.ports)
            record["target"] = f"gw{i}"
            record["devices_on_it"] = sum(1 for d in self.devices if d.ws is not None and d.urls[0] == self.system.urls[i])
            dead = self.system.kill_gateway(i)
            record.update(self._dead_presence(dead))
            gevent.sleep(self.outage)
            self.system.start_gateway(i)
        elif kind == "kafka-net":  # the send worker's connections to Kafka cut, new ones refused
            record["target"] = "send"
            self.proxy.cut()
            gevent.sleep(self.cut)
            self.proxy.restore()
        else:  # a server
            record["target"] = kind
            self.servers.kill(kind)
            gevent.sleep(self.outage)
            self.servers.run("start", kind)
        record["down_s"] = round(time.time() - began, 1)
        log(f"fault {kind} {record['target']} at t={record['t']}s, restored after {record['down_s']} s")
        return record

    def _dead_presence(self, gateway_id: str) -> dict:
        """The dead gateway's presence entries: how many, and by when they expire (readers drop
        them then)."""
        from common import bus
        now_ms = int(time.time() * 1000)
        try:
            r = bus.make_redis(self.cfg)
            pipe = r.pipeline(transaction=False)
            for user_id in self.users:
                pipe.hgetall(self.cfg.redis_key("presence", user_id))
            expiries = [int(v.decode().rpartition("|")[2]) for raw in pipe.execute() for v in raw.values()
                        if v.decode().rpartition("|")[0] == gateway_id]
            r.close()
        except Exception as exc:  # Redis may be away for another reason; not this fault's finding
            return {"dead_presence_error": repr(exc)[:200]}
        return {"dead_gateway_id": gateway_id, "dead_presence_entries": len(expiries),
                "dead_presence_expire_within_s": round((max(expiries) - now_ms) / 1000, 1) if expiries else 0}


def fault_outcomes(records: list[dict], load: Load, started: float, window: float) -> None:
    """Per fault: the longest wait (send → recipient; send → ack) of the messages first sent in
    the ``window`` seconds after it began, and how many they were."""
    for record in records:
        begin = started + record["t"]
        sent = [m for m, t in load.first_sent.items() if begin <= t < begin + window]
        e2e = [load.received[(load.recipient[m], m)][0] - load.first_sent[m]
               for m in sent if (load.recipient[m], m) in load.received]
        acks = [load.acked[m][0] - load.first_sent[m] for m in sent if m in load.acked]
        record.update({"window_sent": len(sent), "stall_s": round(max(e2e, default=0), 2),
                       "ack_stall_s": round(max(acks, default=0), 2),
                       "window_e2e_p50_s": round(percentiles([x * 1000 for x in e2e]).get("p50", 0) / 1000, 2)})


# ---------------------------------------------------------------------------------- sampling ---

def _rss_fds(pid: int) -> tuple[float, int] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return round(rss / 1024, 1), len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration, ValueError):
        return None


def _gateway_gauges(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for key, name in (("ws_connections", "pingme_ws_connections"), ("greenlets", "pingme_gateway_greenlets")):
        match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
        if match:
            out[key] = float(match.group(1))
    return out


class ProcessSampler:
    """RSS and open descriptors of every process of the run (and the gateways' sockets and
    greenlets), per role, kept per incarnation (pid)."""

    def __init__(self, servers: PrivateServers, system: System):
        self.servers, self.system = servers, system
        self.samples: dict[str, list[dict]] = collections.defaultdict(list)

    def sample(self, t: float) -> None:
        pids = dict(self.system.pids())
        for name in self.servers.names:
            try:
                pids[name] = self.servers.pid(name)
            except (OSError, ValueError):
                pass
        for role, pid in pids.items():
            got = _rss_fds(pid)
            if got is None:
                continue
            row = {"t": round(t, 1), "pid": pid, "rss_mb": got[0], "fds": got[1]}
            if role.startswith("gw"):
                row.update(_gateway_gauges(self.system.urls[int(role[2:])]))
            self.samples[role].append(row)

    def report(self) -> dict[str, dict]:
        out = {}
        for role, rows in sorted(self.samples.items()):
            last = [r for r in rows if r["pid"] == rows[-1]["pid"]]  # the last incarnation
            entry = {"incarnations": len({r["pid"] for r in rows}), "samples": len(last),
                     "since_t": last[0]["t"], "start": _pick(last[0]), "end": _pick(last[-1])}
            span = last[-1]["t"] - last[0]["t"]
            if span >= 60:
                entry["slope_per_hour"] = {key: round(_slope([(r["t"], r[key]) for r in last]) * 3600, 2)
                                           for key in ("rss_mb", "fds")}
            out[role] = entry
        return out


def _pick(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("t", "pid")}


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) points."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


# ------------------------------------------------------------------------------------- a run ---

def login(url: str, username: str) -> dict:
    return post_retrying(url + "/api/v1/auth/login", {"username": username, "password": PASSWORD})["data"]


def register(url: str, count: int) -> list[tuple[int, str, str]]:
    """``count`` new users, registered and logged in: (user_id, token, username)."""
    prefix = "soak" + uuid.uuid4().hex[:6]

    def one(i):
        post_retrying(url + "/api/v1/auth/register", {"username": f"{prefix}{i}", "password": PASSWORD},
                      taken_ok=True)
        data = login(url, f"{prefix}{i}")
        return data["user"]["id"], data["token"], f"{prefix}{i}"
    return list(gevent.pool.Pool(10).imap(one, range(count)))


def final_reads(load: Load, urls: list[str], usernames: dict[int, str], timeout: float = 60) -> int:
    """Read every conversation whole on a fresh connection (recorded as complete reads), logged in
    afresh; retried while a gateway or the database is not back. The conversations not read."""
    conversations: dict[int, int] = {}
    for msg_id, (_, cid, _) in load.acked.items():
        conversations.setdefault(cid, load.recipient[msg_id])
    failed = 0
    for cid, reader in conversations.items():
        deadline = time.monotonic() + timeout
        for attempt in itertools.count():
            url = urls[attempt % len(urls)]
            try:
                token = login(url, usernames[reader])["token"]
                sync_all(url.replace("http://", "ws://") + "/ws", token, cid, load.history)
                break
            except Exception as exc:  # a sync refused (20001), a socket closed, a timeout
                if time.monotonic() > deadline:
                    log(f"final read of conversation {cid} failed: {exc!r}")
                    failed += 1
                    break
                gevent.sleep(1)
    return failed


def run(args) -> dict:
    servers = PrivateServers(Path(args.state_dir).resolve(),
                             ("redis", "mariadb", "kafka") if args.kafka == "private" else ("redis", "mariadb"))
    faults_wanted = [f for f in args.faults.split(",") if f]
    if {"kafka", "kafka-net"} & set(faults_wanted) and args.kafka != "private":
        raise SystemExit("the kafka and kafka-net faults need --kafka private (the shared broker is never faulted)")
    t0 = time.time()
    log(f"servers in {servers.state_dir}: {servers.run('start').strip()}")
    namespace = f"s{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APP_", "DB_", "REDIS_", "KAFKA_", "RETRY_", "JWT_", "PINGME_"))}
    env.update(servers.app_env())
    env.update({"APP_CONF": os.devnull, "APP_ENV": "test", "DB_NAME": f"pingme_{namespace}",
                "PINGME_NAMESPACE": namespace, "KAFKA_PARTITIONS": "2", "PASSWORD_ITERATIONS": "1000",
                "RATE_LIMIT_ENABLED": "false", "JWT_SECRET": "soak-secret-" + uuid.uuid4().hex,
                "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    create_database(env)
    from common import bus, config as config_mod
    cfg = config_mod.load(env)
    bus.ensure_topics(cfg)
    proxy, function_env = None, {}
    if args.kafka == "private":  # the send worker reaches Kafka through a proxy (the kafka-net fault)
        proxy = Proxy(servers.ports["kafka_proxy"], servers.ports["kafka_proxied"])
        proxy.start()
        function_env["send"] = {"KAFKA_BROKERS": f"127.0.0.1:{servers.ports['kafka_proxy']}"}
    system = System(env, function_env=function_env)
    sampler = ProcessSampler(servers, system)
    devices: list[Device] = []
    try:
        system.start()
        setup_s = time.time() - t0
        log(f"system up in {setup_s:.1f} s (namespace {namespace}); registering {2 * args.pairs} users")
        users = register(system.urls[0], 2 * args.pairs)
        usernames = {uid: name for uid, _, name in users}
        load = Load()
        # The two of a pair on different gateways: every message crosses from one to the other.
        devices = [Device(load, uid, token, name, system.urls[i % 2:] + system.urls[:i % 2], args.read_every)
                   for i, (uid, token, name) in enumerate(users)]
        for device in devices:
            wait_until(device.online.is_set, 30, "a device's first connection")
        routes = [(devices[2 * i], devices[2 * i + 1]) for i in range(args.pairs)]
        routes += [(b, a) for a, b in routes]
        # Every device knows its conversation before the faults begin (a sync needs its id).
        for sender, recipient in routes[:args.pairs]:
            sender.send(str(uuid.uuid4()), recipient.user_id, "hello")
        wait_until(lambda: all(d.seqs for d in devices), 60, "every device to know its conversation")

        started = time.time()
        faults = Faults(servers, system, load, args.outage, cfg, list(usernames), proxy, args.cut, devices)
        faults.started = started
        sampler.sample(0)
        first = args.every if args.first_fault is None else args.first_fault
        schedule = []
        while faults_wanted and first + len(schedule) * args.every < args.duration:
            schedule.append(first + len(schedule) * args.every)
        kinds = itertools.cycle(faults_wanted) if faults_wanted else iter(())
        next_sample = args.sample_every
        running: list[gevent.Greenlet] = []
        total = int(args.rate * args.duration)
        next_report = 10.0
        for n in range(total):
            due = started + n / args.rate
            delay = due - time.time()
            if delay > 0:
                gevent.sleep(delay)
            t = time.time() - started
            if schedule and t >= schedule[0]:
                schedule.pop(0)
                running.append(gevent.spawn(faults.inject, next(kinds)))
            if t >= next_sample:
                next_sample += args.sample_every
                sampler.sample(t)
            if t >= next_report:
                next_report += 10
                pending = sum(len(d.pending) for d in devices)
                log(f"t={t:6.1f}s sent={len(load.first_sent)} acked={len(load.acked)} "
                    f"received={len(load.received)} pending={pending} closes={dict(load.closes)}")
            sender, recipient = routes[n % len(routes)]
            sender.send(str(uuid.uuid4()), recipient.user_id, f"soak message {n}")
        gevent.joinall(running, raise_error=True)
        sent_s = time.time() - started

        # Drain: everything acked and in its recipient's hands; devices catch up by sync.
        def drained() -> bool:
            return all(not d.pending for d in devices) and all(
                (load.recipient[m], m) in load.received for m in load.acked)
        deadline = time.time() + args.drain
        while time.time() < deadline and not drained():
            for device in devices:
                for cid in device.seqs:
                    device.want_sync(cid)
            gevent.sleep(3)
        sampler.sample(time.time() - started)
        unacked = sorted(m for d in devices for m in d.pending)
        not_received = [m for m in load.acked if (load.recipient[m], m) not in load.received]
        for device in devices:
            device.close()
        unread = final_reads(load, system.urls, usernames)
        verdict = history_mod.check(load.history.ops)
        fault_outcomes(faults.records, load, started, args.window)
        e2e = [(load.received[(load.recipient[m], m)][0] - t) * 1000 for m, t in load.first_sent.items()
               if (load.recipient[m], m) in load.received]
        by_sync = sum(1 for (_, how) in load.received.values() if how == "sync")
        result = {
            "namespace": namespace, "kafka": args.kafka, "duration_s": args.duration, "rate": args.rate,
            "pairs": args.pairs, "setup_s": round(setup_s, 1), "send_s": round(sent_s, 1),
            "run_s": round(time.time() - started, 1),
            "sent": len(load.first_sent), "acked": len(load.acked), "unacked": len(unacked),
            "unacked_first": unacked[:5], "refused": load.refused,
            "received": len(load.received), "received_by_sync": by_sync,
            "acked_not_received": len(not_received), "conversations_unread": unread,
            "e2e_ms": percentiles(e2e), "closes": {str(k): v for k, v in load.closes.items()},
            "error_frames": {str(code): n for code, n in collections.Counter(
                op["code"] for op in load.history.ops if op["op"] == "error").items()},
            "connect_failures": {str(k): v for k, v in load.refusals.items()},
            "reconnects": sum(d.connects - 1 for d in devices), "logins_again": sum(d.logins for d in devices),
            "faults": faults.records, "dead_letters": dead_letters(env),
            "processes": sampler.report(),
            "checker": verdict.summary(),
        }
        result["ok"] = (verdict.ok and not unacked and not not_received and not unread and not load.refused)
        if args.history:
            load.history.write(Path(args.history))
            result["history"] = args.history
        return result
    finally:
        for device in devices:
            device.close()
        system.stop()
        if not args.keep_servers:
            servers.run("stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, help="the run's own servers live here (never .state)")
    parser.add_argument("--kafka", choices=("shared", "private"), default="shared")
    parser.add_argument("--duration", type=float, default=3600, help="seconds of sending")
    parser.add_argument("--every", type=float, default=180, help="seconds between faults")
    parser.add_argument("--first-fault", type=float, help="seconds into the run of the first fault (default --every)")
    parser.add_argument("--faults", default="worker,redis,gateway,mariadb",
                        help=f"comma-separated, in turn: {', '.join(FAULTS)} ('' for none)")
    parser.add_argument("--outage", type=float, default=3, help="seconds a killed server or gateway stays down")
    parser.add_argument("--cut", type=float, default=15,
                        help="seconds the kafka-net fault keeps the send worker away from Kafka")
    parser.add_argument("--window", type=float, default=10, help="seconds after a fault whose messages it is judged by")
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--read-every", type=int, default=4)
    parser.add_argument("--drain", type=float, default=120)
    parser.add_argument("--sample-every", type=float, default=30, help="seconds between process samples")
    parser.add_argument("--keep-servers", action="store_true")
    parser.add_argument("--out", default="results/soak.json")
    parser.add_argument("--history", help="write the operation history here (JSON lines)")
    args = parser.parse_args()
    if Path(args.state_dir).resolve() == (REPO / ".state").resolve():
        parser.error("--state-dir must not be the shared servers' .state")
    unknown = set(filter(None, args.faults.split(","))) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}")
    runner = gevent.spawn(run, args)
    # SIGTERM (a timeout, a CI job cancelled): stop what the run started, then exit.
    gevent.signal_handler(signal.SIGTERM, runner.kill, SystemExit(143), False)
    result = runner.get()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "processes"}, indent=2))
    for role, entry in result["processes"].items():
        print(f"  {role:<9} x{entry['incarnations']} start {entry['start']} end {entry['end']} "
              f"slope/h {entry.get('slope_per_hour', '-')}")
    log(f"{'OK' if result['ok'] else 'FAILED'}; report in {out}")
    os._exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
