"""The OpenAPI document (`GET /v1/openapi.json`, YAML with `?format=yaml` or
`Accept: application/yaml`) and the offline Swagger UI page (`GET /v1/docs`).

Each app describes its own routes in `<app>/api/schema.py`; `/metrics`, answered by the ASGI
wrapper of this project (orchestrator_site.metrics), is described here.
"""

from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.views import SpectacularAPIView

from core.openapi import NO_DATABASE, register_route

register_route(
    "/metrics",
    "get",
    {
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "description": (
            "Prometheus text exposition (the `cp_*` families of docs/metrics.md, plus "
            "prometheus_client's `process_*` and `python_*`). Served "
            "only when `serve --metrics-addr` is set (on that listener and on this one); "
            "otherwise 404."
        ),
        "tags": ["operations"],
        "responses": {
            "200": {
                "description": "The metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "404": {"$error": "Metrics are disabled (no `--metrics-addr`)."},
        },
        **NO_DATABASE,
    },
)


class OpenApiView(SpectacularAPIView):
    """JSON by default (the path says .json); YAML on request."""

    renderer_classes = [
        OpenApiJsonRenderer,
        OpenApiJsonRenderer2,
        OpenApiYamlRenderer,
        OpenApiYamlRenderer2,
    ]
