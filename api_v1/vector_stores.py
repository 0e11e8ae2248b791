"""Vector stores, their files and file batches: validation, the writes that touch several rows, and
the objects as the spec shapes them.

A store's file_counts, usage_bytes and status are never stored: they are derived from its files'
rows, so they can never disagree with what `files.list` shows. Ingestion itself happens in the
agents (agents/ingest.py); attaching a file only queues it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Q, QuerySet, Sum

from agents import bus
from api_v1.files import live_files
from api_v1.models import Chunk, FileBatch, VectorStore, VectorStoreFile
from clicky_chats import validation as v
from clicky_chats.errors import ApiError, not_found
from clicky_chats.ids import new_id, now_ns, now_seconds
from clicky_chats.scoping import scoped

STATUSES = ("in_progress", "completed", "failed", "cancelled")
MAX_STORE_FILE_IDS = 500
MAX_BATCH_FILES = 2000
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 512
AUTO_CHUNKING = {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}
# last_active_at is written at most this often: a busy store would otherwise cost a write per search.
ACTIVITY_RESOLUTION_S = 60
DAY_S = 86_400
# Chunks per page of GET .../files/{id}/content; the SDK reads one page, so it is generous.
CONTENT_PAGE_CHUNKS = 1000


# --- validation ----------------------------------------------------------------------------------


def check_chunking_strategy(value: Any, param: str = "chunking_strategy") -> dict[str, Any]:
    """auto | static{max_chunk_size_tokens 100-4096, chunk_overlap_tokens <= half} -> the static
    form every file records (auto is 800/400, as OpenAI reports it)."""
    if value is None:
        return AUTO_CHUNKING
    if not isinstance(value, dict):
        raise v.invalid(param, "expected an object with a type of 'auto' or 'static'.", "invalid_type")
    kind = value.get("type")
    if kind == "auto":
        return AUTO_CHUNKING
    if kind != "static":
        raise v.invalid(f"{param}.type", f"'{kind}' is not one of 'auto', 'static'.")
    static = value.get("static")
    if not isinstance(static, dict):
        raise v.invalid(f"{param}.static", "expected an object with max_chunk_size_tokens and chunk_overlap_tokens.")
    v.check(
        static,
        {"max_chunk_size_tokens": v.integer(minimum=100, maximum=4096), "chunk_overlap_tokens": v.integer(minimum=0)},
        required=("max_chunk_size_tokens", "chunk_overlap_tokens"),
        prefix=f"{param}.static.",
    )
    size, overlap = static["max_chunk_size_tokens"], static["chunk_overlap_tokens"]
    if overlap > size // 2:
        raise v.invalid(
            f"{param}.static.chunk_overlap_tokens",
            f"the overlap must not exceed half of max_chunk_size_tokens ({size // 2}), got {overlap}.",
        )
    return {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}


def check_attributes(value: Any, param: str = "attributes") -> dict[str, str | int | float | bool] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise v.invalid(param, "expected an object of string, number or boolean values.", "invalid_type")
    if len(value) > MAX_ATTRIBUTES:
        raise v.invalid(param, f"at most {MAX_ATTRIBUTES} attributes are allowed, got {len(value)}.")
    for key, item in value.items():
        if len(key) > MAX_ATTRIBUTE_KEY:
            raise v.invalid(param, f"key '{key[:70]}' is longer than {MAX_ATTRIBUTE_KEY} characters.")
        if isinstance(item, str):
            if len(item) > MAX_ATTRIBUTE_VALUE:
                raise v.invalid(f"{param}.{key}", f"string values are at most {MAX_ATTRIBUTE_VALUE} characters.")
        elif not isinstance(item, int | float | bool):
            raise v.invalid(f"{param}.{key}", "expected a string, a number or a boolean.", "invalid_type")
    return value


def _check_expires_after(value: Any, param: str = "expires_after") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise v.invalid(param, "expected an object {anchor: 'last_active_at', days}.", "invalid_type")
    v.check(
        value,
        {"anchor": v.string(enum=("last_active_at",)), "days": v.integer(minimum=1, maximum=365)},
        required=("anchor", "days"),
        prefix=f"{param}.",
    )
    return {"anchor": "last_active_at", "days": value["days"]}


STORE_RULES: dict[str, v.Rule] = {
    "name": v.string(max_length=256),
    "description": v.string(max_length=512),
    "metadata": v.metadata(),
    "file_ids": v.array(max_items=MAX_STORE_FILE_IDS, items=v.string(nonempty=True)),
}


# --- reading -------------------------------------------------------------------------------------


def visible_stores(project: str) -> QuerySet[VectorStore]:
    """The stores /v1/vector_stores serves: hidden ones (Assistants v1 file_ids) never appear."""
    return scoped(VectorStore, project).filter(hidden=False)


def get_store(project: str, store_id: str) -> VectorStore:
    found = visible_stores(project).filter(pk=store_id).first()
    if found is None:
        raise not_found("vector store", store_id)
    return found


def get_store_file(project: str, store_id: str, file_id: str) -> VectorStoreFile:
    store = get_store(project, store_id)
    found = VectorStoreFile.objects.filter(vector_store=store, file_id=file_id).first()
    if found is None:
        raise not_found("file", file_id)
    return found


def get_batch(project: str, store_id: str, batch_id: str) -> FileBatch:
    store = get_store(project, store_id)
    found = FileBatch.objects.filter(vector_store=store, pk=batch_id).first()
    if found is None:
        raise not_found("file batch", batch_id)
    return found


def _counts_annotation(prefix: str) -> dict[str, Any]:
    """Per-status counts of the files under `prefix` (a reverse relation), for one query per page."""
    counts: dict[str, Any] = {
        f"count_{status}": Count(prefix, filter=Q(**{f"{prefix}__status": status})) for status in STATUSES
    }
    counts["count_total"] = Count(prefix)
    return counts


def stores_with_counts(queryset: QuerySet[VectorStore]) -> QuerySet[VectorStore]:
    return queryset.annotate(**_counts_annotation("files"), files_usage_bytes=Sum("files__usage_bytes"))


def with_counts(store: VectorStore) -> VectorStore:
    return stores_with_counts(VectorStore.objects.filter(pk=store.pk)).get()


def batch_with_counts(batch: FileBatch) -> FileBatch:
    return FileBatch.objects.filter(pk=batch.pk).annotate(**_counts_annotation("files")).get()


def store_files(project: str, store_id: str, status: str | None, batch_id: str | None = None) -> QuerySet[Any]:
    store = get_store(project, store_id)
    files = VectorStoreFile.objects.filter(vector_store=store)
    if batch_id is not None:
        files = files.filter(batch=get_batch(project, store_id, batch_id))
    if status:
        if status not in STATUSES:
            raise v.invalid("filter", f"'{status}' is not one of {', '.join(repr(s) for s in STATUSES)}.")
        files = files.filter(status=status)
    return files


def file_content_page(project: str, store_id: str, file_id: str, page: str | None) -> dict[str, Any]:
    """The file's parsed text as its chunks, in order."""
    store_file = get_store_file(project, store_id, file_id)
    start = 0
    if page:
        try:
            start = int(page)
        except ValueError:
            raise v.invalid("page", f"expected a page token from next_page, got '{page}'.") from None
    texts = list(
        Chunk.objects.filter(store_file=store_file, ordinal__gte=start)
        .order_by("ordinal")
        .values_list("text", flat=True)[: CONTENT_PAGE_CHUNKS + 1]
    )
    has_more = len(texts) > CONTENT_PAGE_CHUNKS
    texts = texts[:CONTENT_PAGE_CHUNKS]
    return {
        "object": "vector_store.file_content.page",
        "data": [{"type": "text", "text": text} for text in texts],
        "has_more": has_more,
        "next_page": str(start + CONTENT_PAGE_CHUNKS) if has_more else None,
    }


