"""The OpenAPI description of the endpoints that are plain async views (drf-spectacular only sees
DRF views): the relays to the model upstream."""

from __future__ import annotations

import re
from typing import Any

_OBJECT = {"type": "object", "additionalProperties": True}

# (path, method, summary, request content type, response content type)
PROXY_OPERATIONS: list[tuple[str, str, str, str | None, str]] = [
    (
        "/v1/chat/completions",
        "post",
        "Create a chat completion (relayed; SSE when stream is true)",
        "application/json",
        "application/json",
    ),
    ("/v1/chat/completions", "get", "List stored chat completions", None, "application/json"),
    ("/v1/chat/completions/{completion_id}", "get", "Retrieve a stored chat completion", None, "application/json"),
    (
        "/v1/chat/completions/{completion_id}",
        "post",
        "Update a stored chat completion's metadata",
        "application/json",
        "application/json",
    ),
    ("/v1/chat/completions/{completion_id}", "delete", "Delete a stored chat completion", None, "application/json"),
    (
        "/v1/chat/completions/{completion_id}/messages",
        "get",
        "List a stored chat completion's messages",
        None,
        "application/json",
    ),
    ("/v1/completions", "post", "Create a legacy completion (relayed)", "application/json", "application/json"),
    ("/v1/embeddings", "post", "Create embeddings (relayed)", "application/json", "application/json"),
    ("/v1/moderations", "post", "Classify input (relayed)", "application/json", "application/json"),
    ("/v1/images/generations", "post", "Generate images (relayed)", "application/json", "application/json"),
    ("/v1/images/edits", "post", "Edit images (relayed)", "multipart/form-data", "application/json"),
    ("/v1/images/variations", "post", "Image variations (relayed)", "multipart/form-data", "application/json"),
    ("/v1/audio/speech", "post", "Text to speech (relayed, binary)", "application/json", "application/octet-stream"),
    ("/v1/audio/transcriptions", "post", "Transcribe audio (relayed)", "multipart/form-data", "application/json"),
    ("/v1/audio/translations", "post", "Translate audio (relayed)", "multipart/form-data", "application/json"),
    ("/v1/models", "get", "List models", None, "application/json"),
    ("/v1/models/{model}", "get", "Retrieve a model", None, "application/json"),
    ("/healthz", "get", "Health check (database reachable)", None, "application/json"),
    # Vector stores
    ("/v1/vector_stores", "get", "List vector stores", None, "application/json"),
    ("/v1/vector_stores", "post", "Create a vector store", "application/json", "application/json"),
    ("/v1/vector_stores/{vector_store_id}", "get", "Retrieve a vector store", None, "application/json"),
    ("/v1/vector_stores/{vector_store_id}", "post", "Modify a vector store", "application/json", "application/json"),
    ("/v1/vector_stores/{vector_store_id}", "delete", "Delete a vector store", None, "application/json"),
    (
        "/v1/vector_stores/{vector_store_id}/search",
        "post",
        "Search a vector store",
        "application/json",
        "application/json",
    ),
    ("/v1/vector_stores/{vector_store_id}/files", "get", "List a vector store's files", None, "application/json"),
    (
        "/v1/vector_stores/{vector_store_id}/files",
        "post",
        "Attach a file to a vector store",
        "application/json",
        "application/json",
    ),
    (
        "/v1/vector_stores/{vector_store_id}/files/{file_id}",
        "get",
        "Retrieve a vector store file",
        None,
        "application/json",
    ),
    (
        "/v1/vector_stores/{vector_store_id}/files/{file_id}",
        "post",
        "Update a vector store file's attributes",
        "application/json",
        "application/json",
    ),
    (
        "/v1/vector_stores/{vector_store_id}/files/{file_id}",
        "delete",
        "Remove a file from a vector store",
        None,
        "application/json",
    ),
    (
        "/v1/vector_stores/{vector_store_id}/files/{file_id}/content",
        "get",
        "A vector store file's parsed text",
        None,
        "application/json",
    ),
    (
        "/v1/vector_stores/{vector_store_id}/file_batches",
        "post",
        "Create a file batch",
        "application/json",
        "application/json",
    ),
    (
        "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}",
        "get",
        "Retrieve a file batch",
        None,
        "application/json",
    ),
    (
        "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel",
        "post",
        "Cancel a file batch",
        None,
        "application/json",
    ),
    (
        "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files",
        "get",
        "List a file batch's files",
        None,
        "application/json",
    ),
]


def add_proxy_endpoints(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    paths = result.setdefault("paths", {})
    for route, method, summary, request_type, response_type in PROXY_OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{route.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {"200": {"description": "OK", "content": {response_type: {"schema": _OBJECT}}}},
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", route)
        ]
        if parameters:
            operation["parameters"] = parameters
        if request_type:
            operation["requestBody"] = {"required": True, "content": {request_type: {"schema": _OBJECT}}}
        paths.setdefault(route, {})[method] = operation
        # Every /v1 operation is served under /v1/rubra as well.
        if route.startswith("/v1/"):
            paths.setdefault("/v1/rubra/" + route[len("/v1/") :], {})[method] = {
                **operation,
                "operationId": "rubra_" + operation["operationId"],
            }
    return result
