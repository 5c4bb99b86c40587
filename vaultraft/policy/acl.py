"""Vault's ACL: merge a token's policies, find the governing rule for a path, decide.

Rules are kept in three tables like Vault's ``NewACL``: exact paths, plain prefix globs
(``foo*``) and ``+``-segment patterns. The same pattern in several policies is merged
(union of capabilities; ``deny`` replaces everything). An exact rule always governs its
path; otherwise the longest matching prefix glob competes with every matching ``+``
pattern under Vault's documented priority order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from vaultraft.policy.parser import CREATE, DELETE, DENY, LIST, PATCH, READ, ROOT, SUDO, UPDATE
from vaultraft.policy.parser import IdentityContext, ParamMap, PathRule, Policy, render_template, segment_wildcards

# Operation → the capability it needs (renew/revoke/rollback reuse update, as in Vault).
_OP_CAPABILITY: dict[str, str] = {
    "read": READ, "list": LIST, "update": UPDATE, "delete": DELETE, "create": CREATE,
    "patch": PATCH, "renew": UPDATE, "revoke": UPDATE, "rollback": UPDATE,
}  # fmt: skip
_PARAM_OPS = frozenset({"create", "update", "patch"})
_MOUNT_ACCESS_CAPS = frozenset({CREATE, DELETE, LIST, READ, SUDO, UPDATE, PATCH})


@dataclass(frozen=True)
class Permissions:
    """The merged permissions of one pattern across all of a token's policies."""

    capabilities: frozenset[str]
    min_wrapping_ttl: int = 0
    max_wrapping_ttl: int = 0
    allowed_parameters: ParamMap | None = field(default=None, hash=False)
    denied_parameters: ParamMap | None = field(default=None, hash=False)
    required_parameters: tuple[str, ...] = ()
    mfa_methods: tuple[str, ...] = ()
    subscribe_event_types: tuple[str, ...] = ()
    # capability -> names of the policies that granted it
    granting_policies: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @property
    def denied(self) -> bool:
        """Whether this pattern is explicitly denied."""
        return DENY in self.capabilities


@dataclass(frozen=True)
class AclResult:
    """The outcome of :meth:`ACL.allowed`.

    ``failed_check`` names what refused the request: ``capability`` (no rule, or the rule
    lacks the capability), ``max_wrapping_ttl``/``min_wrapping_ttl``,
    ``required_parameters``, ``denied_parameters`` or ``allowed_parameters``; for the
    parameter checks ``failed_parameter`` names the offending request field.
    """

    allowed: bool
    root_privs: bool = False
    is_root: bool = False
    capabilities: frozenset[str] = frozenset()
    matched_path: str | None = None
    granting_policies: tuple[str, ...] = ()
    mfa_methods: tuple[str, ...] = ()
    failed_check: str | None = None
    failed_parameter: str | None = None


#: Every root-token decision (frozen, so one instance serves them all).
_ROOT_RESULT = AclResult(allowed=True, root_privs=True, is_root=True, capabilities=frozenset({ROOT}))


