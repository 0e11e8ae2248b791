"""/v1/rubra/x: our own APIs. The later Rubra UI revision's flat `/v1/x-...` aliases are in
api_v1's routes (see FLAT_ALIASES below, included there)."""

from __future__ import annotations

from django.urls import path

from api_rubrax import views

TOOLS = views.ToolViewSet.as_view({"get": "list", "post": "create"})
# PUT as well as POST: the Rubra UI's (unused) edit route sends PUT.
TOOL = views.ToolViewSet.as_view({"get": "retrieve", "post": "update", "put": "update", "delete": "destroy"})
INSPECT = views.ToolViewSet.as_view({"post": "inspect"})
THREADS = views.ThreadListViewSet.as_view({"get": "list"})

urlpatterns = [
    path("tools", TOOLS),
    path("tools/inspect", INSPECT),
    path("tools/run", views.tool_run),
    path("tools/runs/<str:run_id>/confirm", views.tool_run_confirm),
    path("tools/<str:pk>", TOOL),
    path("threads", THREADS),
    path("threads/<str:thread_id>/runs/<str:run_id>/stream", views.run_stream),
    path("threads/<str:thread_id>/runs/<str:run_id>/confirm", views.run_confirm),
    path("threads/<str:thread_id>/runs/<str:run_id>/steps/<str:step_id>/events", views.step_events),
]

# The flat paths of the Rubra UI revision 45dcd03, served under /v1 and /v1/rubra.
FLAT_ALIASES = [
    path("x-tools", TOOLS),
    path("x-tools/inspect", INSPECT),
    path("x-tools/run", views.tool_run),
    path("x-tools/runs/<str:run_id>/confirm", views.tool_run_confirm),
    path("x-tools/<str:pk>", TOOL),
    path("x-threads", THREADS),
    path("threads/<str:thread_id>/runs/<str:run_id>/x-stream", views.run_stream),
    path("threads/<str:thread_id>/runs/<str:run_id>/x-confirm", views.run_confirm),
    path("threads/<str:thread_id>/runs/<str:run_id>/steps/<str:step_id>/x-events", views.step_events),
]
