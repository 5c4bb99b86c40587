"""The activation token and the sealed key bundle."""

from __future__ import annotations

import base64
import dataclasses

import msgpack
import pytest

from vaultraft.raft.tls import ClusterCA
from vaultraft.replication.activation import (
    ActivationToken,
    BundleError,
    TokenError,
    generate_bundle_keypair,
    open_bundle,
    seal_bundle,
    verify_secret,
)

NOW = 1_800_000_000.0


def make_token(ca: ClusterCA, **overrides: object) -> ActivationToken:
    token = ActivationToken.create(secondary_id="sec-a", mode="performance",
                                   primary_api_addr="https://10.0.0.1:8200",
                                   primary_cluster_addrs=["10.0.0.1:8201", "[::1]:8201"],
                                   ca_pem=ca.cert_pem, ttl=1800, now=NOW)
    return dataclasses.replace(token, **overrides)  # type: ignore[arg-type]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_body(token: ActivationToken) -> dict[str, object]:
    decoded = msgpack.unpackb(base64.urlsafe_b64decode(token.encode() + "=" * (-len(token.encode()) % 4)))
    assert isinstance(decoded, list)
    body = decoded[1]
    assert isinstance(body, dict)
    return body


def test_token_round_trip(ca: ClusterCA) -> None:
    token = make_token(ca)
    text = token.encode()
    assert "=" not in text and "+" not in text and "/" not in text
    assert ActivationToken.decode(text, now=NOW) == token
    assert ActivationToken.decode(f"  {text}\n", now=NOW + 1799) == token
    assert len(token.secret) == 32 and token.secret != make_token(ca).secret
    assert token.expires_at == NOW + 1800 and token.primary_cluster_addrs == ("10.0.0.1:8201", "[::1]:8201")
    assert token.secret.hex() not in repr(token) and "secret" not in repr(token)
    assert verify_secret(token.secret_digest(), token.secret)
    assert not verify_secret(token.secret_digest(), b"\x00" * 32)


def test_token_with_a_sealed_bundle(ca: ClusterCA) -> None:
    private, public = generate_bundle_keypair()
    token = make_token(ca, bundle=seal_bundle(public, b"root", b"sec-a"))
    decoded = ActivationToken.decode(token.encode(), now=NOW)
    assert decoded == token and open_bundle(private, decoded.bundle, b"sec-a") == b"root"
    assert "bundle" not in raw_body(make_token(ca))  # absent when empty
    assert token.bundle.hex() not in repr(token)


def test_invalid_token_is_not_encoded(ca: ClusterCA) -> None:
    with pytest.raises(TokenError):
        make_token(ca, primary_cluster_addrs=()).encode()
    with pytest.raises(TokenError):
        make_token(ca, secret=b"short").encode()
    token = make_token(ca, expires_at=NOW + 10.7)  # a float expiry is kept in whole seconds
    assert token.expires_at == int(NOW) + 10
    assert ActivationToken.decode(token.encode(), now=NOW) == token


def test_token_expiry(ca: ClusterCA) -> None:
    text = make_token(ca).encode()
    with pytest.raises(TokenError, match="expired"):
        ActivationToken.decode(text, now=NOW + 1800)
    assert make_token(ca).expired(NOW + 1800) and not make_token(ca).expired(NOW)


@pytest.mark.parametrize("text", [
    "", "not a token!", "====", "a", "YWJj", b64(b"\xc1\xc1"), b64(msgpack.packb("hello")),
    b64(msgpack.packb([1])), b64(msgpack.packb([1, {}])), "A" * 70000,
])
def test_token_garbage(text: str) -> None:
    with pytest.raises(TokenError):
        ActivationToken.decode(text, now=NOW)


@pytest.mark.parametrize("field,value", [
    ("secondary_id", ""), ("secondary_id", 5), ("mode", "both"), ("secret", b"short"), ("secret", "x" * 32),
    ("primary_api_addr", 5), ("primary_cluster_addrs", []), ("primary_cluster_addrs", ["no-port"]),
    ("primary_cluster_addrs", [1]), ("primary_cluster_addrs", "10.0.0.1:8201"), ("ca_pem", b"not a cert"),
    ("expires_at", "soon"), ("expires_at", 1.5), ("extra", 1), ("bundle", "text"), ("bundle", b"x" * 40000),
])
def test_token_malformed_fields(ca: ClusterCA, field: str, value: object) -> None:
    body = raw_body(make_token(ca))
    body[field] = value
    with pytest.raises(TokenError):
        ActivationToken.decode(b64(msgpack.packb([1, body])), now=NOW)


def test_token_wrong_version(ca: ClusterCA) -> None:
    body = raw_body(make_token(ca))
    with pytest.raises(TokenError, match="version"):
        ActivationToken.decode(b64(msgpack.packb([2, body])), now=NOW)
    assert issubclass(TokenError, ValueError)


def test_bundle_round_trip() -> None:
    private, public = generate_bundle_keypair()
    blob = seal_bundle(public, b"root key bytes", b"sec-a|token-digest")
    assert b"root key bytes" not in blob
    assert open_bundle(private, blob, b"sec-a|token-digest") == b"root key bytes"
    assert seal_bundle(public, b"root key bytes", b"c") != seal_bundle(public, b"root key bytes", b"c")
    assert open_bundle(private, seal_bundle(public, b"", b""), b"") == b""


def test_bundle_tamper_and_misuse() -> None:
    private, public = generate_bundle_keypair()
    other_private, _ = generate_bundle_keypair()
    blob = seal_bundle(public, b"secret", b"ctx")
    for i in range(len(blob)):  # every byte: version, ephemeral key, nonce, ciphertext, tag
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(BundleError):
            open_bundle(private, bytes(tampered), b"ctx")
    with pytest.raises(BundleError):
        open_bundle(private, blob, b"other ctx")
    with pytest.raises(BundleError):
        open_bundle(other_private, blob, b"ctx")
    with pytest.raises(BundleError):
        open_bundle(private, blob[:-1], b"ctx")
    with pytest.raises(BundleError):
        open_bundle(private, blob[:20], b"ctx")
    with pytest.raises(BundleError):
        open_bundle(b"short", blob, b"ctx")
    for bad_public in ("", "!!", b64(b"\x01" * 31), b64(b"\x00" * 32)):  # last: a low-order point
        with pytest.raises(BundleError):
            seal_bundle(bad_public, b"secret", b"ctx")
