"""Assistants, threads and messages over DRF viewsets. Views stay thin: they parse, call the flow
in api_v1/threads.py, and render."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from api_v1 import dialect
from api_v1 import threads as flows
from api_v1.models import Assistant, Message, Thread
from clicky_chats.pagination import page_params, paginate
from clicky_chats.scoping import get_scoped, scoped
from clicky_chats.validation import check_no_nul, invalid


def body_of(request: Request) -> dict[str, Any]:
    data = request.data  # parsed by validation.JsonParser (orjson), which refuses nesting past 1024
    if not isinstance(data, dict):
        raise invalid("body", "the request body must be a JSON object.", "invalid_type")
    check_no_nul(data)
    return dict(data)


class ProjectViewSet(viewsets.ViewSet):
    """Every viewset reads and writes only the caller's project (request.project)."""

    lookup_value_regex = "[^/]+"
    # Described by clicky_chats/schema.py's table; drf-spectacular could only guess without serializers.
    schema = None

    def project(self, request: Request) -> str:
        return request.project  # type: ignore[attr-defined,no-any-return]

    def tier(self, request: Request) -> str:
        return "rubra" if getattr(request, "api_tier", "v1") == "rubra" else "v1"

    def version(self, request: Request) -> str:
        """The Assistants dialect, "v1" or "v2" (api_v1/dialect.py)."""
        return dialect.version_of(request)


class AssistantViewSet(ProjectViewSet):
    def list(self, request: Request) -> Response:
        tier, version = self.tier(request), self.version(request)
        page = paginate(
            scoped(Assistant, self.project(request)),
            page_params(request.query_params),
            lambda obj: dialect.assistant(obj, tier, version),
        )
        return Response(page)

    def create(self, request: Request) -> Response:
        tier, version = self.tier(request), self.version(request)
        created = flows.assistant_create(self.project(request), body_of(request), tier, version)
        return Response(dialect.assistant(created, tier, version))

    def retrieve(self, request: Request, pk: str) -> Response:
        found = get_scoped(Assistant, self.project(request), pk, noun="assistant")
        return Response(dialect.assistant(found, self.tier(request), self.version(request)))

    def update(self, request: Request, pk: str) -> Response:
        tier, version = self.tier(request), self.version(request)
        updated = flows.assistant_update(self.project(request), pk, body_of(request), tier, version)
        return Response(dialect.assistant(updated, tier, version))

    def destroy(self, request: Request, pk: str) -> Response:
        flows.assistant_delete(self.project(request), pk)
        return Response({"id": pk, "object": "assistant.deleted", "deleted": True})


class ThreadViewSet(ProjectViewSet):
    def create(self, request: Request) -> Response:
        project, version = self.project(request), self.version(request)
        body = body_of(request)
        if version == dialect.V1:
            body = dialect.v1_thread_body(project, body)
        cleaned = flows.check_thread_body(body)
        return Response(dialect.thread(flows.thread_create(project, cleaned), version))

    def retrieve(self, request: Request, pk: str) -> Response:
        found = get_scoped(Thread, self.project(request), pk, noun="thread")
        return Response(dialect.thread(found, self.version(request)))

    def update(self, request: Request, pk: str) -> Response:
        version = self.version(request)
        body = body_of(request)
        if version == dialect.V1:
            body.pop("tool_resources", None)
        return Response(dialect.thread(flows.thread_update(self.project(request), pk, body), version))

    def destroy(self, request: Request, pk: str) -> Response:
        with transaction.atomic():
            get_scoped(Thread, self.project(request), pk, noun="thread").delete()
        return Response({"id": pk, "object": "thread.deleted", "deleted": True})


class MessageViewSet(ProjectViewSet):
    def list(self, request: Request, thread_id: str) -> Response:
        version = self.version(request)
        thread = get_scoped(Thread, self.project(request), thread_id, noun="thread")
        messages = Message.objects.filter(thread=thread)
        run_id = request.query_params.get("run_id")
        if run_id:
            messages = messages.filter(run_id=run_id)
        return Response(
            paginate(messages, page_params(request.query_params), lambda obj: dialect.message(obj, version))
        )

    def create(self, request: Request, thread_id: str) -> Response:
        project, version = self.project(request), self.version(request)
        body = body_of(request)
        if version == dialect.V1:
            body = dialect.v1_message_body(project, body)
        return Response(dialect.message(flows.message_create(project, thread_id, body), version))

    def retrieve(self, request: Request, thread_id: str, pk: str) -> Response:
        found = flows.get_message(self.project(request), thread_id, pk)
        return Response(dialect.message(found, self.version(request)))

    def update(self, request: Request, thread_id: str, pk: str) -> Response:
        updated = flows.message_update(self.project(request), thread_id, pk, body_of(request))
        return Response(dialect.message(updated, self.version(request)))

    def destroy(self, request: Request, thread_id: str, pk: str) -> Response:
        flows.get_message(self.project(request), thread_id, pk).delete()
        return Response({"id": pk, "object": "thread.message.deleted", "deleted": True})
