"""The Assistants API v1 dialect, served over the v2 objects we store.

A request is v1 when it sends `OpenAI-Beta: assistants=v1` (the `openai` npm client the Rubra UI
uses, and Python SDKs up to 1.20), v2 when it sends `assistants=v2`. Without the header it is v1 on
the /v1/rubra tiers (the Go clicky-chats' own dialect) and CLICKY_CHATS_DEFAULT_ASSISTANTS_VERSION
(v2 unless set) on /v1: the Rubra UI's unauthenticated calls send no header at all.

What is stored is always the v2 form, so both dialects see the same objects:

* v1 `retrieval` is stored as a `file_search` tool; each dialect shows its own name for it.
* An assistant's v1 `file_ids` are the files of a hidden vector store (VectorStore.hidden, never
  listed by /v1/vector_stores) that the assistant references from
  `tool_resources.file_search.vector_store_ids`, where the run engine finds any assistant's
  stores; the agents ingest its files like any store's. A v2 client sees that store there, as
  OpenAI showed v1 assistants' files after v2 came.
* Setting non-empty `file_ids` adds the retrieval tool and an empty list removes it, as the Go
  clicky-chats did and the Rubra UI relies on (its form never sends `retrieval` itself).
* A message's v1 `file_ids` are stored as `attachments` for file_search.
* The Rubra UI's `{type: "gptscript", "x-tool": id}` tools (x-tool ids and builtin names) are
  stored in `Assistant.gptscript_tools`, the list the /v1/rubra tier shows as `gptscript_tools`.

The v1 objects carry exactly the fields of OpenAI's v1 spec (openai-openapi 399458ce, the one
the Go clicky-chats pinned): no tool_resources, attachments, temperature, top_p, response_format,
and the rest of v2's additions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from api_rubrax.models import XTool
from api_rubrax.xtools import BUILTIN_NAMES
from api_v1 import render
from api_v1 import tools as tool_rules
from api_v1 import vector_stores as stores
from api_v1.files import live_files
from api_v1.models import Assistant, Chunk, Message, Run, RunStep, Thread, VectorStore, VectorStoreFile
from clicky_chats import validation as v
from clicky_chats.errors import not_found
from clicky_chats.ids import new_id, now_ns, now_seconds

V1, V2 = "v1", "v2"
MAX_ASSISTANT_FILES = 20  # v1's AssistantObject.file_ids maxItems
MAX_MESSAGE_FILES = 10  # v1's CreateMessageRequest.file_ids maxItems
# Request fields v1 does not have; a v1 request that carries them (the Rubra UI echoes whatever
# it was shown) has them ignored, as any unknown field is.
ASSISTANT_V2_ONLY = ("tool_resources", "temperature", "top_p", "response_format", "reasoning_effort")
THREAD_V2_ONLY = ("tool_resources",)
MESSAGE_V2_ONLY = ("attachments",)
V1_ASSISTANT_FIELDS = ("id", "object", "created_at", "name", "description", "model", "instructions", "tools")
V1_RUN_FIELDS = (
    "id",
    "object",
    "created_at",
    "thread_id",
    "assistant_id",
    "status",
    "required_action",
    "last_error",
    "expires_at",
    "started_at",
    "cancelled_at",
    "failed_at",
    "completed_at",
    "model",
    "instructions",
    "tools",
)
V1_MESSAGE_FIELDS = (
    "id",
    "object",
    "created_at",
    "thread_id",
    "status",
    "incomplete_details",
    "completed_at",
    "incomplete_at",
    "role",
    "content",
    "assistant_id",
    "run_id",
)
# v1 runs end in one of these; v2's `incomplete` (a token limit cut the run short) is shown as
# completed: its message is there, marked incomplete, and v1 pollers such as the Rubra UI stop
# only at completed, failed, cancelled or expired.
V1_RUN_STATUS = {"incomplete": "completed"}


def version_of(request: Any) -> str:
    """ "v1" or "v2": the dialect a request speaks (see the module's doc)."""
    for item in (request.headers.get("OpenAI-Beta") or "").split(","):
        name, _sep, value = item.partition("=")
        if name.strip().lower() == "assistants" and value.strip().lower() in (V1, V2):
            return value.strip().lower()
    if getattr(request, "api_tier", None) in ("rubra", "rubrax"):
        return V1
    return str(settings.CONFIG.default_assistants_version)


# --- requests ------------------------------------------------------------------------------------


def canonical_tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Checked tools as stored: v1's `retrieval` becomes `file_search`, and gptscript items come
    out as the x-tool ids and builtin names they name."""
    stored: list[dict[str, Any]] = []
    gptscript: list[str] = []
    for tool in tools:
        kind = tool.get("type")
        if kind == "gptscript":
            if tool["x-tool"] not in gptscript:
                gptscript.append(tool["x-tool"])
        elif kind == "retrieval":
            if not any(item.get("type") == "file_search" for item in stored):
                stored.append({"type": "file_search"})
        else:
            stored.append(tool)
    return stored, gptscript


def check_gptscript_tools(project: str, names: list[str], param: str, kept: Iterable[str] = ()) -> None:
    """Each must be a builtin's name or one of the project's x-tools, unless the assistant already
    had it (`kept`): the Rubra UI saves back what it last saw, even an x-tool deleted since, which
    runs then leave out."""
    new = {name for name in names if name not in BUILTIN_NAMES} - set(kept)
    known = set(XTool.objects.filter(project=project, pk__in=new).values_list("pk", flat=True)) if new else set()
    for index, name in enumerate(names):
        if name in new - known:
            raise not_found("x-tool", name, f"{param}[{index}]")


def check_gptscript_items(
    project: str, tools: list[dict[str, Any]], param: str = "tools", kept: Iterable[str] = ()
) -> None:
    """The same for the gptscript items among checked tools, naming `tools[index].x-tool`."""
    new = {tool["x-tool"] for tool in tools if tool.get("type") == "gptscript"} - set(BUILTIN_NAMES) - set(kept)
    known = set(XTool.objects.filter(project=project, pk__in=new).values_list("pk", flat=True)) if new else set()
    for index, tool in enumerate(tools):
        if tool.get("type") == "gptscript" and tool["x-tool"] in new - known:
            raise not_found("x-tool", tool["x-tool"], f"{param}[{index}].x-tool")


def check_file_ids(value: Any, param: str, max_items: int) -> list[str]:
    """A request's `file_ids`, without repeats. Their existence is checked where they are used,
    naming `param[index]` on a 404."""
    v.check({param: value}, {param: v.array(max_items=max_items, items=v.string(nonempty=True))})
    return list(dict.fromkeys(value))


def v1_message_body(project: str, body: Any, param: str = "") -> Any:
    """A v1 message as the v2 body the message checks take: its file_ids, which must be the
    caller's files (404 naming `file_ids[index]`), become attachments for file_search."""
    if not isinstance(body, dict):
        return body  # the message checks refuse it
    prefix = f"{param}." if param else ""
    converted = {key: value for key, value in body.items() if key not in MESSAGE_V2_ONLY and key != "file_ids"}
    if body.get("file_ids") is not None:
        file_ids = check_file_ids(body["file_ids"], f"{prefix}file_ids", MAX_MESSAGE_FILES)
        known = set(live_files(project).filter(pk__in=file_ids).values_list("pk", flat=True))
        for index, file_id in enumerate(file_ids):
            if file_id not in known:
                raise not_found("file", file_id, f"{prefix}file_ids[{index}]")
        converted["attachments"] = [{"file_id": file_id, "tools": [{"type": "file_search"}]} for file_id in file_ids]
    return converted


def v1_thread_body(project: str, body: Any, param: str = "") -> Any:
    if not isinstance(body, dict):
        return body
    prefix = f"{param}." if param else ""
    converted = {key: value for key, value in body.items() if key not in THREAD_V2_ONLY}
    if isinstance(body.get("messages"), list):
        converted["messages"] = [
            v1_message_body(project, item, f"{prefix}messages[{index}]") for index, item in enumerate(body["messages"])
        ]
    return converted


def v1_run_body(project: str, body: dict[str, Any]) -> dict[str, Any]:
    """A v1 run (or thread-and-run) request as the v2 body the run checks take."""
    converted = dict(body)
    if body.get("tools") is not None:
        checked = tool_rules.check_tools(body["tools"], max_items=tool_rules.MAX_RUN_TOOLS, version=V1)
        converted["tools"] = canonical_tools(checked)[0]
    converted.pop("tool_resources", None)
    if "thread" in body:
        converted["thread"] = v1_thread_body(project, body["thread"], "thread")
    if isinstance(body.get("additional_messages"), list):
        converted["additional_messages"] = [
            v1_message_body(project, item, f"additional_messages[{index}]")
            for index, item in enumerate(body["additional_messages"])
        ]
    return converted


# --- an assistant's files (its hidden store) -------------------------------------------------------


def _store_ids(assistant: Assistant) -> list[str]:
    search = (assistant.tool_resources or {}).get("file_search") or {}
    return list(search.get("vector_store_ids") or [])


def hidden_store_id(assistant: Assistant) -> str | None:
    """The assistant's v1 file store, when its tool_resources still name one."""
    ids = _store_ids(assistant)
    if not ids:
        return None
    found = VectorStore.objects.filter(project=assistant.project, pk__in=ids, hidden=True).values_list("pk", flat=True)
    return found.first()


def _hidden_files(assistant: Assistant) -> QuerySet[VectorStoreFile]:
    return VectorStoreFile.objects.filter(
        vector_store_id__in=_store_ids(assistant), vector_store__hidden=True, project=assistant.project
    )


def assistant_file_ids(assistant: Assistant) -> list[str]:
    """v1's `file_ids`: the hidden store's files, oldest first as v1 ordered them."""
    if not _store_ids(assistant):
        return []
    return list(_hidden_files(assistant).order_by("created_ns", "file_id").values_list("file_id", flat=True))


def drop_store(store_id: str) -> None:
    """Deletes a hidden store with its files' rows and chunks (the Files themselves stay), the way
    vector_stores.store_delete does for a visible one."""
    list(VectorStoreFile.objects.select_for_update().filter(vector_store_id=store_id).values_list("pk", flat=True))
    Chunk.objects.filter(vector_store_id=store_id).delete()
    VectorStore.objects.filter(pk=store_id, hidden=True).delete()


def set_assistant_files(project: str, assistant: Assistant, file_ids: list[str]) -> None:
    """Makes the hidden store hold exactly `file_ids` and the retrieval tool follow whether there
    are any. Call inside the transaction that saves the assistant (which this does not)."""
    store_id = hidden_store_id(assistant)
    if not file_ids:
        if store_id is not None:
            drop_store(store_id)
            assistant.tool_resources = _without_store(assistant.tool_resources, store_id)
        assistant.tools = [tool for tool in assistant.tools if tool.get("type") != "file_search"]
        return
    if store_id is None:
        now = now_seconds()
        store = VectorStore.objects.create(
            id=new_id("vs_"),
            project=project,
            created_at=now,
            created_ns=now_ns(),
            name=f"Files of {assistant.id}",
            metadata={"assistant_id": assistant.id},
            last_active_at=now,
            hidden=True,
        )
    else:
        store = VectorStore.objects.select_for_update().get(pk=store_id)
    current = set(VectorStoreFile.objects.filter(vector_store=store).values_list("file_id", flat=True))
    wanted = set(file_ids)
    gone = list(VectorStoreFile.objects.select_for_update().filter(vector_store=store).exclude(file_id__in=wanted))
    for store_file in gone:
        Chunk.objects.filter(store_file=store_file).delete()
        store_file.delete()
    attach = [
        stores.FileToAttach(file_id, f"file_ids[{index}]", stores.AUTO_CHUNKING, None)
        for index, file_id in enumerate(file_ids)
        if file_id not in current
    ]
    stores._attach(project, store, attach, batch=None)  # checks each file is the caller's (404 naming it)
    resources = dict(assistant.tool_resources or {})
    # v1 knows one set of files per assistant: they replace any v2 store the assistant named.
    resources["file_search"] = {"vector_store_ids": [store.id]}
    assistant.tool_resources = resources
    if not any(tool.get("type") == "file_search" for tool in assistant.tools):
        assistant.tools = [*assistant.tools, {"type": "file_search"}]


def _without_store(resources: dict[str, Any] | None, store_id: str) -> dict[str, Any] | None:
    if not resources:
        return resources
    search = dict(resources.get("file_search") or {})
    kept = [item for item in search.get("vector_store_ids") or [] if item != store_id]
    changed = {key: value for key, value in resources.items() if key != "file_search"}
    if kept or search.get("vector_stores"):
        changed["file_search"] = {**search, "vector_store_ids": kept}
    return changed or None


def forget_unreferenced_store(before: str | None, assistant: Assistant) -> None:
    """Drops the hidden store a v2 change of tool_resources left unreferenced."""
    if before is not None and before not in _store_ids(assistant):
        drop_store(before)


# --- objects -------------------------------------------------------------------------------------


def _v1_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "retrieval"} if tool.get("type") == "file_search" else tool for tool in tools]


