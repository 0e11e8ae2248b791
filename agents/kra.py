"""The knowledge-retrieval-api (KRA): an optional external home for file search, for set-ups that
ran it beside the Go clicky-chats.

With CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL set (e.g. `http://127.0.0.1:8000/v1`), a vector
store's files go to a KRA dataset named after the store, lower-cased as the Go clicky-chats named
its datasets, and `retrieval` / `file_search` ask the KRA instead of our own chunks. The contract
is gptscript-ai/knowledge at 6e36c0b, the Go clicky-chats' last pin (rubra-ui-contract.md §6.2):

    POST   /datasets/create            {id, embed_dim: 0}
    GET    /datasets/{id}              200 when it exists
    POST   /datasets/{id}/ingest       {file_id, filename, content: base64} -> {documents: [...]}
    POST   /datasets/{id}/retrieve     {prompt, topk} -> {results: [{content, metadata, similarity_score}]}
    DELETE /datasets/{id}, DELETE /datasets/{id}/files/{file_id}

That KRA's file removal is a stub, so results are kept only for files still in the store by our
database; the store file's filename and attributes come from there too.

The seams: `search` answers exactly like agents.search.search_stores, and `ingest_store_file` is
the ingestion hook an agent calls for a claimed store file instead of chunking and embedding it.
"""

from __future__ import annotations

import asyncio
import base64
import weakref
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

MAX_INGEST_BYTES = 64 * 1024 * 1024  # the whole file travels base64 in one JSON body
TIMEOUT_S = 120.0


