from __future__ import annotations

from django.db import models

from clicky_chats.models import ProjectObject


class StoredChatCompletion(ProjectObject):
    """A chat completion made with `store: true`: the request as sent and the answer as received
    (assembled from its chunks when streamed)."""

    model = models.CharField(max_length=256)
    metadata = models.JSONField(default=dict)
    request = models.JSONField()
    completion = models.JSONField()

    class Meta:
        indexes = [models.Index(fields=["project", "created_ns"]), models.Index(fields=["project", "model"])]

    def __str__(self) -> str:
        return self.id


class Assistant(ProjectObject):
    name = models.CharField(max_length=256, null=True)
    description = models.TextField(null=True)
    model = models.CharField(max_length=256)
    instructions = models.TextField(null=True)
    tools = models.JSONField(default=list)
    tool_resources = models.JSONField(null=True)
    metadata = models.JSONField(default=dict)
    temperature = models.FloatField(null=True)
    top_p = models.FloatField(null=True)
    response_format = models.JSONField(null=True)
    reasoning_effort = models.CharField(max_length=32, null=True)
    # Extension (/v1/rubra): x-tool ids or builtin names the assistant may call.
    gptscript_tools = models.JSONField(null=True)

    class Meta:
        indexes = [models.Index(fields=["project", "created_ns"])]

    def __str__(self) -> str:
        return f"{self.name or self.id}"


class Thread(ProjectObject):
    tool_resources = models.JSONField(null=True)
    metadata = models.JSONField(default=dict)

    class Meta:
        indexes = [models.Index(fields=["project", "created_ns"])]

    def __str__(self) -> str:
        return self.id


class Message(ProjectObject):
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="messages")
    status = models.CharField(max_length=16)
    incomplete_details = models.JSONField(null=True)
    completed_at = models.BigIntegerField(null=True)
    incomplete_at = models.BigIntegerField(null=True)
    role = models.CharField(max_length=16)
    content = models.JSONField(default=list)
    assistant_id = models.CharField(max_length=64, null=True)
    run_id = models.CharField(max_length=64, null=True, db_index=True)
    attachments = models.JSONField(null=True)
    metadata = models.JSONField(default=dict)

    class Meta:
        indexes = [models.Index(fields=["thread", "created_ns"])]

    def __str__(self) -> str:
        return self.id


