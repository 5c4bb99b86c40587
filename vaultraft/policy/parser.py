"""Parse Vault ACL policies (HCL or JSON) into immutable :class:`Policy` values.

Semantics follow Vault's ``ParseACLPolicy``: the same keys are accepted, the legacy
``policy = "read"`` shorthand is mapped to capabilities, ``deny`` clears every other
capability of its block, and errors carry Vault's ``failed to parse policy: ...`` text.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from vaultraft.framework import parse_duration
from vaultraft.logical import InvalidRequest

DENY = "deny"
CREATE = "create"
READ = "read"
UPDATE = "update"
PATCH = "patch"
DELETE = "delete"
LIST = "list"
SUDO = "sudo"
SUBSCRIBE = "subscribe"
ROOT = "root"

#: Every capability a policy may grant (``deny`` included).
CAPABILITIES: frozenset[str] = frozenset({DENY, CREATE, READ, UPDATE, PATCH, DELETE, LIST, SUDO, SUBSCRIBE})

# Vault's pre-0.5 ``policy = "..."`` shorthand.
_LEGACY_POLICY: dict[str, tuple[str, ...]] = {
    "deny": (DENY,),
    "read": (READ, LIST),
    "write": (CREATE, READ, UPDATE, DELETE, LIST),
    "sudo": (CREATE, READ, UPDATE, DELETE, LIST, SUDO),
}

_TOP_KEYS = ("name", "path")
_PATH_KEYS = (
    "comment",
    "policy",
    "capabilities",
    "allowed_parameters",
    "denied_parameters",
    "required_parameters",
    "min_wrapping_ttl",
    "max_wrapping_ttl",
    "mfa_methods",
    "control_group",
    "subscribe_event_types",
)

#: Policies nobody may write (Vault's ``immutablePolicies``).
IMMUTABLE_POLICIES: tuple[str, ...] = ("root", "response-wrapping", "control-group")

ParamMap = Mapping[str, tuple[Any, ...]]


@dataclass(frozen=True)
class PathRule:
    """One ``path "..." { ... }`` block.

    ``path`` is the pattern as written minus a leading ``/``: a trailing ``*`` makes it a
    prefix (glob) rule and a whole ``+`` segment matches any one segment. ``capabilities``
    is ``{"deny"}`` alone when the block denies. Parameter maps are ``None`` when absent;
    their keys are lower-cased and each value list is a tuple.
    """

    path: str
    capabilities: frozenset[str]
    allowed_parameters: ParamMap | None = field(default=None, hash=False)
    denied_parameters: ParamMap | None = field(default=None, hash=False)
    required_parameters: tuple[str, ...] = ()
    min_wrapping_ttl: int = 0
    max_wrapping_ttl: int = 0
    mfa_methods: tuple[str, ...] = ()
    subscribe_event_types: tuple[str, ...] = ()
    templated: bool = False

    @property
    def has_segment_wildcards(self) -> bool:
        """Whether the pattern has a ``+`` segment (Vault's test, kept verbatim)."""
        return segment_wildcards(self.path)

    @property
    def is_prefix(self) -> bool:
        """Whether this is a plain prefix rule: ends in ``*`` and has no ``+`` segment."""
        return self.path.endswith("*") and not self.has_segment_wildcards


@dataclass(frozen=True)
class Policy:
    """A named ACL policy: its raw text and its path rules in written order."""

    name: str
    raw: str
    rules: tuple[PathRule, ...] = ()
    templated: bool = False


def segment_wildcards(path: str) -> bool:
    """Vault's rule for "this path uses ``+`` segment wildcards"."""
    return path == "+" or "/+" in path or path.startswith("+/")


def sanitize_policy_name(name: str) -> str:
    """Policy names are trimmed and lower-cased, as Vault's policy store does."""
    return name.strip().lower()


def check_policy_writable(name: str) -> str:
    """Return the sanitized name, or raise InvalidRequest if clients may not write it."""
    clean = sanitize_policy_name(name)
    if clean == "":
        raise InvalidRequest("policy name must be provided in the URL")
    if clean in IMMUTABLE_POLICIES:
        raise InvalidRequest(f"cannot update {_q(clean)} policy")
    return clean


def decode_policy_text(raw: str) -> str:
    """Vault accepts a base64-encoded policy body: decode ``raw`` when it is valid base64."""
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def parse_policy(name: str, text: str) -> Policy:
    """Validate a client's policy write: name rules, non-empty body, then the rules.

    The name is trimmed and lower-cased; ``root`` and the other immutable policies are
    refused with Vault's ``cannot update "root" policy``. Any syntax or semantic problem
    raises InvalidRequest with a single-line ``failed to parse policy: ...`` message.
    """
    clean = check_policy_writable(name)
    if text.strip() == "":
        raise InvalidRequest("'policy' parameter not supplied or empty")
    return load_policy(clean, text)


def load_policy(name: str, text: str) -> Policy:
    """Parse trusted or stored policy text (no name restrictions; empty text is allowed).

    Raises InvalidRequest with Vault's ``failed to parse policy: ...`` message on error.
    """
    try:
        items = _top_level_items(text)
        rules = _parse_items(items)
    except _PolicyError as e:
        raise InvalidRequest(f"failed to parse policy: {e}") from None
    return Policy(
        name=sanitize_policy_name(name),
        raw=text,
        rules=tuple(rules),
        templated=any(r.templated for r in rules),
    )


class _PolicyError(Exception):
    """Internal: a problem in the policy text (message is prefixed by load_policy)."""


def _q(s: str) -> str:
    """Go's %q for ordinary strings."""
    return json.dumps(s, ensure_ascii=False)


# --- syntax -------------------------------------------------------------------------


class _TopLevel(list[tuple[Any, Any]]):
    """Top-level HCL items in written order, duplicates kept (pyhcl would merge them)."""


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as written, duplicate keys kept."""


class _HclParser:
    """One reusable pyhcl parser; building the tables costs ~60 ms, a parse ~1 ms."""

    def __init__(self) -> None:
        from hcl.parser import HclParser

        self._lock = threading.Lock()
        self._parser = HclParser()
        original = self._parser.objectlist_flat

        def flat(items: list[tuple[Any, Any]], replace: bool) -> Any:
            # replace=True is only used for the document root: keep every item so that
            # two blocks for the same path are merged like Vault does, not overwritten.
            if replace:
                return _TopLevel(items)
            return original(items, replace)

        self._parser.objectlist_flat = flat

    def parse(self, text: str) -> Any:
        with self._lock:
            return self._parser.parse(text)


_parser_singleton: _HclParser | None = None
_parser_lock = threading.Lock()


def _hcl() -> _HclParser:
    global _parser_singleton
    with _parser_lock:
        if _parser_singleton is None:
            _parser_singleton = _HclParser()
        return _parser_singleton


_LEX_ERR = re.compile(r"^Line (\d+), column (\d+), index \d+: (.*)$", re.S)
_PARSE_ERR = re.compile(r"^Line (\d+), column (\d+): unexpected (\w+)", re.S)


def _syntax_message(text: str, err: Exception) -> str:
    msg = str(err)
    if m := _LEX_ERR.match(msg):
        # the lexer's column is 0-based; report 1-based like the parser branch below
        return f"At {m.group(1)}:{int(m.group(2)) + 1}: {m.group(3).splitlines()[0]}"
    if m := _PARSE_ERR.match(msg):
        pos = int(m.group(2))  # pyhcl reports the absolute offset here
        col = pos - text.rfind("\n", 0, pos)
        return f"At {m.group(1)}:{col}: unexpected {m.group(3).lower()}"
    if msg.startswith("Unexpected end of file"):
        return "unexpected end of file"
    first = msg.splitlines()[0] if msg else type(err).__name__
    return f"invalid HCL: {first}"


def _top_level_items(text: str) -> list[tuple[Any, Any]]:
    stripped = text.lstrip()
    if stripped == "":
        return []
    if stripped.startswith("{"):
        try:
            doc = json.loads(text, object_pairs_hook=_Pairs)
        except json.JSONDecodeError as e:
            raise _PolicyError(f"At {e.lineno}:{e.colno}: {e.msg}") from None
        if not isinstance(doc, _Pairs):
            raise _PolicyError("does not contain a root object")
        return list(doc)
    try:
        doc = _hcl().parse(text)
    except Exception as e:  # pyhcl raises ValueError, but also TypeError on odd input
        raise _PolicyError(_syntax_message(text, e)) from None
    if isinstance(doc, dict):  # an older pyhcl without the hook: best effort
        return list(doc.items())
    if not isinstance(doc, list):
        raise _PolicyError("does not contain a root object")
    return list(doc)


def _plain(value: Any) -> Any:
    """JSON pairs → dicts (last duplicate wins inside a block, as HCL decoding does)."""
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _object_entries(value: Any) -> list[tuple[Any, Any]]:
    """The (key, body) entries of a ``path`` value in any of HCL's/JSON's shapes."""
    if isinstance(value, _Pairs):
        return list(value)
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list):
        out: list[tuple[Any, Any]] = []
        for item in value:
            if not isinstance(item, (dict, _Pairs)):
                raise _PolicyError("path: expected an object")
            out.extend(_object_entries(item))
        return out
    raise _PolicyError("path: expected an object")


def _path_entries(items: list[tuple[Any, Any]]) -> list[tuple[str, dict[str, Any]]]:
    entries: list[tuple[str, dict[str, Any]]] = []
    bad = [str(k) for k, _ in items if k not in _TOP_KEYS]
    if bad:
        raise _PolicyError(f"invalid key {_q(bad[0])}")
    for key, value in items:
        if key != "path":
            continue
        for pkey, body in _object_entries(value):
            bodies = body if isinstance(body, list) and all(isinstance(b, (dict, _Pairs)) for b in body) else [body]
            for b in bodies:
                plain = _plain(b)
                if not isinstance(plain, dict):
                    raise _PolicyError(f"path {_q(str(pkey))}: expected an object")
                entries.append((str(pkey), plain))
    return entries


# --- semantics ----------------------------------------------------------------------


def _parse_items(items: list[tuple[Any, Any]]) -> list[PathRule]:
    return [_parse_rule(key, body) for key, body in _path_entries(items)]


def _string_list(value: Any, what: str) -> list[str]:
    """A list of strings; duplicated HCL keys arrive as a list of lists and are joined."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _PolicyError(f"{what}: expected a list of strings")
    out: list[str] = []
    for v in value:
        if isinstance(v, list):
            out.extend(_string_list(v, what))
        elif isinstance(v, str):
            out.append(v)
        else:
            raise _PolicyError(f"{what}: expected a list of strings")
    return out


def _parse_rule(key: str, body: dict[str, Any]) -> PathRule:
    bad = sorted(str(k) for k in body if k not in _PATH_KEYS)
    if bad:
        raise _PolicyError(f"path {_q(key)}: invalid key {_q(bad[0])}")
    templated = _check_template(key)
    path = key[1:] if key.startswith("/") else key
    if "+*" in path:
        raise _PolicyError(f"path {_q(path)}: invalid use of wildcards ('+*' is forbidden)")

    caps: list[Any] = []
    raw_caps = body.get("capabilities")
    if raw_caps is not None and not isinstance(raw_caps, (list, str)):
        raise _PolicyError(f"path {_q(key)}: invalid capability {_q(str(raw_caps))}")
    if isinstance(raw_caps, list):
        for c in raw_caps:  # a capabilities key written twice arrives as a list of lists
            caps.extend(c if isinstance(c, list) else [c])
    elif isinstance(raw_caps, str):
        caps.append(raw_caps)
    legacy = body.get("policy")
    if legacy is not None and legacy != "":
        if not isinstance(legacy, str) or legacy not in _LEGACY_POLICY:
            raise _PolicyError(f"path {_q(key)}: invalid policy {_q(str(legacy))}")
        caps = [DENY] if legacy == "deny" else caps + list(_LEGACY_POLICY[legacy])

    granted: set[str] = set()
    for cap in caps:
        if cap == DENY:
            # Vault stops at deny: nothing else of this block is parsed or kept.
            return PathRule(path=path, capabilities=frozenset({DENY}), templated=templated)
        if not isinstance(cap, str) or cap not in CAPABILITIES:
            raise _PolicyError(f"path {_q(key)}: invalid capability {_q(str(cap))}")
        granted.add(cap)

    allowed = _param_map(path, body.get("allowed_parameters"), "allowed_parameters")
    denied = _param_map(path, body.get("denied_parameters"), "denied_parameters")
    min_ttl = _ttl(body.get("min_wrapping_ttl"), "min_wrapping_ttl")
    max_ttl = _ttl(body.get("max_wrapping_ttl"), "max_wrapping_ttl")
    if min_ttl and max_ttl and max_ttl < min_ttl:
        raise _PolicyError("max_wrapping_ttl cannot be less than min_wrapping_ttl")
    return PathRule(
        path=path,
        capabilities=frozenset(granted),
        allowed_parameters=allowed,
        denied_parameters=denied,
        required_parameters=tuple(_string_list(body.get("required_parameters"), f"path {_q(path)}: required_parameters")),
        min_wrapping_ttl=min_ttl,
        max_wrapping_ttl=max_ttl,
        mfa_methods=tuple(_string_list(body.get("mfa_methods"), f"path {_q(path)}: mfa_methods")),
        subscribe_event_types=tuple(
            _string_list(body.get("subscribe_event_types"), f"path {_q(path)}: subscribe_event_types")
        ),
        templated=templated,
    )


def freeze(value: Any) -> Any:
    """Lists become tuples (recursively) so parameter values cannot be mutated."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    return value


def _param_map(path: str, raw: Any, what: str) -> ParamMap | None:
    if raw is None:
        return None
    if isinstance(raw, list):  # `allowed_parameters { ... }` written twice
        merged: dict[str, Any] = {}
        for part in raw:
            if not isinstance(part, dict):
                raise _PolicyError(f"path {_q(path)}: {what}: expected a map")
            merged.update(part)
        raw = merged
    if not isinstance(raw, dict):
        raise _PolicyError(f"path {_q(path)}: {what}: expected a map")
    out: dict[str, tuple[Any, ...]] = {}
    for key, values in raw.items():
        key = str(key)
        if "*" in key and key != "*":
            raise _PolicyError(f"path {_q(path)}: {what}: parameter key {_q(key)} cannot contain non-tail wildcards")
        vals = values if isinstance(values, list) else [values]
        out[key.lower()] = tuple(freeze(v) for v in vals)
    return MappingProxyType(out)


def _ttl(raw: Any, what: str) -> int:
    if raw is None:
        return 0
    try:
        return parse_duration(raw)
    except ValueError as e:
        raise _PolicyError(f"error parsing {what}: {e}") from None


# --- identity templating ------------------------------------------------------------


def _check_template(path: str) -> bool:
    """Whether ``path`` holds ``{{...}}`` directives; raises on unbalanced braces."""
    pieces = path.split("{{")
    if "}}" in pieces[0]:
        raise _PolicyError("failed to validate policy templating: unbalanced templating characters")
    for piece in pieces[1:]:
        if piece.count("}}") != 1:
            raise _PolicyError("failed to validate policy templating: unbalanced templating characters")
    return len(pieces) > 1


@dataclass(frozen=True)
class IdentityContext:
    """What identity templates may refer to: the token's entity and its groups."""

    entity_id: str = ""
    entity_name: str = ""
    entity_metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    # (group id, group name) pairs
    groups: tuple[tuple[str, str], ...] = ()


def render_template(path: str, identity: IdentityContext | None) -> str | None:
    """Fill ``{{identity.*}}`` directives; None when a value is missing (Vault then skips
    the rule) or when a value would introduce a ``*`` or ``+`` wildcard."""
    pieces = path.split("{{")
    out = [pieces[0]]
    for piece in pieces[1:]:
        expr, _, rest = piece.partition("}}")
        value = _template_value(expr.strip(), identity)
        if value is None or value == "" or "*" in value or "+" in value:
            return None
        out.append(value)
        out.append(rest)
    return "".join(out)


def _template_value(expr: str, identity: IdentityContext | None) -> str | None:
    if identity is None:
        return None
    if expr.startswith("identity.entity."):
        if not identity.entity_id:
            return None
        sel = expr[len("identity.entity.") :]
        if sel == "id":
            return identity.entity_id
        if sel == "name":
            return identity.entity_name
        if sel.startswith("metadata."):
            return identity.entity_metadata.get(sel[len("metadata.") :])
        return None
    if expr.startswith("identity.groups."):
        kind, _, rest = expr[len("identity.groups.") :].partition(".")
        target, _, attr = rest.partition(".")
        for gid, gname in identity.groups:
            if (kind == "ids" and gid == target) or (kind == "names" and gname == target):
                return {"id": gid, "name": gname}.get(attr)
        return None
    return None
