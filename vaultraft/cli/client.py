"""A small synchronous HTTP client for Vault's API (stdlib only).

It reproduces the parts of HashiCorp's Go ``api`` package the CLI relies on: the
``X-Vault-Token`` header, ``?list=true`` listing, the 404 rule for reads (a 404 without
data or warnings means "nothing there", not an error), manual redirects so a PUT stays a
PUT, and :class:`ResponseError`'s exact text ("Error making API request. ...").
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

_REDIRECTS = frozenset({301, 302, 307, 308})
_MAX_REDIRECTS = 5


class APIError(Exception):
    """Any failure talking to the server (Vault's CLI exits 2 for these)."""


class TransportError(APIError):
    """The request never got an HTTP answer: refused connection, TLS failure, timeout."""


class ResponseError(APIError):
    """The server answered with a status >= 400; ``str()`` is Vault's error block."""

    def __init__(self, method: str, url: str, status: int, errors: list[str], raw: bool = False) -> None:
        super().__init__(method, url, status)
        self.method = method
        self.url = url
        self.status = status
        self.errors = errors
        self.raw = raw

    def __str__(self) -> str:
        kind = "Raw Message" if self.raw else "Errors"
        head = f"Error making API request.\n\nURL: {self.method} {self.url}\nCode: {self.status}. {kind}:\n\n"
        if self.raw and len(self.errors) == 1:
            return head + self.errors[0]
        return head + "\n".join(f"* {err}" for err in self.errors)


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to connect; built from flags and VAULT_* variables by the caller."""

    address: str = "https://127.0.0.1:8200"
    token: str = ""
    ca_cert: str = ""
    ca_path: str = ""
    client_cert: str = ""
    client_key: str = ""
    skip_verify: bool = False
    timeout: float = 60.0
    follow_redirects: bool = True


# api.SecretAuth and api.SecretWrapInfo: (JSON field, Go zero value), in struct order.
_AUTH_FIELDS: tuple[tuple[str, Any], ...] = (
    ("client_token", ""),
    ("accessor", ""),
    ("policies", None),
    ("token_policies", None),
    ("identity_policies", None),
    ("metadata", None),
    ("orphan", False),
    ("entity_id", ""),
    ("lease_duration", 0),
    ("renewable", False),
    ("mfa_requirement", None),
)
_WRAP_FIELDS: tuple[tuple[str, Any], ...] = (
    ("token", ""),
    ("accessor", ""),
    ("ttl", 0),
    ("creation_time", "0001-01-01T00:00:00Z"),
    ("creation_path", ""),
    ("wrapped_accessor", ""),
)
# Envelope members that are Go structs: printed in field order, not sorted like maps.
STRUCT_MEMBERS = frozenset({"auth", "wrap_info"})


@dataclass(frozen=True)
class Secret:
    """Vault's api.Secret: the standard response envelope."""

    request_id: str = ""
    lease_id: str = ""
    lease_duration: int = 0
    renewable: bool = False
    data: dict[str, Any] | None = None
    warnings: list[str] | None = None
    auth: dict[str, Any] | None = None
    wrap_info: dict[str, Any] | None = None
    mount_type: str = ""

    @classmethod
    def from_json(cls, body: Any) -> Secret:
        """Build from a decoded response body (a JSON object)."""
        if not isinstance(body, dict):
            raise ValueError("response is not a JSON object")
        data = body.get("data")
        return cls(
            request_id=str(body.get("request_id") or ""),
            lease_id=str(body.get("lease_id") or ""),
            lease_duration=int(body.get("lease_duration") or 0),
            renewable=bool(body.get("renewable")),
            data=data if isinstance(data, dict) else None,
            warnings=list(body["warnings"]) if isinstance(body.get("warnings"), list) else None,
            auth=body["auth"] if isinstance(body.get("auth"), dict) else None,
            wrap_info=body["wrap_info"] if isinstance(body.get("wrap_info"), dict) else None,
            mount_type=str(body.get("mount_type") or ""),
        )

    def to_json(self) -> dict[str, Any]:
        """The envelope in api.Secret's field order, as ``-format=json`` prints it.

        ``auth`` and ``wrap_info`` are re-shaped to api.SecretAuth / api.SecretWrapInfo
        (their fields, in their order), as Go's decode-then-marshal round trip does.
        """
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "lease_id": self.lease_id,
            "lease_duration": self.lease_duration,
            "renewable": self.renewable,
            "data": self.data,
            "warnings": self.warnings,
        }
        if self.auth is not None:
            out["auth"] = {name: self.auth.get(name, default) for name, default in _AUTH_FIELDS}
        if self.wrap_info is not None:
            out["wrap_info"] = {name: self.wrap_info.get(name, default) for name, default in _WRAP_FIELDS}
        if self.mount_type:
            out["mount_type"] = self.mount_type
        return out


