"""Files and uploads: what an upload must be, and the writes that keep stored bytes and rows in step.

The bytes go through Django's storage (`default_storage`) in chunks and are never held whole in
memory: a multipart file is received chunk by chunk into a temporary file by `CheckedFileUpload`
(which refuses it as soon as it is too large or not UTF-8), and an upload's parts are joined by
reading them one chunk at a time. Stored bytes are written before their row and removed after
theirs, so a failure in between leaves no row without bytes.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.files import File as DjangoFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.db import models, transaction
from django.db.models import Q
from django.http import FileResponse, HttpRequest
from django.utils.http import content_disposition_header

from api_v1.models import File, Upload, UploadPart, VectorStoreFile
from clicky_chats import validation as v
from clicky_chats.errors import ApiError, not_found
from clicky_chats.ids import new_id, now_ns, now_seconds
from clicky_chats.scoping import get_scoped, scoped

log = logging.getLogger("clicky_chats.files")

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# A list may also filter by the purposes OpenAI gives the files it makes.
LISTABLE_PURPOSES = (*PURPOSES, "assistants_output", "batch_output", "fine-tune-results")

# OpenAI's file_search types (https://platform.openai.com/docs/assistants/tools/file-search),
# with the MIME type each is served as. Text types must be UTF-8.
TEXT_TYPES = {
    "c": "text/x-c",
    "cpp": "text/x-c++",
    "cs": "text/x-csharp",
    "css": "text/css",
    "csv": "text/csv",
    "go": "text/x-golang",
    "html": "text/html",
    "java": "text/x-java",
    "js": "text/javascript",
    "json": "application/json",
    "md": "text/markdown",
    "php": "text/x-php",
    "py": "text/x-python",
    "rb": "text/x-ruby",
    "sh": "application/x-sh",
    "tex": "text/x-tex",
    "ts": "application/typescript",
    "txt": "text/plain",
}
DOCUMENT_TYPES = {
    "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "pdf": "application/pdf",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
JSONL_TYPES = {"jsonl": "application/jsonl"}
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
FILE_SEARCH_TYPES = {**TEXT_TYPES, **DOCUMENT_TYPES}
TYPES_BY_PURPOSE: dict[str, dict[str, str]] = {
    "assistants": FILE_SEARCH_TYPES,
    "user_data": FILE_SEARCH_TYPES,
    "batch": JSONL_TYPES,
    "fine-tune": JSONL_TYPES,
    "evals": JSONL_TYPES,
    "vision": IMAGE_TYPES,
}
MIME_TYPES = {**FILE_SEARCH_TYPES, **JSONL_TYPES, **IMAGE_TYPES}
UTF8_EXTENSIONS = frozenset((*TEXT_TYPES, *JSONL_TYPES))

EXPIRES_AFTER_MIN_S = 3600
EXPIRES_AFTER_MAX_S = 30 * 24 * 3600
# OpenAI keeps batch input files 30 days unless told otherwise.
BATCH_DEFAULT_EXPIRY_S = 30 * 24 * 3600
UPLOAD_TTL_S = 3600
CHUNK_BYTES = 256 * 1024
# Expired objects are removed a bounded batch at a time, so no request pays for a large backlog.
PURGE_BATCH = 100


# --- checks ------------------------------------------------------------------------------------------


def extension_of(filename: str) -> str:
    _, dot, extension = filename.rpartition(".")
    return extension.lower() if dot else ""


def check_purpose(value: Any, param: str = "purpose") -> str:
    if value is None or value == "":
        raise missing(param)
    v.check({param: value}, {param: v.string(enum=PURPOSES)})
    return str(value)


def check_type(filename: str, purpose: str, param: str = "file") -> None:
    allowed = TYPES_BY_PURPOSE[purpose]
    if extension_of(filename) not in allowed:
        kinds = ", ".join(sorted(allowed))
        raise ApiError(
            f"Invalid file format for purpose '{purpose}': '{filename}'. Supported formats: {kinds}.",
            param=param,
            code="unsupported_file",
        )


def check_expires_after(anchor: Any, seconds: Any, param: str = "expires_after") -> int | None:
    """The seconds a file lives after its creation, from `expires_after` (None: no policy)."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise v.invalid(f"{param}.anchor", "the only supported anchor is 'created_at'.")
    if isinstance(seconds, str):  # multipart sends numbers as text
        try:
            seconds = int(seconds.strip())
        except ValueError:
            raise v.invalid(f"{param}.seconds", f"expected an integer, got '{seconds}'.", "invalid_type") from None
    if seconds is None:
        raise missing(f"{param}.seconds")
    limits = {"seconds": v.integer(minimum=EXPIRES_AFTER_MIN_S, maximum=EXPIRES_AFTER_MAX_S)}
    v.check({"seconds": seconds}, limits, prefix=f"{param}.")
    return int(seconds)


