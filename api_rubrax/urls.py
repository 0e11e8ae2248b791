"""/v1/rubra/x: our own APIs (x-tools, thread listing, event streams) arrive with issue 5."""

from __future__ import annotations

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
