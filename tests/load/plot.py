"""Latency plots for the load tools: one PNG with latency over the run and its distribution.

Left: every message's end-to-end latency against its send time (and the ack latency, when given),
with the p50 and p99 of each second of sending. Right: the distribution of end-to-end latency with
p50, p95 and p99 marked. Needs matplotlib (requirements-bench.txt, a benchmark-only dependency);
it draws with the file-only Agg backend, so no display is needed.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402

from tests.load.stats import percentiles  # noqa: E402

FLOOR_MS = 0.01  # log axes need positive values


def _plain(axis) -> None:
    """Log-axis tick labels as plain milliseconds ("20", not "2×10¹"): 1, 2 and 5 of each decade."""
    def label(value, _position) -> str:
        leading = round(value / 10 ** np.floor(np.log10(value))) if value > 0 else 0
        return f"{value:g}" if leading in (1, 2, 5) else ""
    axis.set_major_formatter(ticker.FuncFormatter(label))
    axis.set_minor_formatter(ticker.FuncFormatter(label))


def per_second(times, values) -> tuple[list[float], list[float], list[float]]:
    """(middle of the second, p50, p99) of the values whose time falls in each whole second."""
    buckets: dict[int, list[float]] = {}
    for time_s, value in zip(times, values):
        buckets.setdefault(int(time_s), []).append(value)
    summaries = [(second + 0.5, percentiles(buckets[second])) for second in sorted(buckets)]
    return ([s for s, _ in summaries], [p["p50"] for _, p in summaries], [p["p99"] for _, p in summaries])


def _over_time(ax, times, e2e, acks) -> None:
    size = 3 if len(times) > 2000 else 10
    if acks:
        ack_times, ack_ms = zip(*acks)
        ax.scatter(ack_times, np.maximum(ack_ms, FLOOR_MS), s=size * 0.7, alpha=0.3, linewidths=0,
                   color="tab:gray", label="ack")
    ax.scatter(times, np.maximum(e2e, FLOOR_MS), s=size, alpha=0.5, linewidths=0, color="tab:blue",
               label="end-to-end")
    seconds, p50s, p99s = per_second(times, e2e)
    ax.plot(seconds, p50s, "o-", markersize=3, color="tab:green", linewidth=1.5, label="e2e p50 per second")
    ax.plot(seconds, p99s, "o-", markersize=3, color="tab:red", linewidth=1.5, label="e2e p99 per second")
    ax.set_yscale("log")
    _plain(ax.yaxis)
    ax.set_xlabel("send time since start (s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, fontsize="small", markerscale=2,
              frameon=False)  # above the axes, so it hides no points


def _distribution(ax, e2e) -> None:
    values = np.maximum(np.asarray(e2e, dtype=float), FLOOR_MS)
    low, high = values.min(), values.max()
    bins = np.geomspace(low, high * 1.0001, 60) if high > low else 10
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.7)
    summary = percentiles(list(e2e))
    for name, color in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
        ax.axvline(max(summary[name], FLOOR_MS), color=color, linestyle="--", label=f"{name} {summary[name]:.1f} ms")
    ax.set_xscale("log")
    _plain(ax.xaxis)
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("messages")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def plot_latency(path, samples: Sequence[tuple], title: str) -> None:
    """Write the PNG. ``samples`` are (send time in s since start, e2e ms) or (…, ack ms) tuples;
    an ack of None is left out."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), width_ratios=[3, 2], layout="constrained")
    if samples:
        times = [s[0] for s in samples]
        e2e = [s[1] for s in samples]
        acks = [(s[0], s[2]) for s in samples if len(s) > 2 and s[2] is not None]
        _over_time(left, times, e2e, acks)
        _distribution(right, e2e)
    else:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no messages delivered", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
