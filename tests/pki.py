"""A throwaway PKI for SNS signature tests: a CA, a signing key and certificate it issued, a TLS
certificate for 127.0.0.1, and a local HTTPS server that serves the signing certificate."""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from ipaddress import IPv4Address
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CERT_PATH = "/sns/SimpleNotificationService-test.pem"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _issue(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    issuer_name = issuer[0].subject if issuer else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(ip))]), False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Pki:
    """Keys and certificates of one test PKI (PEM where a file would hold them)."""

    ca_pem: bytes
    signing_key: rsa.RSAPrivateKey
    signing_cert_pem: bytes
    tls_cert_pem: bytes
    tls_key_pem: bytes
    other_key: rsa.RSAPrivateKey = field(repr=False)
    """A key no certificate of this PKI holds (a forger's)."""

    def signing_key_pem(self) -> bytes:
        return self.signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def client_context(self) -> ssl.SSLContext:
        """TLS client context trusting this PKI's CA (the certificate server's issuer)."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        return context

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as folder:
            cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            cert.write_bytes(self.tls_cert_pem)
            key.write_bytes(self.tls_key_pem)
            context.load_cert_chain(cert, key)
        return context


@cache
def shared_pki() -> Pki:
    """One PKI for the whole test session (RSA keys take a while to generate)."""
    ca_key = _key()
    ca = _issue("bulksend test CA", ca_key, None, ca=True)
    signing_key = _key()
    signing = _issue("sns.test", signing_key, (ca, ca_key))
    tls_key = _key()
    tls = _issue("127.0.0.1", tls_key, (ca, ca_key), ip="127.0.0.1")
    return Pki(
        ca_pem=_pem(ca),
        signing_key=signing_key,
        signing_cert_pem=_pem(signing),
        tls_cert_pem=_pem(tls),
        tls_key_pem=tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        other_key=_key(),
    )


@dataclass
class CertServer:
    """The local HTTPS server of the signing certificate; ``requests`` counts what it served."""

    base_url: str
    requests: int = 0

    @property
    def cert_url(self) -> str:
        return self.base_url + CERT_PATH


@asynccontextmanager
async def cert_server(pki: Pki) -> AsyncIterator[CertServer]:
    """Serve ``pki``'s signing certificate over HTTPS on a free loopback port."""
    server = CertServer("")

    async def certificate(request: web.Request) -> web.Response:
        server.requests += 1
        return web.Response(body=pki.signing_cert_pem, content_type="application/x-pem-file")

    app = web.Application()
    app.router.add_get(CERT_PATH, certificate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
    await site.start()
    server.base_url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()
