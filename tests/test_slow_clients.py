"""Slow and greedy clients over the real `serve`, loopback only, bounded in count and time
(issue 11, item 9): slowloris connections are closed after an absolute deadline (a byte now and
then does not extend it), connections per client address are capped, and an upload larger than
the limit is never spooled whole, on the Django path too."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.liveserver import ServeProcess

pytestmark = pytest.mark.e2e

TIMEOUT = 10


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def trickle(sock: socket.socket, stop: threading.Event, seconds: float) -> None:
    """One header byte every `seconds`: Twisted's idle timer alone would never fire."""
    for byte in b"X-Slow: " + b"a" * 1000:
        if stop.wait(seconds):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def test_slowloris_connections_are_closed_and_the_server_keeps_answering(tmp_path):
    env = {"AUTONOMY_CLIENT_HEADER_TIMEOUT": "2", "AUTONOMY_MAX_CONNECTIONS_PER_CLIENT": "200"}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        stop = threading.Event()
        slow = []
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(sock)
        threads = [threading.Thread(target=trickle, args=(s, stop, 0.5)) for s in slow]
        for thread in threads:
            thread.start()
        try:
            # the server answers others meanwhile
            health = requests.get(srv.url("/v1/health"), timeout=TIMEOUT)
            assert health.status_code == 200
            # each slow connection is closed (within a bound far below "a byte every 0.5 s
            # forever": the socket timeout is 10 s after the 2 s deadline)
            assert all(closed_by_server(sock) for sock in slow)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
            for sock in slow:
                sock.close()
        assert requests.get(srv.url("/v1/health"), timeout=TIMEOUT).status_code == 200
        logs = srv.logs()
    assert "closed slow or excess client connections (last from 127.0.0.1)" in logs
    assert "header timeout" in logs


def test_a_body_that_trickles_is_closed_after_the_body_deadline(tmp_path):
    env = {"AUTONOMY_CLIENT_BODY_TIMEOUT": "2"}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        stop = threading.Event()
        thread = threading.Thread(target=trickle, args=(sock, stop, 0.5))
        thread.start()
        try:
            assert closed_by_server(sock)
        finally:
            stop.set()
            thread.join(timeout=5)
            sock.close()


def test_connections_per_client_address_are_capped(tmp_path):
    env = {"AUTONOMY_MAX_CONNECTIONS_PER_CLIENT": "5", "AUTONOMY_CLIENT_HEADER_TIMEOUT": "30"}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        held = [
            socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) for _ in range(5)
        ]
        try:
            for sock in held:  # the server holds these open (no bytes sent, no deadline yet)
                sock.settimeout(0.5)
                assert not closed_by_server(sock)
            extra = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
            assert closed_by_server(extra)
            extra.close()
        finally:
            for sock in held:
                sock.close()
        # once they are gone, the client is served again
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                assert requests.get(srv.url("/v1/health"), timeout=TIMEOUT).status_code == 200
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _largest_open_temp_file(pid: int) -> int:
    largest = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
            if target.startswith("/") and not target.startswith(("/dev", "/proc")):
                largest = max(largest, os.stat(fd).st_size)
        except OSError:
            continue
    return largest


@pytest.mark.parametrize("accept", ["application/json", "text/html"])  # fast path, Django path
def test_a_huge_chunked_upload_is_never_spooled_past_the_limit(tmp_path, accept):
    limit = 200_000
    env = {"AUTONOMY_MAX_BODY_BYTES": str(limit)}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        assert srv.proc is not None
        pid = srv.proc.pid
        store = srv.data_dir / "orchestrator.sqlite3"
        watched = {"largest": 0}

        def body():  # 40 MB in chunks, no Content-Length: chunked transfer encoding
            chunk = b"x" * 65536
            yield b'{"events": ["'
            for _ in range(640):
                largest = _largest_open_temp_file(pid) - store.stat().st_size
                watched["largest"] = max(watched["largest"], largest)
                yield chunk
            yield b'"]}'

        answer = requests.post(
            srv.url("/v1/events"),
            data=body(),
            headers={"Content-Type": "application/json", "Accept": accept},
            timeout=60,
        )
        assert answer.status_code == 413
        assert answer.json()["limit"] == limit
    assert watched["largest"] < 2 * limit  # 40 MB sent, the server kept about the limit


def _from(address: str, port: int) -> socket.socket:
    """A connection to the server from the loopback address `address` (127.0.0.x)."""
    return socket.create_connection(
        ("127.0.0.1", port), timeout=TIMEOUT, source_address=(address, 0)
    )


def _json(address: str, port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
    """One request over a fresh connection from `address`."""
    import http.client
    import json

    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=TIMEOUT, source_address=(address, 0)
    )
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_background_threads_keep_working_while_the_listener_is_saturated(tmp_path):
    """Four client addresses each hold the per-client cap of slow connections (headers never
    finish); meanwhile a stage's time_soak expires and the evaluator promotes it, and an ingest
    from a fifth address through a fresh connection is stored by the event writer."""
    cap = 16
    env = {
        "AUTONOMY_MAX_CONNECTIONS_PER_CLIENT": str(cap),
        "AUTONOMY_CLIENT_HEADER_TIMEOUT": "120",  # the slow ones stay for the whole test
    }
    with ServeProcess(tmp_path / "data", env=env) as srv:
        port = srv.port
        release = {"release_id": "r1", "channel": "stable", "artifact_ref": "oci://example/a:1"}
        assert _json("127.0.0.1", port, "POST", "/v1/releases", release)[0] == 201
        held: list[socket.socket] = []
        try:
            for n in range(2, 6):
                for _ in range(cap):
                    sock = _from(f"127.0.0.{n}", port)
                    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    held.append(sock)
            for sock in held:
                sock.settimeout(0.2)
                assert not closed_by_server(sock)  # all held open by the server
            over = _from("127.0.0.2", port)  # the cap is reached for that address
            assert closed_by_server(over)
            over.close()

            spec = {
                "plan_id": "soak",
                "release_id": "r1",
                "stages": [
                    {
                        "stage_id": "s1",
                        "percent": 10,
                        "gates": [{"kind": "time_soak", "seconds": 2}],
                    },
                    {"stage_id": "s2", "percent": 100},
                ],
            }
            assert _json("127.0.0.6", port, "POST", "/v1/rollouts", spec)[0] == 201
            event = {
                "event_id": "sat-1",
                "event_type": "app.heartbeat",
                "node_id": "node-sat",
                "timestamp": "2026-04-07T10:00:00Z",
            }
            status, answer = _json("127.0.0.7", port, "POST", "/v1/events", {"events": [event]})
            assert (status, answer["inserted"]) == (200, 1)

            deadline = time.monotonic() + 30
            while True:
                status, plan = _json("127.0.0.8", port, "GET", "/v1/rollouts/soak/status")
                if plan.get("current_stage_id") == "s2":
                    break
                assert time.monotonic() < deadline, f"not promoted while saturated: {plan}"
                time.sleep(0.2)
            assert plan["history"][-1]["operator"] == "evaluator"
            status, stored = _json("127.0.0.9", port, "GET", "/v1/events?node_id=node-sat")
            assert status == 200 and [e["event_id"] for e in stored["events"]] == ["sat-1"]
            for sock in held:  # still held: the promotion happened during the saturation
                assert not closed_by_server(sock)
        finally:
            for sock in held:
                sock.close()
