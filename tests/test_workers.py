"""`serve --workers N` against the real processes: several serving processes on one port and
one SQLite store, answering as one server (docs/serve.md#workers).

Each request below opens a new connection (urllib), and the kernel hands each new connection to
one of the workers (SO_REUSEPORT), so consecutive requests land on different workers; the
request log names the worker (` worker=<i>`), and the tests check that both answered.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from rollouts.cohort import bucket
from tests.liveserver import ServeProcess, call, free_port, run_serve_expect_exit, wait_until

pytestmark = pytest.mark.e2e


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def workers_that_answered(srv: ServeProcess) -> Counter[str]:
    return Counter(re.findall(r"^.* GET /v1/\S* \d+ .* worker=(\d+)$", srv.logs(), re.M))


def publish(srv: ServeProcess, release_id: str, channel: str) -> None:
    status, _, body = call(
        srv, "POST", "/v1/releases", {"release_id": release_id, "channel": channel}
    )
    assert status == 201, body


def poll(srv: ServeProcess, channel: str, node: str) -> object:
    status, _, body = call(srv, "GET", f"/v1/releases/latest?channel={channel}&node_id={node}")
    return body.get("release_id") if status == 200 else status


def polls(srv: ServeProcess, channel: str, node: str, times: int = 8) -> set[object]:
    """What `times` polls of the node say, each on a new connection (so on either worker)."""
    return {poll(srv, channel, node) for _ in range(times)}


def ack(srv: ServeProcess, node: str, release_id: str, status: str) -> int:
    return call(srv, "POST", f"/v1/nodes/{node}/ack", {"release_id": release_id, "status": status})[
        0
    ]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    metrics_port = free_port()
    with ServeProcess(
        tmp_path_factory.mktemp("workers") / "data",
        "--workers",
        "2",
        "--metrics-addr",
        f"127.0.0.1:{metrics_port}",
    ) as server:
        server.metrics_port = metrics_port
        yield server


def test_two_workers_serve_one_port(srv):
    assert srv.proc is not None
    workers = children(srv.proc.pid)
    assert len(workers) == 2
    for _ in range(30):
        assert call(srv, "GET", "/v1/health")[0] == 200
    answered = wait_until(
        lambda: (c := workers_that_answered(srv)) and len(c) == 2 and c,
        what="both workers in the request log",
    )
    assert set(answered) == {"0", "1"}
    log = srv.logs()
    assert "starting 2 workers" in log
    assert log.count("listening on http://") == 2  # main and metrics, once: from the primary
    assert stat_mode(srv.data_dir / "workers") == 0o700


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_worker_reports_the_serve_as_the_leader(srv):
    """Background work runs in the primary only, but a health check that lands on any worker
    sees the serve lead (one serve per SQLite store)."""
    answers = [call(srv, "GET", "/v1/health/leader") for _ in range(12)]
    assert {status for status, _, _ in answers} == {200}
    assert {body["session_lock_held"] for _, _, body in answers} == {True}
    assert len({(body["current_epoch"], body["holder_id"]) for _, _, body in answers}) == 1


def test_every_worker_answers_from_the_same_state(srv):
    """The caches of each worker (latest release, plan heads, ack book) follow writes made
    through the other worker: every poll after a change, on either worker, sees it."""
    publish(srv, "w-1", "wk")
    assert polls(srv, "wk", "anyone") == {"w-1"}
    publish(srv, "w-2", "wk")
    assert polls(srv, "wk", "anyone") == {"w-2"}  # no worker keeps w-1 cached

    spec = {"plan_id": "w-plan", "release_id": "w-2", "stages": [{"stage_id": "s", "percent": 50}]}
    assert call(srv, "POST", "/v1/rollouts", spec)[0] == 201
    names = [f"wn-{i:03d}" for i in range(300)]
    inside = next(n for n in names if bucket("w-plan", n) < 50)
    outside = next(n for n in names if bucket("w-plan", n) >= 50)
    assert polls(srv, "wk", inside) == {"w-2"}
    assert polls(srv, "wk", outside) == {"w-1"}

    # an ack through one worker is seen by the next poll on any worker (read-your-writes)
    assert ack(srv, outside, "w-2", "pending") == 201
    assert polls(srv, "wk", outside) == {"w-1"}
    assert ack(srv, outside, "w-2", "active") == 200
    assert polls(srv, "wk", outside) == {"w-2"}

    # halted: nobody new by bucket on any worker; the active node keeps the release
    assert call(srv, "POST", "/v1/rollouts/w-plan/halt", {"reason": "t"})[0] == 200
    assert polls(srv, "wk", inside) == {"w-1"}
    assert polls(srv, "wk", outside) == {"w-2"}
    assert call(srv, "POST", "/v1/rollouts/w-plan/recover", {"strategy": "retry"})[0] == 200
    assert polls(srv, "wk", inside) == {"w-2"}


def test_gates_count_the_acks_of_every_worker(srv):
    """The evaluator runs in the primary only; acks taken by the other worker reach its gates."""
    publish(srv, "g-1", "gk")
    publish(srv, "g-2", "gk")
    nodes = [f"gn-{i:02d}" for i in range(24)]
    spec = {
        "plan_id": "g-plan",
        "release_id": "g-2",
        "stages": [
            {
                "stage_id": "first",
                "percent": 1,
                "nodes": nodes,
                "gates": [{"kind": "ack_success", "min_ratio": 1.0, "min_acks": len(nodes)}],
            },
            {"stage_id": "all", "percent": 100},
        ],
    }
    status, _, body = call(srv, "POST", "/v1/rollouts", spec)
    assert status == 201, body
    for node in nodes:  # each on a new connection: both workers take some
        assert ack(srv, node, "g-2", "active") == 201

    def promoted():
        status, _, plan = call(srv, "GET", "/v1/rollouts/g-plan")
        return status == 200 and plan["current_stage_id"] == "all" and plan

    wait_until(promoted, timeout=20, what="the plan promoted past its gated stage")
    status, _, body = call(srv, "GET", "/v1/releases/g-2/acks?limit=100")
    assert status == 200 and body["count"] == len(nodes)


def test_metrics_sum_the_requests_of_every_worker(srv):
    def health_count(url: str = f"http://127.0.0.1:{srv.metrics_port}/metrics") -> float:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("cp_http_requests_total{")
            and 'route="/v1/health"' in line
            and 'method="GET"' in line
        )

    before = health_count()
    for _ in range(40):
        assert call(srv, "GET", "/v1/health")[0] == 200
    # each worker's share arrives within its next snapshot (~1 s)
    wait_until(lambda: health_count() >= before + 40, timeout=10, what="40 more health requests")
    # the main listener's /metrics, on whichever worker, has the same sum
    wait_until(
        lambda: all(health_count(srv.url("/metrics")) >= before + 40 for _ in range(6)),
        timeout=10,
        what="the same sum on the main listener",
    )


def test_a_killed_worker_is_started_again_and_serve_keeps_answering(tmp_path):
    with ServeProcess(tmp_path / "data", "--workers", "2") as srv:
        assert srv.proc is not None
        first = children(srv.proc.pid)
        assert len(first) == 2
        os.kill(first[1], signal.SIGKILL)
        for _ in range(20):  # the other worker (and then both) keep answering
            wait_until(lambda: call(srv, "GET", "/v1/health")[0] == 200, what="health")
        replaced = wait_until(
            lambda: (
                (now := children(srv.proc.pid)) and len(now) == 2 and first[1] not in now and now
            ),
            what="a new worker in place of the killed one",
        )
        assert first[0] in replaced
        assert "worker 1 exited unexpectedly (killed by SIGKILL); starting it again" in srv.logs()
        assert srv.stop() == 0  # SIGTERM: every worker drains and the serve exits 0
        for pid in replaced:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def test_the_supervisor_is_a_small_process_and_each_worker_a_serve_of_its_own(tmp_path):
    """The serve's pid becomes a supervisor without Django's heap (its memory is not counted
    again beside the workers'); each worker is a `serve` process of its own, with glibc's
    malloc arenas capped unless the environment chose otherwise."""
    with ServeProcess(tmp_path / "data", "--workers", "2", env={"MALLOC_ARENA_MAX": "4"}) as chosen:
        assert chosen.proc is not None
        assert {_environ(p)["MALLOC_ARENA_MAX"] for p in children(chosen.proc.pid)} == {"4"}
    with ServeProcess(tmp_path / "data", "--workers", "2") as srv:
        assert srv.proc is not None
        supervisor = srv.proc.pid
        assert b"core.supervisor" in Path(f"/proc/{supervisor}/cmdline").read_bytes()
        rss_kib = int(_status(supervisor, "VmRSS").split()[0])
        assert rss_kib < 40 * 1024, f"the supervisor holds {rss_kib} KiB"
        pids = children(supervisor)
        assert len(pids) == 2
        for pid in pids:
            assert b"orchestrator_site\0serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert _environ(pid).get("MALLOC_ARENA_MAX") == "2"
        for _ in range(20):
            assert call(srv, "GET", "/v1/health")[0] == 200
        wait_until(lambda: len(workers_that_answered(srv)) == 2, what="both workers answered")
        assert srv.logs().count("starting 2 workers") == 1
        assert srv.logs().count("auth: open loopback mode") == 1  # the setup's lines: once


def test_a_worker_that_cannot_start_again_stops_the_serve_with_its_reason(tmp_path, pki):
    """A restarted worker sets itself up from the serve's flags: when that fails every time
    (here the TLS key was deleted since the start), the serve stops with exit status 1 and
    the worker's own reason, instead of restarting it forever."""
    key = tmp_path / "server.key"
    shutil.copy(pki.server_key, key)
    args = pki.serve_args(ca=False)
    args[args.index(str(pki.server_key))] = str(key)
    srv = ServeProcess(
        tmp_path / "data",
        "--workers",
        "2",
        *args,
        scheme="https",
        ssl_context=pki.context(),
    )
    with srv:
        assert srv.proc is not None
        workers = children(srv.proc.pid)
        key.unlink()
        os.kill(workers[1], signal.SIGKILL)
        assert srv.proc.wait(60) == 1
        logs = srv.logs()
        assert re.search(r"worker 1 exited 5 times within 5s of starting \(exit status 1\)", logs)
        assert f"--tls-key-file {key}" in logs  # the worker's own reason
        assert "serve stopped: a worker kept failing at start" in logs
        wait_until(
            lambda: not Path(f"/proc/{workers[0]}").exists() or _is_zombie(workers[0]),
            what="worker 0 stopped with its serve",
        )


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_workers_do_not_outlive_a_killed_serve(tmp_path):
    srv = ServeProcess(tmp_path / "data", "--workers", "2").start()
    workers: list[int] = []
    try:
        assert srv.proc is not None
        workers = children(srv.proc.pid)
        assert len(workers) == 2
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(5)
        wait_until(
            lambda: all(not Path(f"/proc/{p}").exists() or _is_zombie(p) for p in workers),
            timeout=15,
            what="the workers to exit after their serve was killed",
        )
    finally:
        srv.stop()
        for pid in workers:  # never leave a worker behind when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--workers must be 1 to 32, not 0"),
        ("33", "--workers must be 1 to 32, not 33"),
        ("two", "--workers must be a whole number, not 'two'"),
    ],
)
def test_a_bad_workers_value_is_refused(tmp_path, value, message):
    done = run_serve_expect_exit(tmp_path / "data", "--workers", value)
    assert done.returncode != 0
    assert message in done.stderr


