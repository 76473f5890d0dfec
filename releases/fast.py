"""The node poll path without Django's request machinery.

`orchestrator_site.fastpath` answers `GET /v1/releases/latest` by calling
`latest_release_answer(query)` in a worker thread with Django's DB connection available; the DRF
view (`releases.api.views.LatestReleaseView`) gives the same status and body.
"""

from __future__ import annotations

import orjson

from orchestrator_site.errors import ApiError, error_body
from releases.params import parse_channel, parse_optional_node_id
from releases.selectors import release_latest_answer


def latest_release_answer(query: dict[str, str]) -> tuple[int, bytes]:
    """(status, JSON body) for `GET /v1/releases/latest` with this query string (`channel`,
    optional `node_id`; other keys are ignored). Errors are JSON error bodies too."""
    try:
        channel = parse_channel(query)
        node_id = parse_optional_node_id(query)
    except ApiError as exc:
        return exc.status_code, orjson.dumps(error_body(exc.message, **exc.extra))
    return release_latest_answer(channel=channel, node_id=node_id)
