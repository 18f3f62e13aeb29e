"""Summary statistics shared by the load tools (no gevent, so any tool may import it)."""


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pick(p):
        return round(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))], 2)
    return {"count": len(ordered), "p50": pick(50), "p95": pick(95), "p99": pick(99),
            "max": round(ordered[-1], 2), "mean": round(sum(ordered) / len(ordered), 2)}