# --- rendering -----------------------------------------------------------------------------------


def _file_counts(row: Any) -> dict[str, int]:
    counts = {status: getattr(row, f"count_{status}", 0) or 0 for status in STATUSES}
    counts["total"] = getattr(row, "count_total", 0) or 0
    return counts


def store_status(store: VectorStore, counts: dict[str, int], now: int | None = None) -> str:
    if store.expires_at is not None and (now or now_seconds()) >= store.expires_at:
        return "expired"
    return "in_progress" if counts["in_progress"] else "completed"


def render_store(store: VectorStore, tier: str = "v1") -> dict[str, Any]:
    """`store` must come from stores_with_counts (or with_counts)."""
    counts = _file_counts(store)
    data: dict[str, Any] = {
        "id": store.id,
        "object": "vector_store",
        "created_at": store.created_at,
        # The spec (and the strict SDK) require a string; a store made without a name has "".
        "name": store.name or "",
        "usage_bytes": getattr(store, "files_usage_bytes", 0) or 0,
        "file_counts": counts,
        "status": store_status(store, counts),
        "expires_after": store.expires_after,
        "expires_at": store.expires_at,
        "last_active_at": store.last_active_at,
        "metadata": store.metadata,
    }
    if tier == "rubra":
        data["description"] = store.description
    return data


