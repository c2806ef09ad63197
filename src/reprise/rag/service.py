"""Document chat: collections, background ingestion jobs, search, and grounded chat prep.

HTTP-free (``api/collections.py`` is the HTTP surface). Ingestion of one file is all or
nothing: its chunks go into the index and its record into the catalog, or, on any error,
whatever was written for it is removed again and the error is recorded for that file only.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reprise.cache.keys import content_text
from reprise.rag.answer import grounded_messages, not_found_answer, pack_sources
from reprise.rag.catalog import Catalog, Collection, DocumentRecord, FileProgress, Job
from reprise.rag.errors import RagError
from reprise.serving.prompts import grounded_prompt

if TYPE_CHECKING:
    from reprise.components import Components
    from reprise.config import Settings
    from reprise.embed.base import Embedder
    from reprise.rag.catalog_redis import RedisCatalog
    from reprise.rag.chunk_index import ChunkIndex
    from reprise.rag.retrieve import HybridRetriever

log = logging.getLogger(__name__)


@dataclass
class ChatPreparation:
    body: dict[str, Any]  # the request with the sources in its system message
    key_context: dict[str, Any]  # collection + version: part of the cache key
    citations: list[dict[str, Any]]
    direct_answer: str | None = None  # when nothing relevant was found


def collection_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def make_chunk_index(settings: Settings, dim: int) -> ChunkIndex:
    """The chunk index in the configured store: Redis when the cache is on Redis (replicas
    share it, and the catalog is on Redis too), else one SQLite file in the data directory
    (``memory`` included: documents are worth keeping across restarts even when cache
    entries are not)."""
    if settings.store == "redis":
        from reprise.rag.chunk_index_redis import RedisChunkIndex
        from reprise.store.redis_conn import is_cluster

        return RedisChunkIndex(settings.redis_url, dim, prefix=f"{settings.redis_prefix}:rag",
                               cluster=is_cluster(settings.redis_url),
                               groups=settings.redis_cluster_groups)
    from reprise.rag.chunk_index import SQLiteChunkIndex

    return SQLiteChunkIndex(settings.data_dir / "documents.sqlite3", dim)


class RagService:
    def __init__(self, settings: Settings, catalog: Catalog | RedisCatalog, index: ChunkIndex,
                 retriever: HybridRetriever, embedder: Embedder) -> None:
        self.settings = settings
        self.catalog = catalog
        self.index = index
        self.retriever = retriever
        self.embedder = embedder
        self._tasks: set[asyncio.Task[None]] = set()
        self._ingest_lock = asyncio.Lock()

    @classmethod
    def from_components(cls, comp: Components, embedder: Embedder | None = None) -> RagService:
        from reprise.components import build_embedder
        from reprise.rag.rerank import default_reranker
        from reprise.rag.retrieve import HybridRetriever

        settings = comp.settings
        if embedder is not None:
            pass
        elif comp.embedder is not None and comp.embedder.name == settings.rag_embedder:
            embedder = comp.embedder
        elif comp.embedders is not None:  # the verifier's e5, when both use e5
            embedder = comp.embedders.get(settings.rag_embedder)
        else:
            embedder = build_embedder(settings, settings.rag_embedder)
        data = settings.data_dir
        index = make_chunk_index(settings, embedder.dim)
        retriever = HybridRetriever(index, embedder, default_reranker(embedder),
                                    min_similarity=settings.rag_min_score)
        catalog: Catalog | RedisCatalog = Catalog(data / "catalog.sqlite3")
        if settings.store == "redis":  # replicas must agree on collections and versions
            from reprise.rag.catalog_redis import RedisCatalog
            from reprise.store.redis_conn import is_cluster

            catalog = RedisCatalog(settings.redis_url, prefix=f"{settings.redis_prefix}:rag",
                                   cluster=is_cluster(settings.redis_url))
        return cls(settings, catalog, index, retriever, embedder)

    # -- collections ---------------------------------------------------------------------------
    async def require(self, ns: str, name: str) -> Collection:
        coll = await self.catalog.get_collection(ns, name)
        if coll is None:
            raise RagError(404, f"collection '{name}' does not exist", "collection_not_found")
        return coll

    async def create_collection(self, ns: str, name: str) -> Collection:
        created = await self.catalog.create_collection(ns, name)
        if created is None:
            raise RagError(409, f"collection '{name}' already exists", "collection_exists")
        return created

    async def list_collections(self, ns: str) -> list[Collection]:
        return await self.catalog.list_collections(ns)

    async def delete_collection(self, ns: str, name: str) -> None:
        await self.require(ns, name)
        await self.catalog.delete_collection(ns, name)
        await self.index.delete_collection(collection_key(ns, name))

    # -- documents -------------------------------------------------------------------------------
    async def list_documents(self, ns: str, name: str) -> list[DocumentRecord]:
        await self.require(ns, name)
        return await self.catalog.list_documents(ns, name)

    async def delete_document(self, ns: str, name: str, doc_id: str) -> None:
        await self.require(ns, name)
        if not await self.catalog.delete_document(ns, name, doc_id):
            raise RagError(404, f"document '{doc_id}' is not in collection '{name}'",
                           "document_not_found")
        await self.index.delete_document(collection_key(ns, name), doc_id)

    async def submit(self, ns: str, name: str, files: list[tuple[str, bytes | None, int]]) -> Job:
        """Queue an ingestion job; ``files`` are (filename, data or None if too large, size)."""
        await self.require(ns, name)
        job = Job(Catalog.new_id("job"), name, [FileProgress(f[0]) for f in files])
        await self.catalog.save_job(ns, job)
        task = asyncio.create_task(self._run_job(ns, job, files))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def job(self, ns: str, job_id: str) -> dict[str, Any]:
        found = await self.catalog.get_job(ns, job_id)
        if found is None:
            raise RagError(404, f"job '{job_id}' does not exist", "job_not_found")
        return found

    async def _run_job(self, ns: str, job: Job,
                       files: list[tuple[str, bytes | None, int]]) -> None:
        job.state = "running"
        await self.catalog.save_job(ns, job)
        for progress, (filename, data, size) in zip(job.files, files, strict=True):
            progress.state = "running"
            await self.catalog.save_job(ns, job)
            try:
                await self._ingest_one(ns, job.collection, filename, data, size, progress)
            except Exception as exc:
                code = getattr(exc, "code", "ingest_failed")
                message = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
                progress.state, progress.error = "failed", {"code": code, "message": message}
                progress.pages = progress.chunks = 0
                log.info("ingestion of a file failed: %s", code)
            await self.catalog.save_job(ns, job)
        job.finish()
        await self.catalog.save_job(ns, job)

    async def _ingest_one(self, ns: str, name: str, filename: str, data: bytes | None,
                          size: int, progress: FileProgress) -> None:
        from reprise.rag.chunk import chunk_document
        from reprise.rag.documents import IngestError
        from reprise.rag.ingest import load_document

        limit = self.settings.max_upload_bytes
        if data is None or size > limit:
            raise IngestError("too_large", f"{filename} is {size} bytes; the limit is {limit}")
        sha = hashlib.sha256(data).hexdigest()
        existing = await self.catalog.find_by_sha(ns, name, sha)
        if existing is not None:
            progress.state, progress.document_id = "duplicate", existing.id
            progress.pages, progress.chunks = existing.pages, existing.chunks
            progress.error = {"code": "duplicate",
                              "message": f"same bytes as {existing.filename} ({existing.id})"}
            return
        doc = await asyncio.to_thread(load_document, filename, data, max_bytes=limit)
        doc_id = Catalog.new_id("doc")
        chunks = await asyncio.to_thread(
            chunk_document, doc, doc_id, chunk_tokens=self.settings.chunk_tokens,
            overlap=self.settings.chunk_overlap)
        if not chunks:
            raise IngestError("no_text", f"{filename} has no extractable text")
        progress.pages = len(doc.pages)
        key = collection_key(ns, name)
        async with self._ingest_lock:
            try:
                vectors = await self.embedder.embed([c.text for c in chunks], "passage")
                await self.index.add(key, chunks, vectors)
                progress.chunks = len(chunks)
                await self.catalog.add_document(ns, DocumentRecord(
                    doc_id, name, filename, sha, doc.mime, len(doc.pages), len(chunks),
                    time.time(), doc.title))
            except BaseException:
                await self.index.delete_document(key, doc_id)  # nothing half-written
                raise
        progress.state, progress.document_id = "done", doc_id

    # -- retrieval and chat ------------------------------------------------------------------
    async def search(self, ns: str, name: str, query: str, k: int) -> list[dict[str, Any]]:
        await self.require(ns, name)
        docs = {d.id: d.filename for d in await self.catalog.list_documents(ns, name)}
        results = await self.retriever.search(collection_key(ns, name), query, k)
        return [{"chunk_id": r.chunk_id, "document_id": r.doc_id,
                 "document": docs.get(r.doc_id, r.doc_id), "page": r.page, "text": r.text,
                 "score": float(r.score), "legs": r.legs} for r in results]

    @staticmethod
    def _key_context(coll: Collection) -> dict[str, Any]:
        # The creation time tells a deleted and re-created collection (whose version
        # counts from 0 again) from the old one, whose answers are still in the cache.
        return {"collection": coll.name, "version": coll.version, "created": coll.created_at}

    async def key_context(self, ns: str, name: str) -> dict[str, Any]:
        """What of the collection is part of an answer's cache key: its identity and version."""
        return self._key_context(await self.require(ns, name))

    async def prepare_chat(self, ns: str, name: str, body: dict[str, Any]) -> ChatPreparation:
        coll = await self.require(ns, name)
        messages = body.get("messages") or []
        question = ""
        for msg in reversed(messages):
            if msg.get("role") == "user":
                question = content_text(msg.get("content")) or ""
                break
        key_context = self._key_context(coll)
        if not question.strip():
            raise RagError(400, "document chat needs a text question in the last user message",
                           "no_question")
        from reprise.rag.tokens import count_tokens

        docs = {d.id: d.filename for d in await self.catalog.list_documents(ns, name)}
        results = await self.retriever.search(collection_key(ns, name), question,
                                              self.settings.rag_top_k)
        relevant = [r for r in results if self.retriever.is_relevant(r)]
        if not relevant:
            return ChatPreparation(body, key_context, [], not_found_answer(question, name))
        reserve = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        history = sum(count_tokens(content_text(m.get("content")) or "") for m in messages)
        budget = min(self.settings.rag_context_tokens,
                     max(64, self.settings.llama_ctx - reserve - history - 120))
        sources, citations = pack_sources(relevant, docs, budget, count_tokens)
        new_body = copy.deepcopy(body)
        new_body["messages"] = grounded_messages(messages, sources, grounded_prompt(question))
        return ChatPreparation(new_body, key_context, citations)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.catalog.aclose()
        await self.index.aclose()
