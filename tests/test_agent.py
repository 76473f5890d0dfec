"""The reference node agent (autonomy_agent) against a fake, sometimes malicious, control plane
run in the test (tests/fakeplane.py): what it accepts, what it refuses, and what it keeps while
the server is away. The real server: tests/test_agent_e2e.py."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from autonomy_agent import (
    Agent,
    AgentConfig,
    Backoff,
    BadReleaseSignature,
    BadSignature,
    Client,
    Expired,
    Mismatch,
    Rollback,
    StateDirBusy,
    Unavailable,
    UnknownKey,
    UnsignedAnswer,
    UnsignedRelease,
    load_public_key_files,
)
from autonomy_agent.transport import parse_retry_after
from tests.fakeplane import FakePlane, release_signature, write_public
from tests.liveserver import BIN, child_env, free_port

NODE = "edge-1"
# The apply command of these tests: records what it was given, prints a line, exits 0.
RECORD = 'env | grep ^AUTONOMY_ | sort > "$MARKER"; echo "applied $AUTONOMY_RELEASE_ID"'


@pytest.fixture
def plane():
    with FakePlane() as fake:
        fake.publish()
        yield fake


def make_agent(
    tmp_path: Path,
    plane: FakePlane,
    *,
    trust: list[Ed25519PrivateKey] | None = None,
    release_trust: list[Ed25519PrivateKey] | None = None,
    command: str = RECORD,
    **config: object,
) -> Agent:
    trust_file = write_public(tmp_path / "trust.pem", *(trust or [plane.key]))
    release_files = []
    if release_trust:
        release_files.append(write_public(tmp_path / "release-trust.pem", *release_trust))
    client = Client(
        plane.url,
        NODE,
        trust_keys=[trust_file],
        release_trust_keys=release_files,
        retries=0,
    )
    marker = tmp_path / "applied.env"
    settings = {"interval": 1.0, "max_backoff": 2.0, **config}
    agent = Agent(
        client,
        AgentConfig(
            apply_command=f'MARKER="{marker}"; {command}',
            state_dir=tmp_path / "state",
            **settings,  # type: ignore[arg-type]
        ),
    )
    return agent


def applied(tmp_path: Path) -> dict[str, str]:
    marker = tmp_path / "applied.env"
    if not marker.exists():
        return {}
    return dict(line.split("=", 1) for line in marker.read_text().splitlines())


def test_the_package_imports_without_django():
    code = (
        "import sys, autonomy_agent, autonomy_agent.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'django', 'rest_framework', 'core', 'orchestrator_site', 'releases', 'rollouts'})\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_signed_answer_is_applied_acked_and_reported(tmp_path, plane, monkeypatch):
    monkeypatch.setenv("AUTONOMY_AGENT_TOKEN", "secret-node-token")
    agent = make_agent(tmp_path, plane)
    agent.cycle()

    assert agent.last_error is None
    env = applied(tmp_path)
    assert env["AUTONOMY_RELEASE_ID"] == "r1"
    assert env["AUTONOMY_SEQUENCE"] == "1"
    assert env["AUTONOMY_ARTIFACT_REF"] == "oci://registry/app@sha256:aa"
    assert env["AUTONOMY_LOCK_FINGERPRINT"] == "sha256:lock1"
    assert env["AUTONOMY_NODE_ID"] == NODE
    assert "AUTONOMY_AGENT_TOKEN" not in env  # the agent's credential stays with the agent
    statement = json.loads(Path(env["AUTONOMY_DESIRED_STATE_FILE"]).read_bytes())
    assert statement["release_id"] == "r1"
    assert [(a["release_id"], a["status"]) for a in plane.acks] == [
        ("r1", "pending"),
        ("r1", "active"),
    ]
    assert plane.acks[-1]["message"] == "applied r1"
    assert plane.acks[-1]["lock_fingerprint"] == "sha256:lock1"
    assert len(plane.events_of("agent.heartbeat")) == 1
    (apply_event,) = plane.events_of("agent.apply")
    assert apply_event["status"] == "active"
    assert apply_event["node_id"] == NODE

    # The same release again: nothing re-applied, only a heartbeat.
    (tmp_path / "applied.env").unlink()
    agent.cycle()
    assert applied(tmp_path) == {}
    assert len(plane.acks) == 2
    assert len(plane.events_of("agent.heartbeat")) == 2

    # The state dir is private.
    state_dir = tmp_path / "state"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for path in state_dir.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_a_failing_apply_command_acks_failed_with_its_output(tmp_path, plane):
    agent = make_agent(tmp_path, plane, command="echo starting; echo 'disk full' >&2; exit 3")
    agent.cycle()
    assert [a["status"] for a in plane.acks] == ["pending", "failed"]
    assert plane.acks[-1]["message"] == "starting\ndisk full"
    (event,) = plane.events_of("agent.apply")
    assert (event["status"], event["exit_code"]) == ("failed", 3)


def _tamper_body(plane: FakePlane) -> None:
    def hook(body, headers):
        body["artifact_ref"] = "oci://evil/app@sha256:ff"

    plane.answer_hook = hook


def _tamper_statement(plane: FakePlane) -> None:
    import base64

    def hook(body, headers):
        raw = base64.b64decode(headers["X-Autonomy-Desired-State"])
        raw = raw.replace(b"oci://registry/app", b"oci://evil00000/app")
        headers["X-Autonomy-Desired-State"] = base64.b64encode(raw).decode()
        body["artifact_ref"] = body["artifact_ref"].replace("registry", "evil00000")

    plane.answer_hook = hook


def _strip_signature(plane: FakePlane) -> None:
    def hook(body, headers):
        headers.clear()

    plane.answer_hook = hook


def _expire(plane: FakePlane) -> None:
    plane.issued_at = datetime.now(UTC) - timedelta(hours=1)
    plane.ttl = timedelta(minutes=2)


def _other_node(plane: FakePlane) -> None:
    def hook(statement):
        statement["node_id"] = "edge-2"

    plane.statement_hook = hook


def _rotate_away(plane: FakePlane) -> None:
    plane.key = Ed25519PrivateKey.generate()  # the server signs with a key the node never pinned


@pytest.mark.parametrize(
    ("attack", "error"),
    [
        (_tamper_body, Mismatch),
        (_tamper_statement, BadSignature),
        (_strip_signature, UnsignedAnswer),
        (_expire, Expired),
        (_other_node, Mismatch),
        (_rotate_away, UnknownKey),
    ],
    ids=["tampered-body", "tampered-statement", "unsigned", "expired", "other-node", "rotated"],
)
def test_an_untrustworthy_answer_is_refused_and_nothing_runs(tmp_path, plane, attack, error):
    agent = make_agent(tmp_path, plane, trust=[plane.key])
    attack(plane)
    agent.cycle()
    agent.cycle()

    assert isinstance(agent.last_error, error)
    assert applied(tmp_path) == {}
    assert plane.acks == []
    (refused,) = plane.events_of("agent.refused")  # reported once, not every interval
    assert refused["reason"] == error.reason
    beats = sorted(plane.events_of("agent.heartbeat"), key=lambda e: e["timestamp"])
    assert beats[-1]["refused"] == error.reason
    assert agent.state.channel("stable").get("sequence") is None


def test_an_older_sequence_is_refused_also_after_a_restart(tmp_path, plane):
    plane.publish(release_id="r5", sequence=5)
    with make_agent(tmp_path, plane) as first:
        first.cycle()
    assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r5"
    (tmp_path / "applied.env").unlink()

    plane.publish(release_id="r4", sequence=4)  # validly signed, but older: a rollback attack
    agent = make_agent(tmp_path, plane)  # a new process: the floor comes from the state dir
    agent.cycle()
    assert isinstance(agent.last_error, Rollback)
    assert "below sequence 5" in str(agent.last_error)
    assert applied(tmp_path) == {}
    assert {a["release_id"] for a in plane.acks} == {"r5"}


def test_a_pinned_key_among_several_verifies_after_rotation(tmp_path, plane):
    old = plane.key
    new = Ed25519PrivateKey.generate()
    agent = make_agent(tmp_path, plane, trust=[old, new])  # told about the new key beforehand
    agent.cycle()
    plane.key = new
    plane.publish(release_id="r2", sequence=2)
    agent.cycle()
    assert agent.last_error is None
    assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r2"


def test_an_unsigned_release_is_refused_under_a_release_trust_key(tmp_path, plane):
    offline = Ed25519PrivateKey.generate()
    agent = make_agent(tmp_path, plane, release_trust=[offline])
    agent.cycle()
    assert isinstance(agent.last_error, UnsignedRelease)
    assert applied(tmp_path) == {}
    assert [(a["release_id"], a["status"]) for a in plane.acks] == [("r1", "rejected")]

    # Signed offline by the pinned key: accepted, and the apply command learns the key id.
    release = plane.publish()
    release["release_signature"] = release_signature(offline, release)
    agent.cycle()
    assert agent.last_error is None
    assert applied(tmp_path)["AUTONOMY_RELEASE_KEY_ID"] == release["release_signature"]["key_id"]


@pytest.mark.parametrize("how", ["other-key", "other-artifact"])
def test_a_badly_signed_release_is_refused(tmp_path, plane, how):
    offline = Ed25519PrivateKey.generate()
    release = plane.publish()
    if how == "other-key":
        release["release_signature"] = release_signature(Ed25519PrivateKey.generate(), release)
    else:  # signed for one artifact, served with another
        release["release_signature"] = release_signature(offline, release)
        release["artifact_ref"] = "oci://evil/app@sha256:ff"
    agent = make_agent(tmp_path, plane, release_trust=[offline])
    agent.cycle()
    assert isinstance(agent.last_error, BadReleaseSignature)
    assert applied(tmp_path) == {}


def test_retry_after_is_honoured_and_backoff_grows_to_its_cap(tmp_path, plane):
    plane.failures = [(503, "3"), (429, None)]
    sleeps: list[float] = []
    client = Client(
        plane.url,
        NODE,
        trust_keys=[write_public(tmp_path / "t.pem", plane.key)],
        retries=2,
        backoff_base=0.5,
        backoff_cap=4,
        sleep=sleeps.append,
    )
    assert client.poll().release_id == "r1"
    assert sleeps[0] >= 3  # the server's Retry-After
    assert 0.5 <= sleeps[1] <= 1.0

    plane.failures = [(503, None)] * 3
    with pytest.raises(Unavailable) as caught:
        client.poll()
    assert caught.value.status == 503

    when = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=when) == 30
    assert parse_retry_after("7") == 7
    assert parse_retry_after("soon") is None

    backoff = Backoff(base=1, cap=8, rng=lambda: 1.0)
    assert [backoff.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    assert backoff.next(retry_after=30) == 30
    half = Backoff(base=1, cap=8, rng=lambda: 0.0)
    assert [half.next() for _ in range(3)] == [0.5, 1, 2]


def test_events_are_spooled_while_the_server_is_away_and_none_is_lost(tmp_path, plane):
    agent = make_agent(tmp_path, plane)
    agent.cycle()
    plane.stop()
    delays = [agent.cycle() for _ in range(4)]
    assert all(0 < d <= 2.0 for d in delays)  # backoff, capped by max_backoff
    assert agent.state.spool_count() == 4
    for batch in (tmp_path / "state" / "spool").iterdir():
        assert stat.S_IMODE(batch.stat().st_mode) == 0o600

    plane.start()  # the same port
    agent.cycle()
    assert agent.last_error is None
    assert agent.state.spool_count() == 0
    assert len(plane.events_of("agent.heartbeat")) == 6
    assert len(plane.events) == agent.state.data["events_spooled"]
    assert agent.state.data["events_dropped"] == 0


def test_a_resent_batch_is_not_counted_twice(tmp_path, plane):
    agent = make_agent(tmp_path, plane)
    event = agent.client.event("agent.heartbeat")
    agent.client.send_events([event])
    assert agent.client.send_events([event]) == {"received": 1, "inserted": 0, "deduped": 1}


def test_the_spool_is_bounded_and_drops_the_oldest(tmp_path, plane):
    plane.stop()
    agent = make_agent(tmp_path, plane, spool_max_bytes=2000)
    for _ in range(20):
        agent.cycle()
    assert agent.state.spool_bytes() <= 2000
    kept = agent.state.spool_count()
    dropped = agent.state.data["events_dropped"]
    assert kept > 0 and dropped > 0 and kept + dropped == 20
    plane.start()
    agent.cycle()
    data = agent.state.data
    assert len(plane.events) == data["events_spooled"] - data["events_dropped"]
    beats = sorted(plane.events_of("agent.heartbeat"), key=lambda e: e["timestamp"])
    assert beats[-1]["events_dropped"] >= dropped  # the loss is reported


def test_one_agent_per_state_dir(tmp_path, plane):
    first = make_agent(tmp_path, plane)
    with pytest.raises(StateDirBusy, match="another agent is using the state dir"):
        make_agent(tmp_path, plane)
    first.close()
    make_agent(tmp_path, plane).close()  # free again


def test_key_files_may_hold_several_keys_and_refuse_other_material(tmp_path):
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    path = write_public(tmp_path / "two.pem", *keys)
    assert len(load_public_key_files([path])) == 2
    (tmp_path / "junk.pem").write_text("not a key\n")
    with pytest.raises(ValueError, match="no PEM public key"):
        load_public_key_files([tmp_path / "junk.pem"])


def _agent_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "agent", *args], capture_output=True, text=True, timeout=timeout, env=child_env()
    )


def test_cli_once_applies_then_refuses_a_rotated_away_key(tmp_path, plane):
    trust = write_public(tmp_path / "trust.pem", plane.key)
    marker = tmp_path / "applied.env"
    common = [
        "--server", plane.url, "--node-id", NODE, "--trust-key", str(trust),
        "--state-dir", str(tmp_path / "state"), "--once",
        "--apply-command", f'MARKER="{marker}"; {RECORD}',
    ]  # fmt: skip
    done = _agent_cli(*common)
    assert done.returncode == 0, done.stderr
    assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r1"

    plane.key = Ed25519PrivateKey.generate()
    plane.publish(release_id="r2", sequence=2)
    done = _agent_cli(*common)
    assert done.returncode == 1
    assert "not pinned" in done.stderr
    assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r1"


def test_cli_refuses_bad_flags_in_one_line(tmp_path):
    trust = write_public(tmp_path / "trust.pem", Ed25519PrivateKey.generate())
    base = [
        "--server", f"http://127.0.0.1:{free_port()}", "--node-id", NODE,
        "--state-dir", str(tmp_path / "s"), "--apply-command", "true",
    ]  # fmt: skip
    bad = _agent_cli(*base, "--trust-key", str(trust), "--interval", "soon")
    assert bad.returncode == 2
    assert "'soon' is not a duration" in bad.stderr
    missing = _agent_cli(*base, "--trust-key", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2
    assert "cannot read the key file" in missing.stderr
    help_text = _agent_cli("--help")
    assert help_text.returncode == 0
    assert "--release-trust-key" in help_text.stdout
