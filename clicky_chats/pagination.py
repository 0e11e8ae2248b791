"""OpenAI's cursor lists: `{object: "list", data, first_id, last_id, has_more}` with limit, order,
after and before. Rows sort by (created_ns, id), so cursors stay exact within one second."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import models
from django.db.models import Q

from clicky_chats.validation import invalid

M = TypeVar("M", bound=models.Model)
T = TypeVar("T")


@dataclass(frozen=True)
class PageParams:
    limit: int
    order: str
    after: str | None
    before: str | None


def page_params(
    query: Mapping[str, str], *, default_order: str = "desc", max_limit: int = 100, default_limit: int = 20
) -> PageParams:
    raw_limit = query.get("limit")
    limit = default_limit
    if raw_limit not in (None, ""):
        try:
            limit = int(raw_limit)
        except ValueError:
            raise invalid("limit", f"expected an integer, got '{raw_limit}'.", "invalid_type") from None
        if not 1 <= limit <= max_limit:
            raise invalid("limit", f"must be between 1 and {max_limit}, got {limit}.")
    order = query.get("order") or default_order
    if order not in ("asc", "desc"):
        raise invalid("order", f"'{order}' is not one of 'asc', 'desc'.")
    return PageParams(limit, order, query.get("after") or None, query.get("before") or None)


def page_envelope(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def paginate(
    queryset: models.QuerySet[M], params: PageParams, render: Callable[[M], dict[str, Any]], *, id_field: str = "pk"
) -> dict[str, Any]:
    """One page of a project-scoped queryset. `id_field` holds the public id the cursors name, when
    that is not the primary key (a vector store file's id is its file's id)."""
    descending = params.order == "desc"
    queryset = _after(queryset, params.after, "after", older=descending, id_field=id_field)
    # `before` walks the other way from its anchor; fetch in reverse order, then flip back.
    reverse = params.before is not None
    queryset = _after(queryset, params.before, "before", older=not descending, id_field=id_field)
    walk_descending = descending != reverse
    ordering = ("-created_ns", f"-{id_field}") if walk_descending else ("created_ns", id_field)
    rows = list(queryset.order_by(*ordering)[: params.limit + 1])
    has_more = len(rows) > params.limit
    rows = rows[: params.limit]
    if reverse:
        rows.reverse()
    return page_envelope([render(row) for row in rows], has_more)


def _after(
    queryset: models.QuerySet[M], cursor: str | None, param: str, *, older: bool, id_field: str = "pk"
) -> models.QuerySet[M]:
    if cursor is None:
        return queryset
    anchor = queryset.filter(**{id_field: cursor}).values_list("created_ns", flat=True).first()
    if anchor is None:
        raise invalid(param, f"no object with id '{cursor}' to page from.")
    if older:
        return queryset.filter(Q(created_ns__lt=anchor) | Q(created_ns=anchor, **{f"{id_field}__lt": cursor}))
    return queryset.filter(Q(created_ns__gt=anchor) | Q(created_ns=anchor, **{f"{id_field}__gt": cursor}))


def paginate_sequence(items: Sequence[dict[str, Any]], params: PageParams) -> dict[str, Any]:
    """One page of an in-memory list already in ascending order (e.g. a stored completion's messages)."""
    ordered = list(items) if params.order == "asc" else list(reversed(items))
    position = {item["id"]: index for index, item in enumerate(ordered)}
    lower, end = 0, len(ordered)
    for param, cursor in (("after", params.after), ("before", params.before)):
        if cursor is not None and cursor not in position:
            raise invalid(param, f"no object with id '{cursor}' to page from.")
    if params.after is not None:
        lower = position[params.after] + 1
    if params.before is not None:
        end = position[params.before]
        start = max(lower, end - params.limit)
        return page_envelope(ordered[start:end], start > lower)
    return page_envelope(ordered[lower : lower + params.limit], lower + params.limit < end)
