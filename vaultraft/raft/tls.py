"""The cluster PKI: a per-cluster ECDSA CA, per-node certificates, and mutual-TLS contexts.

Every node holds a :class:`NodeCert` (its certificate, its private key and the cluster CA
certificate). The Raft transport accepts a peer only if it presents a certificate signed by
that CA, in both directions (mutual TLS); the certificate's common name is the node id.
Only PEM bytes cross module boundaries; key objects never leave this module.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
NODE_VALIDITY = datetime.timedelta(days=365)
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_LOOPBACK_IPS = ("127.0.0.1", "::1")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
#: TLS 1.2 suites allowed (TLS 1.3 suites are all AEAD and left to OpenSSL's defaults).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class PKIError(ValueError):
    """A certificate, key or CSR is malformed or does not belong to this cluster."""


@dataclass(frozen=True)
class NodeCert:
    """A node's TLS identity: its certificate, private key and the cluster CA certificate (PEM)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes

    @property
    def node_id(self) -> str:
        """The node id (common name) this certificate was issued for."""
        return _common_name(_load_cert(self.cert_pem))

    def validate(self) -> None:
        """Raise PKIError unless the certificate is signed by ``ca_pem`` and matches ``key_pem``."""
        cert = _load_cert(self.cert_pem)
        ca = _load_cert(self.ca_pem)
        _verify_signed_by(cert, ca)
        key = _load_private_key(self.key_pem)
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise PKIError("node private key does not match its certificate")

    def to_bundle(self) -> bytes:
        """Serialize as one PEM bundle: node certificate, private key, CA certificate."""
        return self.cert_pem.strip() + b"\n" + self.key_pem.strip() + b"\n" + self.ca_pem.strip() + b"\n"

    @classmethod
    def from_bundle(cls, bundle: bytes) -> NodeCert:
        """Parse a bundle written by :meth:`to_bundle` and validate it."""
        blocks = _pem_blocks(bundle)
        certs = [b for kind, b in blocks if kind == b"CERTIFICATE"]
        keys = [b for kind, b in blocks if kind == b"PRIVATE KEY"]
        if len(certs) != 2 or len(keys) != 1:
            raise PKIError("a node bundle holds exactly two certificates and one private key")
        node = cls(cert_pem=certs[0], key_pem=keys[0], ca_pem=certs[1])
        node.validate()
        return node