def render_store_file(store_file: VectorStoreFile) -> dict[str, Any]:
    return {
        "id": store_file.file_id,
        "object": "vector_store.file",
        "usage_bytes": store_file.usage_bytes,
        "created_at": store_file.created_at,
        "vector_store_id": store_file.vector_store_id,
        "status": store_file.status,
        "last_error": store_file.last_error,
        "chunking_strategy": store_file.chunking_strategy,
        "attributes": store_file.attributes if store_file.attributes is not None else {},
    }


def batch_status(batch: FileBatch, counts: dict[str, int]) -> str:
    if batch.cancelled:
        return "cancelled"
    if counts["in_progress"]:
        return "in_progress"
    if counts["total"] and counts["failed"] == counts["total"]:
        return "failed"
    return "completed"


def render_batch(batch: FileBatch) -> dict[str, Any]:
    """`batch` must come from batch_with_counts."""
    counts = _file_counts(batch)
    return {
        "id": batch.id,
        "object": "vector_store.files_batch",
        "created_at": batch.created_at,
        "vector_store_id": batch.vector_store_id,
        "status": batch_status(batch, counts),
        "file_counts": counts,
    }


# --- stores --------------------------------------------------------------------------------------


def _expiry(expires_after: dict[str, Any] | None, last_active_at: int) -> int | None:
    return last_active_at + expires_after["days"] * DAY_S if expires_after else None


@dataclass(frozen=True)
class FileToAttach:
    file_id: str
    param: str
    chunking_strategy: dict[str, Any]
    attributes: dict[str, Any] | None


def store_create(project: str, body: dict[str, Any]) -> VectorStore:
    v.check(body, STORE_RULES)
    expires_after = _check_expires_after(body["expires_after"]) if body.get("expires_after") is not None else None
    chunking = check_chunking_strategy(body.get("chunking_strategy"))
    attach = [
        FileToAttach(file_id, f"file_ids[{index}]", chunking, None)
        for index, file_id in enumerate(body.get("file_ids") or [])
    ]
    now = now_seconds()
    with transaction.atomic():
        store = VectorStore.objects.create(
            id=new_id("vs_"),
            project=project,
            created_at=now,
            created_ns=now_ns(),
            name=body.get("name"),
            description=body.get("description"),
            metadata=body.get("metadata") or {},
            expires_after=expires_after,
            expires_at=_expiry(expires_after, now),
            last_active_at=now,
        )
        _attach(project, store, attach, batch=None)
    return with_counts(store)