def missing(param: str) -> ApiError:
    return ApiError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def file_too_large(param: str) -> ApiError:
    limit = settings.CONFIG.max_file_bytes
    return ApiError(
        f"File is larger than the limit of {limit} bytes (CLICKY_CHATS_MAX_FILE_BYTES).",
        status=413,
        param=param,
        code="file_too_large",
    )


class StreamChecks:
    """What is learned about bytes as they stream past: their count, their MD5 when asked, and
    whether they are still valid UTF-8 when they must be. Nothing is kept but a few state bytes."""

    def __init__(self, *, param: str, utf8: bool, md5: bool = False, max_bytes: int | None = None) -> None:
        self.param = param
        self.max_bytes = max_bytes
        self.count = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")() if utf8 else None
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def feed(self, chunk: bytes) -> None:
        self.count += len(chunk)
        if self.max_bytes is not None and self.count > self.max_bytes:
            raise file_too_large(self.param)
        if self._md5 is not None:
            self._md5.update(chunk)
        self._decode(chunk, final=False)

    def finish(self) -> None:
        self._decode(b"", final=True)

    def md5_hex(self) -> str:
        return self._md5.hexdigest() if self._md5 is not None else ""

    def _decode(self, chunk: bytes, *, final: bool) -> None:
        if self._decoder is None:
            return
        held = len(self._decoder.getstate()[0])  # the start of a character cut by the last chunk
        try:
            self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            position = self.count - len(chunk) - held + exc.start
            raise ApiError(
                f"The file is not valid UTF-8 text (at byte {position}). Text files must be encoded as UTF-8.",
                param=self.param,
                code="invalid_file_encoding",
            ) from None


class CheckedFileUpload(FileUploadHandler):
    """Receives one file field of a multipart body into a temporary file, chunk by chunk.

    It refuses the file as soon as it passes CLICKY_CHATS_MAX_FILE_BYTES, and with `check_type`,
    as soon as its name has a type no purpose accepts or its text stops being UTF-8; the temporary
    file is then removed at once. Other file fields are dropped unread.
    """

    chunk_size = CHUNK_BYTES

    def __init__(self, request: HttpRequest, *, field: str, check_type: bool) -> None:
        super().__init__(request)
        self.field = field
        self.check_type = check_type
        self.receiving = False
        self.file: TemporaryUploadedFile | None = None
        self.checks: StreamChecks | None = None

    def new_file(
        self,
        field_name: str,
        file_name: str,
        content_type: str,
        content_length: int | None,
        charset: str | None = None,
        content_type_extra: dict[str, str] | None = None,
    ) -> None:
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        self.receiving = field_name == self.field
        if not self.receiving:
            return
        if self.file is not None:
            self.discard()
            raise ApiError(f"Send one '{self.field}' part, not several.", param=self.field)
        extension = extension_of(file_name)
        if self.check_type and extension not in MIME_TYPES:
            raise ApiError(
                f"Invalid file format: '{file_name}'. Supported formats: {', '.join(sorted(MIME_TYPES))}.",
                param=self.field,
                code="unsupported_file",
            )
        self.checks = StreamChecks(
            param=self.field,
            utf8=self.check_type and extension in UTF8_EXTENSIONS,
            max_bytes=settings.CONFIG.max_file_bytes,
        )
        self.file = TemporaryUploadedFile(file_name, content_type, 0, charset, content_type_extra)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if not self.receiving:
            return None
        assert self.file is not None and self.checks is not None
        try:
            self.checks.feed(raw_data)
        except ApiError:
            self.discard()
            raise
        self.file.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> UploadedFile | None:
        if not self.receiving:
            return None
        self.receiving = False
        assert self.file is not None and self.checks is not None
        try:
            self.checks.finish()
        except ApiError:
            self.discard()
            raise
        self.file.seek(0)
        self.file.size = file_size
        return self.file

    def upload_interrupted(self) -> None:
        self.discard()

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()  # a NamedTemporaryFile: closing removes it


def receive_file_field(request: HttpRequest, field: str, *, check_type: bool) -> None:
    """Makes the multipart parser stream `field` through `CheckedFileUpload` (call before the body is read)."""
    request.upload_handlers = [CheckedFileUpload(request, field=field, check_type=check_type)]


