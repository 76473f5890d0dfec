"""A throw-away PKI per test session (nothing is committed): CA, server cert, client certs, CRLs.

The CA and certificates are made with `cryptography`; the CRLs of the main CA are made with the
`openssl ca` command line, so a CRL from a tool we did not write is proven to load.

    pki.ca, pki.server_cert/server_key, pki.client("node-a") -> (cert, key)
    pki.crl_empty (no revocations), pki.crl_revoking_a (node-a revoked; higher CRL number)
    pki.other_ca / pki.client("rogue") signed by another CA, pki.crl_other_ca (signed by it)
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "cp.test"  # in the server cert's SANs, beside localhost and 127.0.0.1


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "autonomy-orchestrator tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    cn: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool = False,
    organizations: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf signed by `ca`. `organizations` replaces the subject's O values (API.md §6 groups
    such as `autonomy:operators`); `uris` become SAN URIs (`urn:autonomy:node:<id>`)."""
    key = _key()
    now = datetime.now(UTC)
    subject = _name(cn)
    if organizations:
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
            + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    # A server cert is also the replica's client cert for CRL sync: serverAuth and clientAuth.
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(SERVER_NAME),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    if uris and not server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_crl(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    revoked: list[x509.Certificate] | None = None,
    number: int = 1,
    last_update: datetime | None = None,
    next_update: datetime | None = None,
) -> bytes:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(last_update or now - timedelta(minutes=5))
        .next_update(next_update or now + timedelta(days=7))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for cert in revoked or []:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


_OPENSSL_CA_CNF = """\
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {dir}
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_crl_days = 7
"""


@dataclass
class Pki:
    dir: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca_cert: x509.Certificate
    other_ca_key: ec.EllipticCurvePrivateKey
    crl_empty: Path
    crl_revoking_a: Path
    crl_other_ca: Path
    certs: dict[str, x509.Certificate]

    def serve_args(self, *, ca: bool = True, crl: Path | None = None) -> list[str]:
        """`serve`'s TLS flags for this PKI: the server certificate, the CA (mTLS) unless
        `ca=False`, and `crl` when given."""
        args = ["--tls-cert-file", str(self.server_cert), "--tls-key-file", str(self.server_key)]
        if ca:
            args += ["--tls-ca-file", str(self.ca)]
        if crl is not None:
            args += ["--tls-crl-file", str(crl)]
        return args

    def client(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def serial(self, name: str) -> int:
        return self.certs[name].serial_number

    def context(self, client: str | None = None) -> ssl.SSLContext:
        """A client SSL context trusting the test CA, presenting `client`'s cert if given."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client is not None:
            cert, key = self.client(client)
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def crl(
        self,
        path: Path,
        *,
        revoked: tuple[str, ...] = (),
        number: int = 1,
        last_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> Path:
        """Write a CRL of the test CA (made with `cryptography`) to `path`."""
        path.write_bytes(
            make_crl(
                self.ca_cert,
                self.ca_key,
                revoked=[self.certs[n] for n in revoked],
                number=number,
                last_update=last_update,
                next_update=next_update,
            )
        )
        return path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def build_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca("autonomy test CA")
    ca = _write_cert(root / "ca.pem", ca_cert)
    _write_key(root / "ca.key", ca_key)
    certs: dict[str, x509.Certificate] = {}
    server, server_key = make_leaf("control-plane", ca_cert, ca_key, server=True)
    _write_cert(root / "server.pem", server)
    _write_key(root / "server.key", server_key)
    certs["server"] = server
    for name in ("node-a", "node-b"):
        cert, key = make_leaf(name, ca_cert, ca_key)
        _write_cert(root / f"{name}.pem", cert)
        _write_key(root / f"{name}.key", key)
        certs[name] = cert
    other_cert, other_key = make_ca("some other CA")
    _write_cert(root / "other-ca.pem", other_cert)
    rogue, rogue_key = make_leaf("node-a", other_cert, other_key)  # same CN, wrong CA
    _write_cert(root / "rogue.pem", rogue)
    _write_key(root / "rogue.key", rogue_key)
    certs["rogue"] = rogue

    # CRLs of the main CA with the openssl command line: empty, then revoking node-a.
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command line is needed to build the test PKI")
    (root / "index.txt").write_text("")
    (root / "crlnumber").write_text("01\n")
    cnf = root / "openssl-ca.cnf"
    cnf.write_text(_OPENSSL_CA_CNF.format(dir=root))
    _openssl("ca", "-config", str(cnf), "-gencrl", "-out", "crl-empty.pem", cwd=root)
    _openssl("ca", "-config", str(cnf), "-revoke", "node-a.pem", cwd=root)
    _openssl("ca", "-config", str(cnf), "-gencrl", "-out", "crl-revoking-a.pem", cwd=root)
    crl_other = root / "crl-other-ca.pem"
    crl_other.write_bytes(make_crl(other_cert, other_key))
    return Pki(
        dir=root,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca=ca,
        server_cert=root / "server.pem",
        server_key=root / "server.key",
        other_ca_cert=other_cert,
        other_ca_key=other_key,
        crl_empty=root / "crl-empty.pem",
        crl_revoking_a=root / "crl-revoking-a.pem",
        crl_other_ca=crl_other,
        certs=certs,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


def get(url: str, context: ssl.SSLContext | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """GET `url` (HTTP or HTTPS); (status, body). TLS refusals raise ssl.SSLError or OSError."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, OSError):
            raise exc.reason from None
        raise


def refused(url: str, context: ssl.SSLContext) -> bool:
    """True when the server refuses this TLS client (handshake or first read fails)."""
    try:
        get(url, context)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return False
