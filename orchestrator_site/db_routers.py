"""Database routing.

Everything runs on `default`, so the router routes no reads or writes. It exists for
`autonomy-orchestrator migrate` (orchestrator_site.pgmigrate), which adds two aliases while it
runs: the SQLite source must never receive Django migrations (it is also opened read-only), while
the PostgreSQL target gets the full schema.
"""

from __future__ import annotations

from typing import Any

SOURCE_ALIAS = "migrate_source"


class MigrateRouter:
    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if db == SOURCE_ALIAS:
            return False
        return None
