"""The stored form of a service token (Vault's logical.TokenEntry) and its helpers.

Values only: no storage access here. The entry is encoded as versioned msgpack (never
pickle); the barrier encrypts it below the view.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable

import msgpack

from vaultraft.logical import InvalidRequest, TokenInfo

ENTRY_VERSION = 1
TOKEN_PREFIX = "hvs."
TOKEN_RANDOM_LENGTH = 24
# num_uses of an entry whose revocation has started: never usable again (Vault's
# tokenRevocationPending).
REVOCATION_PENDING = -1

_BASE62 = string.ascii_letters + string.digits
_DISPLAY_SANITIZE = re.compile(r"[^a-zA-Z0-9-]")
ROOT_TOKEN_PATH = "auth/token/root"
# Policies no token may hold (Vault's nonAssignablePolicies).
NON_ASSIGNABLE_POLICIES = ("response-wrapping", "control-group")


def random_base62(n: int = TOKEN_RANDOM_LENGTH) -> str:
    """``n`` characters of base62 from the OS CSPRNG."""
    return "".join(secrets.choice(_BASE62) for _ in range(n))


def new_token_id() -> str:
    """A fresh service token id in Vault's modern format: ``hvs.`` + 24 base62 chars."""
    return TOKEN_PREFIX + random_base62()


def sanitize_policies(policies: Iterable[str], add_default: bool) -> tuple[str, ...]:
    """Vault's policyutil.SanitizePolicies: trimmed, lower-cased, de-duplicated, sorted;
    ``root`` swallows every other policy; ``default`` added when asked (never beside root)."""
    out: set[str] = set()
    for p in policies:
        name = p.strip().lower()
        if not name:
            continue
        if name == "root":
            return ("root",)
        out.add(name)
    if add_default:
        out.add("default")
    return tuple(sorted(out))


def token_display_name(name: str) -> str:
    """``token`` or ``token-<name>`` with Vault's sanitising of the user's part."""
    if not name:
        return "token"
    full = _DISPLAY_SANITIZE.sub("-", "token-" + name)
    return full[:-1] if full.endswith("-") else full


def display_name_for(path: str, name: str) -> str:
    """The display name a token created at ``path`` gets: ``root`` for the root token,
    ``token``/``token-<name>`` under ``auth/token/``, else ``name`` as given."""
    if path == ROOT_TOKEN_PATH:
        return "root"
    if path.startswith("auth/token/"):
        return token_display_name(name)
    return name or "token"


def check_custom_id(token_id: str) -> None:
    """Vault's rules for a caller-chosen token id; InvalidRequest when one is broken."""
    if token_id.startswith("hvs."):
        raise InvalidRequest("custom token ID cannot have the 'hvs.' prefix")
    if token_id.startswith("s."):
        raise InvalidRequest("custom token ID cannot have the 's.' prefix")
    if "." in token_id:
        raise InvalidRequest("custom token ID cannot have a '.' in the value")


@dataclass(frozen=True)
class MountTTLs:
    """The token mount's lease TTLs in seconds (``0 < default <= max``)."""

    default: int
    max: int


def calculate_ttl(ttls: MountTTLs, *, increment: int, current: int, period: int,
                  explicit_max: int, start: float, now: float) -> int:
    """Vault's framework.CalculateTTL for a token issued at ``start``: periodic tokens get
    one period (capped at the max), others ``increment``, else ``current``, else the
    default; never past ``start`` + min(max, explicit max) (periodic: + explicit max).
    InvalidRequest "past the max TTL, cannot renew" when no time is left."""
    max_ttl = ttls.max
    if 0 < explicit_max < max_ttl:
        max_ttl = explicit_max
    max_valid: float | None
    if period > 0:
        ttl = min(period, max_ttl)
        max_valid = start + explicit_max if explicit_max > 0 else None
    else:
        ttl = increment if increment > 0 else current if current > 0 else ttls.default
        max_valid = start + max_ttl
    if max_valid is not None:
        left = max_valid - now
        if left <= 0:
            raise InvalidRequest("past the max TTL, cannot renew")
        if now + ttl > max_valid:
            ttl = int(left)
    return ttl


