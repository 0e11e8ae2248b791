"""Vector stores, their files, file batches and search. Plain async views: search calls the
upstream for the query's embedding; the rest parse, call a flow in api_v1/vector_stores.py, and
render."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from agents import search
from api_v1 import vector_stores as flows
from api_v1.models import FileBatch, VectorStore, VectorStoreFile
from clicky_chats import validation as v
from clicky_chats.errors import ApiError
from clicky_chats.pagination import page_params, paginate
from clicky_chats.views import api_endpoint, json_ok

# Sent while something is still being ingested, as OpenAI does: the SDK's poll helpers
# (files.poll, file_batches.poll) then look every 200 ms instead of every second.
POLL_AFTER_MS = "200"


def tier_of(request: HttpRequest) -> str:
    return "rubra" if getattr(request, "api_tier", "v1") == "rubra" else "v1"


def _polled(data: dict[str, Any], in_progress: bool) -> HttpResponse:
    response = json_ok(data)
    if in_progress:
        response["openai-poll-after-ms"] = POLL_AFTER_MS
    return response


def store_file_response(store_file: VectorStoreFile) -> HttpResponse:
    return _polled(flows.render_store_file(store_file), store_file.status == "in_progress")


def batch_response(batch: FileBatch) -> HttpResponse:
    data = flows.render_batch(batch)
    return _polled(data, data["file_counts"]["in_progress"] > 0)


@api_endpoint("GET", "POST")
async def stores(request: HttpRequest) -> HttpResponseBase:
    project, tier = request.project, tier_of(request)
    if request.method == "GET":
        params = page_params(request.GET)

        def page() -> dict[str, Any]:
            queryset = flows.stores_with_counts(flows.visible_stores(project))
            return paginate(queryset, params, lambda store: flows.render_store(store, tier))

        return json_ok(await sync_to_async(page)())
    body = v.read_json(request)
    store = await sync_to_async(flows.store_create)(project, body)
    return json_ok(flows.render_store(store, tier))


@api_endpoint("GET", "POST", "DELETE")
async def store_detail(request: HttpRequest, vector_store_id: str) -> HttpResponseBase:
    project, tier = request.project, tier_of(request)
    if request.method == "DELETE":
        await sync_to_async(flows.store_delete)(project, vector_store_id)
        return json_ok({"id": vector_store_id, "object": "vector_store.deleted", "deleted": True})
    if request.method == "POST":
        store = await sync_to_async(flows.store_update)(project, vector_store_id, v.read_json(request))
    else:
        store = await sync_to_async(lambda: flows.with_counts(flows.get_store(project, vector_store_id)))()
    return json_ok(flows.render_store(store, tier))


SEARCH_RULES: dict[str, v.Rule] = {
    "query": v.any_of(
        v.string(nonempty=True),
        v.array(min_items=1, max_items=10, items=v.string(nonempty=True)),
        expected="a non-empty string or an array of non-empty strings",
    ),
    "max_num_results": v.integer(minimum=1, maximum=50),
    "rewrite_query": v.boolean(),
    "ranking_options": v.obj(),
}


def _check_search(project: str, vector_store_id: str, body: dict[str, Any]) -> dict[str, Any]:
    v.check(body, SEARCH_RULES, required=("query",))
    ranking = body.get("ranking_options") or {}
    v.check(
        ranking,
        {"ranker": v.string(enum=search.RANKERS), "score_threshold": v.number(minimum=0, maximum=1)},
        prefix="ranking_options.",
    )
    filters = search.check_filters(body["filters"]) if body.get("filters") is not None else None
    store: VectorStore = flows.get_store(project, vector_store_id)
    if flows.is_expired(store):
        raise ApiError(f"Vector store {vector_store_id} has expired and cannot be searched.", param="vector_store_id")
    queries = [body["query"]] if isinstance(body["query"], str) else list(body["query"])
    if body.get("rewrite_query"):
        queries = [search.rewrite_query(query) for query in queries]
    return {
        "queries": queries,
        "max_num_results": body.get("max_num_results") or 10,
        "score_threshold": float(ranking.get("score_threshold") or 0.0),
        "ranker": ranking.get("ranker") or "auto",
        "filters": filters,
    }


@api_endpoint("POST")
async def store_search(request: HttpRequest, vector_store_id: str) -> HttpResponseBase:
    project = request.project
    checked = await sync_to_async(_check_search)(project, vector_store_id, v.read_json(request))
    try:
        results = await search.search_stores(
            project,
            [vector_store_id],
            checked["queries"],
            checked["max_num_results"],
            checked["score_threshold"],
            checked["filters"],
            ranker=checked["ranker"],
        )
    except search.EmbeddingError as exc:
        raise ApiError(exc.message, status=exc.status, code="upstream_error") from None
    return json_ok(
        {
            "object": "vector_store.search_results.page",
            "search_query": checked["queries"],
            "data": results,
            "has_more": False,
            "next_page": None,
        }
    )


def _store_file_page(project: str, vector_store_id: str, query: Any, batch_id: str | None = None) -> dict[str, Any]:
    params = page_params(query)
    files = flows.store_files(project, vector_store_id, query.get("filter") or None, batch_id)
    return paginate(files, params, flows.render_store_file, id_field="file_id")


@api_endpoint("GET", "POST")
async def store_files(request: HttpRequest, vector_store_id: str) -> HttpResponseBase:
    project = request.project
    if request.method == "GET":
        return json_ok(await sync_to_async(_store_file_page)(project, vector_store_id, request.GET))
    store_file = await sync_to_async(flows.store_file_create)(project, vector_store_id, v.read_json(request))
    return store_file_response(store_file)


@api_endpoint("GET", "POST", "DELETE")
async def store_file_detail(request: HttpRequest, vector_store_id: str, file_id: str) -> HttpResponseBase:
    project = request.project
    if request.method == "DELETE":
        await sync_to_async(flows.store_file_delete)(project, vector_store_id, file_id)
        return json_ok({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})
    if request.method == "POST":
        body = v.read_json(request)
        store_file = await sync_to_async(flows.store_file_update)(project, vector_store_id, file_id, body)
    else:
        store_file = await sync_to_async(flows.get_store_file)(project, vector_store_id, file_id)
    return store_file_response(store_file)


@api_endpoint("GET")
async def store_file_content(request: HttpRequest, vector_store_id: str, file_id: str) -> HttpResponseBase:
    page = await sync_to_async(flows.file_content_page)(
        request.project, vector_store_id, file_id, request.GET.get("page")
    )
    return json_ok(page)


@api_endpoint("POST")
async def file_batches(request: HttpRequest, vector_store_id: str) -> HttpResponseBase:
    batch = await sync_to_async(flows.batch_create)(request.project, vector_store_id, v.read_json(request))
    return batch_response(batch)


@api_endpoint("GET")
async def file_batch_detail(request: HttpRequest, vector_store_id: str, batch_id: str) -> HttpResponseBase:
    project = request.project
    batch = await sync_to_async(lambda: flows.batch_with_counts(flows.get_batch(project, vector_store_id, batch_id)))()
    return batch_response(batch)


@api_endpoint("POST")
async def file_batch_cancel(request: HttpRequest, vector_store_id: str, batch_id: str) -> HttpResponseBase:
    batch = await sync_to_async(flows.batch_cancel)(request.project, vector_store_id, batch_id)
    return batch_response(batch)


@api_endpoint("GET")
async def file_batch_files(request: HttpRequest, vector_store_id: str, batch_id: str) -> HttpResponseBase:
    page = await sync_to_async(_store_file_page)(request.project, vector_store_id, request.GET, batch_id)
    return json_ok(page)
