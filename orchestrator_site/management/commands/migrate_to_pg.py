"""`autonomy-orchestrator migrate`: copy a SQLite control plane to PostgreSQL (docs/migrate.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from core.flags import env_default
from core.paths import default_data_dir, sqlite_path
from orchestrator_site import pgmigrate


def _positive_int(value: str) -> int:
    import argparse

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value!r}")
    return number


class Progress:
    """Per-table progress: one rewritten line on a terminal, plain log lines otherwise."""

    TTY_INTERVAL = 0.1
    LOG_INTERVAL = 5.0

    def __init__(self, out: Any, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.last = 0.0

    def start(self, table: str, total: int) -> None:
        self.last = time.monotonic()
        if self.tty:
            self._line(table, 0, total, 0.0)
        else:
            self.out.write(f"copying {table}: {total} rows")

    def update(self, result: pgmigrate.TableResult, done: int) -> None:
        now = time.monotonic()
        interval = self.TTY_INTERVAL if self.tty else self.LOG_INTERVAL
        if now - self.last < interval:
            return
        self.last = now
        rate = done / result.seconds if result.seconds > 0 else 0.0
        if self.tty:
            self._line(result.table, done, result.source_rows, rate)
        else:
            self.out.write(
                f"  {result.table}: {done}/{result.source_rows} rows ({rate:,.0f} rows/s)"
            )

    def finish(self, result: pgmigrate.TableResult) -> None:
        rate = result.source_rows / result.seconds if result.seconds > 0 else 0.0
        text = (
            f"{result.table}: {result.source_rows}/{result.source_rows} rows "
            f"({result.inserted} inserted, {result.already_present} already present) "
            f"in {result.seconds:.1f} s, {rate:,.0f} rows/s"
        )
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
        else:
            self.out.write(text)

    def _line(self, table: str, done: int, total: int, rate: float) -> None:
        share = f"{100 * done / total:5.1f}%" if total else "100.0%"
        self.out.write(
            f"\r\x1b[2K{table}: {done}/{total} rows {share} {rate:,.0f} rows/s", ending=""
        )
        self.out.flush()


INTERRUPTED = (
    "interrupted: the batches copied so far are kept; run the same command again "
    "to finish (it never copies a row twice)"
)


def _while_interrupted(exc: BaseException) -> bool:
    """True when `exc` was raised while a KeyboardInterrupt was being handled (anywhere in its
    chain of causes and contexts)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        pending.extend((current.__cause__, current.__context__))
    return False


