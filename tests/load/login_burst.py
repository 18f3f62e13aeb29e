"""Login burst: users log in at a target rate, open loop, and every answer is counted.

    python -m tests.load.login_burst [--url http://127.0.0.1:8080] [--users 40] [--rate 100]
                                     [--duration 30] [--stop-file PATH] [--out results/login_burst.json]

Against a running system (start it with PASSWORD_ITERATIONS=1000 so registering the users is
quick). Registers ``users`` users (tests/load/users.py: retrying what the pipeline calls
retryable), then logs them in round-robin at ``rate`` per second for ``duration`` seconds (or until
``--stop-file`` exists, checked before each send: a caller ends the burst when it has seen enough) without
waiting for answers (open loop: a pipeline that falls behind gets a queue, as with real clients,
instead of a slower load). Each answer is one of: ok (a session for the user who logged in),
timeout (504 with code 10008: no answer within the gateway's deadline; the request expires in the
queue), unavailable (503 with code 50008: the gateway could not hand the request to Kafka in time)
— both retryable by the API's contract — or anything else (an error). Bounded: every request has a 30 s client
timeout. Writes the totals, the latencies of the ok answers and a per-second timeline (by send
second) to ``--out`` as JSON, and prints a summary.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from tests.load.stats import percentiles  # noqa: E402
from tests.load.users import REGISTER_CONCURRENCY, post, post_retrying  # noqa: E402


def login(url: str, creds: dict, user_id: int) -> tuple[str, float, str]:
    """(outcome, seconds, detail): outcome ok, timeout (504/10008), unavailable (503/50008) or error."""
    started = time.monotonic()
    try:
        reply = post(url + "/api/v1/auth/login", creds)
    except urllib.error.HTTPError as err:
        try:
            code = json.loads(err.read()).get("code")
        except ValueError:
            code = None
        outcome = {(504, 10008): "timeout", (503, 50008): "unavailable"}.get((err.code, code), "error")
        return outcome, time.monotonic() - started, f"HTTP {err.code} code {code}"
    except OSError as exc:
        return "error", time.monotonic() - started, repr(exc)
    data = reply.get("data") or {}
    if reply.get("code") == 0 and data.get("token") and (data.get("user") or {}).get("id") == user_id:
        return "ok", time.monotonic() - started, ""
    return "error", time.monotonic() - started, f"unexpected answer {str(reply)[:200]}"


def run(url: str, users: int, rate: float, duration: float, stop_file: str | None = None) -> dict:
    prefix = "burst" + uuid.uuid4().hex[:6]

    def register(i):
        creds = {"username": f"{prefix}{i}", "password": "burst-password"}
        post_retrying(url + "/api/v1/auth/register", creds, taken_ok=True)
        return creds, post_retrying(url + "/api/v1/auth/login", creds)["data"]["user"]["id"]
    started = time.monotonic()
    accounts = list(Pool(REGISTER_CONCURRENCY).imap(register, range(users)))
    registered_s = time.monotonic() - started
    print(f"registered {users} users in {registered_s:.1f} s", flush=True)

    results: list[tuple[int, str, float, str]] = []   # (send second, outcome, seconds, detail)

    def one(second: int, i: int) -> None:
        creds, user_id = accounts[i % len(accounts)]
        results.append((second, *login(url, creds, user_id)))

    jobs = []
    total = int(rate * duration)
    begin, started_at = time.monotonic(), time.time()
    for i in range(total):
        if stop_file and os.path.exists(stop_file):
            break
        due = begin + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        jobs.append(gevent.spawn(one, int(due - begin), i))
        if i and i % int(rate) == 0:
            done = [r[1] for r in results]
            print(f"t={time.monotonic() - begin:5.1f}s sent {i} answered {len(done)} ok {done.count('ok')} "
                  f"timeout {done.count('timeout')} unavailable {done.count('unavailable')} "
                  f"error {done.count('error')}", flush=True)
    gevent.joinall(jobs)
    outcomes = [r[1] for r in results]
    timeline = []
    for second in range(int(time.monotonic() - begin) + 1):
        rows = [r for r in results if r[0] == second]
        if rows:
            timeline.append({"t": second, "sent": len(rows), "ok": sum(r[1] == "ok" for r in rows),
                             "timeout": sum(r[1] == "timeout" for r in rows),
                             "unavailable": sum(r[1] == "unavailable" for r in rows),
                             "error": sum(r[1] == "error" for r in rows),
                             "p50_ms": percentiles([r[2] * 1000 for r in rows if r[1] == "ok"]).get("p50")})
    return {"users": users, "rate": rate, "duration": round(len(jobs) / rate, 1), "registered_s": round(registered_s, 1),
            "started_at": started_at,
            "sent": len(jobs), "answered": len(results), "ok": outcomes.count("ok"),
            "timeout": outcomes.count("timeout"), "unavailable": outcomes.count("unavailable"),
            "error": outcomes.count("error"),
            "errors": sorted({r[3] for r in results if r[1] == "error"})[:20],
            "ok_ms": percentiles([r[2] * 1000 for r in results if r[1] == "ok"]),
            "seconds": round(time.monotonic() - begin, 1), "timeline": timeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--duration", type=float, default=30, help="seconds of sending, at most")
    parser.add_argument("--stop-file", help="stop sending once this file exists")
    parser.add_argument("--out", default="results/login_burst.json")
    args = parser.parse_args()
    result = run(args.url.rstrip("/"), args.users, args.rate, args.duration, args.stop_file)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{result['sent']} logins at {args.rate:g}/s: ok {result['ok']}, timed out {result['timeout']}, "
          f"unavailable {result['unavailable']}, errors {result['error']} {result['errors'][:3]}; ok p50/p99 {result['ok_ms'].get('p50')}/"
          f"{result['ok_ms'].get('p99')} ms")
    sys.exit(0 if result["error"] == 0 and result["answered"] == result["sent"] else 1)


if __name__ == "__main__":
    main()
