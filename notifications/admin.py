"""Admin pages: webhook endpoints (added, changed and removed through the services, which audit
every change; the secret is asked for but never shown again) and the delivery log (read-only)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html

from core.admin import ReadOnlyAdminMixin
from core.auth import Kind, Principal, Role
from notifications import services
from notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from notifications.signing import redact_url

EVENT_CHOICES = [(services.ALL_EVENTS, "every event (*)")] + [
    (name, f"{name}: {text}") for name, text in services.EVENTS.items()
]


def admin_principal(request: HttpRequest) -> Principal:
    """The admin's logged-in user as the acting principal (kind `session`)."""
    return Principal(Kind.SESSION, request.user.get_username(), Role.ADMIN)


class EndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=EVENT_CHOICES, widget=forms.CheckboxSelectMultiple, required=True
    )
    new_secret = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        label="Secret",
        help_text="Signs every delivery (HMAC-SHA256). Leave empty to have one generated "
        "(shown once, on the next page) or, when changing an endpoint, to keep the current one. "
        "It is never shown again.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "events", "enabled", "description")
        help_texts = {"url": "http:// or https://; events are POSTed to it as JSON."}

    def _check(self, check: Any, value: Any) -> Any:
        try:
            return check(value)
        except services.WebhookError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_url(self) -> str:
        return str(self._check(services.check_url, self.cleaned_data.get("url", "")))

    def clean_events(self) -> list[str]:
        return list(self._check(services.check_events, self.cleaned_data.get("events") or []))

    def clean_new_secret(self) -> str | None:
        secret = self.cleaned_data.get("new_secret") or ""
        return str(self._check(services.check_secret, secret)) if secret else None


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ("id", "shown_url", "shown_events", "enabled", "pending", "created_at")
    list_filter = ("enabled",)
    search_fields = ("url", "description")
    readonly_fields = ("created_at", "created_by", "updated_at")
    actions = None

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = ["url", "events", "new_secret", "enabled", "description"]
        return fields + (["created_at", "created_by", "updated_at"] if obj is not None else [])

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookEndpoint]:
        pending = Count("deliveries", filter=Q(deliveries__state=WebhookDelivery.State.PENDING))
        return super().get_queryset(request).annotate(pending_count=pending)

    @admin.display(description="URL")
    def shown_url(self, obj: WebhookEndpoint) -> str:
        return redact_url(obj.url)

    @admin.display(description="events")
    def shown_events(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events)

    @admin.display(description="pending deliveries")
    def pending(self, obj: WebhookEndpoint) -> str:
        count = getattr(obj, "pending_count", 0)
        url = f"../webhookdelivery/?endpoint__id__exact={obj.pk}&state__exact=pending"
        return format_html('<a href="{}">{}</a>', url, count)

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        actor = admin_principal(request)
        if change:
            current = WebhookEndpoint.objects.get(pk=obj.pk)
            services.webhook_update(
                endpoint=current,
                url=data["url"],
                events=data["events"],
                enabled=data["enabled"],
                description=data.get("description") or "",
                secret=data.get("new_secret"),
                principal=actor,
            )
            return
        endpoint, generated = services.webhook_create(
            url=data["url"],
            events=data["events"],
            secret=data.get("new_secret"),
            enabled=data["enabled"],
            description=data.get("description") or "",
            principal=actor,
        )
        obj.pk = endpoint.pk
        obj.created_at, obj.updated_at = endpoint.created_at, endpoint.updated_at
        request._generated_webhook_secret = generated  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: WebhookEndpoint, post_url_continue: str | None = None
    ) -> HttpResponse:
        generated = getattr(request, "_generated_webhook_secret", None)
        if not generated:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "Webhook endpoint added",
            "endpoint": obj,
            "shown_url": redact_url(obj.url),
            "secret": generated,
            "opts": self.model._meta,
        }
        response = TemplateResponse(
            request, "admin/notifications/webhookendpoint/secret_once.html", context
        )
        response["Cache-Control"] = "no-store"
        return response

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        services.webhook_delete(ref=obj, principal=admin_principal(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            services.webhook_delete(ref=endpoint, principal=admin_principal(request))


class AttemptInline(admin.TabularInline):
    """The delivery log of one delivery: every attempt, read-only."""

    model = WebhookAttempt
    fields = (
        "number",
        "at",
        "outcome",
        "status_code",
        "error",
        "duration_ms",
        "retry_in_ms",
        "replica",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "created_at",
        "event_name",
        "event_id",
        "endpoint_url",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("state", "event__name", "endpoint")
    search_fields = ("event__event_id", "event__name", "endpoint__url")
    list_select_related = ("event", "endpoint")
    fields = (
        "event_name",
        "event_id",
        "endpoint_url",
        "state",
        "attempts",
        "created_at",
        "next_attempt_at",
        "delivered_at",
        "last_status",
        "last_error",
        "body",
    )
    readonly_fields = fields
    inlines = (AttemptInline,)
    actions = None

    @admin.display(description="event", ordering="event__name")
    def event_name(self, obj: WebhookDelivery) -> str:
        return obj.event.name

    @admin.display(description="event id")
    def event_id(self, obj: WebhookDelivery) -> str:
        return obj.event.event_id

    @admin.display(description="endpoint")
    def endpoint_url(self, obj: WebhookDelivery) -> str:
        return redact_url(obj.endpoint.url)

    @admin.display(description="body")
    def body(self, obj: WebhookDelivery) -> str:
        return obj.event.body