def uploaded_file(files: Mapping[str, Any], form: Mapping[str, Any], field: str) -> UploadedFile:
    found = files.get(field)
    if found is None:
        if field in form:
            raise ApiError(
                f"'{field}' must be sent as a file part (with a filename), not as a form field.",
                param=field,
                code="invalid_type",
            )
        raise missing(field)
    return found  # type: ignore[no-any-return]


# --- stored bytes ------------------------------------------------------------------------------------


def store(name: str, content: DjangoFile) -> str:
    """Writes `content` to storage under `name` (or a free name near it); on failure, nothing stays."""
    try:
        return default_storage.save(name, content)
    except BaseException:
        _forget_stored([name])
        raise


def _forget_stored(names: Iterable[str]) -> None:
    for name in names:
        try:
            if default_storage.exists(name):
                default_storage.delete(name)
        except OSError:
            log.exception("could not remove stored bytes %s", name)


def forget_after_commit(names: list[str]) -> None:
    """Removes stored bytes once the transaction that dropped their rows has committed."""
    if names:
        transaction.on_commit(lambda: _forget_stored(names))


class JoinedParts(io.RawIOBase):
    """The stored parts, in order, read as one stream, checked as they pass."""

    def __init__(self, names: list[str], checks: StreamChecks) -> None:
        self._names = list(names)
        self._checks = checks
        self._current: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                if not self._names:
                    return 0
                self._current = default_storage.open(self._names.pop(0), "rb")
            data = self._current.read(len(buffer))
            if data:
                self._checks.feed(data)
                buffer[: len(data)] = data
                return len(data)
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


# --- files -------------------------------------------------------------------------------------------


def file_object(obj: File) -> dict[str, Any]:
    return {
        "id": obj.id,
        "object": "file",
        "bytes": obj.bytes,
        "created_at": obj.created_at,
        "filename": obj.filename,
        "purpose": obj.purpose,
        "status": obj.status,
        "expires_at": obj.expires_at,
        "status_details": obj.status_details,
    }


def live_files(project: str) -> models.QuerySet[File]:
    """The project's files that have not expired."""
    return scoped(File, project).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now_seconds()))


def get_file(project: str, file_id: str) -> File:
    found = get_scoped(File, project, file_id, noun="file")
    if found.expires_at is not None and found.expires_at <= now_seconds():
        raise not_found("file", file_id)  # expired files are gone, as at OpenAI
    return found


def list_filter(project: str, purpose: str | None) -> models.QuerySet[File]:
    files = live_files(project)
    if purpose:
        v.check({"purpose": purpose}, {"purpose": v.string(enum=LISTABLE_PURPOSES)})
        files = files.filter(purpose=purpose)
    return files


def file_create(project: str, form: Mapping[str, Any], files: Mapping[str, Any]) -> File:
    """POST /files: `form` and `files` as the multipart parser left them."""
    purpose = check_purpose(form.get("purpose"))
    upload = uploaded_file(files, form, "file")
    filename = upload.name or ""
    check_type(filename, purpose)
    if upload.size == 0:
        raise ApiError(f"The file '{filename}' is empty.", param="file", code="empty_file")
    expires_after = check_expires_after(form.get("expires_after[anchor]"), form.get("expires_after[seconds]"))
    purge_expired(project)
    file_id = new_id("file-")
    stored_name = store(file_id, upload)
    try:
        return _file_row(project, file_id, filename, purpose, upload.size or 0, stored_name, expires_after)
    except BaseException:
        _forget_stored([stored_name])
        raise


def _file_row(
    project: str, file_id: str, filename: str, purpose: str, size: int, stored_name: str, expires_after: int | None
) -> File:
    created_at = now_seconds()
    if expires_after is None and purpose == "batch":
        expires_after = BATCH_DEFAULT_EXPIRY_S
    return File.objects.create(
        id=file_id,
        project=project,
        created_at=created_at,
        created_ns=now_ns(),
        filename=filename,
        purpose=purpose,
        bytes=size,
        status="processed",  # stored and checked: nothing else to wait for
        expires_at=created_at + expires_after if expires_after is not None else None,
        content_type=MIME_TYPES.get(extension_of(filename), "application/octet-stream"),
        storage_name=stored_name,
    )


def file_delete(project: str, file_id: str) -> None:
    """Deletes the file, its bytes, and its place in every vector store (VectorStoreFile rows,
    and their chunks, cascade from File)."""
    with transaction.atomic():
        found = get_file(project, file_id)
        _lock_store_files([found.pk])
        forget_after_commit([found.storage_name])
        found.delete()


