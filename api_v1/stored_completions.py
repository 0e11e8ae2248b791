"""Stored chat completions (`store: true`): assembling a streamed answer, saving, and rendering."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from django.db import IntegrityError, transaction
from django.db.models.fields.json import KeyTextTransform

from api_v1.models import StoredChatCompletion
from clicky_chats.ids import new_id, now_ns, now_seconds
from clicky_chats.pagination import PageParams, paginate, paginate_sequence
from clicky_chats.scoping import get_scoped, scoped
from clicky_chats.sse import SSEReader

log = logging.getLogger("clicky_chats.stored_completions")
NOUN = "chat completion"


class ChatStreamAssembler:
    """Builds the `chat.completion` a stream of `chat.completion.chunk`s amounts to."""

    def __init__(self) -> None:
        self.reader = SSEReader()
        self.done = False
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, raw: bytes) -> None:
        for _event, data in self.reader.feed(raw):
            if data.strip() == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                self._apply(chunk)

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


def store_completion(*, project: str, request_body: dict[str, Any], completion: dict[str, Any]) -> str:
    """Saves a completion; returns the id it is stored under (a fresh one if the upstream's id is
    already taken, as a dumb upstream may repeat ids)."""
    completion_id = str(completion.get("id") or new_id("chatcmpl-"))
    fields = {
        "project": project,
        "created_at": int(completion.get("created") or now_seconds()),
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


def render(stored: StoredChatCompletion) -> dict[str, Any]:
    return {**stored.completion, "id": stored.id, "metadata": stored.metadata or {}}


def list_completions(
    project: str, params: PageParams, *, model: str | None, metadata: dict[str, str]
) -> dict[str, Any]:
    queryset = scoped(StoredChatCompletion, project)
    if model:
        queryset = queryset.filter(model=model)
    for index, (key, value) in enumerate(metadata.items()):
        # KeyTextTransform takes the key as one literal key, so `a__b` cannot become a nested path.
        alias = f"_meta_{index}"
        queryset = queryset.annotate(**{alias: KeyTextTransform(key, "metadata")}).filter(**{alias: value})
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
