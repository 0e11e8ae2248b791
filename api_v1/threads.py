"""Assistants, threads and messages: validation and the writes that touch more than one row."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from api_v1 import dialect
from api_v1 import tools as tool_rules
from api_v1.models import Assistant, Message, Run, Thread
from clicky_chats import validation as v
from clicky_chats.errors import ApiError
from clicky_chats.ids import new_id, now_ns, now_seconds
from clicky_chats.scoping import get_scoped, scoped

MAX_MESSAGE_CHARS = 256_000
MAX_ATTACHMENTS = 20
IMAGE_DETAILS = ("auto", "low", "high")
IMAGE_URL_SCHEMES = ("https://", "http://", "data:")
ATTACHMENT_TOOL_TYPES = ("code_interpreter", "file_search")

ASSISTANT_RULES: dict[str, v.Rule] = {
    "model": v.string(nonempty=True, max_length=256),
    "name": v.string(max_length=256),
    "description": v.string(max_length=512),
    "instructions": v.string(max_length=256_000),
    "metadata": v.metadata(),
    "temperature": v.number(minimum=0, maximum=2),
    "top_p": v.number(minimum=0, maximum=1),
    "reasoning_effort": v.string(),
}
ASSISTANT_FIELDS = (
    "model",
    "name",
    "description",
    "instructions",
    "metadata",
    "temperature",
    "top_p",
    "reasoning_effort",
)


def _assistant_extras(
    project: str, body: dict[str, Any], tier: str, version: str, gptscript_before: list[str] | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    # The Rubra UI's gptscript tools: a list of their own on /v1/rubra (the UI before April 2024),
    # items among the tools in the v1 dialect (the UI after it).
    named: list[str] = []
    if "tools" in body:
        tools = body["tools"] if body["tools"] is not None else []
        checked = tool_rules.check_tools(tools, version=version, gptscript=tier == "rubra" or version == dialect.V1)
        dialect.check_gptscript_items(project, checked, kept=gptscript_before or [])
        fields["tools"], named = dialect.canonical_tools(checked)
    if "tool_resources" in body:
        fields["tool_resources"] = tool_rules.check_tool_resources(body["tool_resources"])
    if "response_format" in body:
        fields["response_format"] = (
            None if body["response_format"] is None else tool_rules.check_response_format(body["response_format"])
        )
    listed = body.get("gptscript_tools") if tier == "rubra" else None
    if listed is not None:
        v.check(body, {"gptscript_tools": v.array(max_items=128, items=v.string(nonempty=True))})
        dialect.check_gptscript_tools(project, listed, "gptscript_tools", kept=gptscript_before or [])
    if listed is not None or (tier == "rubra" and named):
        base = listed if listed is not None else (gptscript_before or [])
        fields["gptscript_tools"] = list(dict.fromkeys([*base, *named]))
    elif tier != "rubra" and version == dialect.V1 and "tools" in body:
        fields["gptscript_tools"] = named  # here the tools are the whole list, gptscript items included
    return fields


def _v1_body(body: dict[str, Any], version: str) -> tuple[dict[str, Any], list[str] | None]:
    """The body without what v1 does not have, and its file_ids (None when not given)."""
    if version != dialect.V1:
        return body, None
    kept = {name: value for name, value in body.items() if name not in dialect.ASSISTANT_V2_ONLY}
    if body.get("file_ids") is None:
        return kept, None
    return kept, dialect.check_file_ids(body["file_ids"], "file_ids", dialect.MAX_ASSISTANT_FILES)


def assistant_create(project: str, body: dict[str, Any], tier: str = "v1", version: str = "v2") -> Assistant:
    """`tier` is the path's ("v1" or "rubra"), `version` the Assistants dialect ("v1" or "v2")."""
    body, file_ids = _v1_body(body, version)
    v.check(body, ASSISTANT_RULES, required=("model",))
    fields = {name: body[name] for name in ASSISTANT_FIELDS if body.get(name) is not None}
    fields.update(_assistant_extras(project, body, tier, version, None))
    if fields.get("response_format") == "auto":
        fields["response_format"] = None
    with transaction.atomic():
        if fields.get("tool_resources"):
            fields["tool_resources"] = inline_stores(project, fields["tool_resources"], "tool_resources")
        created = Assistant.objects.create(
            id=new_id("asst_"), project=project, created_at=now_seconds(), created_ns=now_ns(), **fields
        )
        if file_ids is not None:
            dialect.set_assistant_files(project, created, file_ids)
            created.save()
    return created


