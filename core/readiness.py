"""Readiness for load balancers: `GET /v1/health/read-ready` and `GET /v1/health/write-ready`.

- read-ready: 200 `{"ready":true}` when the store answers a trivial query within 1 s, else 503
  `{"ready":false,"reason":…}` with `Retry-After`.
- write-ready: 200 when this replica can commit a write now. PostgreSQL: the server is a primary
  (`pg_is_in_recovery()` false) and `default_transaction_read_only` is off. SQLite: the disk of the
  data dir has room (free space, and a small file can be written and synced there).

Probes run on a thread of their own with its own database connection, so a hung database never
holds a request thread, and each answer is cached for at most CACHE_SECONDS: both routes follow the
store's state within ~1 s (the contract says 2 s) however often a load balancer polls.
No credential; GET and HEAD.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connection
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.dberrors import RETRY_AFTER_SECONDS

logger = logging.getLogger("orchestrator.db")

PROBE_TIMEOUT_SECONDS = 1.0
CACHE_SECONDS = 1.0
# SQLite: below this much free space the data dir's disk counts as full for new writes.
MIN_FREE_BYTES = 16 * 1024 * 1024
PROBE_FILE = ".write-ready-probe"


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str = ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_probe() -> Verdict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return Verdict(True)
    except DatabaseError as exc:
        return Verdict(False, f"the database does not answer: {_first_line(exc)}")
    finally:
        with contextlib.suppress(DatabaseError):
            connection.close()  # back to the pool; a broken one is replaced next time


def _write_probe() -> Verdict:
    if connection.vendor == "postgresql":
        return _postgres_writable()
    return _sqlite_writable()


def _postgres_writable() -> Verdict:
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')"
            )
            in_recovery, read_only = cursor.fetchone()
    except DatabaseError as exc:
        return Verdict(False, f"the database does not answer: {_first_line(exc)}")
    finally:
        with contextlib.suppress(DatabaseError):
            connection.close()
    if in_recovery:
        return Verdict(False, "the database is a standby (in recovery): it accepts no writes")
    if str(read_only).lower() in ("on", "true", "1"):
        return Verdict(False, "the database is read-only (default_transaction_read_only is on)")
    return Verdict(True)


def _sqlite_writable() -> Verdict:
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or "memory" in name:
        return Verdict(True)
    return data_dir_writable(Path(name).parent)


def data_dir_writable(directory: Path) -> Verdict:
    """Room on the disk of `directory`, and a small file can be written and synced there."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        return Verdict(False, f"the data dir cannot be examined: {exc.strerror or exc}")
    if free < MIN_FREE_BYTES:
        return Verdict(False, f"the disk holding the database is full ({free} bytes free)")
    probe = directory / PROBE_FILE
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return Verdict(False, f"the data dir cannot be written: {exc.strerror or exc}")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return Verdict(True)


class _Prober:
    """One probe at a time on a thread of its own; answers cached for CACHE_SECONDS."""

    def __init__(self, name: str, probe: Any) -> None:
        self._probe = probe
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ready-{name}")
        self._lock = threading.Lock()
        self._running: Future[Verdict] | None = None
        self._cached: tuple[float, Verdict] | None = None

    def verdict(self) -> Verdict:
        now = time.monotonic()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
            if self._running is None:
                self._running = self._executor.submit(self._probe)
            running = self._running
        try:
            result = running.result(timeout=PROBE_TIMEOUT_SECONDS)
        except FutureTimeout:
            result = Verdict(
                False, f"the database did not answer within {PROBE_TIMEOUT_SECONDS:g} s"
            )
        except Exception as exc:  # a probe never fails the route
            logger.debug("readiness probe failed", exc_info=True)
            result = Verdict(False, _first_line(exc))
        with self._lock:
            if self._running is running and running.done():
                self._running = None
                self._cached = (time.monotonic(), result)
        return result

    def forget(self) -> None:
        """Drop the cached answer (tests)."""
        with self._lock:
            self._cached = None


read_prober = _Prober("read", _read_probe)
write_prober = _Prober("write", _write_probe)


def _answer(request: Request, verdict: Verdict) -> Response:
    if verdict.ready:
        response = Response({"ready": True})
    else:
        response = Response(
            {"ready": False, "reason": verdict.reason},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if request.method == "HEAD":
        response.data = None
    return response


_READY = inline_serializer("Ready", fields={"ready": serializers.BooleanField()})
_NOT_READY = inline_serializer(
    "NotReady",
    fields={"ready": serializers.BooleanField(), "reason": serializers.CharField()},
)


def _schema(summary: str, description: str) -> Any:
    return extend_schema(
        summary=summary,
        description=description,
        tags=["health"],
        request=None,
        parameters=[
            OpenApiParameter(
                "Retry-After",
                OpenApiTypes.INT,
                location=OpenApiParameter.HEADER,
                response=[503],
                description="Seconds to wait before retrying.",
            )
        ],
        responses={
            200: OpenApiResponse(_READY, description="ready"),
            503: OpenApiResponse(
                _NOT_READY,
                description="not ready, with the reason; carries `Retry-After`",
            ),
        },
    )


class ReadReadyView(APIView):
    """`GET /v1/health/read-ready`: can this replica read from its store now?"""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    @_schema(
        "Read readiness",
        "200 when the store answers a trivial query within 1 s, else 503 with the reason. "
        "Cached for at most 1 s. No credential; also HEAD.",
    )
    def get(self, request: Request) -> Response:
        return _answer(request, read_prober.verdict())


class WriteReadyView(APIView):
    """`GET /v1/health/write-ready`: can this replica commit a write now?"""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    @_schema(
        "Write readiness",
        "200 when this replica can commit a write now (PostgreSQL: a primary, not in recovery, "
        "not read-only; SQLite: the data dir's disk is not full), else 503 with the reason. "
        "Cached for at most 1 s. No credential; also HEAD.",
    )
    def get(self, request: Request) -> Response:
        return _answer(request, write_prober.verdict())


# Included by the root URLconf: `path("", include("core.readiness"))`.
urlpatterns = [
    path("v1/health/read-ready", ReadReadyView.as_view(), name="health-read-ready"),
    path("v1/health/write-ready", WriteReadyView.as_view(), name="health-write-ready"),
]
