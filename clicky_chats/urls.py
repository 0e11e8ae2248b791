from __future__ import annotations

from django.contrib import admin
from django.contrib.staticfiles.views import serve as static_serve
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from clicky_chats import views

urlpatterns = [
    path("healthz", views.healthz),
    path("admin/", admin.site.urls),
    # The admin's own CSS and JS, so `manage.py serve` shows a usable admin with no extra server.
    re_path(r"^static/(?P<path>.*)$", static_serve, {"insecure": True}),
    path("v1/openapi.yaml", SpectacularAPIView.as_view(), name="schema"),
    path("v1/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("v1/rubra/x/", include("api_rubrax.urls")),
    path("v1/rubra/", include("api_rubra.urls")),
    path("v1/", include("api_v1.urls")),
    # Anything else answers 404 in OpenAI's envelope, in debug mode too.
    re_path(r"^", views.not_found_view),
]
