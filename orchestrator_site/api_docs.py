"""The OpenAPI document (`GET /v1/openapi.json`, YAML with `?format=yaml` or
`Accept: application/yaml`) and the offline Swagger UI page (`GET /v1/docs`)."""

from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.views import SpectacularAPIView

# Importing the annotations registers them with drf-spectacular (OpenApiViewExtension).
from orchestrator_site import openapi  # noqa: F401


class OpenApiView(SpectacularAPIView):
    """JSON by default (the path says .json); YAML on request."""

    renderer_classes = [
        OpenApiJsonRenderer,
        OpenApiJsonRenderer2,
        OpenApiYamlRenderer,
        OpenApiYamlRenderer2,
    ]
