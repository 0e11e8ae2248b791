"""Files and uploads over DRF viewsets. Views stay thin: they parse, call the flow in
api_v1/files.py, and render. Multipart bodies are received by `files.CheckedFileUpload`, which
streams the one file field to a temporary file and refuses a bad one while it arrives."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse, HttpRequest
from rest_framework.parsers import MultiPartParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from api_v1 import files as flows
from api_v1.assistant_views import ProjectViewSet, body_of
from clicky_chats.pagination import page_params, paginate

# `files.list` asks for every file at once unless told otherwise.
FILES_PAGE_LIMIT = 10000


class MultipartFileViewSet(ProjectViewSet):
    """A viewset whose POST body is multipart with one streamed file field, `file_field`."""

    parser_classes = [MultiPartParser]
    file_field = "file"
    check_file_type = True

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        if request.method == "POST":
            flows.receive_file_field(request, self.file_field, check_type=self.check_file_type)
        return super().initialize_request(request, *args, **kwargs)

    @staticmethod
    def close_files(request: Request) -> None:
        for uploaded in request.FILES.values():
            uploaded.close()  # temporary files go now, not at the end of the response


class FileViewSet(MultipartFileViewSet):
    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        # `files.content` sends `Accept: application/binary`: answers here are JSON or the raw bytes,
        # never refused for the Accept header.
        return super().perform_content_negotiation(request, force=True)  # type: ignore[no-any-return]

    def list(self, request: Request) -> Response:
        query = request.query_params
        params = page_params(query, max_limit=FILES_PAGE_LIMIT, default_limit=FILES_PAGE_LIMIT)
        return Response(
            paginate(flows.list_filter(self.project(request), query.get("purpose")), params, flows.file_object)
        )

    def create(self, request: Request) -> Response:
        try:
            created = flows.file_create(self.project(request), request.data, request.FILES)
        finally:
            self.close_files(request)
        return Response(flows.file_object(created))

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(flows.file_object(flows.get_file(self.project(request), pk)))

    def destroy(self, request: Request, pk: str) -> Response:
        flows.file_delete(self.project(request), pk)
        return Response({"id": pk, "object": "file", "deleted": True})

    def content(self, request: Request, pk: str) -> FileResponse:
        return flows.content_response(flows.get_file(self.project(request), pk))


class UploadViewSet(ProjectViewSet):
    def create(self, request: Request) -> Response:
        return Response(flows.upload_object(flows.upload_create(self.project(request), body_of(request))))

    def complete(self, request: Request, pk: str) -> Response:
        return Response(flows.upload_object(flows.upload_complete(self.project(request), pk, body_of(request))))

    def cancel(self, request: Request, pk: str) -> Response:
        return Response(flows.upload_object(flows.upload_cancel(self.project(request), pk)))


class UploadPartViewSet(MultipartFileViewSet):
    file_field = "data"
    # A part is any slice of the file: its type and encoding are checked on the whole, at complete.
    check_file_type = False

    def create(self, request: Request, pk: str) -> Response:
        try:
            part = flows.part_create(self.project(request), pk, request.data, request.FILES)
        finally:
            self.close_files(request)
        return Response(flows.part_object(part))
