"""The OpenAPI description served at /v1/openapi.yaml (and shown by Swagger UI at /v1/docs).

drf-spectacular sees only the DRF viewsets, and sees them without serializers, so it can say
nothing true about their bodies. This postprocessing hook describes every operation we serve, the
plain async views included, from one table: its request body (built from the validation rules the
view itself checks, clicky_chats/validation.py, so the two cannot drift), its answer, and the
OpenAI error envelope every 4xx and 5xx comes in. tests/test_fuzz.py fuzzes the server against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from clicky_chats import validation as v

JSON = "application/json"
SSE = "text/event-stream"
MULTIPART = "multipart/form-data"
BINARY = "application/octet-stream"

# Where each group of routes is served: the OpenAI API and its Rubra copy, and our own APIs.
OPENAI_TIERS = ("/v1/", "/v1/rubra/")
RUBRAX_TIERS = ("/v1/rubra/x/",)


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return v.nullable(schema)


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object"}
ARRAY = {"type": "array"}
TIME = INTEGER  # Unix seconds
METADATA = nullable(v.schema_of(v.metadata()))
# One server-sent event; its `data` is a JSON object, or `[DONE]` at the end.
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"event": STRING, "data": STRING}}


def object_schema(kind: str | None, required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """An API object: `object` is the constant `kind`; further fields (extensions) are allowed."""
    props = dict(properties)
    if kind is not None:
        props["object"] = {"type": "string", "enum": [kind]}
        required = [*required, "object"]
    return {"type": "object", "required": required, "properties": props}


def list_of(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": item},
            "first_id": nullable(STRING),
            "last_id": nullable(STRING),
            "has_more": BOOLEAN,
        },
    }


def deleted(kind: str) -> dict[str, Any]:
    return object_schema(kind, ["id", "deleted"], {"id": STRING, "deleted": BOOLEAN})


COMPONENTS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "OpenAI's error envelope: every 4xx and 5xx answer has this body.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string", "minLength": 1},
                    "type": STRING,
                    "param": nullable(STRING),
                    "code": nullable(STRING),
                },
            }
        },
    },
    "Assistant": object_schema(
        "assistant",
        ["id", "created_at", "name", "description", "model", "instructions", "tools", "metadata"],
        {
            "id": STRING,
            "created_at": TIME,
            "name": nullable(STRING),
            "description": nullable(STRING),
            "model": STRING,
            "instructions": nullable(STRING),
            "tools": {"type": "array", "items": OBJECT},
            "metadata": METADATA,
            "tool_resources": nullable(OBJECT),  # Assistants v2
            "temperature": nullable({"type": "number"}),  # v2
            "top_p": nullable({"type": "number"}),  # v2
            "response_format": {"anyOf": [{"type": "string", "enum": ["auto"]}, OBJECT]},  # v2
            "file_ids": {"type": "array", "items": STRING},  # Assistants v1
            "gptscript_tools": {"type": "array", "items": STRING},  # /v1/rubra
        },
    ),
    "Thread": object_schema(
        "thread",
        ["id", "created_at", "metadata"],
        {"id": STRING, "created_at": TIME, "metadata": METADATA, "tool_resources": nullable(OBJECT)},
    ),
    "Message": object_schema(
        "thread.message",
        ["id", "created_at", "thread_id", "role", "content", "assistant_id", "run_id", "metadata"],
        {
            "id": STRING,
            "created_at": TIME,
            "thread_id": STRING,
            "status": nullable(STRING),
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {"type": "array", "items": OBJECT},
            "assistant_id": nullable(STRING),
            "run_id": nullable(STRING),
            "attachments": nullable({"type": "array", "items": OBJECT}),  # v2
            "file_ids": {"type": "array", "items": STRING},  # v1
            "metadata": METADATA,
        },
    ),
    "Run": object_schema(
        "thread.run",
        ["id", "created_at", "thread_id", "assistant_id", "status", "model", "instructions", "tools", "metadata"],
        {
            "id": STRING,
            "created_at": TIME,
            "thread_id": STRING,
            "assistant_id": STRING,
            "status": STRING,
            "required_action": nullable(OBJECT),
            "last_error": nullable(OBJECT),
            "expires_at": nullable(TIME),
            "started_at": nullable(TIME),
            "cancelled_at": nullable(TIME),
            "failed_at": nullable(TIME),
            "completed_at": nullable(TIME),
            "model": STRING,
            "instructions": STRING,
            "tools": {"type": "array", "items": OBJECT},
            "metadata": METADATA,
            "usage": nullable(OBJECT),
        },
    ),
    "RunStep": object_schema(
        "thread.run.step",
        ["id", "created_at", "assistant_id", "thread_id", "run_id", "type", "status", "step_details"],
        {
            "id": STRING,
            "created_at": TIME,
            "assistant_id": STRING,
            "thread_id": STRING,
            "run_id": STRING,
            "type": {"type": "string", "enum": ["message_creation", "tool_calls"]},
            "status": STRING,
            "step_details": OBJECT,
        },
    ),
    "File": object_schema(
        "file",
        ["id", "bytes", "created_at", "filename", "purpose"],
        {
            "id": STRING,
            "bytes": INTEGER,
            "created_at": TIME,
            "filename": STRING,
            "purpose": STRING,
            "status": STRING,
            "expires_at": nullable(TIME),
            "status_details": nullable(STRING),
        },
    ),
    "Upload": object_schema(
        "upload",
        ["id", "bytes", "created_at", "expires_at", "filename", "purpose", "status", "file"],
        {
            "id": STRING,
            "bytes": INTEGER,
            "created_at": TIME,
            "expires_at": TIME,
            "filename": STRING,
            "purpose": STRING,
            "status": {"type": "string", "enum": ["pending", "completed", "cancelled", "expired"]},
            "file": {"anyOf": [ref("File"), {"type": "null"}]},
        },
    ),
    "UploadPart": object_schema(
        "upload.part", ["id", "created_at", "upload_id"], {"id": STRING, "created_at": TIME, "upload_id": STRING}
    ),
    "VectorStore": object_schema(
        "vector_store",
        ["id", "created_at", "name", "usage_bytes", "file_counts", "status", "metadata"],
        {
            "id": STRING,
            "created_at": TIME,
            "name": STRING,
            "usage_bytes": INTEGER,
            "file_counts": OBJECT,
            "status": {"type": "string", "enum": ["expired", "in_progress", "completed"]},
            "expires_after": nullable(OBJECT),
            "expires_at": nullable(TIME),
            "last_active_at": nullable(TIME),
            "metadata": METADATA,
        },
    ),
    "VectorStoreFile": object_schema(
        "vector_store.file",
        ["id", "usage_bytes", "created_at", "vector_store_id", "status", "last_error"],
        {
            "id": STRING,
            "usage_bytes": INTEGER,
            "created_at": TIME,
            "vector_store_id": STRING,
            "status": {"type": "string", "enum": ["in_progress", "completed", "cancelled", "failed"]},
            "last_error": nullable(OBJECT),
            "chunking_strategy": nullable(OBJECT),
            "attributes": nullable(OBJECT),
        },
    ),
    "VectorStoreFileBatch": object_schema(
        "vector_store.files_batch",
        ["id", "created_at", "vector_store_id", "status", "file_counts"],
        {"id": STRING, "created_at": TIME, "vector_store_id": STRING, "status": STRING, "file_counts": OBJECT},
    ),
    "VectorStoreSearchResults": object_schema(
        "vector_store.search_results.page",
        ["search_query", "data", "has_more", "next_page"],
        {
            "search_query": {"type": "array", "items": STRING},
            "data": {"type": "array", "items": OBJECT},
            "has_more": BOOLEAN,
            "next_page": nullable(STRING),
        },
    ),
    "VectorStoreFileContent": object_schema(
        "vector_store.file_content.page",
        ["data", "has_more", "next_page"],
        {"data": {"type": "array", "items": OBJECT}, "has_more": BOOLEAN, "next_page": nullable(STRING)},
    ),
    "ChatCompletion": object_schema(
        "chat.completion",
        ["id", "created", "model", "choices"],
        {"id": STRING, "created": INTEGER, "model": STRING, "choices": {"type": "array", "items": OBJECT}},
    ),
    "Model": object_schema("model", ["id"], {"id": STRING, "created": INTEGER, "owned_by": STRING}),
    "Tool": object_schema(
        "tool",
        ["id", "created_at", "name", "type", "requires_confirmation"],
        {
            "id": STRING,
            "created_at": TIME,
            "name": nullable(STRING),
            "description": nullable(STRING),
            "type": {"type": "string", "enum": ["gptscript", "mcp"]},
            "url": nullable(STRING),
            "contents": nullable(STRING),
            "subtool": nullable(STRING),
            "env_vars": nullable({"type": "array", "items": STRING}),
            "requires_confirmation": BOOLEAN,
        },
    ),
    "ToolInspection": object_schema("tool.inspection", [], {}),
    "ToolRun": object_schema(
        "tool.run",
        ["id", "created_at", "status"],
        {
            "id": STRING,
            "created_at": TIME,
            "tool_id": nullable(STRING),
            "status": STRING,
            "output": nullable(STRING),
            "error": nullable(STRING),
        },
    ),
    "ToolEvent": object_schema("tool.event", ["index", "type"], {"index": INTEGER, "type": STRING}),
    "Health": object_schema(None, ["status", "database"], {"status": STRING, "database": STRING}),
}

# Query parameters of the cursor-paginated lists (clicky_chats/pagination.py).
PAGE_QUERY: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
    {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
    {"name": "after", "in": "query", "schema": STRING},
    {"name": "before", "in": "query", "schema": STRING},
]


def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema}


@dataclass(frozen=True)
class Operation:
    """One operation, its path relative to the tier (e.g. "assistants/{assistant_id}")."""

    path: str
    method: str
    summary: str
    response: dict[str, Any]
    request: dict[str, Any] | None = None
    request_type: str = JSON
    request_required: bool = True
    response_types: tuple[str, ...] = (JSON,)
    parameters: list[dict[str, Any]] = field(default_factory=list)
    tiers: tuple[str, ...] = OPENAI_TIERS


def _operations() -> list[Operation]:
    """Read at schema time, not import time: the rules live in the apps, which import this package."""
    from agents import runs as run_flows
    from api_rubrax import tool_runs, xtools
    from api_v1 import files, proxy_rules, threads, vector_store_views, vector_stores

    def body(rules: dict[str, v.Rule], required: tuple[str, ...] = (), **extra: dict[str, Any]) -> dict[str, Any]:
        schema = v.body_schema(rules, required=required)
        for name, value in extra.items():
            schema["properties"].setdefault(name, nullable(value) if name not in required else value)
        return schema

    message_content = {"anyOf": [STRING, {"type": "array", "items": OBJECT}]}
    new_message = body(
        {},
        ("role", "content"),
        role={"type": "string", "enum": ["user", "assistant"]},
        content=message_content,
        attachments={"type": "array", "items": OBJECT},
        file_ids={"type": "array", "items": STRING},
        metadata=v.schema_of(v.metadata()),
    )
    assistant_extra = {
        "tools": {"type": "array", "items": OBJECT},
        "tool_resources": OBJECT,
        "response_format": {"anyOf": [{"type": "string", "enum": ["auto"]}, OBJECT]},
        "file_ids": {"type": "array", "items": STRING},
        "gptscript_tools": {"type": "array", "items": STRING},
    }
    run_extra = {
        "tools": {"type": "array", "items": OBJECT},
        "tool_choice": {"anyOf": [STRING, OBJECT]},
        "response_format": {"anyOf": [STRING, OBJECT]},
        "include": {"type": "array", "items": STRING},
    }
    run_body = body(run_flows.RUN_RULES, ("assistant_id",), **run_extra)
    thread_body = body({}, (), messages={"type": "array", "items": new_message}, metadata=OBJECT, tool_resources=OBJECT)
    thread_and_run_body = body(run_flows.RUN_RULES, ("assistant_id",), thread=thread_body, **run_extra)
    tool_body = body(xtools.TOOL_RULES)
    chunking = {"chunking_strategy": OBJECT}
    metadata_only = body({"metadata": v.metadata()})
    multipart_file = {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}},
    }
    relayed_multipart = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"}, "model": STRING},
    }
    store_body = body(vector_stores.STORE_RULES, (), expires_after=OBJECT, **chunking)
    page = PAGE_QUERY
    run_path = "threads/{thread_id}/runs/{run_id}"
    store_path = "vector_stores/{vector_store_id}"
    stream_types = (JSON, SSE)

    openai = [
        # Chat completions and the other relays to the model upstream.
        Operation(
            "chat/completions",
            "post",
            "Create a chat completion (relayed; stored with store=true; SSE when stream is true)",
            ref("ChatCompletion"),
            body(proxy_rules.CHAT, ("model", "messages")),
            response_types=stream_types,
        ),
        Operation(
            "chat/completions",
            "get",
            "List stored chat completions",
            list_of(ref("ChatCompletion")),
            parameters=[*page, query("model", STRING)],
        ),
        Operation(
            "chat/completions/{completion_id}", "get", "Retrieve a stored chat completion", ref("ChatCompletion")
        ),
        Operation(
            "chat/completions/{completion_id}",
            "post",
            "Update a stored chat completion's metadata",
            ref("ChatCompletion"),
            body({"metadata": v.metadata()}, ("metadata",)),
        ),
        Operation(
            "chat/completions/{completion_id}",
            "delete",
            "Delete a stored chat completion",
            deleted("chat.completion.deleted"),
        ),
        Operation(
            "chat/completions/{completion_id}/messages",
            "get",
            "List a stored chat completion's messages",
            list_of(OBJECT),
            parameters=page,
        ),
        Operation(
            "completions",
            "post",
            "Create a legacy completion (relayed)",
            OBJECT,
            body(proxy_rules.COMPLETIONS, ("model", "prompt")),
            response_types=stream_types,
        ),
        Operation(
            "embeddings",
            "post",
            "Create embeddings (relayed)",
            list_of(OBJECT),
            body(proxy_rules.EMBEDDINGS, ("model", "input")),
        ),
        Operation("moderations", "post", "Classify input (relayed)", OBJECT, body(proxy_rules.MODERATIONS, ("input",))),
        Operation(
            "images/generations",
            "post",
            "Generate images (relayed)",
            OBJECT,
            body(proxy_rules.IMAGE_GENERATIONS, ("prompt",)),
            response_types=stream_types,
        ),
        Operation("images/edits", "post", "Edit images (relayed)", OBJECT, relayed_multipart, request_type=MULTIPART),
        Operation(
            "images/variations", "post", "Image variations (relayed)", OBJECT, relayed_multipart, request_type=MULTIPART
        ),
        Operation(
            "audio/speech",
            "post",
            "Text to speech (relayed, binary audio)",
            {"type": "string", "format": "binary"},
            body(proxy_rules.SPEECH, ("model", "input", "voice")),
            response_types=("audio/*", BINARY, SSE),
        ),
        Operation(
            "audio/transcriptions",
            "post",
            "Transcribe audio (relayed)",
            OBJECT,
            relayed_multipart,
            request_type=MULTIPART,
            response_types=(JSON, "text/plain", SSE),
        ),
        Operation(
            "audio/translations",
            "post",
            "Translate audio (relayed)",
            OBJECT,
            relayed_multipart,
            request_type=MULTIPART,
            response_types=(JSON, "text/plain"),
        ),
        Operation("models", "get", "List models", list_of(ref("Model"))),
        Operation("models/{model}", "get", "Retrieve a model", ref("Model")),
        # Assistants
        Operation(
            "assistants",
            "get",
            "List assistants",
            list_of(ref("Assistant")),
            parameters=page,
        ),
        Operation(
            "assistants",
            "post",
            "Create an assistant",
            ref("Assistant"),
            body(threads.ASSISTANT_RULES, ("model",), **assistant_extra),
        ),
        Operation("assistants/{assistant_id}", "get", "Retrieve an assistant", ref("Assistant")),
        Operation(
            "assistants/{assistant_id}",
            "post",
            "Modify an assistant",
            ref("Assistant"),
            body(threads.ASSISTANT_RULES, **assistant_extra),
        ),
        Operation("assistants/{assistant_id}", "delete", "Delete an assistant", deleted("assistant.deleted")),
        # Threads and messages
        Operation("threads", "post", "Create a thread", ref("Thread"), thread_body, request_required=False),
        Operation("threads/{thread_id}", "get", "Retrieve a thread", ref("Thread")),
        Operation(
            "threads/{thread_id}",
            "post",
            "Modify a thread",
            ref("Thread"),
            body({"metadata": v.metadata()}, tool_resources=OBJECT),
        ),
        Operation("threads/{thread_id}", "delete", "Delete a thread", deleted("thread.deleted")),
        Operation(
            "threads/{thread_id}/messages",
            "get",
            "List a thread's messages",
            list_of(ref("Message")),
            parameters=[*page, query("run_id", STRING)],
        ),
        Operation("threads/{thread_id}/messages", "post", "Create a message", ref("Message"), new_message),
        Operation("threads/{thread_id}/messages/{message_id}", "get", "Retrieve a message", ref("Message")),
        Operation(
            "threads/{thread_id}/messages/{message_id}", "post", "Modify a message", ref("Message"), metadata_only
        ),
        Operation(
            "threads/{thread_id}/messages/{message_id}",
            "delete",
            "Delete a message",
            deleted("thread.message.deleted"),
        ),
        # Runs and run steps
        Operation(
            "threads/runs",
            "post",
            "Create a thread and run it (SSE when stream is true)",
            ref("Run"),
            thread_and_run_body,
            response_types=stream_types,
        ),
        Operation("threads/{thread_id}/runs", "get", "List a thread's runs", list_of(ref("Run")), parameters=page),
        Operation(
            "threads/{thread_id}/runs",
            "post",
            "Create a run (SSE when stream is true)",
            ref("Run"),
            run_body,
            response_types=stream_types,
        ),
        Operation(run_path, "get", "Retrieve a run", ref("Run")),
        Operation(run_path, "post", "Modify a run's metadata", ref("Run"), metadata_only),
        Operation(f"{run_path}/cancel", "post", "Cancel a run", ref("Run")),
        Operation(
            f"{run_path}/submit_tool_outputs",
            "post",
            "Submit the outputs of a run's function calls (SSE when stream is true)",
            ref("Run"),
            body(
                {"stream": v.boolean()},
                ("tool_outputs",),
                tool_outputs={
                    "type": "array",
                    "items": {"type": "object", "properties": {"tool_call_id": STRING, "output": STRING}},
                },
            ),
            response_types=stream_types,
        ),
        Operation(
            f"{run_path}/steps",
            "get",
            "List a run's steps",
            list_of(ref("RunStep")),
            parameters=[*page, query("include[]", {"type": "array", "items": STRING})],
        ),
        Operation(
            f"{run_path}/steps/{{step_id}}",
            "get",
            "Retrieve a run step",
            ref("RunStep"),
            parameters=[query("include[]", {"type": "array", "items": STRING})],
        ),
        # Files and uploads
        Operation(
            "files",
            "get",
            "List files",
            list_of(ref("File")),
            parameters=[
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                *page[1:],
                query("purpose", {"type": "string", "enum": list(files.LISTABLE_PURPOSES)}),
            ],
        ),
        Operation("files", "post", "Upload a file", ref("File"), multipart_file, request_type=MULTIPART),
        Operation("files/{file_id}", "get", "Retrieve a file", ref("File")),
        Operation("files/{file_id}", "delete", "Delete a file", deleted("file")),
        Operation(
            "files/{file_id}/content",
            "get",
            "A file's bytes",
            {"type": "string", "format": "binary"},
            response_types=("*/*",),
        ),
        Operation(
            "uploads",
            "post",
            "Create an upload",
            ref("Upload"),
            body(
                files.UPLOAD_RULES,
                ("filename", "purpose", "bytes", "mime_type"),
                purpose={"type": "string", "enum": list(files.PURPOSES)},
            ),
        ),
        Operation(
            "uploads/{upload_id}/parts",
            "post",
            "Add a part to an upload",
            ref("UploadPart"),
            {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"type": "string", "format": "binary"}},
            },
            request_type=MULTIPART,
        ),
        Operation(
            "uploads/{upload_id}/complete",
            "post",
            "Complete an upload",
            ref("Upload"),
            body(files.COMPLETE_RULES, ("part_ids",)),
        ),
        Operation("uploads/{upload_id}/cancel", "post", "Cancel an upload", ref("Upload")),
        # Vector stores
        Operation("vector_stores", "get", "List vector stores", list_of(ref("VectorStore")), parameters=page),
        Operation(
            "vector_stores", "post", "Create a vector store", ref("VectorStore"), store_body, request_required=False
        ),
        Operation(store_path, "get", "Retrieve a vector store", ref("VectorStore")),
        Operation(
            store_path,
            "post",
            "Modify a vector store",
            ref("VectorStore"),
            body({"name": v.string(max_length=256), "metadata": v.metadata()}, expires_after=OBJECT),
        ),
        Operation(store_path, "delete", "Delete a vector store", deleted("vector_store.deleted")),
        Operation(
            f"{store_path}/search",
            "post",
            "Search a vector store",
            ref("VectorStoreSearchResults"),
            body(vector_store_views.SEARCH_RULES, ("query",), filters=OBJECT),
        ),
        Operation(
            f"{store_path}/files",
            "get",
            "List a vector store's files",
            list_of(ref("VectorStoreFile")),
            parameters=[
                *page,
                query("filter", {"type": "string", "enum": ["in_progress", "completed", "failed", "cancelled"]}),
            ],
        ),
        Operation(
            f"{store_path}/files",
            "post",
            "Attach a file to a vector store",
            ref("VectorStoreFile"),
            body({"file_id": v.string(nonempty=True)}, ("file_id",), attributes=OBJECT, **chunking),
        ),
        Operation(f"{store_path}/files/{{file_id}}", "get", "Retrieve a vector store file", ref("VectorStoreFile")),
        Operation(
            f"{store_path}/files/{{file_id}}",
            "post",
            "Update a vector store file's attributes",
            ref("VectorStoreFile"),
            body({}, ("attributes",), attributes=OBJECT),
        ),
        Operation(
            f"{store_path}/files/{{file_id}}",
            "delete",
            "Remove a file from a vector store",
            deleted("vector_store.file.deleted"),
        ),
        Operation(
            f"{store_path}/files/{{file_id}}/content",
            "get",
            "A vector store file's parsed text",
            ref("VectorStoreFileContent"),
            parameters=[query("page", STRING)],
        ),
        Operation(
            f"{store_path}/file_batches",
            "post",
            "Create a file batch",
            ref("VectorStoreFileBatch"),
            body(
                {},
                (),
                file_ids={"type": "array", "items": STRING},
                files={"type": "array", "items": OBJECT},
                attributes=OBJECT,
                **chunking,
            ),
        ),
        Operation(
            f"{store_path}/file_batches/{{batch_id}}", "get", "Retrieve a file batch", ref("VectorStoreFileBatch")
        ),
        Operation(
            f"{store_path}/file_batches/{{batch_id}}/cancel", "post", "Cancel a file batch", ref("VectorStoreFileBatch")
        ),
        Operation(
            f"{store_path}/file_batches/{{batch_id}}/files",
            "get",
            "List a file batch's files",
            list_of(ref("VectorStoreFile")),
            parameters=page,
        ),
    ]

    # clicky-chats' own APIs: under /v1/rubra/x, and under the flat `x-` names on /v1 and /v1/rubra.
    confirm_tool_run = body({"confirmation": v.boolean(), "stream": v.boolean()}, ("confirmation",))
    confirm_run = body(
        {"stream": v.boolean()},
        ("confirmation",),
        confirmation={
            "type": "object",
            "required": ["tool_call_id", "confirmation"],
            "properties": {"tool_call_id": STRING, "confirmation": BOOLEAN},
        },
    )
    index = query("index", {"type": "integer", "minimum": 0})

    def own(prefix: str, run_prefix: str, tiers: tuple[str, ...]) -> list[Operation]:
        """x-tools and the rest; `prefix` is "tools" or "x-tools", `run_prefix` "" or "x-"."""
        threads_path = "threads" if prefix == "tools" else "x-threads"
        return [
            Operation(prefix, "get", "List x-tools", list_of(ref("Tool")), parameters=page, tiers=tiers),
            Operation(prefix, "post", "Create an x-tool", ref("Tool"), tool_body, tiers=tiers),
            Operation(
                f"{prefix}/inspect",
                "post",
                "Parse a tool file without storing it",
                ref("ToolInspection"),
                tool_body,
                tiers=tiers,
            ),
            Operation(
                f"{prefix}/run",
                "post",
                "Run a tool outside any run (SSE when stream is true)",
                ref("ToolRun"),
                body(tool_runs.RUN_RULES, input={"anyOf": [STRING, OBJECT]}),
                response_types=stream_types,
                tiers=tiers,
            ),
            Operation(
                f"{prefix}/runs/{{tool_run_id}}/confirm",
                "post",
                "Confirm or deny a tool run waiting for it",
                ref("ToolRun"),
                confirm_tool_run,
                response_types=stream_types,
                tiers=tiers,
            ),
            Operation(f"{prefix}/{{tool_id}}", "get", "Retrieve an x-tool", ref("Tool"), tiers=tiers),
            Operation(f"{prefix}/{{tool_id}}", "post", "Modify an x-tool", ref("Tool"), tool_body, tiers=tiers),
            Operation(
                f"{prefix}/{{tool_id}}",
                "put",
                "Modify an x-tool (the Rubra UI's verb)",
                ref("Tool"),
                tool_body,
                tiers=tiers,
            ),
            Operation(f"{prefix}/{{tool_id}}", "delete", "Delete an x-tool", deleted("tool.deleted"), tiers=tiers),
            Operation(
                threads_path,
                "get",
                "List every thread of the project",
                list_of(ref("Thread")),
                parameters=page,
                tiers=tiers,
            ),
            Operation(
                f"{run_path}/{run_prefix}stream",
                "get",
                "A run's events from `index` on, as SSE",
                {"type": "string"},
                response_types=(SSE,),
                parameters=[index],
                tiers=tiers,
            ),
            Operation(
                f"{run_path}/{run_prefix}confirm",
                "post",
                "Approve or deny the tool call a run waits on",
                ref("Run"),
                confirm_run,
                response_types=stream_types,
                tiers=tiers,
            ),
            Operation(
                f"{run_path}/steps/{{step_id}}/{run_prefix}events",
                "get",
                "A run step's tool events (SSE when stream is true)",
                list_of(ref("ToolEvent")),
                response_types=stream_types,
                parameters=[index, query("stream", {"type": "string", "enum": ["true", "false", "1", "0"]})],
                tiers=tiers,
            ),
        ]

    return [*openai, *own("tools", "", RUBRAX_TIERS), *own("x-tools", "x-", OPENAI_TIERS)]


def _template_key(path: str) -> str:
    """A path with its parameters' names left out: /v1/assistants/{id} and /v1/assistants/{assistant_id}
    are one path."""
    return re.sub(r"\{[^}]+\}", "{}", path)


# operationId prefixes, distinct even where paths read alike (/v1/rubra/x/tools, /v1/rubra/x-tools).
TIER_LABELS = {"/v1/": "", "/v1/rubra/": "rubra_", "/v1/rubra/x/": "rubrax_"}


def _operation_id(tier: str, op: Operation) -> str:
    return f"{op.method}_{TIER_LABELS[tier]}" + re.sub(r"[^A-Za-z0-9]+", "_", op.path).strip("_")


def _error_responses() -> dict[str, Any]:
    envelope = {"content": {JSON: {"schema": ref("Error")}}}
    return {
        "4XX": {"description": "The request was refused: the envelope says why.", **envelope},
        "5XX": {"description": "The model upstream failed or timed out, or the server did.", **envelope},
    }


def _render(tier: str, op: Operation) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": _operation_id(tier, op),
        "summary": op.summary,
        "responses": {
            "200": {
                "description": "OK",
                "content": {kind: {"schema": SSE_EVENT if kind == SSE else op.response} for kind in op.response_types},
            },
            **_error_responses(),
        },
    }
    # Swagger UI groups by tag: the first segment of the path ("assistants", "threads"...).
    operation["tags"] = [("x/" if tier in RUBRAX_TIERS else "") + op.path.split("/")[0]]
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": STRING} for name in re.findall(r"\{(\w+)\}", op.path)
    ]
    parameters.extend(op.parameters)
    if parameters:
        operation["parameters"] = parameters
    if op.request is not None:
        operation["requestBody"] = {
            "required": op.request_required,
            "content": {op.request_type: {"schema": op.request}},
        }
    return operation


def describe_api(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every served operation, with bodies, answers and errors."""
    paths: dict[str, dict[str, Any]] = result.setdefault("paths", {})
    described: dict[str, dict[str, Any]] = {}
    for op in _operations():
        for tier in op.tiers:
            described.setdefault(tier + op.path, {})[op.method] = _render(tier, op)
    # drf-spectacular's own guesses at the viewsets' routes give way to the table's.
    templates = {_template_key(route) for route in described}
    for route in list(paths):
        if _template_key(route) in templates:
            del paths[route]
    paths.update(described)
    paths["/healthz"] = {
        "get": {
            "operationId": "get_healthz",
            "summary": "Health check: 200 when the database answers",
            "security": [],
            "tags": ["service"],
            "responses": {
                "200": {"description": "OK", "content": {JSON: {"schema": ref("Health")}}},
                "503": {"description": "The database does not answer", "content": {JSON: {"schema": ref("Health")}}},
            },
        }
    }
    # Anything left undescribed (an endpoint added without a row above) still says how it fails.
    for methods in paths.values():
        for operation in methods.values():
            if isinstance(operation, dict) and "responses" in operation:
                for status, response in _error_responses().items():
                    operation["responses"].setdefault(status, response)
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(COMPONENTS)
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: from CLICKY_CHATS_API_KEYS or `manage.py createapikey`.",
        }
    }
    result["security"] = [{"bearer": []}]
    return result
