"""Benchmark the node poll path, `GET /v1/releases/latest`, against this run's ceilings.

    python bench/latest.py [--seconds 10] [--connections 32]

Measured in one run, in interleaved rounds (median of each), every server a fresh subprocess
on 127.0.0.1 (stopped by its pid):
1. a bare ASGI hello-world app on daphne: the stack's ceiling;
2. `GET /v1/health` on the real `autonomy-orchestrator serve`: the cheapest route;
3. `GET /v1/releases/latest?channel=stable` (plain latest);
4. `GET /v1/releases/latest?channel=stable&node_id=node-NNNNN` (rollout-aware, 1,000 node ids);
5. `GET /v1/releases/latest?channel=empty` (404 answer);
and the SQL itself through plain sqlite3 on the same store, for scale.
Goal: the poll path as cheap as health (>= 90 % of its rate). Figures go to
docs/performance.md. Not a CI test.

With `--baseline-bin PATH` (another build's `autonomy-orchestrator`, e.g. one without signed
answers) routes 3 and 4 are also run against it, interleaved, and the cost of signing the poll
answers is printed: this build / baseline (goal >= 85 %, docs/trust.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    AUTH,
    LoadResult,
    Server,
    add_auth_argument,
    free_port,
    get_request,
    machine_summary,
    run_load,
    start_hello_daphne,
    start_orchestrator,
    use_auth,
    verdict,
)

RELEASES = 50


def publish(port: int, release_id: str, channel: str = "stable") -> None:
    body = json.dumps(
        {
            "release_id": release_id,
            "channel": channel,
            "policy_ref": "arm-safety:v1.2.0",
            "lock_fingerprint": "sha256:" + "ab" * 32,
            "artifact_ref": f"oci://reg/app:{release_id}",
            "metadata": {"notes": "bench"},
        }
    ).encode()
    req = urllib.request.Request(
        AUTH.url(port, "/v1/releases"),
        data=body,
        headers={"Content-Type": "application/json", **AUTH.headers()},
        method="POST",
    )
    with AUTH.urlopen(req) as resp:
        assert resp.status in (200, 201), resp.status


def check(port: int, path: str, status: int) -> None:
    try:
        req = urllib.request.Request(AUTH.url(port, path), headers=AUTH.headers())
        with AUTH.urlopen(req) as resp:
            got = resp.status
    except urllib.error.HTTPError as exc:
        got = exc.code
    assert got == status, f"{path}: {got} != {status}"


def node_poll_path(worker: int, seq: int) -> str:
    node = (worker * 7919 + seq) % 1000
    return f"/v1/releases/latest?channel=stable&node_id=node-{node:05d}"


def sql_ceiling(db: Path, seconds: float) -> float:
    conn = sqlite3.connect(db)
    sql = 'SELECT * FROM "releases_release" WHERE "channel" = ? ORDER BY "sequence" DESC LIMIT 1'
    done = 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        for _ in range(200):
            conn.execute(sql, ("stable",)).fetchall()
        done += 200
    conn.close()
    return done / seconds


def start_baseline(binary: Path, data_dir: Path, work: Path) -> Server:
    """`start_orchestrator` with another build's binary (--baseline-bin)."""
    port = free_port()
    args = [
        str(binary),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        "--log-level",
        "warn",
        *AUTH.prepare(data_dir),
    ]
    return Server(args, port, "/v1/health", {}, log=work / "base.log", context=AUTH.client_context)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--baseline-bin",
        default="",
        help="another build's autonomy-orchestrator to compare the poll routes with",
    )
    add_auth_argument(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-latest-"))
    use_auth(args.auth, work)
    print(f"auth: {args.auth}")
    print(f"machine: {machine_summary()}; sqlite {sqlite3.sqlite_version}")
    print(f"work dir: {work}")

    def load(port: int, factory: Callable[[int, int], bytes]) -> LoadResult:
        return run_load(
            port,
            factory,
            connections=args.connections,
            processes=args.client_processes,
            seconds=args.seconds,
            warmup=args.warmup,
        )

    def line(name: str, res: LoadResult, cpu: float) -> str:
        span = args.seconds + args.warmup
        return (
            f"{name:<34} {res.rate:>8,.0f} req/s  ({res.errors} non-200, p50 {res.pct(50):.1f} ms, "
            f"p99 {res.pct(99):.1f} ms, server CPU {cpu / span * 100:.0f}%, "
            f"client CPU {res.client_cpu / span * 100:.0f}%)"
        )

    rates: dict[str, list[float]] = {}
    per_cpu: dict[str, list[float]] = {}
    try:
        hello = start_hello_daphne(work)
        data = work / "data"
        srv = start_orchestrator(data, log=work / "serve.log")
        base = None
        if args.baseline_bin:
            base = start_baseline(Path(args.baseline_bin), work / "base-data", work)
        try:
            for server in [srv] + ([base] if base is not None else []):
                for i in range(RELEASES):
                    publish(server.port, f"rel-{i:04d}")
                publish(server.port, "canary-0001", channel="canary")
            check(srv.port, "/v1/releases/latest?channel=stable", 200)
            check(srv.port, "/v1/releases/latest?channel=empty", 404)
            runs = [
                ("hello", "bare ASGI hello on daphne", hello, lambda w, s: get_request("/")),
                ("health", "GET /v1/health", srv, lambda w, s: get_request("/v1/health")),
                (
                    "latest",
                    "GET /v1/releases/latest",
                    srv,
                    lambda w, s: get_request("/v1/releases/latest?channel=stable"),
                ),
                (
                    "latest_node",
                    "GET .../latest?node_id=...",
                    srv,
                    lambda w, s: get_request(node_poll_path(w, s)),
                ),
                (
                    "latest_404",
                    "GET .../latest (empty channel, 404)",
                    srv,
                    lambda w, s: get_request("/v1/releases/latest?channel=empty"),
                ),
            ]
            if base is not None:
                runs += [
                    (
                        "base_latest",
                        "baseline GET /v1/releases/latest",
                        base,
                        lambda w, s: get_request("/v1/releases/latest?channel=stable"),
                    ),
                    (
                        "base_latest_node",
                        "baseline GET .../latest?node_id=...",
                        base,
                        lambda w, s: get_request(node_poll_path(w, s)),
                    ),
                ]
            # Interleaved rounds: load from other work on the machine hits every route alike.
            for round_no in range(1, args.rounds + 1):
                print(f"round {round_no}/{args.rounds}", flush=True)
                for key, name, server, factory in runs:
                    before = server.cpu_seconds()
                    res = load(server.port, factory)
                    if key == "latest_404":  # every answer is a 404 here: count them as served
                        res.ok, res.errors = res.requests, 0
                    cpu = server.cpu_seconds() - before
                    print("  " + line(name, res, cpu), flush=True)
                    rates.setdefault(key, []).append(res.rate)
                    # requests per second of server CPU: steadier than req/s when other work
                    # on the machine takes CPU from the server
                    per_cpu.setdefault(key, []).append(
                        res.rate / (cpu / (args.seconds + args.warmup)) if cpu else 0.0
                    )
        finally:
            srv.stop()
            hello.stop()
            if base is not None:
                base.stop()
        copy = work / "copy.sqlite3"
        shutil.copy(data / "orchestrator.sqlite3", copy)
        sql = sql_ceiling(copy, min(args.seconds, 3.0))
        print(f"{'SQL (plain sqlite3, same query)':<34} {sql:>8,.0f} queries/s")

        results = {key: statistics.median(values) for key, values in rates.items()}
        efficiency = {key: statistics.median(values) for key, values in per_cpu.items()}
        print(f"\nmedians over {args.rounds} rounds:")
        print(f"{'route':<12} {'req/s':>8} {'req per server CPU-second':>26}")
        for key, value in results.items():
            print(f"{key:<12} {value:>8,.0f} {efficiency[key]:>26,.0f}")
        print(f"\n{'ratio':<22} {'req/s':>7} {'per CPU-second':>15}")
        for key in ("health", "latest", "latest_node", "latest_404"):
            print(
                f"{key + ' / hello':<22} {results[key] / results['hello'] * 100:6.1f}% "
                f"{efficiency[key] / efficiency['hello'] * 100:14.1f}%"
            )
        for key in ("latest", "latest_node"):
            print(f"{key} / health (req/s): {verdict(results[key] / results['health'], 0.90)}")
            print(
                f"{key} / health (per CPU-second): "
                f"{verdict(efficiency[key] / efficiency['health'], 0.90)}"
            )
        if base is not None:
            for key in ("latest", "latest_node"):
                print(
                    f"{key} / baseline (req/s): "
                    f"{verdict(results[key] / results['base_' + key], 0.85)}"
                )
                print(
                    f"{key} / baseline (per CPU-second): "
                    f"{verdict(efficiency[key] / efficiency['base_' + key], 0.85)}"
                )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
