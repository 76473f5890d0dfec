"""`GET /v1/crl`: the CRL this server enforces."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from core.errors import json_error
from crl.selectors import crl_get

CRL_CONTENT_TYPE = "application/pkix-crl"


@csrf_exempt  # a read-only endpoint; other methods get the JSON 405
def crl_view(request: HttpRequest) -> HttpResponse:
    """The CRL file's bytes (PEM, as in --tls-crl-file), `application/pkix-crl`: docs/tls.md."""
    if request.method not in ("GET", "HEAD"):
        return json_error(
            405, f"method {request.method} not allowed on /v1/crl", headers={"Allow": "GET, HEAD"}
        )
    data = crl_get()
    if data is None:
        return json_error(404, "no CRL is configured on this server (serve --tls-crl-file)")
    response = HttpResponse(data, content_type=CRL_CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
