"""DRF's JSON parser under the JSON-values rule (core/jsonvalues.py), so the DRF views answer a
request body as the fast path does. Set as REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, parsers


class JSONParser(parsers.JSONParser):
    """`application/json` bodies: a 400 naming the field for a value the rule refuses."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        # Imported here: DRF reads this setting while `core.errors` (which jsonvalues needs) is
        # still importing `rest_framework.views`.
        from core import jsonvalues

        raw = stream.read() if stream is not None else b""
        try:
            return jsonvalues.loads(raw)
        except jsonvalues.MalformedJson as exc:
            raise exceptions.ParseError(exc.detail_text) from None
