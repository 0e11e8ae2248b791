from __future__ import annotations

from django.db import models

from clicky_chats.models import ProjectObject


class XTool(ProjectObject):
    """A server-side tool an operator registers: a gptscript tool set, or an MCP server."""

    name = models.CharField(max_length=256)
    description = models.TextField(default="")
    type = models.CharField(max_length=16, default="gptscript")
    url = models.URLField(max_length=2048, null=True)
    contents = models.TextField(null=True)
    subtool = models.CharField(max_length=256, null=True)
    env_vars = models.JSONField(default=list)
    requires_confirmation = models.BooleanField(default=False)
    server_label = models.CharField(max_length=256, null=True)
    server_url = models.URLField(max_length=2048, null=True)
    allowed_tools = models.JSONField(null=True)

    class Meta:
        indexes = [models.Index(fields=["project", "created_ns"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class ToolRun(ProjectObject):
    """A tool run outside any assistant (POST /tools/run)."""

    tool_id = models.CharField(max_length=64, null=True)
    spec = models.JSONField()
    input = models.JSONField(null=True)
    status = models.CharField(max_length=32)
    output = models.TextField(null=True)
    error = models.TextField(null=True)

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class ToolEvent(models.Model):
    """One event of a tool call (callStart, callChat, callProgress, callConfirm, callFinish), for a
    run step's tool calls or a tool run, in order."""

    subject_id = models.CharField(max_length=64)
    index = models.IntegerField()
    type = models.CharField(max_length=32)
    data = models.JSONField()
    time = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["subject_id", "index"], name="tool_event_index_unique")]

    def __str__(self) -> str:
        return f"{self.subject_id}#{self.index} {self.type}"