class Run(ProjectObject):
    ACTIVE = ("queued", "in_progress", "requires_action", "cancelling", "requires_confirmation")
    TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")

    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="runs")
    assistant_id = models.CharField(max_length=64)
    status = models.CharField(max_length=32, db_index=True)
    required_action = models.JSONField(null=True)
    last_error = models.JSONField(null=True)
    expires_at = models.BigIntegerField(null=True)
    started_at = models.BigIntegerField(null=True)
    cancelled_at = models.BigIntegerField(null=True)
    failed_at = models.BigIntegerField(null=True)
    completed_at = models.BigIntegerField(null=True)
    incomplete_details = models.JSONField(null=True)
    model = models.CharField(max_length=256)
    instructions = models.TextField(default="")
    tools = models.JSONField(default=list)
    metadata = models.JSONField(default=dict)
    usage = models.JSONField(null=True)
    temperature = models.FloatField(null=True)
    top_p = models.FloatField(null=True)
    # BIGINT: the requests' integers may be anything a 64-bit integer holds (validation.integer).
    max_prompt_tokens = models.BigIntegerField(null=True)
    max_completion_tokens = models.BigIntegerField(null=True)
    truncation_strategy = models.JSONField(null=True)
    tool_choice = models.JSONField(null=True)
    parallel_tool_calls = models.BooleanField(default=True)
    response_format = models.JSONField(null=True)
    reasoning_effort = models.CharField(max_length=32, null=True)
    # The engine's bookkeeping, never rendered. An agent holds a run while lease_expires_at is in
    # the future; every write it makes names `fence`, which each new claim increments, so a stale
    # agent (paused past its lease, or partitioned) cannot overwrite its successor's work.
    lease_owner = models.CharField(max_length=128, null=True)
    lease_expires_at = models.FloatField(null=True)
    fence = models.BigIntegerField(default=0)
    attempts = models.IntegerField(default=0)
    # Where the run's events stand; the next event gets this index.
    next_event_index = models.IntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(fields=["thread", "created_ns"]),
            models.Index(fields=["status", "lease_expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class RunStep(ProjectObject):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    thread_id = models.CharField(max_length=64)
    assistant_id = models.CharField(max_length=64)
    type = models.CharField(max_length=32)
    status = models.CharField(max_length=16)
    step_details = models.JSONField()
    last_error = models.JSONField(null=True)
    expired_at = models.BigIntegerField(null=True)
    cancelled_at = models.BigIntegerField(null=True)
    failed_at = models.BigIntegerField(null=True)
    completed_at = models.BigIntegerField(null=True)
    metadata = models.JSONField(default=dict)
    usage = models.JSONField(null=True)

    class Meta:
        indexes = [models.Index(fields=["run", "created_ns"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.type}, {self.status})"


class RunEvent(models.Model):
    """One server-sent event of a run, stored in order so any process can stream it and a client
    can re-attach later from an index."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    index = models.IntegerField()
    event = models.CharField(max_length=64)
    data = models.JSONField()
    created_at = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="run_event_index_unique")]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.index} {self.event}"


class File(ProjectObject):
    """An uploaded file. The bytes live in Django's storage (CLICKY_CHATS_DATA_DIR, or S3 through
    django-storages by setting), under `storage_name`."""

    filename = models.CharField(max_length=512)
    purpose = models.CharField(max_length=32)
    bytes = models.BigIntegerField()
    status = models.CharField(max_length=16, default="processed")
    status_details = models.TextField(null=True)
    expires_at = models.BigIntegerField(null=True)
    content_type = models.CharField(max_length=128, default="application/octet-stream")
    storage_name = models.CharField(max_length=512)

    class Meta:
        indexes = [models.Index(fields=["project", "created_ns"]), models.Index(fields=["project", "purpose"])]

    def __str__(self) -> str:
        return f"{self.filename} ({self.id})"


class Upload(ProjectObject):
    filename = models.CharField(max_length=512)
    purpose = models.CharField(max_length=32)
    bytes = models.BigIntegerField()
    mime_type = models.CharField(max_length=128)
    status = models.CharField(max_length=16, default="pending")
    expires_at = models.BigIntegerField()
    file = models.ForeignKey(File, null=True, on_delete=models.SET_NULL, related_name="+")
    # `expires_after.seconds` from the create request: the File made on completion expires that long after.
    file_expires_after = models.BigIntegerField(null=True)

    def __str__(self) -> str:
        return f"{self.filename} ({self.id}, {self.status})"


class UploadPart(ProjectObject):
    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="parts")
    bytes = models.BigIntegerField()
    storage_name = models.CharField(max_length=512)

    def __str__(self) -> str:
        return self.id


class VectorStore(ProjectObject):
    name = models.CharField(max_length=256, null=True)
    description = models.TextField(null=True)
    metadata = models.JSONField(default=dict)
    expires_after = models.JSONField(null=True)
    expires_at = models.BigIntegerField(null=True)
    last_active_at = models.BigIntegerField(null=True)
    # A store made for the Assistants v1 dialect (an assistant's `file_ids`), not listed in /v1.
    hidden = models.BooleanField(default=False)

    class Meta:
        indexes = [models.Index(fields=["project", "created_ns"])]

    def __str__(self) -> str:
        return f"{self.name or self.id}"


class FileBatch(ProjectObject):
    vector_store = models.ForeignKey(VectorStore, on_delete=models.CASCADE, related_name="batches")
    cancelled = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.id


class VectorStoreFile(models.Model):
    """A file in a vector store; its `id` in the API is the file's id. Agents ingest it."""

    vector_store = models.ForeignKey(VectorStore, on_delete=models.CASCADE, related_name="files")
    file = models.ForeignKey(File, on_delete=models.CASCADE, related_name="vector_store_files")
    batch = models.ForeignKey(FileBatch, null=True, on_delete=models.SET_NULL, related_name="files")
    project = models.CharField(max_length=64)
    created_at = models.BigIntegerField()
    created_ns = models.BigIntegerField()
    status = models.CharField(max_length=16, default="in_progress", db_index=True)
    last_error = models.JSONField(null=True)
    usage_bytes = models.BigIntegerField(default=0)
    chunking_strategy = models.JSONField()
    attributes = models.JSONField(null=True)
    # Ingestion's claim, as with runs: a lease, and a token each claim increments.
    lease_expires_at = models.FloatField(null=True)
    fence = models.BigIntegerField(default=0)
    attempts = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["vector_store", "file"], name="vector_store_file_unique")]
        indexes = [models.Index(fields=["vector_store", "created_ns"])]

    def __str__(self) -> str:
        return f"{self.file_id} in {self.vector_store_id} ({self.status})"


class Chunk(models.Model):
    """A piece of a file's text with its embedding (float32 bytes), ranked by the search engine."""

    store_file = models.ForeignKey(VectorStoreFile, on_delete=models.CASCADE, related_name="chunks")
    vector_store_id = models.CharField(max_length=64, db_index=True)
    file_id = models.CharField(max_length=64)
    ordinal = models.IntegerField()
    text = models.TextField()
    embedding = models.BinaryField()
    dimensions = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.file_id}#{self.ordinal}"
