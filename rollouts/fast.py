"""The fast-path handler of the rollouts app: `GET /v1/rollouts/{plan_id}/status`, routed by
`core.fastpath` (table in `orchestrator_site/urls.py`).

An operator's dashboard reads this route every few seconds while a large fleet polls and acks.
On Django's path a synchronous view runs on Django's one thread for synchronous code and its answer
goes back through the middleware on that thread, then through the event loop: under a
50,000-node load that way back alone took up to 120 ms (docs/performance.md). Here the read runs
on the reader pool (`core.dbthreads.run_read`, one hop) and the answer goes straight out. It is
the same selector and service as the DRF view (`rollouts.api.views.RolloutStatusView`) and the
same status, body and headers (tests/test_edge_parity.py); HTML clients (the browsable API) still
go to Django.
"""

from __future__ import annotations

from typing import Any

from rest_framework.renderers import JSONRenderer

from core import dbthreads, edge
from rollouts import selectors, services

_renderer = JSONRenderer()


def status_body(plan_id: str) -> bytes:
    """The JSON body of the plan's status (ApiError 404 for an unknown plan), rendered as the
    DRF view renders it."""
    return _renderer.render(selectors.plan_status(services.plan_get(plan_id)))


async def status(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> edge.Answer:
    """The fast-path handler of `GET /v1/rollouts/{plan_id}/status` (core.fastpath)."""
    plan_id = scope["path_params"]["plan_id"]
    return 200, await dbthreads.run_read(status_body, plan_id), []
