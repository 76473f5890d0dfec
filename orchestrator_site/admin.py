"""Admin for the site's own records: the HA cutover log is read-only."""

from django.contrib import admin

from orchestrator_site.models import HACutoverAt


@admin.register(HACutoverAt)
class HACutoverAtAdmin(admin.ModelAdmin):
    list_display = ("completed_at", "source", "rows_copied", "version")
    readonly_fields = ("completed_at", "source", "rows_copied", "table_counts", "version")

    def has_add_permission(self, request) -> bool:  # written only by `migrate`
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
