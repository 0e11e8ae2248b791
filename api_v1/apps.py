from __future__ import annotations

from django.apps import AppConfig


class ApiV1Config(AppConfig):
    name = "api_v1"
    verbose_name = "OpenAI API (/v1)"
