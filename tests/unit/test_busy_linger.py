"""The gateway producer's linger while busy (``common.bus.BusyLinger``): when it switches on and off,
on a clock the test moves. tests/integration/test_busy_linger.py checks the producer obeys it."""
import types

from common import bus


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def producer():
    """What BusyLinger touches of a KafkaProducer: its accumulator's settings."""
    return types.SimpleNamespace(_accumulator=types.SimpleNamespace(config={"linger_ms": 0}))


def sends(linger, clock, count, over_s):
    """``count`` sends spread evenly over ``over_s`` seconds."""
    for _ in range(count):
        clock.now += over_s / count
        linger.note()


def test_a_quiet_producer_sends_at_once_and_a_busy_one_lingers_until_it_is_quiet_again():
    clock, p = Clock(), producer()
    linger = bus.BusyLinger(p, linger_ms=3, from_rate=300, window_s=0.25, clock=clock)
    assert p._accumulator.config["linger_ms"] == 0 and not linger.lingering

    sends(linger, clock, 50, 0.5)            # 100 a second
    assert p._accumulator.config["linger_ms"] == 0

    sends(linger, clock, 200, 0.5)           # 400 a second: from the first full window on
    assert p._accumulator.config["linger_ms"] == 3 and linger.lingering

    sends(linger, clock, 50, 0.5)            # back to 100 a second
    assert p._accumulator.config["linger_ms"] == 0 and not linger.lingering


def test_the_first_send_after_a_busy_spell_and_a_silence_goes_at_once():
    clock, p = Clock(), producer()
    linger = bus.BusyLinger(p, linger_ms=5, from_rate=300, window_s=0.25, clock=clock)
    sends(linger, clock, 400, 1.0)
    assert linger.lingering
    clock.now += 30                          # nobody sends for 30 s
    linger.note()
    assert not linger.lingering


def test_the_rate_is_judged_per_window_not_per_send():
    """A burst shorter than a window does not switch the linger on before the window closes."""
    clock, p = Clock(), producer()
    linger = bus.BusyLinger(p, linger_ms=3, from_rate=300, window_s=0.25, clock=clock)
    sends(linger, clock, 70, 0.2)            # 350 a second, but the window is not over
    assert not linger.lingering
    sends(linger, clock, 20, 0.06)           # the window closes with 90 sends in 0.26 s
    assert linger.lingering


def test_from_rate_0_always_lingers_and_linger_0_never_does():
    clock, p = Clock(), producer()
    always = bus.BusyLinger(p, linger_ms=4, from_rate=0, clock=clock)
    sends(always, clock, 1, 10.0)
    assert p._accumulator.config["linger_ms"] == 4 and always.lingering

    clock, p = Clock(), producer()
    never = bus.BusyLinger(p, linger_ms=0, from_rate=300, clock=clock)
    sends(never, clock, 2000, 1.0)
    assert p._accumulator.config["linger_ms"] == 0 and not never.lingering


def test_every_event_the_gateway_produces_counts_towards_its_rate(tmp_path):
    """The gateway notes each produce (WebSocket and HTTP sends alike go through Gateway.produce)."""
    from common import config
    from gateway.app import Gateway
    from gateway.inbox import Inbox
    from tests.unit.test_gateway_request import NoRedis, Producer

    cfg = config.load({"APP_CONF": "/dev/null", "DB_PATH": str(tmp_path / "x.db"), "PINGME_NAMESPACE": "unit",
                       "RATE_LIMIT_ENABLED": "false"})
    clock, kafka = Clock(), Producer()
    kafka._accumulator = types.SimpleNamespace(config={"linger_ms": 0})
    linger = bus.BusyLinger(kafka, linger_ms=3, from_rate=300, window_s=0.25, clock=clock)
    gw = Gateway(cfg, kafka, redis_client=NoRedis(), inbox=Inbox(None, "unit:gw:test"), linger=linger)
    for n in range(120):                     # 400 a second
        clock.now += 0.0025
        gw.produce("send", {"msg_id": f"m{n}"}, "p1:2")
    assert len(kafka.sent) == 120 and linger.lingering