def _lock_store_files(file_ids: list[str]) -> None:
    """Waits for any agent writing chunks of these files (it holds its store file's row) to finish;
    its later writes then find the file gone. Without this a chunk committed between the cascade's
    steps breaks the delete on PostgreSQL."""
    list(VectorStoreFile.objects.select_for_update().filter(file_id__in=file_ids).values_list("pk", flat=True))


def purge_expired(project: str) -> None:
    """Removes the project's expired files and closes its expired uploads, a batch at a time."""
    now = now_seconds()
    expired_ids = list(scoped(File, project).filter(expires_at__lte=now).values_list("pk", flat=True)[:PURGE_BATCH])
    if expired_ids:
        with transaction.atomic():
            _lock_store_files(expired_ids)
            doomed = File.objects.filter(pk__in=expired_ids, expires_at__lte=now)
            forget_after_commit(list(doomed.values_list("storage_name", flat=True)))
            doomed.delete()
    stale_ids = list(
        scoped(Upload, project).filter(status="pending", expires_at__lte=now).values_list("pk", flat=True)[:PURGE_BATCH]
    )
    for upload_id in stale_ids:
        with transaction.atomic():
            stale = Upload.objects.select_for_update().filter(pk=upload_id, status="pending").first()
            if stale is not None:
                _close_upload(stale, "expired")


