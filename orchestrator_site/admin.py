"""Admin for the site's own records: the HA cutover log is read-only. Also installs the admin
login throttle (orchestrator_site.login_throttle) before the URLconf binds the login view."""

from django.contrib import admin

from core.admin import ReadOnlyAdminMixin
from orchestrator_site.login_throttle import throttled
from orchestrator_site.models import HACutoverAt

admin.site.login = throttled(admin.site.login)  # type: ignore[method-assign]


@admin.register(HACutoverAt)
class HACutoverAtAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Written only by `migrate`."""

    list_display = ("completed_at", "source", "rows_copied", "version")
    readonly_fields = ("completed_at", "source", "rows_copied", "table_counts", "version")