class _Builder:
    """Mutable accumulator mirroring Vault's in-place merge of ACLPermissions."""

    def __init__(self, rule: PathRule, policy: str) -> None:
        self.caps: set[str] = set(rule.capabilities)
        self.min_ttl = rule.min_wrapping_ttl
        self.max_ttl = rule.max_wrapping_ttl
        self.allowed = None if rule.allowed_parameters is None else dict(rule.allowed_parameters)
        self.denied = None if rule.denied_parameters is None else dict(rule.denied_parameters)
        self.required: list[str] = list(rule.required_parameters)
        self.mfa: list[str] = list(rule.mfa_methods)
        self.events: list[str] = list(rule.subscribe_event_types)
        self.granting: dict[str, list[str]] = {}
        self._grant(rule, policy)

    def _grant(self, rule: PathRule, policy: str) -> None:
        for cap in rule.capabilities:
            names = self.granting.setdefault(cap, [])
            if policy not in names:
                names.append(policy)

    def merge(self, rule: PathRule, policy: str) -> None:
        if DENY in self.caps:
            return
        if DENY in rule.capabilities:
            self.caps = {DENY}
            self.allowed = None
            self.denied = None
            return
        self.caps |= rule.capabilities
        self._grant(rule, policy)
        # Wrapping TTLs: the smaller of two set values wins, for min and max alike.
        if rule.max_wrapping_ttl > 0 and (self.max_ttl == 0 or rule.max_wrapping_ttl < self.max_ttl):
            self.max_ttl = rule.max_wrapping_ttl
        if rule.min_wrapping_ttl > 0 and (self.min_ttl == 0 or rule.min_wrapping_ttl < self.min_ttl):
            self.min_ttl = rule.min_wrapping_ttl
        self.allowed = _merge_params(self.allowed, rule.allowed_parameters)
        self.denied = _merge_params(self.denied, rule.denied_parameters)
        for p in rule.required_parameters:
            if p not in self.required:
                self.required.append(p)
        for m in rule.mfa_methods:
            if m not in self.mfa:
                self.mfa.append(m)
        for e in rule.subscribe_event_types:
            if e not in self.events:
                self.events.append(e)

    def freeze(self) -> Permissions:
        return Permissions(
            capabilities=frozenset(self.caps),
            min_wrapping_ttl=self.min_ttl,
            max_wrapping_ttl=self.max_ttl,
            allowed_parameters=None if self.allowed is None else MappingProxyType(dict(self.allowed)),
            denied_parameters=None if self.denied is None else MappingProxyType(dict(self.denied)),
            required_parameters=tuple(self.required),
            mfa_methods=tuple(self.mfa),
            subscribe_event_types=tuple(self.events),
            granting_policies=MappingProxyType({k: tuple(v) for k, v in self.granting.items()}),
        )


def _merge_params(
    existing: dict[str, tuple[Any, ...]] | None, new: ParamMap | None
) -> dict[str, tuple[Any, ...]] | None:
    """Vault's merge: an empty value list (any value) wins, otherwise lists concatenate."""
    if not new:
        return existing
    if existing is None:
        return dict(new)
    for key, values in new.items():
        if len(values) == 0 or (key in existing and len(existing[key]) == 0):
            existing[key] = ()
        else:
            existing[key] = tuple(values) + existing.get(key, ())
    return existing


@dataclass(frozen=True)
class _Candidate:
    pattern: str  # as written in the policy, trailing * included
    first_wildcard: int
    is_prefix: bool
    wildcards: int
    wc_path: str
    perms: Permissions

    def priority(self) -> tuple[int, int, int, int, str]:
        # Higher wins: later first wildcard, not a glob, fewer +, longer, lexically larger.
        return (self.first_wildcard, 0 if self.is_prefix else 1, -self.wildcards, len(self.wc_path), self.wc_path)


