"""Floor benchmark: a PingMe private message's hops with no product logic, to quote ratios against.

    python -m tests.load.floor [--rate 500] [--duration 15] [--out results/floor.json]

Runs against the servers of the configuration (``common.config.load()``, so the environment of
``deploy/local/services.sh env`` applies), with the product's own client factories from
``common.bus``, in a fresh namespace ``floor<hex>`` per run::

    driver producer → <ns>.send → stage "send" (own process) → <ns>.deliver
        → stage "deliver" (own process) → Redis PUBLISH on <ns>:gw:<id> → driver subscriber

Each stage is the function runtime itself (``functions.runtime.Worker``, with the functions' settings:
poll up to ``SPEC.max_records`` → produce or PUBLISH → acknowledgement pipelined with the next poll →
offsets committed every ``kafka.commit_interval_ms``) around a pass-through handler: no validation,
no database, no presence lookup. The driver produces small JSON records at ``rate`` per second for
``duration`` seconds, keyed over 20 pair keys like conversations, each stamped with its send time;
latency is the subscriber's receive time minus that stamp. Bounded: after the sending, a drain of
at most 30 s. The stage processes are stopped on every exit path and the run's topics deleted.
Prints progress each second and a JSON summary, which it also writes to ``--out``. Exit status 0
when nothing was lost.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import types
import uuid
from dataclasses import replace
from pathlib import Path

from kafka import KafkaAdminClient

from common import bus, config as config_mod
from functions import deliver, send
from functions.api import Emit, Publish
from functions.runtime import Worker, set_switch_interval
from tests.load.stats import percentiles

STAGES = ("send", "deliver")           # each consumes the topic of its name, as the functions do
KEYS = [f"pair{i}".encode() for i in range(20)]
READY_TIMEOUT_S = 60
DRAIN_S = 30
MAX_RATE, MAX_DURATION = 20_000, 600


class FloorError(Exception):
    """The run could not be carried out (a stage died or never got its partitions)."""


def load_config(namespace: str) -> config_mod.Config:
    return config_mod.load({**os.environ, "PINGME_NAMESPACE": namespace})


# ---- the stage processes -------------------------------------------------------------------------

def relay(name: str, cfg: config_mod.Config, channel: str) -> types.SimpleNamespace:
    """A function module without product logic: "send" hands each record's bytes on to the deliver
    topic, "deliver" publishes each record (decoded, as the real one does) to the channel."""
    if name == "send":
        deliver_topic = cfg.topic("deliver")
        return types.SimpleNamespace(SPEC=replace(send.SPEC, raw=True),
                                     handle=lambda event, ctx: [Emit(deliver_topic, event.raw, event.key)])
    return types.SimpleNamespace(SPEC=deliver.SPEC, handle=lambda event, ctx: [Publish(channel, event.value)])


def stage_main(name: str, namespace: str, channel: str, ready, stop, done) -> None:
    """A stage process: the runtime consuming ``<ns>.<name>`` with the stage's relay."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when a stage stops
    parent = os.getppid()
    set_switch_interval()
    cfg = load_config(namespace)
    worker = Worker(name, relay(name, cfg, channel), cfg, bus.make_consumer(cfg, name),
                    bus.make_producer(cfg), bus.make_redis(cfg))
    try:
        topic = cfg.topic(name)
        worker.consumer.partitions_for_topic(topic)  # a group leader without metadata assigns nothing
        worker.consumer.subscribe([topic])
        while not stop.is_set() and os.getppid() == parent:
            count = worker.run_once()
            if count:
                with done.get_lock():
                    done.value += count
            if not ready.is_set() and worker.consumer.assignment():
                ready.set()
    finally:
        worker.close()
        worker.redis.close()


class Stage:
    """A stage process as the driver sees it: readiness, progress, and stopping it for sure."""

    def __init__(self, ctx, name: str, namespace: str, channel: str, stop):
        self.name = name
        self.ready = ctx.Event()
        self.done = ctx.Value("q", 0)
        self.process = ctx.Process(target=stage_main, name=f"floor-{name}", daemon=True,
                                   args=(name, namespace, channel, self.ready, stop, self.done))
        self.process.start()

    def check_alive(self) -> None:
        if not self.process.is_alive():
            raise FloorError(f"stage {self.name} exited with code {self.process.exitcode}")

    def end(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)