def rfc3339(ts: float) -> str:
    """A Unix time as RFC 3339 in UTC with sub-second digits trimmed, as Go prints it."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ("." + frac if frac else "") + "Z"


@dataclass(frozen=True)
class TokenEntry:
    """One service token. ``id`` is the secret itself: never log an entry.

    Times are Unix seconds from the store's clock; ``expire_time`` 0 means never.
    ``ttl`` is the TTL granted at creation (Vault's ``creation_ttl``); the lease's current
    TTL is ``expire_time - (last_renewal_time or creation_time)``.
    """

    id: str
    accessor: str
    parent_hash: str = ""
    policies: tuple[str, ...] = ()
    path: str = "auth/token/create"
    meta: dict[str, str] = field(default_factory=dict)
    display_name: str = "token"
    num_uses: int = 0
    creation_time: float = 0.0
    ttl: int = 0
    explicit_max_ttl: int = 0
    period: int = 0
    expire_time: float = 0.0
    last_renewal_time: float = 0.0
    orphan: bool = True
    renewable: bool = True
    type: str = "service"
    cubbyhole_id: str = ""
    entity_id: str = ""

    def __repr__(self) -> str:  # never print the token id
        return f"TokenEntry(accessor={self.accessor!r}, policies={self.policies!r})"

    @property
    def is_root(self) -> bool:
        """Whether the token carries the root policy."""
        return "root" in self.policies

    @property
    def revocation_pending(self) -> bool:
        """Whether revocation of this token has started (it must not be used)."""
        return self.num_uses < 0

    def expired(self, now: float) -> bool:
        """Whether the token is past its expiry (Vault: valid while expire >= now)."""
        return self.expire_time != 0 and self.expire_time < now

    def remaining_ttl(self, now: float) -> int:
        """Whole seconds left, 0 for a token that never expires (or has expired)."""
        if not self.expire_time:
            return 0
        return max(0, int(self.expire_time - now))

    def current_lease_ttl(self) -> int:
        """The TTL of the last grant (creation or renewal)."""
        if not self.expire_time:
            return 0
        start = self.last_renewal_time or self.creation_time
        return max(0, int(round(self.expire_time - start)))

    def lease_renewable(self, now: float) -> bool:
        """Vault's lease renewability: it expires, it is not expired, and it is renewable."""
        return self.renewable and self.expire_time != 0 and not self.expired(now)

    def token_info(self) -> TokenInfo:
        """What a backend may know about this token (never the raw id)."""
        return TokenInfo(
            accessor=self.accessor,
            policies=self.policies,
            display_name=self.display_name,
            entity_id=self.entity_id,
            meta=dict(self.meta),
            cubbyhole_id=self.cubbyhole_id,
        )

    def with_changes(self, **changes: Any) -> "TokenEntry":
        """A copy with ``changes`` applied (entries are immutable)."""
        return replace(self, **changes)

    def encode(self) -> bytes:
        """Versioned msgpack bytes of this entry."""
        body = {
            "v": ENTRY_VERSION,
            "id": self.id,
            "accessor": self.accessor,
            "parent": self.parent_hash,
            "policies": list(self.policies),
            "path": self.path,
            "meta": dict(self.meta),
            "display_name": self.display_name,
            "num_uses": self.num_uses,
            "creation_time": self.creation_time,
            "ttl": self.ttl,
            "explicit_max_ttl": self.explicit_max_ttl,
            "period": self.period,
            "expire_time": self.expire_time,
            "last_renewal_time": self.last_renewal_time,
            "orphan": self.orphan,
            "renewable": self.renewable,
            "type": self.type,
            "cubbyhole_id": self.cubbyhole_id,
            "entity_id": self.entity_id,
        }
        out: bytes = msgpack.packb(body, use_bin_type=True)
        return out

    @staticmethod
    def decode(raw: bytes) -> "TokenEntry":
        """Parse :meth:`encode` output; ValueError for anything else."""
        try:
            obj: Any = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as e:  # msgpack raises several unrelated types
            raise ValueError(f"undecodable token entry: {type(e).__name__}") from None
        if not isinstance(obj, dict) or obj.get("v") != ENTRY_VERSION:
            raise ValueError("token entry of an unknown version")
        try:
            return TokenEntry(
                id=str(obj["id"]),
                accessor=str(obj["accessor"]),
                parent_hash=str(obj.get("parent", "")),
                policies=tuple(str(p) for p in obj.get("policies", ())),
                path=str(obj.get("path", "")),
                meta={str(k): str(v) for k, v in (obj.get("meta") or {}).items()},
                display_name=str(obj.get("display_name", "")),
                num_uses=int(obj.get("num_uses", 0)),
                creation_time=float(obj.get("creation_time", 0.0)),
                ttl=int(obj.get("ttl", 0)),
                explicit_max_ttl=int(obj.get("explicit_max_ttl", 0)),
                period=int(obj.get("period", 0)),
                expire_time=float(obj.get("expire_time", 0.0)),
                last_renewal_time=float(obj.get("last_renewal_time", 0.0)),
                orphan=bool(obj.get("orphan", False)),
                renewable=bool(obj.get("renewable", False)),
                type=str(obj.get("type", "service")),
                cubbyhole_id=str(obj.get("cubbyhole_id", "")),
                entity_id=str(obj.get("entity_id", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("malformed token entry") from None


def lookup_data(entry: TokenEntry, now: float, *, include_id: bool = True) -> dict[str, Any]:
    """The ``data`` of Vault's ``auth/token/lookup*`` responses for ``entry``."""
    data: dict[str, Any] = {
        "accessor": entry.accessor,
        "creation_time": int(entry.creation_time),
        "creation_ttl": entry.ttl,
        "display_name": entry.display_name,
        "entity_id": entry.entity_id,
        "expire_time": rfc3339(entry.expire_time) if entry.expire_time else None,
        "explicit_max_ttl": entry.explicit_max_ttl,
        "id": entry.id if include_id else "",
        "issue_time": rfc3339(entry.creation_time),
        "meta": dict(entry.meta) if entry.meta else None,
        "num_uses": entry.num_uses,
        "orphan": entry.orphan,
        "path": entry.path,
        "policies": list(entry.policies),
        "renewable": entry.lease_renewable(now),
        "ttl": entry.remaining_ttl(now),
        "type": entry.type,
    }
    if entry.period:
        data["period"] = entry.period
    if entry.last_renewal_time:
        data["last_renewal_time"] = int(entry.last_renewal_time)
        data["last_renewal"] = rfc3339(entry.last_renewal_time)
    return data