def parse_secret(body: Any) -> Secret | None:
    """Vault's api.ParseSecret on a decoded body: the envelope, or None when there is none.

    A body without any envelope field (``sys/leader``, ``sys/health``...) becomes the
    secret's ``data``; a body holding only ``errors`` is None; ``errors`` beside other raw
    fields is an APIError with the errors joined by spaces.
    """
    if body is None:
        return None
    if not isinstance(body, dict):
        raise TransportError("error parsing response: the body is not a JSON object")
    secret = Secret.from_json(body)
    if secret != Secret():
        return secret
    if "errors" in body:
        if len(body) == 1:
            return None
        errors = body["errors"] if isinstance(body["errors"], list) else [body["errors"]]
        raise APIError(" ".join(str(e) for e in errors))
    return Secret(data=dict(body)) if body else secret


def _tls_context(config: ClientConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=config.ca_cert or None, capath=config.ca_path or None)
    if config.client_cert:
        ctx.load_cert_chain(config.client_cert, config.client_key or None)
    if config.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """Issues requests against ``config.address``; one connection per request."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._tls: ssl.SSLContext | None = None

    def with_token(self, token: str) -> Client:
        """A client identical to this one but sending ``token``."""
        return Client(dataclasses.replace(self.config, token=token))

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """The absolute URL for API ``path`` (relative to ``/v1/``) with sorted query params."""
        base = self.config.address.rstrip("/")
        quoted = urllib.parse.quote(path.lstrip("/"), safe="/-_.~:@!$&'()*+,;=")
        url = f"{base}/v1/{quoted}"
        if params:
            url += "?" + urllib.parse.urlencode(sorted((k, str(v)) for k, v in params.items()))
        return url

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        try:
            if parts.scheme == "https":
                if self._tls is None:
                    self._tls = _tls_context(self.config)
                conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, timeout=self.config.timeout, context=self._tls)
            elif parts.scheme == "http":
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=self.config.timeout)
            else:
                raise TransportError(f'{method.title()} "{url}": unsupported protocol scheme "{parts.scheme}"')
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload
            finally:
                conn.close()
        except ConnectionRefusedError:
            reason = f"dial tcp {parts.hostname}:{parts.port}: connect: connection refused"
        except ssl.SSLError as exc:
            reason = f"tls: {exc.reason or exc}"
        except TimeoutError:
            reason = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
        raise TransportError(f'{method.title()} "{url}": {reason}')

    def _headers(self) -> dict[str, str]:
        headers = {"X-Vault-Request": "true"}
        if self.config.token:
            headers["X-Vault-Token"] = self.config.token
        return headers

    def exchange(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes, str]:
        """Send one request, following redirects; return (status, raw body, final URL).

        Raises TransportError when no HTTP answer arrives; never raises for a status code.
        """
        url = self.url(path, params)
        headers = self._headers()
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        for _ in range(_MAX_REDIRECTS + 1):
            status, resp_headers, raw = self._send(method, url, payload, headers)
            location = resp_headers.get("location")
            if not (status in _REDIRECTS and location and self.config.follow_redirects):
                break
            url = urllib.parse.urljoin(url, location)
        return status, raw, url

    @staticmethod
    def _decode(method: str, url: str, raw: bytes) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise TransportError(f"error parsing response from {method} {url}: invalid JSON") from None

    @staticmethod
    def _error(method: str, url: str, status: int, raw: bytes) -> ResponseError:
        # As api.CheckResponse: a body that does not decode as an error object (including an
        # empty one) is reported verbatim as a "Raw Message".
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            return ResponseError(method, url, status, [text], raw=True)
        if not isinstance(body, dict):
            return ResponseError(method, url, status, [text], raw=True)
        errors = body.get("errors")
        return ResponseError(method, url, status, [str(e) for e in errors] if isinstance(errors, list) else [])

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send a request and return the decoded body (None when empty); APIError on failure."""
        status, raw, url = self.exchange(method, path, body=body, params=params, content_type=content_type)
        if status >= 400:
            raise self._error(method, url, status, raw)
        return self._decode(method, url, raw)

    def _secret_or_none(self, method: str, path: str, params: Mapping[str, Any] | None) -> Secret | None:
        status, raw, url = self.exchange(method, path, params=params)
        if status == 404:
            # Vault's api: a 404 means "nothing here" unless it carries data or warnings
            # (a deleted KV v2 version answers 404 with its metadata).
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                return None
            secret = parse_secret(body)
            return secret if secret is not None and (secret.data or secret.warnings) else None
        if status >= 400:
            raise self._error(method, url, status, raw)
        return parse_secret(self._decode(method, url, raw))

    def read(self, path: str, params: Mapping[str, Any] | None = None) -> Secret | None:
        """GET ``path``; None when nothing is there (a 404 without data)."""
        return self._secret_or_none("GET", path, params)

    def list(self, path: str) -> Secret | None:
        """LIST ``path`` (GET with ``list=true``); None when nothing is there."""
        return self._secret_or_none("GET", path, {"list": "true"})

    def write(self, path: str, data: Mapping[str, Any] | None = None, method: str = "PUT") -> Secret | None:
        """Write ``data`` to ``path``; None when the server answers without a body (204)."""
        return parse_secret(self.call(method, path, body=dict(data or {})))

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Secret | None:
        """DELETE ``path``; None when the server answers without a body."""
        return parse_secret(self.call("DELETE", path, params=params))
