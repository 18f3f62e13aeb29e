"""Login latency through the whole pipeline (gateway → Kafka → login function → Redis → gateway).

    python -m tests.load.login_latency [--url http://127.0.0.1:8080] [--count 300]

Against a running system (`make dev`). Registers one throwaway user, then logs in ``count`` times
one after another and prints p50/p90/p99/max in milliseconds. Bounded: stops after ``count``.
"""
import argparse
import json
import statistics
import time
import urllib.request
import uuid


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    creds = {"username": "bench" + uuid.uuid4().hex[:8], "password": "bench-password"}
    post(args.url + "/api/v1/auth/register", creds)
    samples = []
    for _ in range(min(args.count, 10_000)):
        started = time.perf_counter()
        reply = post(args.url + "/api/v1/auth/login", creds)
        samples.append((time.perf_counter() - started) * 1000)
        assert reply["code"] == 0, reply
    samples.sort()
    print(f"logins={len(samples)} p50={percentile(samples, 50):.1f}ms p90={percentile(samples, 90):.1f}ms "
          f"p99={percentile(samples, 99):.1f}ms max={samples[-1]:.1f}ms mean={statistics.mean(samples):.1f}ms")


if __name__ == "__main__":
    main()
