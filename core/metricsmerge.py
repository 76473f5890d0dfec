"""`/metrics` over every worker of `serve --workers N` (docs/metrics.md#with-serve---workers-n).

Every worker counts its own requests in its own `prometheus_client` REGISTRY, but only the
primary (worker 0) serves the `--metrics-addr` listener. So:

* each NON-primary worker writes a snapshot of its counts to the workers' shared directory
  (`core.workers.directory()`), `metrics-<index>.json`, every second (`start_snapshots`) and
  once more when it stops cleanly (`SnapshotWriter.stop`);
* the primary's `GET /metrics` (`render`) is its own REGISTRY with, for every counter, histogram
  and summary sample, the values of the other workers' snapshots (same family, same sample
  name, same labels) added; a label set only another worker has seen appears too.

What a snapshot holds: the samples of the metric objects (`Counter`, `Histogram`, `Summary`) of
the registry, i.e. what this process counted. Not gauges (point-in-time values: the primary's,
mostly read from the store at scrape time, are the answer), and not the custom collectors
(rollout and fleet families read from the store, the leader and pool counters, `process_*`,
`python_*`): taking a snapshot never reads the store, and those stay the primary's.

Merging rules: values are added; a `_created` sample (when the series started) takes the
earliest of the workers'. Every `metrics-*.json` in the directory is read except the primary's
own index's and those of an index >= `workers.count()` (left by an earlier run with more
workers; `remove_snapshots`, for `serve` before it starts its workers, clears them all). A file
that cannot be read or parsed is skipped (one debug line), never an error of the scrape. The
other workers' numbers are at most one snapshot interval (1 s) old. A worker that restarts
writes its file again from 0, which Prometheus reads as a counter reset.

Imports nothing of this repository.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

logger = logging.getLogger("orchestrator.metrics")

FORMAT = 1
MERGED_TYPES = frozenset({"counter", "histogram", "summary"})
_FILE = re.compile(r"^metrics-(\d+)\.json$")

LabelKey = tuple[tuple[str, str], ...]
SampleKey = tuple[str, LabelKey]


def snapshot_path(directory: Path, index: int) -> Path:
    return directory / f"metrics-{index}.json"


def _counted_collectors(registry: CollectorRegistry) -> list[MetricWrapperBase]:
    """The registry's Counter/Histogram/Summary objects (not custom collectors: those may read
    the store, and their counters describe the primary's own work)."""
    # prometheus_client has no public way to list a registry's collectors.
    with registry._lock:
        collectors = list(registry._collector_to_names)
    return [
        c
        for c in collectors
        if isinstance(c, MetricWrapperBase) and getattr(c, "_type", None) in MERGED_TYPES
    ]