def assistant(obj: Assistant, tier: str, version: str) -> dict[str, Any]:
    """The assistant as a client of `tier` ("v1" or "rubra") speaking `version` sees it."""
    if version != V1:
        return render.assistant(obj, tier)
    data = {name: value for name, value in render.assistant(obj, tier).items() if name in V1_ASSISTANT_FIELDS}
    data["tools"] = _v1_tools(obj.tools)
    gptscript = list(obj.gptscript_tools or [])
    if tier == "rubra":
        data["gptscript_tools"] = gptscript  # the Rubra UI before April 2024 reads them here
    else:
        # The later Rubra UI (and the Go clicky-chats of its time) reads them among the tools.
        data["tools"] += [{"type": "gptscript", "x-tool": name} for name in gptscript]
    data["file_ids"] = assistant_file_ids(obj)
    data["metadata"] = obj.metadata
    return data


def thread(obj: Thread, version: str) -> dict[str, Any]:
    data = render.thread(obj)
    if version == V1:
        data.pop("tool_resources")
    return data


def message_v1(data: dict[str, Any]) -> dict[str, Any]:
    shown = {name: data[name] for name in V1_MESSAGE_FIELDS}
    shown["file_ids"] = [item["file_id"] for item in data.get("attachments") or [] if "file_id" in item]
    shown["metadata"] = data["metadata"]
    return shown