class KraError(Exception):
    """The KRA refused or could not be reached; `message` says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# Per dataset, while some ingestion holds or waits for it (agents run on one event loop per process).
_dataset_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def dataset_of(store_id: str) -> str:
    return store_id.lower()


class KnowledgeRetrievalApi:
    """A client of one KRA, plain HTTP with no auth as the KRA has none."""

    def __init__(self, base_url: str, timeout_s: float = TIMEOUT_S) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise KraError(f"The knowledge-retrieval-api URL must be http:// or https://, not {base_url!r}.")
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        url = f"{self.base_url}/{path}"
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.request(method, url, data=data, headers=headers) as answer,
            ):
                raw = await answer.read()
                if answer.status == 404 and missing_ok:
                    return None
                if answer.status >= 400:
                    text = raw.decode("utf-8", "replace")[:500]
                    raise KraError(
                        f"The knowledge-retrieval-api answered {answer.status} to {method} /{path}: {text}",
                        answer.status,
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KraError(f"The knowledge-retrieval-api at {self.base_url} cannot be reached: {exc!r}") from None
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise KraError(f"The knowledge-retrieval-api answered {method} /{path} with something not JSON.") from None

    async def ensure_dataset(self, dataset: str) -> None:
        # A store's files are ingested side by side: one look-and-create per dataset at a time in
        # this process, or a second create could reset what the first file had just put in.
        lock = _dataset_locks.setdefault(dataset, asyncio.Lock())
        async with lock:
            if await self._call("GET", f"datasets/{dataset}", missing_ok=True) is None:
                await self._call("POST", "datasets/create", {"id": dataset, "embed_dim": 0})

    async def ingest(self, dataset: str, file_id: str, filename: str, content: bytes) -> list[str]:
        """Sends one whole file; returns the ids of the documents the KRA made of it."""
        body = {"file_id": file_id, "filename": filename, "content": base64.b64encode(content).decode("ascii")}
        answer = await self._call("POST", f"datasets/{dataset}/ingest", body)
        documents = (answer or {}).get("documents") if isinstance(answer, dict) else None
        return [str(item) for item in documents or []]

    async def retrieve(self, dataset: str, prompt: str, topk: int) -> list[dict[str, Any]]:
        answer = await self._call(
            "POST", f"datasets/{dataset}/retrieve", {"prompt": prompt, "topk": topk}, missing_ok=True
        )
        results = answer.get("results") if isinstance(answer, dict) else None
        return [item for item in results or [] if isinstance(item, dict)]

    async def delete_file(self, dataset: str, file_id: str) -> None:
        await self._call("DELETE", f"datasets/{dataset}/files/{file_id}", missing_ok=True)

    async def delete_dataset(self, dataset: str) -> None:
        await self._call("DELETE", f"datasets/{dataset}", missing_ok=True)


def configured() -> KnowledgeRetrievalApi | None:
    """The KRA named by CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL, or None when unset."""
    from django.conf import settings

    url = settings.CONFIG.knowledge_retrieval_api_url
    return KnowledgeRetrievalApi(url) if url else None


def enabled() -> bool:
    from django.conf import settings

    return bool(settings.CONFIG.knowledge_retrieval_api_url)


# --- the seams ------------------------------------------------------------------------------------


async def ingest_store_file(store_file_pk: int, api: KnowledgeRetrievalApi | None = None) -> list[str]:
    """The ingestion hook: sends a vector-store file's bytes to the dataset of its store (made on
    first use). Raises KraError when the KRA refuses it or cannot be reached."""
    from asgiref.sync import sync_to_async
    from django.core.files.storage import default_storage

    from api_v1.models import VectorStoreFile

    api = api or configured()
    if api is None:
        raise KraError("CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL is not set.")

    def read() -> tuple[str, str, str, bytes]:
        row = VectorStoreFile.objects.select_related("file").get(pk=store_file_pk)
        if row.file.bytes > MAX_INGEST_BYTES:
            raise KraError(f"'{row.file.filename}' is larger than the {MAX_INGEST_BYTES} bytes sent to the KRA.")
        with default_storage.open(row.file.storage_name, "rb") as stream:
            return row.vector_store_id, row.file_id, row.file.filename, stream.read()

    store_id, file_id, filename, content = await sync_to_async(read)()
    dataset = dataset_of(store_id)
    await api.ensure_dataset(dataset)
    return await api.ingest(dataset, file_id, filename, content)


async def search(
    project: str,
    vector_store_ids: Sequence[str],
    query: str | Sequence[str],
    max_num_results: int = 10,
    score_threshold: float = 0.0,
    filters: dict[str, Any] | None = None,
    *,
    ranker: str = "auto",
    api: KnowledgeRetrievalApi | None = None,
) -> list[dict[str, Any]]:
    """agents.search.search_stores over the KRA: items {file_id, filename, score, attributes,
    content: [{type: "text", text}]}, best first, for files still in the stores. `ranker` is
    accepted for the same signature; the KRA ranks by similarity alone. Raises KraError."""
    from asgiref.sync import sync_to_async

    from agents.search import matches
    from api_v1.models import VectorStoreFile

    api = api or configured()
    if api is None:
        raise KraError("CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL is not set.")
    queries = [query] if isinstance(query, str) else list(query)
    queries = [text for text in queries if text.strip()]
    if not queries or not vector_store_ids:
        return []
    found: list[tuple[str, dict[str, Any]]] = []
    for store_id in vector_store_ids:
        for text in queries:
            found += [(store_id, item) for item in await api.retrieve(dataset_of(store_id), text, max_num_results)]

    def in_stores() -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
        rows = VectorStoreFile.objects.filter(
            project=project, vector_store_id__in=list(vector_store_ids), status="completed"
        ).values_list("vector_store_id", "file_id", "file__filename", "attributes")
        return {(store, file_id): (filename, attributes or {}) for store, file_id, filename, attributes in rows}

    known = await sync_to_async(in_stores)()
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for store_id, item in found:
        metadata = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
        file_id = str(metadata.get("file_id") or metadata.get("fileID") or "")
        if (store_id, file_id) not in known:
            continue  # removed from the store (the KRA keeps it), or never ours
        filename, attributes = known[(store_id, file_id)]
        if not matches(filters, attributes):
            continue
        text = str(item.get("content") or "")
        score = max(0.0, min(1.0, float(item.get("similarity_score") or 0.0)))
        if score < score_threshold:
            continue
        key = (file_id, text)
        if key not in best or best[key]["score"] < score:
            best[key] = {
                "file_id": file_id,
                "filename": filename,
                "score": round(score, 6),
                "attributes": attributes,
                "content": [{"type": "text", "text": text}],
            }
    ranked = sorted(best.values(), key=lambda result: -result["score"])
    return ranked[:max_num_results]
