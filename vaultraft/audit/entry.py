"""Vault's audit entries: the JSON objects written for each request and response.

Building an entry (``request_entry``/``response_entry``) is separate from protecting it
(``hash_entry``): the broker builds one raw entry per event and each device hashes a copy
with its own salt and options. Field names and omit-when-empty behaviour follow Vault's
``audit`` package (``omitempty`` on every field of the auth/request/response objects).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vaultraft.audit.hashing import Salt, format_time, hash_structure
from vaultraft.logical.request import Auth, Request, Response

ROOT_NAMESPACE = {"id": "root"}


@dataclass(frozen=True)
class AuthInfo:
    """The caller's token as the audit log sees it (Vault's ``auth`` object of an entry).

    ``client_token`` is the raw token id; it only ever reaches a file HMAC'd unless the
    device has ``log_raw``.
    """

    client_token: str = ""
    accessor: str = ""
    display_name: str = ""
    policies: tuple[str, ...] = ()
    token_policies: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    entity_id: str = ""
    token_type: str = "service"
    token_ttl: int = 0

    def __repr__(self) -> str:
        return f"AuthInfo(display_name={self.display_name!r}, policies={self.policies!r}, token=<hidden>)"


def _compact(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop empty fields of one audit object (Go's ``omitempty``); values inside data stay."""
    return {k: v for k, v in obj.items() if v not in ("", None, False, 0, {}, [], ())}


def _auth_object(auth: AuthInfo | None) -> dict[str, Any]:
    if auth is None:
        return {"token_type": "default"}
    return _compact(
        {
            "client_token": auth.client_token,
            "accessor": auth.accessor,
            "display_name": auth.display_name,
            "policies": list(auth.policies),
            "token_policies": list(auth.token_policies),
            "metadata": dict(auth.metadata),
            "entity_id": auth.entity_id,
            "token_type": auth.token_type,
            "token_ttl": auth.token_ttl,
        }
    )


def _issued_auth_object(auth: Auth) -> dict[str, Any]:
    return _compact(
        {
            "client_token": auth.client_token,
            "accessor": auth.accessor,
            "policies": list(auth.policies),
            "token_policies": list(auth.token_policies),
            "metadata": dict(auth.metadata or {}),
            "num_uses": auth.num_uses,
            "entity_id": auth.entity_id,
            "token_type": auth.token_type,
            "token_ttl": auth.lease_duration,
        }
    )


def _request_object(req: Request) -> dict[str, Any]:
    return _compact(
        {
            "id": req.request_id,
            "operation": req.operation.value,
            "mount_type": req.mount_type,
            "mount_point": req.mount_point,
            "client_token": req.client_token,
            "client_token_accessor": req.token.accessor if req.token is not None else "",
            "namespace": dict(ROOT_NAMESPACE),
            "path": req.path,
            "data": dict(req.data),
            "remote_address": req.remote_addr,
        }
    )


def _response_data(resp: Response) -> dict[str, Any] | None:
    if resp.data is not None:
        return dict(resp.data)
    body = resp.raw_body
    if isinstance(body, Mapping):
        return dict(body)
    if isinstance(body, (bytes, bytearray)):
        return {"http_raw_body": bytes(body).decode("utf-8", errors="replace")}
    if isinstance(body, str):
        return {"http_raw_body": body}
    return None


def request_entry(req: Request, auth: AuthInfo | None, error: str | None, time: datetime) -> dict[str, Any]:
    """The raw (unhashed) ``type: request`` entry for ``req``.

    ``req.path`` is logged as given: core passes the full API path (``secret/data/x``),
    as Vault logs it. ``error`` is the outer error of the request, if any.
    """
    entry: dict[str, Any] = {
        "time": format_time(time),
        "type": "request",
        "auth": _auth_object(auth),
        "request": _request_object(req),
    }
    if error:
        entry["error"] = error
    return entry


def response_entry(
    req: Request, resp: Response | None, auth: AuthInfo | None, error: str | None, time: datetime
) -> dict[str, Any]:
    """The raw (unhashed) ``type: response`` entry for ``req`` answered by ``resp``."""
    response: dict[str, Any] = {"mount_type": req.mount_type, "mount_point": req.mount_point}
    if resp is not None:
        response["data"] = _response_data(resp)
        response["auth"] = _issued_auth_object(resp.auth) if resp.auth is not None else None
        response["secret"] = {"lease_id": resp.lease_id} if resp.lease_id else None
        response["warnings"] = list(resp.warnings)
    entry: dict[str, Any] = {
        "time": format_time(time),
        "type": "response",
        "auth": _auth_object(auth),
        "request": _request_object(req),
        "response": _compact(response),
    }
    if error:
        entry["error"] = error
    return entry


def elide_list_response(entry: dict[str, Any]) -> dict[str, Any]:
    """A copy of a list operation's response entry with ``keys``/``key_info`` replaced by counts.

    Vault's ``elide_list_responses`` device option; other entries are returned unchanged.
    """
    request = entry.get("request") or {}
    response = entry.get("response") or {}
    data = response.get("data")
    if request.get("operation") != "list" or not isinstance(data, dict):
        return entry
    new_data = dict(data)
    for k in ("keys", "key_info"):
        if isinstance(new_data.get(k), (list, dict)):
            new_data[k] = len(new_data[k])
    return {**entry, "response": {**response, "data": new_data}}


def _hash_auth(obj: dict[str, Any], salt: Salt, hmac_accessor: bool) -> dict[str, Any]:
    out = dict(obj)
    if out.get("client_token"):
        out["client_token"] = salt.hmac(out["client_token"])
    if hmac_accessor and out.get("accessor"):
        out["accessor"] = salt.hmac(out["accessor"])
    return out


def hash_entry(
    entry: dict[str, Any],
    salt: Salt,
    *,
    hmac_accessor: bool = True,
    non_hmac_request_keys: Collection[str] = (),
    non_hmac_response_keys: Collection[str] = (),
) -> dict[str, Any]:
    """A copy of a raw entry with Vault's sensitive fields HMAC'd under ``salt``.

    Tokens always; accessors when ``hmac_accessor``; every string in request and response
    ``data`` except under the listed non-HMAC keys. ``entry`` is not modified.
    """
    out = dict(entry)
    if isinstance(out.get("auth"), dict):
        out["auth"] = _hash_auth(out["auth"], salt, hmac_accessor)
    if isinstance(out.get("request"), dict):
        req = dict(out["request"])
        if req.get("client_token"):
            req["client_token"] = salt.hmac(req["client_token"])
        if hmac_accessor and req.get("client_token_accessor"):
            req["client_token_accessor"] = salt.hmac(req["client_token_accessor"])
        if "data" in req:
            req["data"] = hash_structure(req["data"], salt, non_hmac_keys=non_hmac_request_keys)
        out["request"] = req
    if isinstance(out.get("response"), dict):
        resp = dict(out["response"])
        if isinstance(resp.get("auth"), dict):
            resp["auth"] = _hash_auth(resp["auth"], salt, hmac_accessor)
        if "data" in resp:
            resp["data"] = hash_structure(resp["data"], salt, non_hmac_keys=non_hmac_response_keys)
        out["response"] = resp
    return out