class ACL:
    """The merged, compiled view of a token's policies; immutable once built."""

    def __init__(self, policies: Iterable[Policy], identity: IdentityContext | None = None) -> None:
        """Compile ``policies``. A ``root`` policy makes a root ACL (the others are moot,
        as Vault's policy sanitizing keeps only ``root``). Templated rules are rendered with
        ``identity``; those that cannot be rendered are skipped, as Vault does."""
        self._root = False
        exact: dict[str, _Builder] = {}
        prefix: dict[str, _Builder] = {}
        segment: dict[str, _Builder] = {}
        for policy in policies:
            if policy.name == ROOT:
                self._root = True
                continue
            for rule in policy.rules:
                path = rule.path
                if rule.templated:
                    rendered = render_template(path, identity)
                    if rendered is None:
                        continue
                    path = rendered[1:] if rendered.startswith("/") else rendered
                    if "+*" in path:
                        continue
                if segment_wildcards(path):
                    table, key = segment, path
                elif path.endswith("*"):
                    table, key = prefix, path[:-1]
                else:
                    table, key = exact, path
                if key in table:
                    table[key].merge(rule, policy.name)
                else:
                    table[key] = _Builder(rule, policy.name)
        self._exact = {k: b.freeze() for k, b in exact.items()}
        self._prefix = {k: b.freeze() for k, b in prefix.items()}
        self._prefix_longest_first = sorted(self._prefix, key=len, reverse=True)
        self._segment = {k: b.freeze() for k, b in segment.items()}

    @classmethod
    def root(cls) -> ACL:
        """The root token's ACL: every operation on every path, with sudo."""
        return cls([Policy(name=ROOT, raw="")])

    @property
    def is_root(self) -> bool:
        """Whether this ACL carries the root policy."""
        return self._root

    # --- lookups ----------------------------------------------------------------------

    def match(self, path: str, operation: str = "list") -> tuple[str, Permissions] | None:
        """The governing pattern (as written, ``*`` included) and its merged permissions.

        ``list`` also tries the path without its trailing ``/``, as Vault does, and is the
        mode sys/capabilities uses. Returns None when no rule matches.
        """
        path = path.lstrip("/")
        op = _op_name(operation)
        if path in self._exact:
            return path, self._exact[path]
        if op == "list":
            trimmed = path[:-1] if path.endswith("/") else path
            if trimmed in self._exact:
                return trimmed, self._exact[trimmed]
            if path.endswith("/"):
                found = self._non_exact(trimmed)
                if found is not None:
                    return found
        return self._non_exact(path)

    def _non_exact(self, path: str) -> tuple[str, Permissions] | None:
        candidates: list[_Candidate] = []
        for key in self._prefix_longest_first:
            if path.startswith(key):
                if not self._segment:
                    return key + "*", self._prefix[key]
                candidates.append(_Candidate(key + "*", len(key), True, 0, key, self._prefix[key]))
                break
        if self._segment:
            parts = path.split("/")
            for full, perms in self._segment.items():
                cand = _match_segment(full, parts, perms)
                if cand is not None:
                    candidates.append(cand)
        if not candidates:
            return None
        best = max(candidates, key=_Candidate.priority)
        return best.pattern, best.perms

    def capabilities(self, path: str) -> list[str]:
        """sys/capabilities semantics: sorted capability names, ``["deny"]`` when denied
        or nothing matches, ``["root"]`` for a root ACL."""
        if self._root:
            return [ROOT]
        found = self.match(path, "list")
        if found is None:
            return [DENY]
        caps = found[1].capabilities
        if DENY in caps or not caps:
            return [DENY]
        return sorted(caps)

    def allowed(
        self,
        operation: str,
        path: str,
        data: Mapping[str, Any] | None = None,
        wrap_ttl: int | None = None,
    ) -> AclResult:
        """Decide one request like Vault's ``AllowOperation``.

        ``root_privs`` is true when the governing rule grants ``sudo`` (sudo-protected
        paths need it). ``wrap_ttl`` is the requested response-wrapping TTL in seconds, if
        any. Parameter constraints apply to create, update and patch.
        """
        if self._root:
            return _ROOT_RESULT
        op = _op_name(operation)
        if op == "help":
            return AclResult(allowed=True)
        found = self.match(path, op)
        if found is None:
            return AclResult(allowed=False, failed_check="capability")
        pattern, perms = found
        caps = perms.capabilities
        needed = _OP_CAPABILITY.get(op)

        def result(allowed: bool, check: str | None = None, param: str | None = None) -> AclResult:
            return AclResult(
                allowed=allowed,
                root_privs=SUDO in caps,
                capabilities=caps,
                matched_path=pattern,
                granting_policies=perms.granting_policies.get(needed, ()) if needed and allowed else (),
                mfa_methods=perms.mfa_methods,
                failed_check=check,
                failed_parameter=param,
            )

        if needed is None or needed not in caps:
            return result(False, "capability")
        wrapping = _wrapping_failure(perms, wrap_ttl)
        if wrapping is not None:
            return result(False, wrapping)
        if op in _PARAM_OPS:
            failure = _parameter_failure(perms, data or {})
            if failure is not None:
                return result(False, *failure)
        return result(True)

    def has_mount_access(self, mount_path: str) -> bool:
        """Whether anything under ``mount_path`` (``"secret/"``) grants a non-deny
        capability; Vault uses this to decide which mounts a token may see."""
        if self._root:
            return True
        mount_path = mount_path.lstrip("/")
        if self.capabilities(mount_path) != [DENY]:
            return True
        for table in (self._exact, self._prefix):
            for key, perms in table.items():
                if key.startswith(mount_path) and not perms.denied and perms.capabilities & _MOUNT_ACCESS_CAPS:
                    return True
        parts = mount_path.split("/")
        for full, perms in self._segment.items():
            if full and _bare_mount_match(full, parts, mount_path, perms):
                return True
        return False

    def resultant_acl(self) -> dict[str, Any]:
        """The body of sys/internal/ui/resultant-acl: exact and glob paths with their
        capabilities and constraints, or just ``{"root": true}``."""
        if self._root:
            return {"root": True}
        out: dict[str, Any] = {"root": False, "exact_paths": {}, "glob_paths": {}}
        for name, table in (("exact_paths", self._exact), ("glob_paths", self._prefix)):
            for key, perms in sorted(table.items()):
                out[name][key] = _describe(perms)
        return out


