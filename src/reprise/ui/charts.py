"""Dashboard plots from the gateway's recent request events (pure: events in, figure out).

Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``, so that
concurrent sessions never share pyplot's global current-figure state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from matplotlib import dates
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reprise.ui.format import TIER_COLORS

TIERS = ("exact", "semantic", "miss", "bypass")
_BUCKETS = (10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
MAX_BUCKETS = 40
# Every plot is drawn full width (about 1,000 px in the wide layout) at this size, so
# Streamlit shows it near 1:1 and its text at the size of the page's own (~13 px): a
# figure wider than its column is shrunk, text and all.
WIDE = (10.0, 3.0)
FONT = {"font.size": 11.0, "axes.titlesize": 12.0, "axes.labelsize": 11.0}


def _figure(height: float = WIDE[1]) -> Figure:
    """One style for every plot: same size, fonts, frame and grid."""
    fig = Figure(figsize=(WIDE[0], height), layout="constrained")
    ax = fig.add_subplot()
    ax.tick_params(labelsize=FONT["font.size"])
    ax.title.set_fontsize(FONT["axes.titlesize"])
    ax.xaxis.label.set_fontsize(FONT["axes.labelsize"])
    ax.yaxis.label.set_fontsize(FONT["axes.labelsize"])
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def _empty(fig: Figure, text: str = "no requests yet") -> Figure:
    ax = fig.axes[0]
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.set_axis_off()
    return fig


@dataclass(frozen=True)
class Summary:
    requests: int
    by_tier: dict[str, int]
    hit_rate: float
    saved_tokens: int
    gateway_saved_cost: float
    p50_hit_ms: float | None
    p50_miss_ms: float | None
    errors: int  # answered with an error status
    errors_by_status: dict[str, int]


def summarize(events: Sequence[dict[str, Any]]) -> Summary:
    by_tier = {t: 0 for t in TIERS}
    for e in events:
        by_tier[e["tier"]] = by_tier.get(e["tier"], 0) + 1
    hits = by_tier["exact"] + by_tier["semantic"]
    hit_lat = [e["latency_ms"] for e in events if e["tier"] in ("exact", "semantic")]
    miss_lat = [e["latency_ms"] for e in events if e["tier"] not in ("exact", "semantic")]
    return Summary(
        requests=len(events), by_tier=by_tier,
        hit_rate=hits / len(events) if events else 0.0,
        saved_tokens=sum(int(e.get("saved_tokens") or 0) for e in events),
        gateway_saved_cost=sum(float(e.get("saved_cost") or 0.0) for e in events),
        p50_hit_ms=float(np.median(hit_lat)) if hit_lat else None,
        p50_miss_ms=float(np.median(miss_lat)) if miss_lat else None,
        errors=sum(1 for e in events if int(e.get("status") or 200) >= 400),
        errors_by_status=_by_status(events),
    )


def _by_status(events: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        status = int(e.get("status") or 200)
        if status >= 400:
            out[str(status)] = out.get(str(status), 0) + 1
    return out


def bucket_seconds(span: float) -> int:
    """The smallest round bucket that keeps the time axis under ``MAX_BUCKETS`` bars."""
    for size in _BUCKETS:
        if span / size <= MAX_BUCKETS:
            return size
    return _BUCKETS[-1]


def tier_shares(events: Sequence[dict[str, Any]]) -> tuple[list[float], dict[str, list[int]],
                                                             int]:
    """(bucket starts, requests per tier per bucket, bucket size in seconds)."""
    if not events:
        return [], {t: [] for t in TIERS}, _BUCKETS[0]
    ts = [float(e["ts"]) for e in events]
    size = bucket_seconds(max(ts) - min(ts))
    first = int(min(ts) // size) * size
    n = int((max(ts) - first) // size) + 1
    counts = {t: [0] * n for t in TIERS}
    for e, t in zip(events, ts, strict=True):
        counts.setdefault(e["tier"], [0] * n)[int((t - first) // size)] += 1
    return [first + i * size for i in range(n)], counts, size


def hit_rate_figure(events: Sequence[dict[str, Any]]) -> Figure:
    """Share of requests per cache tier in each time bucket (stacked to 100 %)."""
    starts, counts, size = tier_shares(events)
    fig = _figure()
    ax = fig.axes[0]
    if not starts:
        return _empty(fig)
    totals = np.sum([counts[t] for t in counts], axis=0)
    x = np.arange(len(starts))
    bottom = np.zeros(len(starts))
    for tier in counts:
        share = np.divide(counts[tier], totals, out=np.zeros(len(starts)), where=totals > 0)
        if share.any():
            ax.bar(x, share, bottom=bottom, color=TIER_COLORS.get(tier, "#999999"),
                   label=tier, width=0.85)
            bottom += share
    step = max(1, -(-len(starts) // 6))  # at most 6 time labels
    fmt = "%H:%M:%S" if size < 60 else ("%H:%M" if size < 86400 else "%m-%d")
    ax.set_xticks(x[::step], [datetime.fromtimestamp(s).strftime(fmt) for s in starts[::step]])
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("share of requests")
    ax.set_title(f"Cache outcome per {size} s bucket ({int(totals.sum())} requests)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def latency_figure(events: Sequence[dict[str, Any]]) -> Figure:
    """Latency histograms of hits and of misses on a log scale, medians marked."""
    fig = _figure()
    ax = fig.axes[0]
    groups = {"hit": [e["latency_ms"] for e in events if e["tier"] in ("exact", "semantic")],
              "miss": [e["latency_ms"] for e in events if e["tier"] not in ("exact",
                                                                          "semantic")]}
    values = [v for vs in groups.values() for v in vs if v > 0]
    if not values:
        return _empty(fig)
    lo, hi = max(min(values), 0.05), max(values)
    bins = np.logspace(np.log10(lo * 0.8), np.log10(hi * 1.25), 40).tolist()
    colors = {"hit": TIER_COLORS["exact"], "miss": TIER_COLORS["miss"]}
    for name, vs in groups.items():
        if vs:
            med = float(np.median(vs))
            ax.hist(np.clip(vs, bins[0], bins[-1]), bins=bins, alpha=0.6, color=colors[name],
                    label=f"{name} (n={len(vs)}, median {med:.1f} ms)")
            ax.axvline(med, color=colors[name], linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("latency at the gateway (ms, log scale)")
    ax.set_ylabel("requests")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole requests
    ax.set_title("Latency: cache hits vs misses")
    ax.legend(frameon=False)
    return fig


def savings_figure(events: Sequence[dict[str, Any]], cost_per_token: float) -> Figure:
    """Tokens served from the cache, cumulative over time, with their estimated cost."""
    fig = _figure()
    ax = fig.axes[0]
    rows = sorted((float(e["ts"]), int(e.get("saved_tokens") or 0)) for e in events)
    if not rows:
        return _empty(fig)
    times = dates.date2num([datetime.fromtimestamp(t) for t, _ in rows])
    total = np.cumsum([n for _, n in rows])
    ax.step(times, total, where="post", color=TIER_COLORS["exact"])
    ax.fill_between(times, total, step="post", alpha=0.15, color=TIER_COLORS["exact"])
    span = rows[-1][0] - rows[0][0]
    ax.xaxis.set_major_locator(dates.AutoDateLocator(maxticks=6))
    ax.xaxis.set_major_formatter(dates.DateFormatter("%H:%M:%S" if span < 600 else "%H:%M"))
    ax.set_ylabel("tokens saved")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if cost_per_token > 0:
        def to_cost(tokens: Any) -> Any:
            return tokens * cost_per_token

        def to_tokens(cost: Any) -> Any:
            return cost / cost_per_token

        money_ax = ax.secondary_yaxis("right", functions=(to_cost, to_tokens))
        money_ax.yaxis.set_major_formatter(lambda v, _: f"${v:.2g}")
        money_ax.set_ylabel("≈ cost saved")
    ax.set_title("Tokens served from the cache (cumulative)")
    return fig


def errors_figure(by_status: dict[str, int]) -> Figure:
    """Failed requests by HTTP status, as horizontal bars (whole counts)."""
    fig = _figure(height=max(1.6, 0.5 + 0.45 * len(by_status)))
    ax = fig.axes[0]
    if not by_status:
        return _empty(fig, "no failed requests")
    rows = sorted(by_status.items())
    ax.barh([f"HTTP {s}" for s, _ in rows], [n for _, n in rows], color=TIER_COLORS["miss"],
            height=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("requests")
    ax.set_title("Failed requests by status")
    return fig