def assistant_update(
    project: str, assistant_id: str, body: dict[str, Any], tier: str = "v1", version: str = "v2"
) -> Assistant:
    body, file_ids = _v1_body(body, version)
    v.check(body, ASSISTANT_RULES)
    with transaction.atomic():
        found = get_scoped(Assistant, project, assistant_id, noun="assistant")
        store_before = dialect.hidden_store_id(found)
        for name in ASSISTANT_FIELDS:
            if name in body and (body[name] is not None or name not in ("model", "metadata")):
                setattr(found, name, body[name])
        for name, value in _assistant_extras(project, body, tier, version, found.gptscript_tools).items():
            setattr(found, name, None if value == "auto" else value)
        if "tool_resources" in body and found.tool_resources:
            found.tool_resources = inline_stores(project, found.tool_resources, "tool_resources")
        if file_ids is not None:
            dialect.set_assistant_files(project, found, file_ids)
        else:
            dialect.forget_unreferenced_store(store_before, found)
        found.save()
    return found


def assistant_delete(project: str, assistant_id: str) -> None:
    """Deletes the assistant and its v1 files' hidden store (the Files themselves stay)."""
    with transaction.atomic():
        found = get_scoped(Assistant, project, assistant_id, noun="assistant")
        store_id = dialect.hidden_store_id(found)
        if store_id is not None:
            dialect.drop_store(store_id)
        found.delete()


# --- messages ----------------------------------------------------------------------------------


def message_content(content: Any, param: str = "content") -> list[dict[str, Any]]:
    """A request's content (a string or parts) as stored content parts."""
    if isinstance(content, str):
        _check_length(content, param)
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    if not isinstance(content, list) or not content:
        raise v.invalid(param, "expected a string or a non-empty array of content parts.", "invalid_type")
    parts: list[dict[str, Any]] = []
    total = 0
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if isinstance(text, dict):  # echoed back in the stored shape
                text = text.get("value")
            if not isinstance(text, str):
                raise v.invalid(f"{where}.text", "expected a string.", "invalid_type")
            total += len(text)
            parts.append({"type": "text", "text": {"value": text, "annotations": []}})
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise v.invalid(f"{where}.image_url", "expected an object with a url.", "invalid_type")
            if not image["url"].startswith(IMAGE_URL_SCHEMES):
                raise v.invalid(f"{where}.image_url.url", "expected an http(s) URL or a data: URL of the image.")
            v.check(image, {"detail": v.string(enum=IMAGE_DETAILS)}, prefix=f"{where}.image_url.")
            parts.append(
                {"type": "image_url", "image_url": {"url": image["url"], "detail": image.get("detail") or "auto"}}
            )
        elif kind == "image_file":
            image = part.get("image_file")
            if not isinstance(image, dict) or not isinstance(image.get("file_id"), str):
                raise v.invalid(f"{where}.image_file", "expected an object with a file_id.", "invalid_type")
            v.check(image, {"detail": v.string(enum=IMAGE_DETAILS)}, prefix=f"{where}.image_file.")
            parts.append(
                {
                    "type": "image_file",
                    "image_file": {"file_id": image["file_id"], "detail": image.get("detail") or "auto"},
                }
            )
        else:
            raise v.invalid(f"{where}.type", f"'{kind}' is not one of 'text', 'image_url', 'image_file'.")
    _check_length("", param, total)
    return parts


