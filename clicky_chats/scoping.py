"""The one path to stored objects: every lookup and list is filtered by the caller's project.

Another project's object answers 404 exactly like a missing one, so ids leak nothing.
"""

from __future__ import annotations

from typing import TypeVar

from django.db import models

from clicky_chats.errors import not_found

M = TypeVar("M", bound=models.Model)


def scoped(model: type[M], project: str) -> models.QuerySet[M]:
    if not project:
        raise RuntimeError("a project-scoped query was made without a project")  # fail closed
    return model._default_manager.filter(project=project)


def get_scoped(model: type[M], project: str, object_id: str, *, noun: str, param: str | None = None) -> M:
    found = scoped(model, project).filter(pk=object_id).first()
    if found is None:
        raise not_found(noun, object_id, param)
    return found