def test_workers_on_postgresql_are_refused_with_the_alternative(tmp_path):
    done = run_serve_expect_exit(
        tmp_path / "data",
        "--workers",
        "2",
        "--postgres-url",
        "postgresql://postgres@127.0.0.1:1/none",
    )
    assert done.returncode != 0
    assert "--workers is for SQLite; on PostgreSQL run more replicas" in done.stderr


def test_one_worker_is_one_process_without_worker_tags(tmp_path):
    with ServeProcess(tmp_path / "data", "--workers", "1") as srv:
        assert srv.proc is not None
        assert children(srv.proc.pid) == []
        assert call(srv, "GET", "/v1/health")[0] == 200
        wait_until(lambda: "GET /v1/health 200" in srv.logs(), what="the request's log line")
        assert " worker=" not in srv.logs()
        assert not (srv.data_dir / "workers").exists()


def test_every_worker_speaks_mtls_and_enforces_the_crl(tmp_path, pki):
    """Each worker serves the same TLS listener: a client certificate from the CA is accepted
    by both, and a certificate revoked in the CRL file is refused by both without a restart."""
    from tests.pki import get, refused

    crl = tmp_path / "crl.pem"
    shutil.copy(pki.crl_empty, crl)
    srv = ServeProcess(
        tmp_path / "data",
        "--workers",
        "2",
        *pki.serve_args(crl=crl),
        scheme="https",
        ssl_context=pki.context("node-b"),
    )
    with srv:
        url = srv.url("/v1/health")
        for _ in range(20):  # new connections: both workers
            assert get(url, pki.context("node-a"))[0] == 200
        assert refused(url, pki.context())  # no client certificate
        wait_until(lambda: len(workers_that_answered(srv)) == 2, what="both workers answered")
        shutil.copy(pki.crl_revoking_a, crl)
        wait_until(
            lambda: all(refused(url, pki.context("node-a")) for _ in range(12)),
            timeout=30,
            what="node-a refused by every worker after the CRL changed",
        )
        assert get(url, pki.context("node-b"))[0] == 200
