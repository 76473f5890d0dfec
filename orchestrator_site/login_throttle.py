"""Admin login throttling: 5 failed logins per (username, source IP) within 15 minutes → 429.

The failures are rows in the database (`LoginFailure`), so on PostgreSQL every replica counts the
same ones. A refused attempt is not checked against the password at all (no oracle, no CPU for
the hasher). A successful login clears its key's failures; rows older than the window are pruned
when a failure is written. The first refusal per key and window on a replica is audited as
`auth.login.throttled` (docs/security.md, "Hardening").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from orchestrator_site.models import LoginFailure

logger = logging.getLogger("orchestrator.auth")

MAX_FAILURES = 5
WINDOW = timedelta(minutes=15)

_audited: dict[tuple[str, str], float] = {}
_audited_lock = threading.Lock()


def _key(request: HttpRequest) -> tuple[str, str]:
    username = str(request.POST.get("username", ""))[:150]
    return username, str(request.META.get("REMOTE_ADDR") or "")[:64]


def _recent_failures(username: str, ip: str) -> int:
    since = timezone.now() - WINDOW
    return LoginFailure.objects.filter(
        username=username, source_ip=ip, failed_at__gte=since
    ).count()


def _record_failure(username: str, ip: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        LoginFailure.objects.filter(failed_at__lt=now - WINDOW).delete()
        LoginFailure.objects.create(username=username, source_ip=ip, failed_at=now)


def _audit_throttled(username: str, ip: str) -> None:
    now = time.monotonic()
    with _audited_lock:
        last = _audited.get((username, ip))
        if last is not None and now - last < WINDOW.total_seconds():
            return
        _audited[(username, ip)] = now
    logger.warning("admin login throttled for %r from %s", username, ip)
    try:
        from access.services import audit_write
        from core.auth import Kind, Principal

        with transaction.atomic():
            audit_write(
                event_name="auth.login.throttled",
                outcome="denied",
                principal=Principal(Kind.ANONYMOUS, "anonymous"),
                route="/admin/login/",
                target=username,
                detail={"failures": MAX_FAILURES, "window_seconds": int(WINDOW.total_seconds())},
                source_ip=ip,
            )
    except Exception:
        logger.exception("could not audit a throttled admin login")


def throttled(view: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the admin site's login view."""

    def login(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if request.method != "POST":
            return view(request, *args, **kwargs)
        username, ip = _key(request)
        if _recent_failures(username, ip) >= MAX_FAILURES:
            _audit_throttled(username, ip)
            minutes = int(WINDOW.total_seconds() // 60)
            response = HttpResponse(
                f"Too many failed logins for this user from this address: try again in up to "
                f"{minutes} minutes.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(int(WINDOW.total_seconds()))
            return response
        response = view(request, *args, **kwargs)
        if request.user.is_authenticated and request.user.is_staff:
            LoginFailure.objects.filter(username=username, source_ip=ip).delete()
        elif response.status_code == 200:  # the form again, with its error
            _record_failure(username, ip)
        return response

    return login
