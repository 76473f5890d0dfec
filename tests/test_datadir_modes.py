"""The data dir is private (issue 11, item 8), over the real `serve`: created 0700, tightened with
a warning when more open, the SQLite database and its -wal / -shm files 0600; the default moved
from the cache dir to the state dir without losing an old store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import requests

from tests.liveserver import ServeProcess

pytestmark = pytest.mark.e2e

TIMEOUT = 10
DB = "orchestrator.sqlite3"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def ingest_one(srv: ServeProcess, event_id: str = "e-1") -> None:
    event = {
        "event_id": event_id,
        "event_type": "app.heartbeat",
        "node_id": "node-a",
        "timestamp": "2026-04-07T10:00:00Z",
    }
    response = requests.post(srv.url("/v1/events"), json={"events": [event]}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text


def test_a_new_data_dir_and_every_store_file_are_private(tmp_path):
    data = tmp_path / "data"
    os.umask(0o022)  # a usual login umask: files would be 0644 without the server's care
    with ServeProcess(data) as srv:
        ingest_one(srv)  # the WAL and SHM files exist while the server runs
        assert mode(data) == 0o700
        for name in (DB, DB + "-wal", DB + "-shm"):
            assert (data / name).exists(), name
            assert mode(data / name) == 0o600, name
        for path in data.iterdir():  # keys and anything else too
            assert mode(path) & 0o077 == 0, path


def test_an_open_data_dir_and_open_store_files_are_tightened_with_a_warning(tmp_path):
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        ingest_one(srv)
    os.chmod(data, 0o755)
    os.chmod(data / DB, 0o644)
    with ServeProcess(data) as srv:
        ingest_one(srv, "e-2")
        assert mode(data) == 0o700
        assert mode(data / DB) == 0o600
        assert mode(data / (DB + "-wal")) == 0o600
        logs = srv.logs()
    assert f"{data} was mode 0755, readable by other users: tightened to 0700" in logs
    assert f"{data / DB} was mode 0644, readable by other users: tightened to 0600" in logs


class DefaultDirServe(ServeProcess):
    """serve without --data-dir: the default data dir of a fake HOME."""

    def args(self) -> list[str]:
        args = super().args()
        index = args.index("--data-dir")
        return args[:index] + args[index + 2 :]


def home_env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "XDG_STATE_HOME": "",
        "XDG_CACHE_HOME": "",
        "AUTONOMY_DATA_DIR": "",
    }


def events_of(srv: ServeProcess) -> list[str]:
    answer = requests.get(srv.url("/v1/events"), timeout=TIMEOUT).json()
    return [e["event_id"] for e in answer["events"]]


def test_the_default_data_dir_is_the_state_dir(tmp_path):
    home = tmp_path / "home"
    with DefaultDirServe(tmp_path / "logs", env=home_env(home)) as srv:
        ingest_one(srv)
    state = home / ".local" / "state" / "autonomyops" / "orchestrator"
    assert (state / DB).exists()
    assert mode(state) == 0o700
    assert not (home / ".cache").exists()
    assert "default of earlier versions" not in srv.logs()


def test_an_old_default_data_dir_keeps_serving_its_data_with_a_one_line_notice(tmp_path):
    home = tmp_path / "home"
    old = home / ".cache" / "autonomyops" / "orchestrator"
    new = home / ".local" / "state" / "autonomyops" / "orchestrator"
    with ServeProcess(old) as srv:  # what an earlier version made by default
        ingest_one(srv, "old-1")
    with DefaultDirServe(tmp_path / "logs", env=home_env(home)) as srv:
        assert events_of(srv) == ["old-1"]  # no data lost
        notice = [line for line in srv.logs().splitlines() if "default of earlier versions" in line]
    assert len(notice) == 1
    assert f"using {old}" in notice[0] and f"the default is now {new}" in notice[0]
    assert f"mv {old} {new}" in notice[0]
    assert not new.exists()

    # the operator follows the notice: the moved store is served, and no notice any more
    new.parent.mkdir(parents=True)
    old.rename(new)
    with DefaultDirServe(tmp_path / "logs2", env=home_env(home)) as srv:
        assert events_of(srv) == ["old-1"]
        assert "default of earlier versions" not in srv.logs()
