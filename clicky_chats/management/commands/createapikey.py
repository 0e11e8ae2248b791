from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from clicky_chats.auth import key_digest, key_prefix, new_key
from clicky_chats.models import ApiKey


class Command(BaseCommand):
    help = "Make an API key for a project. The key is printed once; only its digest is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", default="default", help="the project the key belongs to")
        parser.add_argument("--name", default="", help="a note to recognise the key by in the admin")

    def handle(self, *args: Any, **options: Any) -> None:
        project = options["project"].strip()
        if not project or len(project) > 64:
            self.stderr.write("--project must be 1 to 64 characters")
            raise SystemExit(2)
        key = new_key()
        ApiKey.objects.create(project=project, prefix=key_prefix(key), digest=key_digest(key), name=options["name"])
        self.stdout.write(key)
