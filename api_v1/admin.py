"""The Django admin: every stored API object, to look at, never to edit. Objects belong to the API
and its run engine (a run's rows change under the agent's lease and fence), so the admin shows them
read-only. API keys show their prefix, project and name, never their digest."""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from api_v1.models import Assistant, Message, Run, RunEvent, RunStep, StoredChatCompletion, Thread
from clicky_chats.models import ApiKey, ProjectObject


class ReadOnly:
    """Mixed into ModelAdmin and inlines: view permission only."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.display(description="created", ordering="created_ns")
def created(obj: ProjectObject) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(obj.created_at, tz=datetime.UTC)


class ProjectObjectAdmin(ReadOnly, admin.ModelAdmin):
    list_filter = ("project",)
    search_fields = ("id",)
    ordering = ("-created_ns",)
    list_per_page = 50


@admin.register(Assistant)
class AssistantAdmin(ProjectObjectAdmin):
    list_display = ("id", "name", "model", "project", created)


class MessageInline(ReadOnly, admin.TabularInline):
    model = Message
    fields = ("id", "role", "status", "content", "run_id", "created_at")
    ordering = ("created_ns",)
    extra = 0
    show_change_link = False


@admin.register(Thread)
class ThreadAdmin(ProjectObjectAdmin):
    list_display = ("id", "project", created)
    inlines = (MessageInline,)


class RunStepInline(ReadOnly, admin.TabularInline):
    model = RunStep
    fields = ("id", "type", "status", "step_details", "last_error", "created_at")
    ordering = ("created_ns",)
    extra = 0
    show_change_link = True


class RunEventInline(ReadOnly, admin.TabularInline):
    model = RunEvent
    fields = ("index", "event", "data")
    ordering = ("index",)
    extra = 0


@admin.register(Run)
class RunAdmin(ProjectObjectAdmin):
    list_display = ("id", "thread", "assistant_id", "status", "project", created)
    list_filter = ("project", "status")
    list_select_related = ("thread",)
    # The engine's lease bookkeeping is shown too: it is what tells a stuck run from a slow one.
    inlines = (RunStepInline, RunEventInline)


@admin.register(RunStep)
class RunStepAdmin(ProjectObjectAdmin):
    list_display = ("id", "run", "type", "status", "project", created)
    list_filter = ("project", "type", "status")
    list_select_related = ("run",)


@admin.register(StoredChatCompletion)
class StoredChatCompletionAdmin(ProjectObjectAdmin):
    list_display = ("id", "model", "project", created)


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnly, admin.ModelAdmin):
    # The digest is left out everywhere: with the server secret it is all an attacker needs to test
    # guesses offline. Keys are made with `manage.py createapikey`, which shows the key once.
    fields = ("prefix", "project", "name", "created_at")
    readonly_fields = fields
    list_display = ("prefix", "project", "name", "created_at")
    list_filter = ("project",)
    search_fields = ("prefix", "project", "name")
    ordering = ("-created_at",)
