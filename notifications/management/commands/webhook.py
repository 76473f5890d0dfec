"""`autonomy-orchestrator webhook add|list|remove|test` (docs/operating.md "Webhooks")."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from access.management.commands._store import add_store_arguments, open_store
from notifications import selectors, services
from notifications.signing import redact_url


class Command(BaseCommand):
    help = "Add, list, remove and test the webhook endpoints that receive events."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_store_arguments(parser)
        actions = parser.add_subparsers(
            dest="action", required=True, metavar="add|list|remove|test"
        )
        add = actions.add_parser(
            "add", help="add an endpoint (prints a generated secret once when --secret is absent)"
        )
        add.add_argument("url", metavar="URL", help="http:// or https:// URL events are POSTed to")
        add.add_argument(
            "--events",
            required=True,
            help="comma-separated: " + ",".join(services.EVENTS) + " (or * for every event)",
        )
        add.add_argument(
            "--secret",
            default=None,
            help="the HMAC secret the receiver verifies with (default: generate one and print "
            "it once; a secret on the command line is visible to other local users)",
        )
        add.add_argument("--description", default="", help="a note shown in the admin")
        add.add_argument(
            "--disabled", action="store_true", help="add it disabled (enable it in the admin)"
        )
        add_store_arguments(add)
        listing = actions.add_parser("list", help="ids, URLs, events, pending deliveries")
        add_store_arguments(listing)
        remove = actions.add_parser(
            "remove", help="remove an endpoint (and its pending deliveries) by id or URL"
        )
        remove.add_argument("endpoint", metavar="ID|URL")
        add_store_arguments(remove)
        test = actions.add_parser(
            "test", help="send one signed webhook.test event now and print the answer"
        )
        test.add_argument("endpoint", metavar="ID|URL")
        add_store_arguments(test)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "add":
                self._add(options)
            elif action == "list":
                open_store(options["data_dir"])
                self._list()
            elif action == "remove":
                open_store(options["data_dir"])
                pk = services.webhook_delete(ref=options["endpoint"])
                self.stdout.write(f"removed webhook endpoint {pk}")
            else:
                open_store(options["data_dir"])
                self._test(options["endpoint"])
        except services.WebhookError as exc:
            raise CommandError(str(exc)) from None

    def _add(self, options: dict[str, Any]) -> None:
        # Check the input before touching the store.
        url = services.check_url(options["url"])
        events = services.check_events(options["events"])
        secret = options["secret"]
        if secret is not None:
            secret = services.check_secret(secret)
        open_store(options["data_dir"])
        endpoint, generated = services.webhook_create(
            url=url,
            events=events,
            secret=secret,
            enabled=not options["disabled"],
            description=options["description"],
        )
        state = "" if endpoint.enabled else " (disabled)"
        self.stdout.write(
            f"added webhook endpoint {endpoint.pk}: {redact_url(endpoint.url)} "
            f"({', '.join(endpoint.events)}){state}"
        )
        if generated:
            self.stdout.write(
                "Its signing secret is shown only now; give it to the receiver, which checks "
                "X-Autonomy-Signature with it:"
            )
            self.stdout.write(generated)

    def _list(self) -> None:
        pending = selectors.pending_by_endpoint()
        rows = [("ID", "URL", "EVENTS", "ENABLED", "PENDING", "CREATED")]
        for endpoint in selectors.endpoint_list():
            rows.append(
                (
                    str(endpoint.pk),
                    redact_url(endpoint.url),
                    ",".join(endpoint.events),
                    "yes" if endpoint.enabled else "no",
                    str(pending.get(endpoint.pk, 0)),
                    endpoint.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )

    def _test(self, ref: str) -> None:
        endpoint = services.webhook_find(ref)
        result = services.webhook_test(endpoint=endpoint)
        where = redact_url(endpoint.url)
        if not result.ok:
            raise CommandError(f"not delivered to {where}: {result.error}")
        self.stdout.write(
            f"delivered a webhook.test event to {where}: HTTP {result.status} "
            f"in {result.duration_ms} ms"
        )
