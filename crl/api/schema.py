"""The OpenAPI description of `GET /v1/crl` (`crl/api/views.py`).

A plain Django view (it answers the CRL's bytes, not JSON), which drf-spectacular cannot
discover: the operation is registered with `core.openapi.register_route`. Registered by
`CrlConfig.ready()`.
"""

from __future__ import annotations

from core.openapi import BINARY, NO_DATABASE, register_route
from crl.api.views import CRL_CONTENT_TYPE

_DESCRIPTION = (
    f"The CRL, answered as `{CRL_CONTENT_TYPE}` (`{BINARY}` is listed for client generators "
    "that know no CRL type: the same bytes)."
)

register_route(
    "/v1/crl",
    "get",
    {
        "operationId": "crl",
        "summary": "The current certificate revocation list",
        "description": (
            "The CRL this server enforces (`serve --tls-crl-file`), as the file holds it "
            "(PEM). Other control planes pull it with `--tls-crl-sync-url`. 404 when no "
            "CRL is configured."
        ),
        "tags": ["tls"],
        "responses": {
            "200": {
                "description": _DESCRIPTION,
                "headers": {
                    "Cache-Control": {
                        "description": "Always `no-store`: the CRL can change at any time.",
                        "schema": {"type": "string"},
                    }
                },
                "content": {
                    CRL_CONTENT_TYPE: {"schema": {"type": "string"}},
                    BINARY: {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "404": {"$error": "No CRL is configured on this server."},
        },
        **NO_DATABASE,
    },
)
