"""Prometheus metrics and a short in-memory history for the dashboard.

One ``Metrics`` object per app (its own registry, so tests can run many apps in one process).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reprise.upstream.accounting import reused_prompt_tokens

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(slots=True)
class RequestEvent:
    """One answered chat completion, as the dashboard plots it."""

    ts: float
    tier: str
    latency_ms: float
    stream: bool
    status: int
    namespace: str
    saved_tokens: int
    saved_cost: float
    similarity: float | None = None
    tokens_estimated: bool = False  # saved_tokens counted by the gateway (no model usage)
    lookup: dict[str, Any] | None = None  # the semantic tier's explanation (as_dict)


class Metrics:
    def __init__(self, price_prompt_per_mtok: float = 0.0,
                 price_completion_per_mtok: float = 0.0, history: int = 5000) -> None:
        self.registry = CollectorRegistry()
        self.price_prompt = price_prompt_per_mtok / 1e6
        self.price_completion = price_completion_per_mtok / 1e6
        self.requests = Counter("reprise_http_requests_total", "HTTP requests",
                                ["route", "status"], registry=self.registry)
        self.cache = Counter("reprise_cache_requests_total", "Chat completions by cache tier",
                             ["tier"], registry=self.registry)
        self.semantic_verdicts = Counter(
            "reprise_semantic_verdicts_total",
            "Semantic lookups by the stage that decided them (floor, guard, feedback, "
            "verifier, rule, empty, ...) and whether they hit", ["stage", "hit"],
            registry=self.registry)
        self.latency = Histogram("reprise_chat_latency_seconds",
                                 "Chat completion latency by cache outcome (hit/miss)",
                                 ["outcome"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.upstream_latency = Histogram("reprise_upstream_latency_seconds",
                                          "Upstream call latency", buckets=_LATENCY_BUCKETS,
                                          registry=self.registry)
        self.tokens_saved = Counter("reprise_tokens_saved_total", "Tokens served from cache",
                                    ["kind"], registry=self.registry)
        self.tokens_saved_estimated = Counter(
            "reprise_tokens_saved_estimated_total",
            "The part of reprise_tokens_saved_total the gateway counted itself because the "
            "model reported no usage (llama.cpp when streaming)", ["kind"],
            registry=self.registry)
        self.cost_saved = Counter("reprise_cost_saved_total",
                                  "Estimated upstream cost saved by hits (currency units)",
                                  registry=self.registry)
        self.upstream_errors = Counter("reprise_upstream_errors_total", "Upstream failures",
                                       ["status"], registry=self.registry)
        self.store_errors = Counter("reprise_store_errors_total",
                                    "Cache store failures (fail open)",
                                    ["op"], registry=self.registry)
        self.embedder_errors = Counter("reprise_embedder_errors_total",
                                       "Embedder failures (the semantic tier is skipped)",
                                       ["op"], registry=self.registry)
        self.batch_items = Histogram(
            "reprise_model_batch_items",
            "Items per forward pass of a batched model (reprise.embed.batching): how many "
            "concurrent requests' texts or pairs shared one pass",
            ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.inflight = Gauge("reprise_inflight_requests", "Requests being served",
                              registry=self.registry)
        self.request_latency = Histogram("reprise_http_request_seconds",
                                         "HTTP request duration by route template",
                                         ["route"], buckets=_LATENCY_BUCKETS,
                                         registry=self.registry)
        self.auth_failures = Counter("reprise_auth_failures_total",
                                     "Requests refused for a missing or invalid API key",
                                     ["reason"], registry=self.registry)
        self.rate_limited = Counter("reprise_rate_limited_total",
                                    "Requests answered 429 by the per-key rate limiter",
                                    registry=self.registry)
        self.feedback_votes = Counter("reprise_feedback_votes_total",
                                      "Users' votes on served answers (POST /v1/feedback)",
                                      ["vote", "tier"], registry=self.registry)
        self.feedback_evictions = Counter("reprise_feedback_evictions_total",
                                          "Cache entries evicted by users' votes",
                                          registry=self.registry)
        self.feedback_refusals = Counter(
            "reprise_feedback_refusals_total",
            "Lookups that found an entry users' votes refuse for the asked question",
            ["tier"], registry=self.registry)
        self.upstream_prompt_tokens = Counter(
            "reprise_upstream_prompt_tokens_total",
            "Prompt tokens of answers from the model server: reused from its own prompt "
            "cache, computed, or unreported (the server gave no reuse figure)", ["kind"],
            registry=self.registry)
        self.upstream_answers = Counter(
            "reprise_upstream_answers_total",
            "Answers from the model server by whether they reported prompt-cache reuse",
            ["prompt_cache"], registry=self.registry)
        self.replica_routes = Counter(
            "reprise_upstream_routed_total",
            "Requests sent to each replica, by why it was chosen (prefix, balance, "
            "least_busy, round_robin, last_resort)", ["replica", "reason"],
            registry=self.registry)
        self.replica_up = Gauge("reprise_upstream_replica_up",
                                "1 while a replica is in rotation, 0 while out",
                                ["replica"], registry=self.registry)
        # The same, as plain numbers for /admin/cache/stats (since this process started).
        self.feedback_counts: dict[str, int] = {"up": 0, "down": 0, "evicted": 0}
        self.events: deque[RequestEvent] = deque(maxlen=history)

    def http(self, route: str, status: int, latency_s: float) -> None:
        """One HTTP request; ``route`` is the template (``/v1/collections/{name}``)."""
        self.requests.labels(route, str(status)).inc()
        self.request_latency.labels(route).observe(latency_s)

    def saved_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.price_prompt + completion_tokens * self.price_completion

    def chat(self, *, tier: str, latency_s: float, stream: bool, status: int, namespace: str,
             saved_prompt: int = 0, saved_completion: int = 0,
             similarity: float | None = None, tokens_estimated: bool = False,
             lookup: dict[str, Any] | None = None) -> None:
        hit = tier in ("exact", "semantic")
        self.cache.labels(tier).inc()
        if lookup is not None:
            self.semantic_verdicts.labels(lookup["stage"], str(bool(lookup["hit"])).lower()
                                          ).inc()
        self.latency.labels("hit" if hit else "miss").observe(latency_s)
        cost = 0.0
        if hit:
            cost = self.saved_cost(saved_prompt, saved_completion)
            self.tokens_saved.labels("prompt").inc(saved_prompt)
            self.tokens_saved.labels("completion").inc(saved_completion)
            if tokens_estimated:
                self.tokens_saved_estimated.labels("prompt").inc(saved_prompt)
                self.tokens_saved_estimated.labels("completion").inc(saved_completion)
            self.cost_saved.inc(cost)
        self.events.append(RequestEvent(time.time(), tier, latency_s * 1000, stream, status,
                                        namespace, saved_prompt + saved_completion if hit else 0,
                                        cost, similarity, hit and tokens_estimated, lookup))

    def upstream_usage(self, usage: dict[str, Any] | None) -> None:
        """One answer from the model server, with the usage it reported (normalised)."""
        usage = usage if isinstance(usage, dict) else {}
        prompt = int(usage.get("prompt_tokens") or 0)
        reused = reused_prompt_tokens(usage)
        if reused is None:
            self.upstream_answers.labels("unreported").inc()
            self.upstream_prompt_tokens.labels("unreported").inc(prompt)
            return
        reused = min(reused, prompt) if prompt else reused
        self.upstream_answers.labels("reported").inc()
        self.upstream_prompt_tokens.labels("reused").inc(reused)
        self.upstream_prompt_tokens.labels("computed").inc(max(0, prompt - reused))

    def routed(self, replica: str, reason: str, matched_chars: int) -> None:
        self.replica_routes.labels(replica, reason).inc()

    def replica_health(self, replica: str, up: bool) -> None:
        self.replica_up.labels(replica).set(1 if up else 0)

    def feedback(self, *, vote: str, tier: str, evicted: bool) -> None:
        """One applied vote (a repeated one is not counted again)."""
        self.feedback_votes.labels(vote, tier).inc()
        self.feedback_counts[vote] = self.feedback_counts.get(vote, 0) + 1
        if evicted:
            self.feedback_evictions.inc()
            self.feedback_counts["evicted"] += 1

    def recent(self, since: float = 0.0, namespace: str | None = None) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.events
                if e.ts >= since and (namespace is None or e.namespace == namespace)]

    def render(self) -> bytes:
        return generate_latest(self.registry)
