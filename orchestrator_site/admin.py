"""Admin for the site's own records: the HA cutover log is read-only."""

from django.contrib import admin

from core.admin import ReadOnlyAdminMixin
from orchestrator_site.models import HACutoverAt


@admin.register(HACutoverAt)
class HACutoverAtAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Written only by `migrate`."""

    list_display = ("completed_at", "source", "rows_copied", "version")
    readonly_fields = ("completed_at", "source", "rows_copied", "table_counts", "version")