def _op_name(operation: Any) -> str:
    value = getattr(operation, "value", operation)
    return str(value).lower()


def _match_segment(full: str, parts: list[str], perms: Permissions) -> _Candidate | None:
    """Vault's matching of one ``+`` pattern against a request path's segments."""
    if full == "":
        return None
    wc_path = full[:-1] if full.endswith("*") else full
    is_prefix = full.endswith("*")
    acl_parts = wc_path.split("/")
    if len(parts) < len(acl_parts):
        return None
    if not is_prefix and len(acl_parts) != len(parts):
        return None
    wildcards = 0
    last = len(acl_parts) - 1
    for i, acl_part in enumerate(acl_parts):
        if acl_part == "+":
            wildcards += 1
        elif acl_part == parts[i]:
            continue
        elif is_prefix and i == last and parts[i].startswith(acl_part):
            continue
        else:
            return None
    return _Candidate(full, full.index("+"), is_prefix, wildcards, wc_path, perms)


def _bare_mount_match(full: str, parts: list[str], mount_path: str, perms: Permissions) -> bool:
    """Vault's ``bareMount`` walk: could this ``+`` pattern match something in the mount?"""
    wc_path = full[:-1] if full.endswith("*") else full
    is_prefix = full.endswith("*")
    acl_parts = wc_path.split("/")
    segments: list[str] = []
    for i, acl_part in enumerate(acl_parts):
        if i >= len(parts):
            return False
        if acl_part == "+" or acl_part == parts[i]:
            segments.append(parts[i])
        elif is_prefix and i == len(acl_parts) - 1 and parts[i].startswith(acl_part):
            segments.extend(parts[i:])
        if i == len(parts) - 2:
            joined = "/".join(segments) + "/"
            return joined.startswith(mount_path) and not perms.denied and bool(perms.capabilities)
    return False


def _wrapping_failure(perms: Permissions, wrap_ttl: int | None) -> str | None:
    if perms.max_wrapping_ttl > 0 and (wrap_ttl is None or wrap_ttl > perms.max_wrapping_ttl):
        return "max_wrapping_ttl"
    if perms.min_wrapping_ttl > 0 and (wrap_ttl is None or wrap_ttl < perms.min_wrapping_ttl):
        return "min_wrapping_ttl"
    if perms.min_wrapping_ttl and perms.max_wrapping_ttl and perms.max_wrapping_ttl < perms.min_wrapping_ttl:
        return "max_wrapping_ttl"
    return None


