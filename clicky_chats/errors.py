"""OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`, for every non-2xx answer."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from rest_framework import exceptions as drf_exceptions

log = logging.getLogger("clicky_chats.errors")

# The `type` OpenAI uses for each status; anything else 4xx is an invalid request.
_TYPE_BY_STATUS = {
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_type_for(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _TYPE_BY_STATUS.get(status, "invalid_request_error")


def envelope(
    message: str, *, status: int, param: str | None = None, code: str | None = None, type: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type or error_type_for(status),
            "param": param,
            "code": code,
        }
    }


class ApiError(Exception):
    """Raise anywhere in a request to answer with an OpenAI-style error."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return envelope(self.message, status=self.status, param=self.param, code=self.code, type=self.type)

    def response(self) -> HttpResponse:
        response = HttpResponse(orjson.dumps(self.body()), status=self.status, content_type="application/json")
        for name, value in self.headers.items():
            response[name] = value
        if self.status >= 500:
            # Our 5xx answers are final; the SDK would otherwise repeat the request twice.
            response.setdefault("x-should-retry", "false")
        return response


def not_found(noun: str, object_id: str, param: str | None = None) -> ApiError:
    return ApiError(f"No {noun} found with id '{object_id}'.", status=404, param=param)


def error_response(message: str, *, status: int, param: str | None = None, code: str | None = None) -> HttpResponse:
    return ApiError(message, status=status, param=param, code=code).response()


def _first_detail(detail: Any, path: str = "") -> tuple[str | None, str]:
    """Walk DRF's nested validation detail down to the first field and message."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            sub = f"{path}.{key}" if path else str(key)
            if key == "non_field_errors":
                sub = path
            return _first_detail(value, sub)
    if isinstance(detail, list) and detail:
        if all(isinstance(item, str) for item in detail):
            return (path or None), str(detail[0])
        for index, item in enumerate(detail):
            if item:
                return _first_detail(item, f"{path}[{index}]")
    return (path or None), str(detail)


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """DRF's exceptions, and ours raised inside DRF views, in the OpenAI envelope.

    The answer is a plain JSON HttpResponse, not a DRF Response: a Response is rendered by the
    view's own renderer, which would put the envelope in YAML on the schema view and in HTML on
    the docs page.
    """
    if isinstance(exc, ApiError):
        return exc.response()
    # Django's own, as DRF's default handler converts them (get_object_or_404, permission checks).
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message = _first_detail(exc.detail)
        text = f"Invalid value for '{param}': {message}" if param else message
        return error_response(text, status=400, param=param, code="invalid_value")
    if isinstance(exc, drf_exceptions.ParseError):
        return error_response(f"We could not parse the JSON body of your request. {exc.detail}", status=400)
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return error_response(str(exc.detail), status=415)
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        request = context.get("request")
        method = request.method if request is not None else "this method"
        return error_response(f"Method {method} is not allowed on this path.", status=405)
    if isinstance(exc, drf_exceptions.NotFound):
        return error_response(str(exc.detail), status=404)
    if isinstance(exc, drf_exceptions.APIException):
        return error_response(str(exc.detail), status=exc.status_code)
    return None  # anything else is a bug: the middleware logs it and answers a generic 500