class StoredFileChunks:
    """A stored file's bytes as an async iterator for a streaming response: each chunk is read in a
    worker thread, so neither the event loop nor memory holds the file."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(self._handle.read, CHUNK_BYTES):
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    def close(self) -> None:  # the response calls this when it is done, or the client went away
        self._handle.close()


def content_response(found: File) -> FileResponse:
    try:
        handle = default_storage.open(found.storage_name, "rb")
    except FileNotFoundError:
        log.error("the stored bytes of %s (%s) are missing", found.id, found.storage_name)
        raise ApiError(f"The content of file '{found.id}' is missing from storage.", status=500) from None
    content_type = MIME_TYPES.get(extension_of(found.filename), found.content_type)
    if extension_of(found.filename) in UTF8_EXTENSIONS:
        content_type += "; charset=utf-8"  # checked on the way in
    response = FileResponse(StoredFileChunks(handle), content_type=content_type)
    response["Content-Length"] = str(found.bytes)
    disposition = content_disposition_header(False, found.filename)
    if disposition:
        response["Content-Disposition"] = disposition
    return response


# --- uploads -----------------------------------------------------------------------------------------

UPLOAD_RULES: dict[str, v.Rule] = {
    "filename": v.string(nonempty=True, max_length=255),
    "bytes": v.integer(minimum=1),
    "mime_type": v.string(nonempty=True, max_length=128),
    "expires_after": v.obj(),
}
COMPLETE_RULES: dict[str, v.Rule] = {
    "part_ids": v.array(min_items=1, items=v.string(nonempty=True)),
    "md5": v.string(),
}


def upload_object(obj: Upload) -> dict[str, Any]:
    status = obj.status
    if status == "pending" and obj.expires_at <= now_seconds():
        status = "expired"
    return {
        "id": obj.id,
        "object": "upload",
        "bytes": obj.bytes,
        "created_at": obj.created_at,
        "expires_at": obj.expires_at,
        "filename": obj.filename,
        "purpose": obj.purpose,
        "status": status,
        "file": file_object(obj.file) if obj.file is not None else None,
    }


def part_object(obj: UploadPart) -> dict[str, Any]:
    return {"id": obj.id, "object": "upload.part", "created_at": obj.created_at, "upload_id": obj.upload_id}


def upload_create(project: str, body: dict[str, Any]) -> Upload:
    v.check(body, UPLOAD_RULES, required=("filename", "purpose", "bytes", "mime_type"))
    purpose = check_purpose(body["purpose"])
    check_type(body["filename"], purpose, param="filename")
    if body["bytes"] > settings.CONFIG.max_file_bytes:
        limit = settings.CONFIG.max_file_bytes
        raise v.invalid("bytes", f"{body['bytes']} is over the file size limit of {limit} bytes.")
    policy = body.get("expires_after") or {}
    expires_after = check_expires_after(policy.get("anchor"), policy.get("seconds"))
    purge_expired(project)
    created_at = now_seconds()
    return Upload.objects.create(
        id=new_id("upload_"),
        project=project,
        created_at=created_at,
        created_ns=now_ns(),
        filename=body["filename"],
        purpose=purpose,
        bytes=body["bytes"],
        mime_type=body["mime_type"],
        expires_at=created_at + UPLOAD_TTL_S,
        file_expires_after=expires_after,
    )


def _pending(project: str, upload_id: str, *, lock: bool = False) -> Upload:
    """The upload, which must still take parts; an expired one is closed on the way."""
    found = get_scoped(Upload, project, upload_id, noun="upload")
    if lock:
        found = Upload.objects.select_for_update().get(pk=found.pk)
    if found.status == "pending" and found.expires_at <= now_seconds():
        with transaction.atomic():
            _close_upload(found, "expired")
    if found.status != "pending":
        raise ApiError(
            f"Upload '{upload_id}' is {found.status}; only a pending upload takes parts or can be completed or "
            "cancelled.",
            code="invalid_upload_state",
        )
    return found


def _close_upload(upload: Upload, status: str, file: File | None = None) -> None:
    """Moves a pending upload (locked by the caller) to `status` and drops its parts and their bytes."""
    parts = UploadPart.objects.filter(upload=upload)
    forget_after_commit(list(parts.values_list("storage_name", flat=True)))
    parts.delete()
    upload.status = status
    upload.file = file
    upload.save(update_fields=["status", "file"])


def part_create(project: str, upload_id: str, form: Mapping[str, Any], files: Mapping[str, Any]) -> UploadPart:
    _pending(project, upload_id)
    data = uploaded_file(files, form, "data")
    if data.size == 0:
        raise ApiError("The part is empty.", param="data", code="empty_file")
    part_id = new_id("part_")
    stored_name = store(f"parts/{upload_id}/{part_id}", data)
    try:
        with transaction.atomic():
            # Checked again under the lock: a complete or cancel may have come first.
            upload = _pending(project, upload_id, lock=True)
            return UploadPart.objects.create(
                id=part_id,
                project=project,
                created_at=now_seconds(),
                created_ns=now_ns(),
                upload=upload,
                bytes=data.size or 0,
                storage_name=stored_name,
            )
    except BaseException:
        _forget_stored([stored_name])
        raise


def upload_complete(project: str, upload_id: str, body: dict[str, Any]) -> Upload:
    v.check(body, COMPLETE_RULES, required=("part_ids",))
    part_ids: list[str] = body["part_ids"]
    if len(set(part_ids)) != len(part_ids):
        raise v.invalid("part_ids", "a part may be listed only once.")
    upload = _pending(project, upload_id)
    parts = {part.id: part for part in UploadPart.objects.filter(upload=upload, pk__in=part_ids)}
    unknown = [part_id for part_id in part_ids if part_id not in parts]
    if unknown:
        raise v.invalid("part_ids", f"'{unknown[0]}' is not a part of upload '{upload_id}'.")
    total = sum(parts[part_id].bytes for part_id in part_ids)
    if total != upload.bytes:
        raise ApiError(
            f"The parts hold {total} bytes, but upload '{upload_id}' was created for {upload.bytes}.",
            param="part_ids",
            code="invalid_upload_size",
        )
    expected_md5 = (body.get("md5") or "").strip().lower()
    checks = StreamChecks(
        param="part_ids", utf8=extension_of(upload.filename) in UTF8_EXTENSIONS, md5=bool(expected_md5)
    )
    file_id = new_id("file-")
    joined = JoinedParts([parts[part_id].storage_name for part_id in part_ids], checks)
    try:
        stored_name = store(file_id, DjangoFile(joined, name=file_id))
    except FileNotFoundError:
        # A cancel (or another complete) took the parts away while they were being joined.
        _pending(project, upload_id)
        raise
    finally:
        joined.close()
    try:
        checks.finish()
        if checks.count != upload.bytes:  # the stored parts no longer match their rows
            raise ApiError(f"The stored parts of upload '{upload_id}' are incomplete.", status=500)
        if expected_md5 and checks.md5_hex() != expected_md5:
            raise ApiError(
                f"The MD5 of the parts is {checks.md5_hex()}, not {expected_md5}.", param="md5", code="md5_mismatch"
            )
        with transaction.atomic():
            upload = _pending(project, upload_id, lock=True)
            created = _file_row(
                project, file_id, upload.filename, upload.purpose, upload.bytes, stored_name, upload.file_expires_after
            )
            _close_upload(upload, "completed", created)
    except BaseException:
        _forget_stored([stored_name])
        raise
    return upload


def upload_cancel(project: str, upload_id: str) -> Upload:
    _pending(project, upload_id)  # outside the transaction, so closing an expired upload sticks
    with transaction.atomic():
        upload = _pending(project, upload_id, lock=True)
        _close_upload(upload, "cancelled")
    return upload
