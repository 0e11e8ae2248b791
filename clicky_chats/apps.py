from __future__ import annotations

from django.apps import AppConfig


class ClickyChatsConfig(AppConfig):
    name = "clicky_chats"
    verbose_name = "clicky-chats"
