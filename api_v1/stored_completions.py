"""Stored chat completions (`store: true`): assembling a streamed answer, saving, and rendering."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, Func, TextField
from django.db.models.sql.compiler import SQLCompiler

from api_v1.models import StoredChatCompletion
from clicky_chats.ids import new_id, now_ns, now_seconds
from clicky_chats.pagination import PageParams, paginate, paginate_sequence
from clicky_chats.scoping import get_scoped, scoped
from clicky_chats.sse import SSEReader, frame

log = logging.getLogger("clicky_chats.stored_completions")
NOUN = "chat completion"


class ChatStreamAssembler:
    """Builds the `chat.completion` a stream of `chat.completion.chunk`s amounts to."""

    def __init__(self) -> None:
        self.done = False
        self.failed = False  # the upstream sent an error frame: the answer is not whole
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> dict[str, Any] | None:
        """One event's data; returns the chunk it held, if it was one."""
        if data.strip() == b"[DONE]":
            self.done = True
            return None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict):
            return None
        if chunk.get("error"):
            self.failed = True
            return None
        self._apply(chunk)
        return chunk

    def _apply(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                self.head[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            into = self.choices.setdefault(
                index,
                {
                    "index": index,
                    "message": {"role": "assistant", "content": None, "refusal": None},
                    "finish_reason": None,
                    "logprobs": None,
                },
            )
            delta = choice.get("delta") or {}
            message = into["message"]
            for text_key in ("content", "refusal"):
                if delta.get(text_key):
                    message[text_key] = (message[text_key] or "") + delta[text_key]
            for call in delta.get("tool_calls") or []:
                calls = message.setdefault("tool_calls", [])
                position = call.get("index", 0)
                while len(calls) <= position:
                    calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                target = calls[position]
                if call.get("id"):
                    target["id"] = call["id"]
                if call.get("type"):
                    target["type"] = call["type"]
                function = call.get("function") or {}
                target["function"]["name"] += function.get("name") or ""
                target["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                into["finish_reason"] = choice["finish_reason"]
            if choice.get("logprobs"):
                logprobs = into["logprobs"] or {"content": [], "refusal": None}
                logprobs["content"] = (logprobs.get("content") or []) + (choice["logprobs"].get("content") or [])
                into["logprobs"] = logprobs

    def completion(self) -> dict[str, Any]:
        return {
            "id": self.head.get("id") or new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": self.head.get("created") or now_seconds(),
            "model": self.head.get("model", ""),
            "choices": [self.choices[index] for index in sorted(self.choices)],
            "usage": self.usage,
            "system_fingerprint": self.head.get("system_fingerprint"),
            "service_tier": self.head.get("service_tier"),
        }


class StoredChatStream:
    """A `store: true` stream on its way to the client. Each event is assembled into the completion,
    which is saved before the client sees [DONE], so a retrieve right after the stream finds it; an
    answer that breaks off or carries an error frame is not saved at all.

    When the upstream's id is already stored (Ollama numbers its completions chatcmpl-0..999), every
    chunk is renamed to a fresh id, so the id the client sees is the one it can retrieve."""

    def __init__(self, *, project: str, request_body: dict[str, Any]) -> None:
        self.project = project
        self.request_body = request_body
        self.assembler = ChatStreamAssembler()
        self.reader = SSEReader()
        self.upstream_id: str | None = None
        self.stored_id: str | None = None
        self.saved = False

    async def on_event(self, raw: bytes) -> bytes:
        """One whole event (from sse.EventCutter) in; what the client gets out."""
        frames: list[bytes] = []
        renamed = False
        for event, data in self.reader.feed(raw):
            chunk = self.assembler.feed(data)
            if chunk is not None and self.stored_id is None and isinstance(chunk.get("id"), str) and chunk["id"]:
                await self._choose_id(chunk["id"])
            if chunk is not None and self.stored_id != self.upstream_id and chunk.get("id") == self.upstream_id:
                frames.append(frame({**chunk, "id": self.stored_id}, event))
                renamed = True
            else:
                frames.append(frame(data, event))
        if self.assembler.done:
            await self.save()
        return b"".join(frames) if renamed else raw

    async def _choose_id(self, upstream_id: str) -> None:
        self.upstream_id = upstream_id
        is_free = await sync_to_async(completion_id_is_free)(upstream_id)
        self.stored_id = upstream_id if is_free else new_id("chatcmpl-")

    async def save(self) -> None:
        if self.saved or self.assembler.failed:
            return
        self.saved = True
        completion = self.assembler.completion()
        if self.stored_id is not None:
            completion["id"] = self.stored_id
        stored_id = await sync_to_async(store_completion)(
            project=self.project, request_body=self.request_body, completion=completion
        )
        if stored_id != completion["id"]:  # taken by a concurrent stream since the check
            log.warning("streamed completion %s was stored as %s", completion["id"], stored_id)


def completion_id_is_free(completion_id: str) -> bool:
    return not StoredChatCompletion.objects.filter(pk=completion_id).exists()


def store_completion(*, project: str, request_body: dict[str, Any], completion: dict[str, Any]) -> str:
    """Saves a completion; returns the id it is stored under (a fresh one if the upstream's id is
    already taken, as a dumb upstream may repeat ids)."""
    completion_id = str(completion.get("id") or new_id("chatcmpl-"))
    fields = {
        "project": project,
        "created_at": _unix_seconds(completion.get("created")),
        "created_ns": now_ns(),
        "model": str(completion.get("model") or request_body.get("model") or "")[:256],
        "metadata": request_body.get("metadata") or {},
        "request": request_body,
        "completion": completion,
    }
    for attempt in range(3):
        try:
            with transaction.atomic():
                StoredChatCompletion.objects.create(id=completion_id, **fields)
            return completion_id
        except IntegrityError:
            log.warning("completion id %s already stored (attempt %d); storing under a new id", completion_id, attempt)
            completion_id = new_id("chatcmpl-")
            fields["completion"] = {**completion, "id": completion_id}
    raise RuntimeError("could not find a free completion id")


def _unix_seconds(value: Any) -> int:
    """The upstream's `created`, or now when it sent none or something that is not a time."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 2**53:
        return int(value)
    return now_seconds()


def render(stored: StoredChatCompletion) -> dict[str, Any]:
    return {**stored.completion, "id": stored.id, "metadata": stored.metadata or {}}


class MetadataValue(Func):
    """The text value of one `metadata` key. The key is always one literal object key: Django's
    KeyTextTransform would read `0` as an array index, and its `=` on SQLite parses the right-hand
    side as JSON ("malformed JSON" for a plain string)."""

    output_field = TextField()

    def __init__(self, key: str) -> None:
        super().__init__(F("metadata"))
        self.key = key

    def as_sql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra_context: Any
    ) -> tuple[str, list[Any]]:
        column, params = compiler.compile(self.source_expressions[0])
        if connection.vendor == "postgresql":
            return f"({column} ->> %s)", [*params, self.key]
        # SQLite: json_each's `key` is the decoded label, so any key matches (a JSON path cannot
        # spell a key holding a double quote, and compares escaped non-ASCII text).
        return f"(SELECT value FROM json_each({column}) WHERE key = %s)", [*params, self.key]


def list_completions(
    project: str, params: PageParams, *, model: str | None, metadata: dict[str, str]
) -> dict[str, Any]:
    queryset = scoped(StoredChatCompletion, project)
    if model:
        queryset = queryset.filter(model=model)
    for index, (key, value) in enumerate(metadata.items()):
        alias = f"_meta_{index}"
        queryset = queryset.annotate(**{alias: MetadataValue(key)}).filter(**{alias: value})
    return paginate(queryset, params, render)


def get_completion(project: str, completion_id: str) -> StoredChatCompletion:
    return get_scoped(StoredChatCompletion, project, completion_id, noun=NOUN)


def update_metadata(project: str, completion_id: str, metadata: dict[str, str]) -> dict[str, Any]:
    with transaction.atomic():
        stored = get_completion(project, completion_id)
        stored.metadata = metadata
        stored.save(update_fields=["metadata"])
    return render(stored)


def delete_completion(project: str, completion_id: str) -> dict[str, Any]:
    deleted, _ = scoped(StoredChatCompletion, project).filter(pk=completion_id).delete()
    if not deleted:
        get_completion(project, completion_id)  # raises the 404
    return {"id": completion_id, "object": "chat.completion.deleted", "deleted": True}


def _message_view(completion_id: str, index: int, message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    parts = None
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, dict) and part.get("type") in ("text", "image_url")]
        texts = [part.get("text", "") for part in parts if part.get("type") == "text"]
        content = "".join(texts) if texts else None
    view: dict[str, Any] = {
        "id": f"{completion_id}-{index}",
        "role": message.get("role"),
        "content": content,
        "refusal": message.get("refusal"),
        "name": message.get("name"),
        "content_parts": parts,
    }
    if message.get("tool_calls"):
        view["tool_calls"] = message["tool_calls"]
    if message.get("tool_call_id"):
        view["tool_call_id"] = message["tool_call_id"]
    return view


def list_messages(project: str, completion_id: str, params: PageParams) -> dict[str, Any]:
    stored = get_completion(project, completion_id)
    messages = stored.request.get("messages") or []
    views = [_message_view(stored.id, index, message) for index, message in enumerate(messages)]
    return paginate_sequence(views, params)
