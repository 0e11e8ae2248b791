from __future__ import annotations

from django.apps import AppConfig


class ApiRubraConfig(AppConfig):
    name = "api_rubra"
    verbose_name = "OpenAI API with extensions (/v1/rubra)"
