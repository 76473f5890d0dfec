"""`serve` as users run it: flags and env vars, refusals, logs, data dir, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time

import pytest

from tests.liveserver import BIN, ServeProcess, free_port, run_serve_expect_exit
from tests.pki import get

pytestmark = pytest.mark.e2e


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _assert_one_line_refusal(result, *needles: str) -> None:
    assert result.returncode != 0, result
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--listen", "not-an-address"], ["--listen", "no port"]),
        (["--listen", "127.0.0.1:99999"], ["--listen", "port must be a number"]),
        (["--metrics-addr", "127.0.0.1:x"], ["--metrics-addr"]),
        (["--log-level", "verbose"], ["--log-level", "debug, info, warn, error"]),
        (["--log-format", "xml"], ["--log-format", "text, json"]),
        (["--tls-crl-sync-interval", "5 minutes"], ["--tls-crl-sync-interval", "30s, 5m"]),
        (["--tls-crl-sync-min-sources", "0"], ["--tls-crl-sync-min-sources"]),
        (["--tls-crl-sync-interval", "10ms"], ["--tls-crl-sync-interval", "at least 1s"]),
        (["--silent-after", "ten minutes"], ["--silent-after", "30s, 5m"]),
        (["--silent-after", "0"], ["--silent-after", "between 1s and 8760h"]),
        (["--stuck-after", "soon"], ["--stuck-after", "30s, 5m"]),
        (["--stuck-after", "500ms"], ["--stuck-after", "at least 1s"]),
        (["--events-retention", "a month"], ["--events-retention", "30s, 5m, 1h, 7d or 0"]),
        (["--events-retention", "500ms"], ["--events-retention", "at least 1s"]),
        (["--fleet-forget-after", "soon"], ["--fleet-forget-after", "not a duration"]),
    ],
)
def test_bad_flag_values_are_one_line_errors(tmp_path, args, needles):
    result = run_serve_expect_exit(tmp_path / "data", *args)
    _assert_one_line_refusal(result, *needles)
    assert not (tmp_path / "data").exists()  # refused before touching the data dir


def test_bad_values_from_env_vars_are_refused_too(tmp_path):
    result = run_serve_expect_exit(tmp_path / "data", env={"AUTONOMY_LOG_LEVEL": "loud"})
    _assert_one_line_refusal(result, "--log-level", "'loud'")
    result = run_serve_expect_exit(tmp_path / "data", env={"AUTONOMY_SILENT_AFTER": "soon"})
    _assert_one_line_refusal(result, "--silent-after", "'soon'")
    result = run_serve_expect_exit(tmp_path / "data", env={"AUTONOMY_EVENTS_RETENTION": "1y"})
    _assert_one_line_refusal(result, "--events-retention", "'1y'")


def test_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_serve_expect_exit(tmp_path / "data", "--listen", f"127.0.0.1:{port}")
    _assert_one_line_refusal(result, f"127.0.0.1:{port}", "already in use")
    assert not (tmp_path / "data").exists()


def test_unwritable_data_dir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_serve_expect_exit(blocker / "data")
    _assert_one_line_refusal(result, "data dir", str(blocker / "data"))


def test_env_vars_configure_serve_and_flags_win(tmp_path):
    env_port, flag_port = free_port(), free_port()
    data = tmp_path / "from-env"
    env = {
        "AUTONOMY_LISTEN": f"127.0.0.1:{env_port}",
        "AUTONOMY_DATA_DIR": str(data),
        "AUTONOMY_LOG_FORMAT": "json",
        "AUTONOMY_LOG_LEVEL": "info",
        "AUTONOMY_METRICS_ADDR": f"127.0.0.1:{free_port()}",
    }
    with _EnvOnlyServe(tmp_path / "logs", env=env, port=env_port) as srv:
        assert get(srv.url("/v1/health"))[0] == 200
        assert get(srv.url("/metrics"))[0] == 200  # AUTONOMY_METRICS_ADDR enabled metrics
    assert any(data.iterdir())  # the store went to AUTONOMY_DATA_DIR
    lines = _json_lines(srv.stderr_path.read_text())
    assert any(f"127.0.0.1:{env_port}" in line["message"] for line in lines)

    # The flag wins over the env var.
    with ServeProcess(tmp_path / "flag-data", env=env, port=flag_port) as srv2:
        assert get(srv2.url("/v1/health"))[0] == 200
    assert any((tmp_path / "flag-data").iterdir())


class _EnvOnlyServe(ServeProcess):
    """`autonomy-orchestrator serve` with no flags at all: everything from AUTONOMY_* vars."""

    def args(self) -> list[str]:
        return [str(BIN), "serve"]


def test_data_dir_created_0700_and_logs_say_where(tmp_path):
    data = tmp_path / "deep" / "data"
    with ServeProcess(data) as srv:
        mode = stat.S_IMODE(data.stat().st_mode)
        assert mode == 0o700, oct(mode)
        get(srv.url("/v1/health"))
        get(srv.url("/v1/no-such-route"))
        deadline = time.monotonic() + 5
        while "/v1/no-such-route" not in srv.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
    text = srv.stderr_path.read_text()
    assert f"listening on http://127.0.0.1:{srv.port}" in text
    assert str(data) in text  # where the data lives
    assert "GET /v1/health 200" in text
    # One line per request: Django's own "Not Found" warning does not duplicate the access log
    # (whose line also names the path in the 404's reason).
    lines = [line for line in text.splitlines() if "/v1/no-such-route" in line]
    assert len(lines) == 1 and "GET /v1/no-such-route 404" in lines[0], text


def test_json_logs_and_level_filter(tmp_path):
    with ServeProcess(tmp_path / "data", "--log-format", "json") as srv:
        get(srv.url("/v1/health"))
        get(srv.url("/v1/nothing-here"))
    lines = _json_lines(srv.stderr_path.read_text())  # every line parses as one JSON object
    for line in lines:
        assert {"time", "level", "message"} <= set(line)
        assert line["level"] in ("debug", "info", "warn", "error")
        assert line["time"].endswith("Z")
    access = [line for line in lines if line.get("path") == "/v1/nothing-here"]
    assert len(access) == 1
    assert access[0]["method"] == "GET"
    assert access[0]["status"] == 404
    assert access[0]["duration_ms"] >= 0
    assert any("listening on" in line["message"] for line in lines)

    with ServeProcess(tmp_path / "data2", "--log-level", "warn") as quiet:
        get(quiet.url("/v1/health"))
        get(quiet.url("/v1/nothing-here"))
    text = quiet.stderr_path.read_text()
    assert "GET /v1/health" not in text and "listening on" not in text


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(tmp_path):
    """A POST whose body is still uploading when SIGTERM arrives gets its answer."""
    with ServeProcess(tmp_path / "data") as srv:
        body = json.dumps({"events": []}).encode().ljust(200_000)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body[:1000]
            )
            time.sleep(0.3)
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while "received SIGTERM" not in srv.logs() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "received SIGTERM" in srv.logs()
            # New connections are refused once shutdown began.
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
            conn.sendall(body[1000:])
            response = b""
            while chunk := conn.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.1 "), response[:200]
        status = int(response.split()[1])
        assert status < 500, response[:500]
        assert srv.proc.wait(timeout=15) == 0


def test_sigint_exits_0(tmp_path):
    srv = ServeProcess(tmp_path / "data").start()
    try:
        assert get(srv.url("/v1/health"))[0] == 200
    finally:
        code = srv.stop(signal.SIGINT)
    assert code == 0
    assert "received SIGINT" in srv.logs()
    assert os.path.exists(tmp_path / "data")