def snapshot(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """This process's counted samples, as written by `write_snapshot`."""
    families = []
    for collector in _counted_collectors(registry):
        for family in collector.collect():
            if family.type not in MERGED_TYPES:
                continue
            families.append(
                {
                    "name": family.name,
                    "type": family.type,
                    "help": family.documentation,
                    "unit": family.unit,
                    "samples": [
                        [s.name, s.labels, s.value]
                        for s in family.samples
                        if s.native_histogram is None
                    ],
                }
            )
    return {"format": FORMAT, "pid": os.getpid(), "families": families}


def write_snapshot(directory: Path, index: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Write this worker's counters, histograms and summaries to `metrics-<index>.json` in
    `directory`, atomically (a 0600 temporary file renamed over the old one)."""
    data = json.dumps(snapshot(registry), separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".metrics-{index}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp creates the file 0600
            out.write(data)
        os.replace(tmp, snapshot_path(directory, index))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class SnapshotWriter:
    """The daemon thread of a non-primary worker that writes its snapshot every `interval`
    seconds. `stop()` ends it and writes a final snapshot, so the counts of a worker that exits
    cleanly stay in the primary's `/metrics`."""

    def __init__(
        self,
        directory: Path,
        index: int,
        interval: float = 1.0,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.directory = directory
        self.index = index
        self.interval = interval
        self.registry = registry
        self._stopping = threading.Event()
        self._failing = False
        self._thread = threading.Thread(
            target=self._run, name=f"metrics-snapshot-{index}", daemon=True
        )

    def start(self) -> SnapshotWriter:
        self._write()
        self._thread.start()
        return self

    def _write(self) -> None:
        try:
            write_snapshot(self.directory, self.index, self.registry)
        except Exception as exc:
            if not self._failing:  # one warning per run of failures, not one per second
                logger.warning("metrics snapshot %s not written: %s", self.index, exc)
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self._write()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and write the final snapshot (idempotent)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._write()


def start_snapshots(
    directory: Path,
    index: int,
    interval: float = 1.0,
    registry: CollectorRegistry = REGISTRY,
) -> SnapshotWriter:
    """Write a first snapshot now and start the thread (call it in each non-primary worker);
    call `.stop()` on the result when the worker stops."""
    return SnapshotWriter(directory, index, interval, registry).start()


def _label_key(labels: dict[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def _read(path: Path) -> list[dict[str, Any]] | None:
    """The families of one snapshot file, checked; None (and a debug line) if unusable."""
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a metrics snapshot")
        families = data["families"]
        if not isinstance(families, list):
            raise ValueError("not a metrics snapshot")
        for family in families:
            if not isinstance(family["name"], str) or family["type"] not in MERGED_TYPES:
                raise ValueError("bad family")
            if not isinstance(family["help"], str) or not isinstance(family.get("unit", ""), str):
                raise ValueError("bad family")
            for name, labels, value in family["samples"]:
                if not isinstance(name, str) or not isinstance(labels, dict):
                    raise ValueError("bad sample")
                if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
                    raise ValueError("bad labels")
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ValueError("bad value")
        return families
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.debug("metrics snapshot %s skipped: %s", path.name, exc)
        return None


def read_snapshots(
    directory: Path, own_index: int, count: int | None = None
) -> list[list[dict[str, Any]]]:
    """The families of every readable `metrics-*.json` in `directory` but `own_index`'s (and,
    with `count`, but those of an index >= count: left by an earlier run with more workers)."""
    result = []
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if match is None or int(match.group(1)) == own_index:
            continue
        if count is not None and int(match.group(1)) >= count:
            continue
        families = _read(path)
        if families is not None:
            result.append(families)
    return result


class _Extra:
    """One family's samples from the other workers, summed, in first-seen order."""

    def __init__(self, name: str, typ: str, documentation: str, unit: str) -> None:
        self.name, self.type, self.documentation, self.unit = name, typ, documentation, unit
        self.values: dict[SampleKey, float] = {}
        self.labels: dict[SampleKey, dict[str, str]] = {}

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        key = (name, _label_key(labels))
        if key not in self.values:
            self.values[key] = value
            self.labels[key] = labels
        elif name == self.name + "_created":
            self.values[key] = min(self.values[key], value)
        else:
            self.values[key] += value


def _combine(name: str, mine: float, theirs: float, family: str) -> float:
    return min(mine, theirs) if name == family + "_created" else mine + theirs


class MergedCollector:
    """A collector yielding `registry`'s families with the other workers' snapshots merged in
    (pass it to `generate_latest`)."""

    def __init__(
        self,
        directory: Path,
        own_index: int = 0,
        registry: CollectorRegistry = REGISTRY,
        count: int | None = None,
    ) -> None:
        self.directory = directory
        self.own_index = own_index
        self.registry = registry
        self.count = count

    def _others(self) -> dict[tuple[str, str], _Extra]:
        extras: dict[tuple[str, str], _Extra] = {}
        try:
            snapshots = read_snapshots(self.directory, self.own_index, self.count)
        except OSError as exc:
            logger.debug("metrics snapshots not read: %s", exc)
            return extras
        for families in snapshots:
            for family in families:
                key = (family["name"], family["type"])
                extra = extras.get(key)
                if extra is None:
                    extra = extras[key] = _Extra(
                        family["name"], family["type"], family["help"], family.get("unit", "")
                    )
                for name, labels, value in family["samples"]:
                    extra.add(name, labels, float(value))
        return extras

    def collect(self) -> Iterator[Metric]:
        extras = self._others()
        for family in self.registry.collect():
            extra = extras.pop((family.name, family.type), None)
            yield family if extra is None else _merge(family, extra)
        for extra in extras.values():  # families only the other workers have
            merged = Metric(extra.name, extra.documentation, extra.type)
            merged.unit = extra.unit
            for key, value in extra.values.items():
                merged.add_sample(key[0], extra.labels[key], value)
            yield merged


def _merge(family: Metric, extra: _Extra) -> Metric:
    merged = Metric(family.name, family.documentation, family.type)
    merged.unit = family.unit
    seen: set[SampleKey] = set()
    for s in family.samples:
        key = (s.name, _label_key(s.labels))
        seen.add(key)
        value = s.value
        if key in extra.values:
            value = _combine(s.name, value, extra.values[key], family.name)
        merged.samples.append(s._replace(value=value))
    for key, value in extra.values.items():
        if key not in seen:
            merged.add_sample(key[0], extra.labels[key], value)
    return merged


def render(
    directory: Path,
    own_index: int = 0,
    registry: CollectorRegistry = REGISTRY,
    count: int | None = None,
) -> bytes:
    """The exposition text of `registry` merged with the other workers' snapshots (those of
    indexes below `count` when given)."""
    return generate_latest(MergedCollector(directory, own_index, registry, count))


def remove_snapshots(directory: Path) -> None:
    """Delete every snapshot file in `directory` (for `serve` before it starts its workers, so
    the files of an earlier run with more workers are not added in)."""
    for path in directory.glob("metrics-*.json"):
        if _FILE.match(path.name):
            path.unlink(missing_ok=True)