def _check_length(text: str, param: str, length: int | None = None) -> None:
    size = len(text) if length is None else length
    if size > MAX_MESSAGE_CHARS:
        raise v.invalid(param, f"message content is at most {MAX_MESSAGE_CHARS} characters, got {size}.")


def _attachment_tool(tool: Any, param: str) -> None:
    if not isinstance(tool, dict):
        raise v.invalid(param, "expected a tool object.", "invalid_type")
    v.check(tool, {"type": v.string(enum=ATTACHMENT_TOOL_TYPES)}, required=("type",), prefix=f"{param}.")


def _attachments(value: Any, param: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise v.invalid(param, "expected an array.", "invalid_type")
    if len(value) > MAX_ATTACHMENTS:
        raise v.invalid(param, f"at most {MAX_ATTACHMENTS} attachments, got {len(value)}.")
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("file_id"), str):
            raise v.invalid(f"{param}[{index}]", "expected an object with a file_id.", "invalid_type")
        v.check(item, {"tools": v.array(items=_attachment_tool)}, prefix=f"{param}[{index}].")
    return value


def check_new_message(body: Any, param: str = "") -> dict[str, Any]:
    """Validates one message of a request; returns the fields to store."""
    prefix = f"{param}." if param else ""
    if not isinstance(body, dict):
        raise v.invalid(param or "body", "expected a message object.", "invalid_type")
    if body.get("role") is None:
        raise ApiError(
            f"Missing required parameter: '{prefix}role'.", param=f"{prefix}role", code="missing_required_parameter"
        )
    if body.get("role") not in ("user", "assistant"):
        raise v.invalid(f"{prefix}role", f"'{body.get('role')}' is not one of 'user', 'assistant'.")
    if "content" not in body:
        raise ApiError(
            f"Missing required parameter: '{prefix}content'.",
            param=f"{prefix}content",
            code="missing_required_parameter",
        )
    v.check(body, {"metadata": v.metadata()}, prefix=prefix)
    return {
        "role": body["role"],
        "content": message_content(body["content"], f"{prefix}content"),
        "attachments": _attachments(body.get("attachments"), f"{prefix}attachments"),
        "metadata": body.get("metadata") or {},
    }


def new_message(project: str, thread: Thread, fields: dict[str, Any], **extra: Any) -> Message:
    """Stores a message; its attachments for file_search go into the thread's vector store."""
    now = now_seconds()
    defaults: dict[str, Any] = {"status": "completed", "completed_at": now}
    defaults.update(extra)
    created = Message.objects.create(
        id=new_id("msg_"), project=project, thread=thread, created_at=now, created_ns=now_ns(), **fields, **defaults
    )
    _attach_to_thread_store(project, thread, fields.get("attachments"))
    return created


def _attach_to_thread_store(project: str, thread: Thread, attachments: list[dict[str, Any]] | None) -> None:
    """Files attached for file_search create the thread's vector store, or join it, as OpenAI's do."""
    from api_v1 import vector_stores
    from api_v1.models import VectorStore

    file_ids = [
        item["file_id"]
        for item in attachments or []
        if any(tool.get("type") == "file_search" for tool in item.get("tools") or [])
    ]
    if not file_ids:
        return
    search = (thread.tool_resources or {}).get("file_search") or {}
    known = search.get("vector_store_ids") or []
    store = VectorStore.objects.filter(project=project, pk=known[0]).first() if known else None
    if store is None:
        store = vector_stores.store_create(project, {"name": f"Files attached to {thread.id}"})
        thread.tool_resources = {**(thread.tool_resources or {}), "file_search": {"vector_store_ids": [store.id]}}
        thread.save(update_fields=["tool_resources"])
    vector_stores.attach_file_ids(project, store, file_ids, "attachments")