def store_update(project: str, store_id: str, body: dict[str, Any]) -> VectorStore:
    v.check(body, {"name": v.string(max_length=256), "metadata": v.metadata()})
    with transaction.atomic():
        store = get_store(project, store_id)
        store = VectorStore.objects.select_for_update().get(pk=store.pk)
        if "name" in body:
            store.name = body["name"]
        if body.get("metadata") is not None:
            store.metadata = body["metadata"]
        if "expires_after" in body:
            store.expires_after = (
                _check_expires_after(body["expires_after"]) if body["expires_after"] is not None else None
            )
            store.expires_at = _expiry(store.expires_after, store.last_active_at or store.created_at)
        store.save()
    return with_counts(store)


def store_delete(project: str, store_id: str) -> None:
    with transaction.atomic():
        store = get_store(project, store_id)
        # Lock the files first: an agent writing chunks holds its file's row, so this waits for
        # that write to finish, and every later write finds its file gone.
        list(VectorStoreFile.objects.select_for_update().filter(vector_store=store).values_list("pk", flat=True))
        Chunk.objects.filter(vector_store_id=store.id).delete()
        store.delete()


def store_touch(store_ids: Iterable[str], now: int | None = None) -> None:
    """Marks stores as used (a search), which pushes back an `expires_after` expiry."""
    now = now or now_seconds()
    for store in VectorStore.objects.filter(pk__in=list(store_ids)).filter(
        Q(last_active_at__isnull=True) | Q(last_active_at__lte=now - ACTIVITY_RESOLUTION_S)
    ):
        VectorStore.objects.filter(pk=store.pk).update(last_active_at=now, expires_at=_expiry(store.expires_after, now))


def is_expired(store: VectorStore) -> bool:
    return store.expires_at is not None and now_seconds() >= store.expires_at


# --- store files ---------------------------------------------------------------------------------


def _attach(project: str, store: VectorStore, files: list[FileToAttach], batch: FileBatch | None) -> None:
    """Queues each file for ingestion. A file already in the store keeps its chunks, unless it had
    failed or been cancelled (then it is tried again); it joins the batch either way."""
    seen: set[str] = set()
    for item in files:
        if item.file_id in seen:
            continue
        seen.add(item.file_id)
        source = live_files(project).filter(pk=item.file_id).first()
        if source is None:
            raise not_found("file", item.file_id, item.param)
        existing = VectorStoreFile.objects.select_for_update().filter(vector_store=store, file=source).first()
        if existing is None:
            VectorStoreFile.objects.create(
                vector_store=store,
                file=source,
                batch=batch,
                project=project,
                created_at=now_seconds(),
                created_ns=now_ns(),
                status="in_progress",
                chunking_strategy=item.chunking_strategy,
                attributes=item.attributes,
            )
            continue
        if item.attributes is not None:
            existing.attributes = item.attributes
        if batch is not None:
            existing.batch = batch
        if existing.status in ("failed", "cancelled"):
            Chunk.objects.filter(store_file=existing).delete()
            existing.status, existing.last_error, existing.usage_bytes = "in_progress", None, 0
            existing.chunking_strategy = item.chunking_strategy
            existing.attempts, existing.lease_expires_at = 0, None
            existing.fence += 1  # any agent still holding an old claim can no longer write
        existing.save()
    if files:
        bus.publish(bus.QUEUE)  # wake an agent to ingest


def attach_file_ids(project: str, store: VectorStore, file_ids: list[str], param: str) -> None:
    """Queues files (by id, default chunking) into a store; `param` names them in errors."""
    default = check_chunking_strategy(None)
    _attach(project, store, [FileToAttach(fid, f"{param}[{i}]", default, None) for i, fid in enumerate(file_ids)], None)


def store_file_create(project: str, store_id: str, body: dict[str, Any]) -> VectorStoreFile:
    v.check(body, {"file_id": v.string(nonempty=True)}, required=("file_id",))
    item = FileToAttach(
        body["file_id"],
        "file_id",
        check_chunking_strategy(body.get("chunking_strategy")),
        check_attributes(body.get("attributes")),
    )
    with transaction.atomic():
        store = get_store(project, store_id)
        _attach(project, store, [item], batch=None)
    return VectorStoreFile.objects.get(vector_store=store, file_id=item.file_id)