@dataclass(frozen=True)
class ClusterCA:
    """The cluster certificate authority (ECDSA P-256); only nodes it signed may join Raft."""

    cluster_id: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @classmethod
    def create(cls, cluster_id: str) -> ClusterCA:
        """Create a new self-signed CA named after ``cluster_id``, valid for 10 years."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, f"vaultraft cluster CA {cluster_id}"[:64]),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster_id[:64] or "-"),
        ])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True,
                              crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cluster_id=cluster_id, cert_pem=_cert_pem(cert), key_pem=_key_pem(key))

    @classmethod
    def from_pem(cls, cluster_id: str, cert_pem: bytes, key_pem: bytes) -> ClusterCA:
        """Load a CA from PEM, checking that it is a CA certificate matching the key."""
        cert = _load_cert(cert_pem)
        key = _load_private_key(key_pem)
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise PKIError("CA private key does not match the CA certificate")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise PKIError("certificate is not a CA") from None
        if not bc.ca:
            raise PKIError("certificate is not a CA")
        return cls(cluster_id=cluster_id, cert_pem=cert_pem, key_pem=key_pem)

    def sign(self, data: bytes) -> bytes:
        """An ECDSA-SHA256 signature of ``data`` by the CA key (statements every member can
        check against the CA certificate, e.g. a removal notice)."""
        key = _load_private_key(self.key_pem)
        return bytes(key.sign(data, ec.ECDSA(hashes.SHA256())))

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is the CA key's signature of ``data``."""
        public = _load_cert(self.cert_pem).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            return False
        try:
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def issue(self, node_id: str, public_key_pem: bytes | None = None, *,
              ips: Sequence[str] = ()) -> NodeCert:
        """Issue a 1-year node certificate; generate the key pair unless ``public_key_pem`` is given.

        With ``public_key_pem`` the CA never sees the private key, so the returned NodeCert has an
        empty ``key_pem``: the joining node builds its own with ``dataclasses.replace``.
        """
        if public_key_pem is None:
            private_pem, public_pem = generate_key_pair()
            return NodeCert(cert_pem=self.issue_for_public_key(node_id, public_pem, ips=ips),
                            key_pem=private_pem, ca_pem=self.cert_pem)
        return NodeCert(cert_pem=self.issue_for_public_key(node_id, public_key_pem, ips=ips),
                        key_pem=b"", ca_pem=self.cert_pem)

    def issue_for_public_key(self, node_id: str, public_key_pem: bytes, *,
                             ips: Sequence[str] = ()) -> bytes:
        """Sign a node certificate (PEM) for ``node_id`` over a public key the node generated."""
        try:
            public_key = serialization.load_pem_public_key(public_key_pem)
        except ValueError as e:
            raise PKIError(f"invalid public key: {e}") from None
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PKIError("node keys must be ECDSA")
        return self._sign(node_id, public_key, ips)

    def issue_for_csr(self, node_id: str, csr_pem: bytes, *, ips: Sequence[str] = ()) -> bytes:
        """Sign a node certificate for the key in a CSR, after checking the CSR's self-signature.

        The CSR proves possession of the private key; its subject is ignored (the CA decides
        the node id).
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise PKIError(f"invalid certificate signing request: {e}") from None
        if not csr.is_signature_valid:
            raise PKIError("certificate signing request signature is invalid")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PKIError("node keys must be ECDSA")
        return self._sign(node_id, public_key, ips)

    def _sign(self, node_id: str, public_key: ec.EllipticCurvePublicKey, ips: Sequence[str]) -> bytes:
        if not node_id or len(node_id) > 64:
            raise PKIError("node id must be 1 to 64 characters")
        ca_cert = _load_cert(self.cert_pem)
        ca_key = _load_private_key(self.key_pem)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(min(now + NODE_VALIDITY, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=False,
                              crl_sign=False, encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san(node_id, ips)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return _cert_pem(cert)


def generate_key_pair() -> tuple[bytes, bytes]:
    """Generate an ECDSA P-256 key pair; return (PKCS#8 private PEM, SubjectPublicKeyInfo PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _key_pem(key), key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_csr(node_id: str, private_key_pem: bytes) -> bytes:
    """Build a PEM CSR for ``node_id`` signed with the node's private key (for ``issue_for_csr``)."""
    key = _load_private_key(private_key_pem)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def server_context(node: NodeCert) -> ssl.SSLContext:
    """A server-side context: TLS >= 1.2, client certificate required and verified by the cluster CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, node)
    # No session tickets: every connection performs a full handshake with certificates.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def client_context(node: NodeCert) -> ssl.SSLContext:
    """A client-side context: TLS >= 1.2, presents the node certificate, verifies by the cluster CA.

    Host names are not checked (peers are addressed by IP:port); the transport checks the peer's
    node id (certificate common name) instead.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    _harden(ctx, node)
    return ctx


def peer_node_id(sslsock: ssl.SSLSocket | ssl.SSLObject) -> str:
    """The common name of the peer's verified certificate; raise PKIError if there is none."""
    der = sslsock.getpeercert(binary_form=True)
    if not der:
        raise PKIError("peer presented no certificate")
    return _common_name(x509.load_der_x509_certificate(der))


def _harden(ctx: ssl.SSLContext, node: NodeCert) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # Trust only the cluster CA: no system roots are ever loaded into these contexts.
    ctx.load_verify_locations(cadata=node.ca_pem.decode("ascii"))
    _load_chain(ctx, node)


def _load_chain(ctx: ssl.SSLContext, node: NodeCert) -> None:
    """Load cert+key into ``ctx``; the ssl module reads only files, so the key goes to an
    anonymous in-memory file where available, always encrypted with a one-time password."""
    if not node.key_pem:
        raise PKIError("node certificate has no private key")
    password = secrets.token_bytes(32)
    encrypted = _load_private_key(node.key_pem).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password))
    data = node.cert_pem.strip() + b"\n" + encrypted
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("vaultraft-node-cert", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}", password=password)
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover - non-Linux fallback
        path = os.path.join(tmp, "node.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ctx.load_cert_chain(path, password=password)


def _san(node_id: str, ips: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    host = node_id
    if ":" in node_id and not _is_ip(node_id):  # "host:port" node ids name their host
        host = node_id.rsplit(":", 1)[0].strip("[]")
    if _is_dns_name(host):
        names.append(x509.DNSName(host))
    seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for raw in (*_LOOPBACK_IPS, *((host,) if _is_ip(host) else ()), *ips):
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            raise PKIError(f"invalid IP address: {raw!r}") from None
        if ip not in seen:
            seen.add(ip)
            names.append(x509.IPAddress(ip))
    return names


def address_ips(address: str) -> list[str]:
    """The IP SANs a node certificate for Raft address ``host:port`` needs (none for a DNS name)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return [host] if _is_ip(host) else []


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_dns_name(value: str) -> bool:
    return bool(value) and len(value) <= 253 and not _is_ip(value) and all(
        _DNS_LABEL.match(label) for label in value.rstrip(".").split("."))


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise PKIError("certificate must carry exactly one common name")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def _verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    ca_key = ca.public_key()
    if cert.issuer != ca.subject or not isinstance(ca_key, ec.EllipticCurvePublicKey):
        raise PKIError("certificate was not issued by the cluster CA")
    try:
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PKIError("certificate was not issued by the cluster CA") from None


def _load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise PKIError(f"invalid certificate: {e}") from None


def _load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise PKIError("invalid private key") from None  # never echo key material
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("node keys must be ECDSA")
    return key


def _spki(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PKIError("node keys must be ECDSA")
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for m in re.finditer(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", data, re.DOTALL):
        out.append((m.group(1), m.group(0).strip() + b"\n"))
    return out


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