def inline_stores(project: str, resources: dict[str, Any], param: str) -> dict[str, Any]:
    """`file_search.vector_stores: [{file_ids, chunking_strategy, metadata}]` makes real stores,
    named by id from then on, as OpenAI's create helper does."""
    from api_v1 import vector_stores

    search = resources.get("file_search") or {}
    specs = search.get("vector_stores")
    if not specs:
        return resources
    ids = list(search.get("vector_store_ids") or [])
    for index, spec in enumerate(specs):
        body = {key: spec[key] for key in ("file_ids", "chunking_strategy", "metadata") if spec.get(key) is not None}
        try:
            ids.append(vector_stores.store_create(project, body).id)
        except ApiError as exc:
            exc.param = f"{param}.file_search.vector_stores[{index}].{exc.param}" if exc.param else exc.param
            raise
    return {**resources, "file_search": {"vector_store_ids": ids}}


def active_run(thread: Thread) -> Run | None:
    return Run.objects.filter(thread=thread, status__in=Run.ACTIVE).only("id").first()


def message_create(project: str, thread_id: str, body: dict[str, Any]) -> Message:
    fields = check_new_message(body)
    with transaction.atomic():
        thread = lock_thread(project, thread_id)
        running = active_run(thread)
        if running is not None:
            raise ApiError(f"Can't add messages to {thread.id} while a run {running.id} is active.", param="thread_id")
        return new_message(project, thread, fields)


def message_update(project: str, thread_id: str, message_id: str, body: dict[str, Any]) -> Message:
    v.check(body, {"metadata": v.metadata()})
    with transaction.atomic():
        found = get_message(project, thread_id, message_id)
        if body.get("metadata") is not None:
            found.metadata = body["metadata"]
            found.save(update_fields=["metadata"])
    return found


def get_message(project: str, thread_id: str, message_id: str) -> Message:
    thread = get_scoped(Thread, project, thread_id, noun="thread")
    found = Message.objects.filter(thread=thread, pk=message_id).first()
    if found is None:
        raise ApiError(f"No message found with id '{message_id}'.", status=404)
    return found


# --- threads -----------------------------------------------------------------------------------


def lock_thread(project: str, thread_id: str) -> Thread:
    """The thread, locked for the rest of the transaction (PostgreSQL row lock; SQLite's IMMEDIATE
    transactions already serialise writers), so "one active run per thread" holds under races."""
    found = scoped(Thread, project).select_for_update().filter(pk=thread_id).first()
    if found is None:
        raise ApiError(f"No thread found with id '{thread_id}'.", status=404)
    return found


def check_thread_body(body: dict[str, Any], param: str = "") -> dict[str, Any]:
    prefix = f"{param}." if param else ""
    v.check(body, {"metadata": v.metadata(), "messages": v.array()}, prefix=prefix)
    messages = [
        check_new_message(item, f"{prefix}messages[{index}]") for index, item in enumerate(body.get("messages") or [])
    ]
    return {
        "messages": messages,
        "tool_resources": tool_rules.check_tool_resources(body.get("tool_resources"), f"{prefix}tool_resources"),
        "metadata": body.get("metadata") or {},
    }


def thread_create(project: str, cleaned: dict[str, Any]) -> Thread:
    """Creates the thread and its messages in one transaction: all of it or nothing."""
    with transaction.atomic():
        resources = cleaned["tool_resources"]
        thread = Thread.objects.create(
            id=new_id("thread_"),
            project=project,
            created_at=now_seconds(),
            created_ns=now_ns(),
            tool_resources=inline_stores(project, resources, "tool_resources") if resources else resources,
            metadata=cleaned["metadata"],
        )
        for fields in cleaned["messages"]:
            new_message(project, thread, fields)
    return thread


def thread_update(project: str, thread_id: str, body: dict[str, Any]) -> Thread:
    v.check(body, {"metadata": v.metadata()})
    with transaction.atomic():
        found = get_scoped(Thread, project, thread_id, noun="thread")
        if "tool_resources" in body:
            resources = tool_rules.check_tool_resources(body["tool_resources"])
            found.tool_resources = inline_stores(project, resources, "tool_resources") if resources else resources
        if body.get("metadata") is not None:
            found.metadata = body["metadata"]
        found.save()
    return found
