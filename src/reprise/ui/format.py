"""Small text formatters shared by the pages (badges, durations, money)."""

from __future__ import annotations

from typing import Any

from reprise.ui.client import ChatResult

TIER_COLORS = {"exact": "#2e7d32", "semantic": "#1565c0", "miss": "#ef6c00",
               "bypass": "#757575"}
_BADGE = {"exact": ":green-badge[:material/bolt: exact hit]",
          "semantic": ":blue-badge[:material/join_inner: semantic hit]",
          "miss": ":orange-badge[:material/cloud: miss]",
          "bypass": ":gray-badge[:material/sync: bypass]"}


def duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def seconds(value: int | None) -> str:
    """Human age/TTL in at most two units: 42 s, 7 min 5 s, 3 h 12 min, 6 d 23 h."""
    if value is None:
        return "never"
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    for i, (name, size) in enumerate(units):
        if value >= size or size == 1:
            major, rest = divmod(int(value), size)
            out = f"{major} {name}"
            if i + 1 < len(units):
                minor_name, minor_size = units[i + 1]
                if rest // minor_size:
                    out += f" {rest // minor_size} {minor_name}"
            return out
    return f"{value} s"


def money(amount: float) -> str:
    if amount == 0:
        return "$0"
    return f"${amount:.4f}" if amount >= 0.01 else f"${amount:.6f}"


def badge_markdown(result: ChatResult, cost_per_token: float) -> str:
    """One line under an answer: the cache outcome, latency, tokens and what a hit saved."""
    parts = [_BADGE.get(result.tier, f":gray-badge[{result.tier}]")]
    if result.tier == "semantic" and result.similarity is not None:
        parts.append(f"similarity **{result.similarity:.3f}**")
    if result.first_token_ms is not None:
        # Time to the first token as the gateway delivered it; the page's own drawing of a
        # long answer is not the gateway's time (the dashboard measures the same thing).
        parts.append(f"first token **{duration(result.first_token_ms)}**")
        if not result.hit:
            parts.append(f"whole answer {duration(result.latency_ms)}")
    else:
        parts.append(f"latency **{duration(result.latency_ms)}**")
    if result.cut:
        n = result.completion_tokens
        parts.append(f":orange[cut at {n} tokens]" if n else ":orange[cut at the token cap]")
    if result.hit and result.age_seconds:
        parts.append(f"cached {seconds(result.age_seconds)} ago")
    tokens = result.tokens
    count = f"~{tokens} tokens (estimated)" if result.tokens_estimated else f"{tokens} tokens"
    if result.hit:
        parts.append(f"**{count}** saved (≈ {money(tokens * cost_per_token)})")
    elif tokens:
        parts.append(f"{count} (≈ {money(tokens * cost_per_token)})")
    return " · ".join(parts)


def lookup_caption(lookup: dict[str, Any] | None) -> str | None:
    """Why the semantic tier served this answer or did not, in one line:
    "closest: “…” 0.78 — numbers differ (5 / 7)". None when there is nothing to say."""
    if not lookup:
        return None
    stage, reason = lookup.get("stage"), str(lookup.get("reason") or "")
    nearest, sim = lookup.get("nearest"), lookup.get("similarity")
    if stage == "empty":
        # The gateway's words ("partition") are for operators; a user needs to know that
        # nothing comparable was asked before.
        return ("Semantic cache: nothing comparable asked before (same model, system "
                "prompt and conversation)")
    if stage == "ineligible" or not nearest:
        return f"Semantic cache: {reason}" if reason else None
    shown = nearest if len(nearest) <= 90 else nearest[:87] + "…"
    head = "served from" if lookup.get("hit") else "closest"
    return f"{head}: “{shown}” {float(sim or 0.0):.2f} — {reason}"