class Command(BaseCommand):
    help = "Copy all data from the SQLite store to PostgreSQL (see docs/migrate.md)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--sqlite-dir",
            metavar="DIR",
            default=env_default("sqlite-dir") or env_default("data-dir") or str(default_data_dir()),
            help="data dir of the SQLite store to copy; opened read-only, never modified "
            "(default: serve's --data-dir default; AUTONOMY_SQLITE_DIR, else AUTONOMY_DATA_DIR)",
        )
        parser.add_argument(
            "--postgres-url",
            metavar="URL",
            default=env_default("postgres-url", ""),
            help="target database, postgresql://user:pass@host:port/db?libpq-options "
            "(required; AUTONOMY_POSTGRES_URL)",
        )
        parser.add_argument(
            "--batch-size",
            metavar="N",
            type=_positive_int,
            default=env_default("batch-size", "1000"),
            help="rows per INSERT batch (default 1000; AUTONOMY_BATCH_SIZE)",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print the per-table row counts that would be copied; write nothing",
        )
        parser.add_argument(
            "--validate-only",
            action="store_true",
            help="compare row counts source vs target; copy nothing; non-zero exit on mismatch",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        url = str(options["postgres_url"] or "").strip()
        if not url:
            raise CommandError(
                "no PostgreSQL target: pass --postgres-url postgresql://user@host:5432/db "
                "or set AUTONOMY_POSTGRES_URL"
            )
        if options["dry_run"] and options["validate_only"]:
            raise CommandError("--dry-run and --validate-only cannot be combined")
        batch_size = options["batch_size"]
        if isinstance(batch_size, str):  # the env default did not go through type=
            try:
                batch_size = _positive_int(batch_size)
            except Exception as exc:
                raise CommandError(f"--batch-size {exc}") from None
        source = sqlite_path(Path(options["sqlite_dir"]).expanduser())
        try:
            pgmigrate.open_source(source)
            pgmigrate.open_target(url)
            with pgmigrate.source_snapshot():
                if options["dry_run"]:
                    self._dry_run(source, url)
                elif options["validate_only"]:
                    self._validate(show_cutover=True)
                else:
                    self._migrate(source, url, batch_size)
        except pgmigrate.MigrateError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError(INTERRUPTED) from None
        except DatabaseError as exc:
            if _while_interrupted(exc):
                # Ctrl-C landed inside a driver call (a COPY, a rollback): the cleanup failed
                # on the half-done call, and the interrupt is still what happened.
                raise CommandError(INTERRUPTED) from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CommandError(f"database error: {first}") from None
        finally:
            pgmigrate.close_aliases()

    # --- modes ------------------------------------------------------------------------------

    def _dry_run(self, source: Path, url: str) -> None:
        specs = pgmigrate.plan()
        counts = pgmigrate.compare_counts(specs)
        self.stdout.write(f"dry run: {source} -> {pgmigrate.redact_url(url)} (nothing is written)")
        self._count_table(counts, ("table", "source rows", "in target now"), dry=True)
        total = sum(row.source for row in counts)
        self.stdout.write(
            f"dry run: would copy up to {total} rows in {len(counts)} tables; nothing was written"
        )

    def _validate(self, show_cutover: bool) -> list[pgmigrate.CountRow]:
        specs = pgmigrate.plan()
        counts = pgmigrate.compare_counts(specs)
        self._count_table(counts, ("table", "source", "target", "status"), dry=False)
        bad = [row for row in counts if not row.ok]
        if show_cutover:
            cutover = pgmigrate.last_cutover()
            if cutover is not None:
                self.stdout.write(
                    f"last cutover: {cutover.completed_at:%Y-%m-%dT%H:%M:%SZ} from {cutover.source}"
                )
            else:
                self.stdout.write("last cutover: none recorded in the target")
        if bad:
            detail = ", ".join(
                f"{row.table} (source {row.source}, target "
                f"{'missing' if row.target is None else row.target})"
                for row in bad
            )
            raise CommandError(f"row counts differ in {len(bad)} table(s): {detail}")
        self.stdout.write(f"validation ok: {len(counts)} tables, row counts equal")
        return counts

    def _migrate(self, source: Path, url: str, batch_size: int) -> None:
        started = time.monotonic()
        self.stdout.write(f"migrating {source} -> {pgmigrate.redact_url(url)}")
        restored = pgmigrate.restore_deferred_indexes()
        if restored:
            self.stdout.write(f"schema: rebuilt {restored} indexes an interrupted run had dropped")
        self.stdout.write("schema: applying migrations to the target")
        pgmigrate.migrate_schema()
        specs = pgmigrate.plan()
        pgmigrate.preflight(specs, batch_size)
        progress = Progress(self.stdout, tty=self.stdout.isatty())
        results = []
        for spec in specs:
            total = pgmigrate.count_rows(pgmigrate.SOURCE, spec.table) or 0
            progress.start(spec.table, total)
            result = pgmigrate.copy_table(spec, batch_size, total, progress.update)
            progress.finish(result)
            results.append(result)
        pgmigrate.reset_sequences(specs)
        nodes = pgmigrate.copy_fleet_view(batch_size)
        self.stdout.write(f"fleet view: {nodes} nodes merged, newest acks rebuilt")
        self.stdout.write("validation: comparing row counts")
        counts = self._validate(show_cutover=False)
        inserted = sum(r.inserted for r in results)
        present = sum(r.already_present for r in results)
        cutover = pgmigrate.record_cutover(source, inserted, counts)
        seconds = time.monotonic() - started
        copied = sum(r.source_rows for r in results)
        self.stdout.write(
            f"done: {copied} rows in {len(results)} tables ({inserted} inserted, {present} "
            f"already present) in {seconds:.1f} s; cutover recorded at "
            f"{cutover.completed_at:%Y-%m-%dT%H:%M:%SZ}. Serve from PostgreSQL with "
            f"`autonomy-orchestrator serve --postgres-url ...`; the SQLite store is untouched."
        )

    def _count_table(
        self, counts: list[pgmigrate.CountRow], headers: tuple[str, ...], dry: bool
    ) -> None:
        rows: list[tuple[str, ...]] = []
        for row in counts:
            target = "-" if row.target is None else str(row.target)
            if dry:
                rows.append((row.table, str(row.source), target))
            else:
                rows.append((row.table, str(row.source), target, "ok" if row.ok else "MISMATCH"))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        self.stdout.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for r in rows:
            self.stdout.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
