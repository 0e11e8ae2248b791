"""The endpoints we relay to the model upstream: plain async views, no DRF, so streams flow chunk
by chunk and the hot path adds about a millisecond."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from api_v1 import proxy_rules as rules
from api_v1 import stored_completions as stored
from clicky_chats import upstream
from clicky_chats import validation as v
from clicky_chats.errors import ApiError
from clicky_chats.pagination import page_params
from clicky_chats.views import api_endpoint, json_ok


async def relay_json_request(
    request: HttpRequest,
    path: str,
    body: dict[str, Any],
    raw: bytes,
) -> HttpResponseBase:
    """Forwards a validated JSON body as the client sent it; streams when it asked to."""
    streaming = body.get("stream") is True
    answer = await upstream.open_upstream("POST", path, body=raw, content_type="application/json", streaming=streaming)
    if answer.status >= 400:
        return await upstream.error_response(answer)
    if streaming:
        return upstream.streaming_response(answer, upstream.relay_events(answer))
    content, _parsed = await upstream.read_json_answer(answer)
    return upstream.json_response(content, answer)


# --- chat completions --------------------------------------------------------------------------


@api_endpoint("POST", "GET")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    if request.method == "GET":
        return await list_chat_completions(request)
    body = v.read_json(request)
    v.check(body, rules.CHAT, required=("model", "messages"))
    rules.check_stream_options(body)
    if body.get("store") is not True:
        return await relay_json_request(request, "chat/completions", body, request.body)
    return await _chat_completion_stored(request, body)


async def _chat_completion_stored(request: HttpRequest, body: dict[str, Any]) -> HttpResponseBase:
    project = request.project
    streaming = body.get("stream") is True
    answer = await upstream.open_upstream(
        "POST", "chat/completions", body=request.body, content_type="application/json", streaming=streaming
    )
    if answer.status >= 400:
        return await upstream.error_response(answer)
    if not streaming:
        content, completion = await upstream.read_json_answer(answer)
        stored_id = await sync_to_async(stored.store_completion)(
            project=project, request_body=body, completion=completion
        )
        if stored_id != completion.get("id"):
            content = orjson.dumps({**completion, "id": stored_id})
        return upstream.json_response(content, answer)
    stream = stored.StoredChatStream(project=project, request_body=body)
    return upstream.streaming_response(answer, upstream.relay_events(answer, stream.on_event, at_end=stream.save))


async def list_chat_completions(request: HttpRequest) -> HttpResponse:
    params = page_params(request.GET, default_order="asc")
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.GET.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    page = await sync_to_async(stored.list_completions)(
        request.project, params, model=request.GET.get("model"), metadata=metadata
    )
    return json_ok(page)


@api_endpoint("GET", "POST", "DELETE")
async def chat_completion_detail(request: HttpRequest, completion_id: str) -> HttpResponse:
    project = request.project
    if request.method == "GET":
        found = await sync_to_async(stored.get_completion)(project, completion_id)
        return json_ok(stored.render(found))
    if request.method == "DELETE":
        return json_ok(await sync_to_async(stored.delete_completion)(project, completion_id))
    body = v.read_json(request)
    if "metadata" not in body:
        raise ApiError("Missing required parameter: 'metadata'.", param="metadata", code="missing_required_parameter")
    v.check(body, {"metadata": v.metadata()})
    # The spec's Metadata is an object or null; null clears it.
    metadata = body["metadata"] or {}
    return json_ok(await sync_to_async(stored.update_metadata)(project, completion_id, metadata))


@api_endpoint("GET")
async def chat_completion_messages(request: HttpRequest, completion_id: str) -> HttpResponse:
    params = page_params(request.GET, default_order="asc")
    return json_ok(await sync_to_async(stored.list_messages)(request.project, completion_id, params))


# --- other JSON relays -------------------------------------------------------------------------


@api_endpoint("POST")
async def completions(request: HttpRequest) -> HttpResponseBase:
    body = v.read_json(request)
    v.check(body, rules.COMPLETIONS, required=("model", "prompt"))
    rules.check_stream_options(body)
    return await relay_json_request(request, "completions", body, request.body)


@api_endpoint("POST")
async def moderations(request: HttpRequest) -> HttpResponseBase:
    body = v.read_json(request)
    v.check(body, rules.MODERATIONS, required=("input",))
    return await relay_json_request(request, "moderations", body, request.body)


@api_endpoint("POST")
async def image_generations(request: HttpRequest) -> HttpResponseBase:
    body = v.read_json(request)
    v.check(body, rules.IMAGE_GENERATIONS, required=("prompt",))
    return await relay_json_request(request, "images/generations", body, request.body)


def _floats_to_base64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


@api_endpoint("POST")
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    body = v.read_json(request)
    v.check(body, rules.EMBEDDINGS, required=("model", "input"))
    answer = await upstream.open_upstream(
        "POST", "embeddings", body=request.body, content_type="application/json", streaming=False
    )
    if answer.status >= 400:
        return await upstream.error_response(answer)
    content, parsed = await upstream.read_json_answer(answer)
    data = parsed.get("data")
    if body.get("encoding_format") == "base64" and isinstance(data, list):
        # Some upstreams (Ollama, older llama.cpp) ignore encoding_format and send floats; the
        # client asked for base64 float32, so it gets base64 float32.
        if any(isinstance(item, dict) and isinstance(item.get("embedding"), list) for item in data):
            for item in data:
                if isinstance(item, dict) and isinstance(item.get("embedding"), list):
                    item["embedding"] = _floats_to_base64(item["embedding"])
            content = orjson.dumps(parsed)
    return upstream.json_response(content, answer)


# --- multipart and binary relays ---------------------------------------------------------------


def _require_content_type(request: HttpRequest, *accepted: str) -> None:
    content_type = request.content_type or ""
    if not any(content_type.startswith(kind) for kind in accepted):
        raise ApiError(
            f"Unsupported content type '{content_type or '(none)'}'; send {' or '.join(accepted)}.",
            status=415,
            code="unsupported_media_type",
        )


async def _relay_upload(request: HttpRequest, path: str, *accepted: str) -> HttpResponseBase:
    _require_content_type(request, *accepted)
    return await upstream.relay_raw("POST", path, body=request.body, content_type=request.META.get("CONTENT_TYPE"))


@api_endpoint("POST")
async def image_edits(request: HttpRequest) -> HttpResponseBase:
    return await _relay_upload(request, "images/edits", "multipart/form-data", "application/json")


@api_endpoint("POST")
async def image_variations(request: HttpRequest) -> HttpResponseBase:
    return await _relay_upload(request, "images/variations", "multipart/form-data")


@api_endpoint("POST")
async def audio_transcriptions(request: HttpRequest) -> HttpResponseBase:
    return await _relay_upload(request, "audio/transcriptions", "multipart/form-data")


@api_endpoint("POST")
async def audio_translations(request: HttpRequest) -> HttpResponseBase:
    return await _relay_upload(request, "audio/translations", "multipart/form-data")


@api_endpoint("POST")
async def audio_speech(request: HttpRequest) -> HttpResponseBase:
    body = v.read_json(request)
    v.check(body, rules.SPEECH, required=("model", "input", "voice"))
    return await upstream.relay_raw("POST", "audio/speech", body=request.body, content_type="application/json")


# --- models ------------------------------------------------------------------------------------

MODELS_CACHE_SECONDS = 60.0
_models_cache: dict[str, Any] = {"until": 0.0, "data": None}


def _configured_models() -> list[dict[str, Any]]:
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": "clicky-chats"} for name in settings.CONFIG.models
    ]


def _cached_upstream_models() -> list[dict[str, Any]] | None:
    if _models_cache["until"] > time.monotonic():
        return _models_cache["data"]
    return None


async def _fetch_upstream_models() -> list[dict[str, Any]]:
    answer = await upstream.open_upstream("GET", "models", body=None, content_type=None, streaming=False)
    if answer.status >= 400:
        raise upstream.UpstreamFailed(await upstream.error_response(answer))
    _content, parsed = await upstream.read_json_answer(answer)
    data = parsed.get("data")
    if not isinstance(data, list):
        raise ApiError(
            "The model upstream's /models answer has no data list.", status=502, code="upstream_bad_response"
        )
    models = [_model_object(item) for item in data if isinstance(item, dict) and item.get("id")]
    _models_cache.update(until=time.monotonic() + MODELS_CACHE_SECONDS, data=models)
    return models


def _model_object(item: dict[str, Any]) -> dict[str, Any]:
    # Some upstreams leave out `created` or `owned_by`, which the SDK's Model type requires.
    return {
        **item,
        "object": "model",
        "created": item.get("created") or 0,
        "owned_by": item.get("owned_by") or "upstream",
    }


def _find_model(models: list[dict[str, Any]], model_id: str) -> dict[str, Any] | None:
    return next((item for item in models if item["id"] == model_id), None)


@api_endpoint("GET")
async def models_list(request: HttpRequest) -> HttpResponse:
    if settings.CONFIG.models:
        return json_ok({"object": "list", "data": _configured_models()})
    models = _cached_upstream_models()
    if models is None:
        models = await _fetch_upstream_models()
    return json_ok({"object": "list", "data": models})


@api_endpoint("GET")
async def model_detail(request: HttpRequest, model: str) -> HttpResponse:
    if settings.CONFIG.models:
        found = _find_model(_configured_models(), model)
    else:
        cached = _cached_upstream_models()
        found = _find_model(cached if cached is not None else await _fetch_upstream_models(), model)
        if found is None and cached is not None:
            # A model pulled into the upstream since the list was cached must not be a 404 for a minute.
            found = _find_model(await _fetch_upstream_models(), model)
    if found is None:
        raise ApiError(f"The model '{model}' does not exist", status=404, param="model", code="model_not_found")
    return json_ok(found)
