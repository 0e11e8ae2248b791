from __future__ import annotations

from django.apps import AppConfig


class ApiRubraxConfig(AppConfig):
    name = "api_rubrax"
    verbose_name = "clicky-chats' own APIs (/v1/rubra/x)"