def message(obj: Message, version: str) -> dict[str, Any]:
    data = render.message(obj)
    return message_v1(data) if version == V1 else data


def run_v1(data: dict[str, Any]) -> dict[str, Any]:
    shown = {name: data[name] for name in V1_RUN_FIELDS}
    shown["status"] = V1_RUN_STATUS.get(shown["status"], shown["status"])
    shown["tools"] = _v1_tools(data["tools"])
    # v1 runs list the files they could use; ours are the assistant's, which GET /assistants/{id}
    # names, and a run keeps none of its own.
    shown["file_ids"] = []
    shown["metadata"] = data["metadata"]
    shown["usage"] = data["usage"]
    return shown


def run(obj: Run, tier: str, version: str) -> dict[str, Any]:
    data = render.run(obj, tier)
    return run_v1(data) if version == V1 else data


def _v1_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    if call.get("type") != "file_search":
        return call
    shown = {"id": call.get("id"), "type": "retrieval", "retrieval": {}}
    if "index" in call:  # a delta
        shown = {"index": call["index"], **shown}
    return shown


def run_step_v1(data: dict[str, Any]) -> dict[str, Any]:
    details = data.get("step_details") or {}
    if details.get("type") != "tool_calls":
        return data
    calls = [_v1_tool_call(call) for call in details.get("tool_calls", [])]
    return {**data, "step_details": {**details, "tool_calls": calls}}


def run_step(obj: RunStep, tier: str, version: str, include: frozenset[str]) -> dict[str, Any]:
    data = render.run_step(obj, tier, include)
    return run_step_v1(data) if version == V1 else data


def event_v1(event: str, data: Any) -> tuple[str, Any]:
    """A stream event (already shaped for its tier) in the v1 dialect."""
    if not isinstance(data, dict):
        return event, data
    kind = data.get("object")
    if kind == "thread.run":
        if event == "thread.run.incomplete":
            event = "thread.run.completed"
        return event, run_v1(data)
    if kind == "thread.message":
        return event, message_v1(data)
    if kind == "thread.run.step":
        return event, run_step_v1(data)
    if kind == "thread":
        return event, {key: value for key, value in data.items() if key != "tool_resources"}
    if kind == "thread.run.step.delta":
        details = (data.get("delta") or {}).get("step_details") or {}
        if details.get("type") == "tool_calls":
            calls = [_v1_tool_call(call) for call in details.get("tool_calls") or []]
            delta = {**data["delta"], "step_details": {**details, "tool_calls": calls}}
            return event, {**data, "delta": delta}
    return event, data
