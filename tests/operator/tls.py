"""A certificate authority made in the test, for serving the API-server stand-in over HTTPS.

Real clusters are reached over TLS with a CA the kubeconfig embeds as
``certificate-authority-data`` (kind, kubeadm, EKS and GKE all write that), and some
authenticate users by client certificate (``client-certificate-data`` /
``client-key-data``). The emulator serves HTTPS with these so the operator's login
path is the one production takes; nothing is committed, every key is generated here.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    organization: str | None = None,
) -> x509.Certificate:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, subject)]
    if organization:  # kube-apiserver reads a client certificate's O as the user's groups
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class CertAuthority:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all PEM."""

    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes

    @classmethod
    def generate(cls, client_user: str = "modelpress-operator") -> CertAuthority:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("modelpress-test-ca", ca_key, None, ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _cert("kube-apiserver", server_key, ca.subject, ca_key, server=True)
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = _cert(client_user, client_key, ca.subject, ca_key, organization="modelpress")
        pem = serialization.Encoding.PEM
        return cls(
            ca.public_bytes(pem),
            server.public_bytes(pem),
            _pem_key(server_key),
            client.public_bytes(pem),
            _pem_key(client_key),
        )

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        """The server's side; with ``require_client_cert`` a client without one fails the handshake."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=self.ca_pem.decode())
        with tempfile.TemporaryDirectory() as tmp:  # ssl loads a chain from files only
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(self.server_cert_pem)
            key.write_bytes(self.server_key_pem)
            ctx.load_cert_chain(cert, key)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """What a test's own HTTP client (urllib) trusts: this CA only."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    @staticmethod
    def b64(pem: bytes) -> str:
        """As kubeconfig files carry it (``*-data`` fields are base64 of the PEM)."""
        return base64.b64encode(pem).decode()
