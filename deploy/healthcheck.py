"""Container health check: GET /v1/health on the address `serve` listens on (AUTONOMY_LISTEN).

Exit 0 when it answers 200, 1 otherwise (Docker's HEALTHCHECK contract). With TLS on
(AUTONOMY_TLS_CERT_FILE) it speaks HTTPS to the loopback address without verifying the server
certificate (it is checking its own process), and with mTLS (AUTONOMY_TLS_CA_FILE) it presents
the server certificate and key as its client certificate: that certificate then needs the
clientAuth extended key usage, as for CRL sync (docs/tls.md). Standard library only.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

# Readiness (API.md §7): 200 only while the store answers; no credential needed.
PATH = "/v1/health/read-ready"


def target(listen: str) -> str:
    """The loopback host:port to probe for a --listen value (0.0.0.0 / :: / empty -> loopback)."""
    host, _, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main() -> int:
    env = os.environ
    cert = env.get("AUTONOMY_TLS_CERT_FILE", "").strip()
    context = None
    scheme = "http"
    if cert:
        scheme = "https"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if env.get("AUTONOMY_TLS_CA_FILE", "").strip():
            context.load_cert_chain(cert, env.get("AUTONOMY_TLS_KEY_FILE", "").strip() or None)
    url = f"{scheme}://{target(env.get('AUTONOMY_LISTEN', '127.0.0.1:8888'))}{PATH}"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as resp:
            ok = resp.status == 200
    except Exception as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {'ok' if ok else 'not ok'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