def wait_ready(stages: list[Stage], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(stage.ready.is_set() for stage in stages):
        for stage in stages:
            stage.check_alive()
        if time.monotonic() > deadline:
            waiting = [stage.name for stage in stages if not stage.ready.is_set()]
            raise FloorError(f"stages {waiting} got no partitions within {timeout:.0f} s")
        time.sleep(0.1)


# ---- the driver ----------------------------------------------------------------------------------

class Subscriber(threading.Thread):
    """Listens on the channel and records each record's latency by its number."""

    def __init__(self, redis_client, channel: str):
        super().__init__(name="floor-subscriber", daemon=True)
        self.redis = redis_client
        self.channel = channel
        self.latency_ms: dict[int, float] = {}
        self.duplicates = 0
        self.stopped = threading.Event()
        self.pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)

    def run(self) -> None:
        while not self.stopped.is_set():
            message = self.pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            now = time.monotonic()
            for record in bus.unbatch(json.loads(message["data"])):
                if record["n"] in self.latency_ms:
                    self.duplicates += 1
                else:
                    self.latency_ms[record["n"]] = (now - record["t"]) * 1000

    def wait_subscribed(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while dict(self.redis.pubsub_numsub(self.channel)).get(self.channel.encode(), 0) < 1:
            if time.monotonic() > deadline:
                raise FloorError(f"no Redis subscription on {self.channel} within {timeout:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        self.stopped.set()
        self.join(3)
        self.pubsub.close()


class Progress:
    def __init__(self, started: float, stages: list[Stage], subscriber: Subscriber, quiet: bool):
        self.started, self.stages, self.subscriber, self.quiet = started, stages, subscriber, quiet
        self.next_report = started + 1

    def tick(self, sent: int) -> None:
        now = time.monotonic()
        if now < self.next_report:
            return
        self.next_report += 1
        for stage in self.stages:
            stage.check_alive()
        if not self.quiet:
            passed = " ".join(f"{stage.name}-stage={stage.done.value}" for stage in self.stages)
            print(f"  t={now - self.started:5.1f}s sent={sent} {passed} "
                  f"received={len(self.subscriber.latency_ms)}", flush=True)


def send_at_rate(producer, topic: str, rate: float, total: int, progress: Progress, errors: list) -> None:
    started = progress.started
    for n in range(total):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        value = bus.encode({"n": n, "t": time.monotonic(), "content": f"floor message {n}"})
        future = producer.send(topic, value=value, key=KEYS[n % len(KEYS)])
        future.add_errback(errors.append)
        progress.tick(n + 1)


def drain(producer, sent: int, subscriber: Subscriber, progress: Progress) -> None:
    deadline = time.monotonic() + DRAIN_S
    producer.flush(timeout=DRAIN_S)
    while len(subscriber.latency_ms) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
        progress.tick(sent)


def delete_topics(cfg) -> None:
    try:
        admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers),
                                 client_id=f"{cfg.app.namespace}-admin", request_timeout_ms=15_000)
        try:
            admin.delete_topics([cfg.topic(name) for name in STAGES], timeout_ms=15_000,
                                raise_errors=False)
        finally:
            admin.close()
    except Exception as exc:  # leftover topics are harmless; the result stands
        print(f"floor: could not delete the run's topics: {exc}", file=sys.stderr)


def run(rate: float, duration: float, quiet: bool = False) -> dict:
    namespace = "floor" + uuid.uuid4().hex[:8]
    cfg = load_config(namespace)
    channel = bus.gateway_channel(cfg, cfg.app.gateway_id)
    bus.ensure_topics(cfg, STAGES)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    stages: list[Stage] = []
    redis_client = bus.make_redis(cfg)
    subscriber = Subscriber(redis_client, channel)
    producer = None
    try:
        subscriber.start()
        subscriber.wait_subscribed()
        for name in STAGES:
            stages.append(Stage(ctx, name, namespace, channel, stop))
        wait_ready(stages, READY_TIMEOUT_S)
        producer = bus.make_producer(cfg, max_block_ms=cfg.kafka.request_timeout_ms)
        producer.partitions_for(cfg.topic("send"))  # its metadata, before the first record is timed
        errors: list = []
        started = time.monotonic()
        progress = Progress(started, stages, subscriber, quiet)
        sent = int(rate * duration)
        send_at_rate(producer, cfg.topic("send"), rate, sent, progress, errors)
        send_seconds = time.monotonic() - started
        drain(producer, sent, subscriber, progress)
        finished = time.monotonic()
        latencies = list(subscriber.latency_ms.values())
        return {
            "namespace": namespace, "partitions": cfg.kafka.partitions, "target_rate": rate,
            "duration_s": duration, "sent": sent, "received": len(latencies),
            "lost": sent - len(latencies), "duplicates": subscriber.duplicates,
            "send_errors": len(errors),
            "stage_records": {stage.name: stage.done.value for stage in stages},
            "send_rate": round(sent / max(send_seconds, 1e-9), 1),
            "received_rate": round(len(latencies) / max(finished - started, 1e-9), 1),
            "latency_ms": percentiles(latencies),
        }
    finally:
        stop.set()
        for stage in stages:
            stage.end(timeout=10)
        if producer is not None:
            producer.close(timeout=5)
        subscriber.close()
        redis_client.close()
        delete_topics(cfg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500, help="records per second")
    parser.add_argument("--duration", type=float, default=15, help="seconds of sending")
    parser.add_argument("--out", default="results/floor.json")
    args = parser.parse_args(argv)
    if not (0 < args.rate <= MAX_RATE and 0 < args.duration <= MAX_DURATION):
        parser.error(f"rate up to {MAX_RATE}/s, duration up to {MAX_DURATION} s")
    if int(args.rate * args.duration) < 1:
        parser.error("rate × duration must be at least one record")
    return args


def on_sigterm(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    set_switch_interval()  # the driver's sending and subscribing threads hand off like a function's
    try:
        result = run(args.rate, args.duration)
    except FloorError as exc:
        print(f"floor: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"results written to {out}")
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