def store_file_update(project: str, store_id: str, file_id: str, body: dict[str, Any]) -> VectorStoreFile:
    if "attributes" not in body:
        raise ApiError(
            "Missing required parameter: 'attributes'.", param="attributes", code="missing_required_parameter"
        )
    attributes = check_attributes(body["attributes"])
    with transaction.atomic():
        found = get_store_file(project, store_id, file_id)
        VectorStoreFile.objects.filter(pk=found.pk).update(attributes=attributes)
    found.attributes = attributes
    return found


def store_file_delete(project: str, store_id: str, file_id: str) -> None:
    """Removes the file from the store with all its chunks (the File itself stays)."""
    with transaction.atomic():
        found = get_store_file(project, store_id, file_id)
        locked = VectorStoreFile.objects.select_for_update().filter(pk=found.pk).first()
        if locked is None:
            return
        Chunk.objects.filter(store_file=locked).delete()
        locked.delete()


# --- file batches --------------------------------------------------------------------------------


def batch_create(project: str, store_id: str, body: dict[str, Any]) -> FileBatch:
    has_ids, has_files = body.get("file_ids") is not None, body.get("files") is not None
    if has_ids == has_files:
        raise ApiError(
            "Provide exactly one of 'file_ids' or 'files'.",
            param="file_ids" if has_ids else "files",
            code="invalid_value",
        )
    if has_ids:
        v.check(body, {"file_ids": v.array(min_items=1, max_items=MAX_BATCH_FILES, items=v.string(nonempty=True))})
        chunking = check_chunking_strategy(body.get("chunking_strategy"))
        attributes = check_attributes(body.get("attributes"))
        attach = [
            FileToAttach(file_id, f"file_ids[{index}]", chunking, attributes)
            for index, file_id in enumerate(body["file_ids"])
        ]
    else:
        v.check(body, {"files": v.array(min_items=1, max_items=MAX_BATCH_FILES)})
        attach = []
        for index, item in enumerate(body["files"]):
            where = f"files[{index}]"
            if not isinstance(item, dict):
                raise v.invalid(where, "expected an object with a file_id.", "invalid_type")
            v.check(item, {"file_id": v.string(nonempty=True)}, required=("file_id",), prefix=f"{where}.")
            attach.append(
                FileToAttach(
                    item["file_id"],
                    f"{where}.file_id",
                    check_chunking_strategy(item.get("chunking_strategy"), f"{where}.chunking_strategy"),
                    check_attributes(item.get("attributes"), f"{where}.attributes"),
                )
            )
    with transaction.atomic():
        store = get_store(project, store_id)
        batch = FileBatch.objects.create(
            id=new_id("vsfb_"), project=project, created_at=now_seconds(), created_ns=now_ns(), vector_store=store
        )
        _attach(project, store, attach, batch=batch)
    return batch_with_counts(batch)


def batch_cancel(project: str, store_id: str, batch_id: str) -> FileBatch:
    """Cancels the batch's files still waiting or being ingested; finished ones keep their state."""
    with transaction.atomic():
        batch = get_batch(project, store_id, batch_id)
        batch = FileBatch.objects.select_for_update().get(pk=batch.pk)
        pending = list(VectorStoreFile.objects.select_for_update().filter(batch=batch, status="in_progress"))
        if not pending and not batch.cancelled:
            status = batch_status(batch, _file_counts(batch_with_counts(batch)))
            raise ApiError(f"Cannot cancel a file batch with status '{status}'.", param="batch_id")
        for store_file in pending:
            Chunk.objects.filter(store_file=store_file).delete()
        # A new fence for each: an agent ingesting one of them loses its claim and stops.
        VectorStoreFile.objects.filter(pk__in=[f.pk for f in pending]).update(
            status="cancelled", lease_expires_at=None, usage_bytes=0, fence=F("fence") + 1
        )
        batch.cancelled = True
        batch.save(update_fields=["cancelled"])
    return batch_with_counts(batch)


def poll_after_ms(status: str) -> int | None:
    """What to tell the SDK's poll helpers while something is still in progress."""
    return 200 if status == "in_progress" else None
