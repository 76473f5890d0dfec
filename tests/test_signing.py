"""Plan signing: the key in the data dir, the public key from the command and the API, and
signatures any Ed25519 library verifies over the spec exactly as received (API.md §4)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.management import call_command

from rollouts import signing
from tests.factories import ReleaseFactory
from tests.liveserver import cli

pytestmark = pytest.mark.django_db

# Odd spacing, key order, a float written as "5.0", unicode, unknown keys: all must survive.
RAW_SPEC = (
    b'{ "stages" : [ {"percent": 5.0, "stage_id":"canary",  "gates": [{"kind":"manual"}]},\n'
    b'  {"stage_id": "all", "percent": 100}],\n'
    b'  "release_id": "rel-sig", "plan_id": "plan-sig", "description": "caf\xc3\xa9 \\u00e9",'
    b' "x-team": {"owner": "ops"} }\n'
)


@pytest.fixture
def data_dir(settings, tmp_path):
    path = tmp_path / "data"
    settings.DATA_DIR = path
    return path


def public_key_from_pem(pem: str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    return key


def test_spec_round_trips_byte_for_byte_and_the_signature_verifies(api, data_dir):
    ReleaseFactory(release_id="rel-sig")
    created = api.post("/v1/rollouts", RAW_SPEC, content_type="application/json")
    assert created.status_code == 201, created.content

    envelope = api.get("/v1/rollouts/plan-sig/spec")
    assert envelope.status_code == 200
    assert envelope["Content-Type"] == "application/json"
    assert RAW_SPEC in envelope.content  # the spec is embedded verbatim
    body = envelope.json()
    assert body["plan_id"] == "plan-sig"
    assert body["spec"]["x-team"] == {"owner": "ops"}
    assert body["digest"] == "sha256:" + hashlib.sha256(RAW_SPEC).hexdigest()

    raw = api.get("/v1/rollouts/plan-sig/spec?raw=true")
    assert raw.content == RAW_SPEC
    assert raw["X-Autonomy-Digest"] == body["digest"]

    pem = api.get("/v1/signing-key")
    assert pem.status_code == 200
    assert pem["Content-Type"] == "application/x-pem-file"
    public = public_key_from_pem(pem.content.decode())
    signature = body["signature"]
    assert signature["alg"] == "Ed25519"
    # Raises InvalidSignature when it does not verify.
    public.verify(base64.b64decode(signature["value"]), body["digest"].encode())
    raw_public = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signature["key_id"] == hashlib.sha256(raw_public).hexdigest()[:16]

    # A tampered spec does not verify.
    from cryptography.exceptions import InvalidSignature

    tampered = "sha256:" + hashlib.sha256(RAW_SPEC.replace(b"5.0", b"50")).hexdigest()
    with pytest.raises(InvalidSignature):
        public.verify(base64.b64decode(signature["value"]), tampered.encode())


def test_key_is_created_once_with_mode_0600(data_dir):
    first = signing.load_or_create(data_dir)
    key_file = data_dir / signing.KEY_FILENAME
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    content = key_file.read_bytes()
    signing._cache.clear()
    again = signing.load_or_create(data_dir)
    assert again.public_pem == first.public_pem
    assert key_file.read_bytes() == content


def test_concurrent_first_use_agrees_on_one_key(tmp_path):
    data_dir = tmp_path / "race"

    def load(_):
        signing._cache.pop(data_dir / signing.KEY_FILENAME, None)
        return signing.load_or_create(data_dir).public_pem

    with ThreadPoolExecutor(8) as pool:
        pems = set(pool.map(load, range(32)))
    signing._cache.clear()
    assert pems == {signing.load_or_create(data_dir).public_pem}


def test_signing_key_command_prints_the_same_pem_as_the_api(api, data_dir):
    served = api.get("/v1/signing-key").content.decode()
    out = StringIO()
    call_command("signing_key", "--data-dir", str(data_dir), stdout=out)
    assert out.getvalue().startswith("-----BEGIN PUBLIC KEY-----")
    assert out.getvalue() == served


def test_signing_key_cli_with_data_dir(tmp_path):
    data_dir = tmp_path / "cli-data"
    first = cli("signing-key", "--data-dir", str(data_dir), "--create")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    public_key_from_pem(first.stdout)
    second = cli("signing-key", "--data-dir", str(data_dir))
    assert second.stdout == first.stdout
    assert stat.S_IMODE(os.stat(data_dir / signing.KEY_FILENAME).st_mode) == 0o600


def test_signing_key_cli_unusable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("signing-key", "--data-dir", str(blocker / "sub"), "--create")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "signing key" in result.stderr
