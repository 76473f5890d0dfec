"""Benchmark the rollout-aware node poll, `GET /v1/releases/latest?channel=&node_id=`, with an
active rollout plan, against this run's ceilings.

    python bench/rollout_poll.py [--seconds 5] [--rounds 3] [--connections 32]

Measured in one run, in interleaved rounds (median of each), every server a fresh subprocess on
127.0.0.1 (stopped by its pid), reusing bench/_common.py:
1. a bare ASGI hello-world app on daphne: the stack's ceiling;
2. `GET /v1/health` on the real `autonomy-orchestrator serve`: the cheapest route;
3. `GET /v1/releases/latest?channel=plain&node_id=…`: a channel whose latest release has no plan;
4. `GET /v1/releases/latest?channel=stable&node_id=…`: the latest release has an `active`
   three-stage plan (stage 2 of 3 open at 30 %, explicit members, 100 of the 1,000 polling nodes
   already acked it `active`), so answers mix "new release" and "previous release".
Goal: the rollout-aware poll within 10 % of the plain one (>= 90 % of its rate). Figures go to
docs/rollouts.md ("Performance"). Not a CI test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    get_request,
    machine_summary,
    run_load,
    start_hello_daphne,
    start_orchestrator,
    verdict,
)

NODES = 1000


def call(port: int, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "X-Autonomy-Operator": "bench"},
        method=method,
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def prepare(port: int) -> None:
    for channel in ("stable", "plain"):
        for i in range(20):
            call(
                port,
                "POST",
                "/v1/releases",
                {"release_id": f"{channel}-{i:03d}", "channel": channel},
            )
    call(
        port,
        "POST",
        "/v1/rollouts",
        {
            "plan_id": "plan-bench",
            "release_id": "stable-019",
            "stages": [
                {"stage_id": "canary", "percent": 5, "nodes": ["node-00001", "node-00002"]},
                {
                    "stage_id": "wide",
                    "percent": 30,
                    "nodes": ["node-00003"],
                    "gates": [{"kind": "manual"}, {"kind": "ack_failure", "max_ratio": 0.5}],
                },
                {"stage_id": "all", "percent": 100},
            ],
        },
    )
    call(port, "POST", "/v1/rollouts/plan-bench/promote", {"reason": "bench"})
    for i in range(0, NODES, 10):
        call(
            port,
            "POST",
            f"/v1/nodes/node-{i:05d}/ack",
            {"release_id": "stable-019", "status": "active"},
        )
    status = call(port, "GET", "/v1/rollouts/plan-bench/status")
    assert status["phase"] == "active" and status["current_stage_id"] == "wide", status
    answers = {
        call(port, "GET", f"/v1/releases/latest?channel=stable&node_id=node-{i:05d}")["release_id"]
        for i in range(200)
    }
    assert answers == {"stable-019", "stable-018"}, answers


def poll(channel: str) -> Callable[[int, int], bytes]:
    def factory(worker: int, seq: int) -> bytes:
        node = (worker * 7919 + seq) % NODES
        return get_request(f"/v1/releases/latest?channel={channel}&node_id=node-{node:05d}")

    return factory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-rollout-poll-"))
    print(f"machine: {machine_summary()}")
    rates: dict[str, list[float]] = {}
    p99s: dict[str, list[float]] = {}
    try:
        hello = start_hello_daphne(work)
        srv = start_orchestrator(work / "data", log=work / "serve.log")
        try:
            prepare(srv.port)
            runs = [
                ("hello", "bare ASGI hello on daphne", hello, lambda w, s: get_request("/")),
                ("health", "GET /v1/health", srv, lambda w, s: get_request("/v1/health")),
                ("poll_plain", "poll, no plan", srv, poll("plain")),
                ("poll_rollout", "poll, active rollout plan", srv, poll("stable")),
            ]
            for round_no in range(1, args.rounds + 1):
                print(f"round {round_no}/{args.rounds}", flush=True)
                for key, name, server, factory in runs:
                    before = server.cpu_seconds()
                    res = run_load(
                        server.port,
                        factory,
                        connections=args.connections,
                        processes=args.client_processes,
                        seconds=args.seconds,
                        warmup=args.warmup,
                    )
                    cpu = (server.cpu_seconds() - before) / (args.seconds + args.warmup)
                    print(
                        f"  {name:<28} {res.rate:>8,.0f} req/s ({res.errors} non-200, "
                        f"p50 {res.pct(50):.1f} ms, p99 {res.pct(99):.1f} ms, "
                        f"server CPU {cpu * 100:.0f}%)",
                        flush=True,
                    )
                    rates.setdefault(key, []).append(res.rate)
                    p99s.setdefault(key, []).append(res.pct(99))
        finally:
            srv.stop()
            hello.stop()
        results = {key: statistics.median(values) for key, values in rates.items()}
        print(f"\nmedians over {args.rounds} rounds:")
        for key, value in results.items():
            print(
                f"{key:<13} {value:>8,.0f} req/s  p99 {statistics.median(p99s[key]):.1f} ms  "
                f"({value / results['hello'] * 100:.1f}% of hello)"
            )
        print(
            f"poll_rollout / poll_plain  "
            f"{verdict(results['poll_rollout'] / results['poll_plain'], 0.90)}"
        )
        print(
            f"poll_rollout / health      {results['poll_rollout'] / results['health'] * 100:.1f}%"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