def _parameter_failure(perms: Permissions, data: Mapping[str, Any]) -> tuple[str, str] | None:
    """(check, parameter) of the first violated parameter constraint, or None."""
    for param in perms.required_parameters:
        if param.lower() not in data:
            return "required_parameters", param
    if not data:
        return None
    keys = sorted(data)
    denied = perms.denied_parameters
    if denied:
        if "*" in denied:
            return "denied_parameters", "*"
        for key in keys:
            values = denied.get(key.lower())
            if values is not None and value_denied(data[key], values):
                return "denied_parameters", key
    allowed = perms.allowed_parameters
    if not allowed:
        return None
    allow_all = "*" in allowed
    if allow_all and len(allowed) == 1:
        return None
    for key in keys:
        values = allowed.get(key.lower())
        if values is None:
            if not allow_all:
                return "allowed_parameters", key
        elif not value_allowed(data[key], values):
            return "allowed_parameters", key
    return None


def glob_match(pattern: str, value: str) -> bool:
    """Vault's GlobbedStringsMatch: a leading and/or trailing ``*`` in ``pattern``; a
    pattern shorter than two characters (a bare ``*`` included) matches only itself."""
    if len(pattern) < 2:
        return value == pattern
    starts, ends = pattern.startswith("*"), pattern.endswith("*")
    if starts and ends:
        return pattern[1:-1] in value
    if starts:
        return value.endswith(pattern[1:])
    if ends:
        return value.startswith(pattern[:-1])
    return value == pattern


def _same(a: Any, b: Any) -> bool:
    """Deep equality that, like Go's, never equates a bool with a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _in_list(value: Any, values: tuple[Any, ...]) -> bool:
    for el in values:
        if el is None or value is None:
            if el is value:
                return True
        elif isinstance(el, str):
            if isinstance(value, str) and glob_match(el, value):
                return True
        elif _same(el, value):
            return True
    return False


def _elements(value: Any) -> list[Any] | None:
    """A list value's elements, or a string's comma-separated parts (Vault assumes a
    string may be a comma-separated list field)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [] if value == "" else [p.strip() for p in value.split(",")]
    return None


def value_allowed(value: Any, values: tuple[Any, ...]) -> bool:
    """Whether a request value passes an allowed_parameters value list (empty = any)."""
    if len(values) == 0 or _in_list(value, values):
        return True
    parts = _elements(value)
    return parts is not None and all(_in_list(p, values) for p in parts)


def value_denied(value: Any, values: tuple[Any, ...]) -> bool:
    """Whether a request value hits a denied_parameters value list (empty = any)."""
    if len(values) == 0 or _in_list(value, values):
        return True
    parts = _elements(value)
    return parts is not None and any(_in_list(p, values) for p in parts)


def _describe(perms: Permissions) -> dict[str, Any]:
    caps = [DENY] if perms.denied or not perms.capabilities else sorted(perms.capabilities)
    res: dict[str, Any] = {"capabilities": caps}
    if perms.min_wrapping_ttl:
        res["min_wrapping_ttl"] = perms.min_wrapping_ttl
    if perms.max_wrapping_ttl:
        res["max_wrapping_ttl"] = perms.max_wrapping_ttl
    if perms.allowed_parameters:
        res["allowed_parameters"] = {k: _thaw(v) for k, v in perms.allowed_parameters.items()}
    if perms.denied_parameters:
        res["denied_parameters"] = {k: _thaw(v) for k, v in perms.denied_parameters.items()}
    if perms.required_parameters:
        res["required_parameters"] = list(perms.required_parameters)
    return res


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value
