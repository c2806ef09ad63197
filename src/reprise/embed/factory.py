"""Build the configured embedder from ``Settings`` values (``use`` | ``e5`` | ``remote``)."""

from __future__ import annotations

from reprise.embed.base import Embedder


def make_embedder(
    kind: str,
    *,
    url: str | None = None,
    model: str = "bge-m3",
    api_key: str = "",
    flavor: str | None = None,
    dim: int | None = None,
    threads: int | None = None,
    e5_engine: str = "auto",
) -> Embedder:
    """One embedder, model loaded now (not on the first request).

    For ``remote`` the flavor is ``ollama`` when asked for, or when the URL does not end in
    ``/v1`` and names Ollama's default port 11434; otherwise OpenAI-compatible.
    """
    if kind == "use":
        from reprise.embed.use import UseEmbedder

        return UseEmbedder() if threads is None else UseEmbedder(threads=threads)
    if kind == "e5":
        from reprise.embed.e5 import E5Embedder

        return E5Embedder(threads=threads, engine=e5_engine)
    if kind == "remote":
        from reprise.embed.remote import RemoteEmbedder

        if not url:
            raise ValueError("the remote embedder needs a URL (REPRISE_EMBEDDINGS_URL)")
        guess = ":11434" in url and not url.rstrip("/").endswith("/v1")
        chosen = flavor or ("ollama" if guess else "openai")
        if chosen == "ollama":
            return RemoteEmbedder(url, model=model, api_key=api_key, flavor="ollama", dim=dim)
        if chosen == "openai":
            return RemoteEmbedder(url, model=model, api_key=api_key, flavor="openai", dim=dim)
        raise ValueError(f"unknown remote flavor {chosen!r}")
    raise ValueError(f"unknown embedder {kind!r}: use 'use', 'e5' or 'remote'")
