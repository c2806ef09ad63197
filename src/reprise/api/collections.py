"""Document collections over HTTP: create/list/delete, upload jobs, documents, search."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from reprise.api.body import read_json
from reprise.api.deps import components, tenant_namespace
from reprise.api.errors import APIError
from reprise.rag import names
from reprise.rag.errors import RagError

router = APIRouter()


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _rag(request: Request) -> Any:
    rag = components(request).extras.get("rag")
    if rag is None:
        raise APIError(503, "document chat is not enabled on this gateway", code="rag_disabled")
    return rag


async def _call(coro: Any) -> Any:
    try:
        return await coro
    except RagError as exc:
        raise APIError(exc.status, exc.message, code=exc.code) from exc


@router.post("/v1/collections")
async def create_collection(request: Request) -> Response:
    body = await read_json(request, components(request).settings.max_body_bytes)
    name = body.get("name")
    if not isinstance(name, str) or not names.is_valid(name):
        raise APIError(400, f"a collection name must be {names.RULE}", code="invalid_value",
                       param="name")
    name = names.normalize(name)
    coll = await _call(_rag(request).create_collection(tenant_namespace(request), name))
    return _json(asdict(coll), 201)


@router.get("/v1/collections")
async def list_collections(request: Request) -> Response:
    rows = await _call(_rag(request).list_collections(tenant_namespace(request)))
    return _json({"object": "list", "data": [asdict(c) for c in rows]})


@router.get("/v1/collections/{name}")
async def get_collection(request: Request, name: str) -> Response:
    coll = await _call(_rag(request).require(tenant_namespace(request), name))
    return _json(asdict(coll))


@router.delete("/v1/collections/{name}")
async def delete_collection(request: Request, name: str) -> Response:
    await _call(_rag(request).delete_collection(tenant_namespace(request), name))
    return _json({"deleted": name})


@router.post("/v1/collections/{name}/documents")
async def upload_documents(request: Request, name: str) -> Response:
    comp = components(request)
    rag = _rag(request)
    ns = tenant_namespace(request)
    await _call(rag.require(ns, name))  # unknown collection: 404 before reading any upload
    cap = comp.settings.max_upload_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise APIError(413, f"upload of {declared} bytes is over the request limit of {cap}",
                       code="upload_too_large")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(415, "upload documents as multipart/form-data in the field 'files'",
                       code="unsupported_media_type", param="files")
    limit = comp.settings.max_upload_bytes
    async with request.form(max_files=200, max_fields=50) as form:
        uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not uploads:
            raise APIError(400, "no files in the multipart field 'files'", code="no_files",
                           param="files")
        files: list[tuple[str, bytes | None, int]] = []
        for up in uploads:
            size = up.size if up.size is not None else 0
            # Over-limit files are not read into memory; the job records their error.
            data = None if size > limit else await up.read()
            files.append((up.filename or "upload", data, size if data is None else len(data)))
    job = await _call(rag.submit(ns, name, files))
    return _json({"job_id": job.id, "collection": name, "files": [f[0] for f in files],
                  "state": job.state}, 202)


@router.get("/v1/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> Response:
    return _json(await _call(_rag(request).job(tenant_namespace(request), job_id)))


@router.get("/v1/collections/{name}/documents")
async def list_documents(request: Request, name: str) -> Response:
    docs = await _call(_rag(request).list_documents(tenant_namespace(request), name))
    return _json({"object": "list", "data": [asdict(d) for d in docs]})


@router.delete("/v1/collections/{name}/documents/{doc_id}")
async def delete_document(request: Request, name: str, doc_id: str) -> Response:
    await _call(_rag(request).delete_document(tenant_namespace(request), name, doc_id))
    return _json({"deleted": doc_id, "collection": name})


@router.post("/v1/collections/{name}/search")
async def search(request: Request, name: str) -> Response:
    body = await read_json(request, components(request).settings.max_body_bytes)
    query, k = body.get("query"), body.get("k", 5)
    if not isinstance(query, str) or not query.strip():
        raise APIError(400, "query must be a non-empty string", code="invalid_value",
                       param="query")
    if not isinstance(k, int) or not 1 <= k <= 100:
        raise APIError(400, "k must be an integer from 1 to 100", code="invalid_value",
                       param="k")
    rows = await _call(_rag(request).search(tenant_namespace(request), name, query, k))
    return _json({"object": "list", "data": rows})
