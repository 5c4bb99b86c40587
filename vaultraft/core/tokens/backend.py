"""The ``auth/token/`` mount: Vault's token auth method API over a :class:`TokenStore`.

The caller's raw token is ``req.client_token`` (core has validated it and consumed one
use); ``req.sudo`` / ``req.is_root`` carry its privileges on the requested path. Rules and
messages follow Vault's ``handleCreateCommon``, ``handleLookup``, ``handleRenew`` and
``handleRevoke*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultraft.core.tokens.entry import TokenEntry, lookup_data, sanitize_policies
from vaultraft.framework import Backend, Field, FieldData, FieldType, Path, parse_duration
from vaultraft.logical import Auth, InvalidRequest, Operation, PermissionDenied, Request, Response

if TYPE_CHECKING:
    from vaultraft.core.tokens.store import TokenStore

# Paths that need sudo on top of the capability (Vault's PathsSpecial.Root for the mount).
ROOT_PATHS = ("revoke-orphan", "accessors/")

_TIDY_WARNING = (
    "Tidy operation successfully started. Any information from the operation will be "
    "printed to Vault's server logs."
)

_CREATE_FIELDS: dict[str, Field] = {
    "id": Field(FieldType.STRING, "Value for the token"),
    "role_name": Field(FieldType.STRING, "Name of the role"),
    "policies": Field(FieldType.COMMA_STRING_SLICE, "List of policies for the token"),
    "meta": Field(FieldType.KV_PAIRS, "Arbitrary key=value metadata to associate with the token"),
    "metadata": Field(FieldType.MAP, "Arbitrary key=value metadata to associate with the token"),
    "no_parent": Field(FieldType.BOOL, "Create the token with no parent"),
    "no_default_policy": Field(FieldType.BOOL, "Do not include default policy for this token"),
    "renewable": Field(FieldType.BOOL, "Allow token to be renewed past its initial TTL up to "
                       "system/mount maximum TTL", default=True),
    "lease": Field(FieldType.STRING, "Use 'ttl' instead"),
    "ttl": Field(FieldType.STRING, "Time to live for this token"),
    "type": Field(FieldType.STRING, "Token type"),
    "explicit_max_ttl": Field(FieldType.STRING, "Explicit Max TTL of this token"),
    "display_name": Field(FieldType.STRING, "Name to associate with this token"),
    "num_uses": Field(FieldType.INT, "Max number of uses for this token"),
    "period": Field(FieldType.STRING, "Renew period"),
    "entity_alias": Field(FieldType.STRING, "Name of the entity alias to associate with this token"),
    "format": Field(FieldType.STRING, "Return json formatted output", query=True),
}
_TOKEN_FIELD = {"token": Field(FieldType.STRING, "Token (request body)")}
_ACCESSOR_FIELD = {"accessor": Field(FieldType.STRING, "Accessor of the token (request body)")}
_INCREMENT_FIELD = {"increment": Field(FieldType.DURATION, "The desired increment in seconds to the "
                                       "token expiration", default=0)}


def _duration(d: FieldData, name: str) -> int:
    raw = d.get(name)
    if raw in ("", None):
        return 0
    try:
        return parse_duration(raw)
    except ValueError as e:
        if "negative" in str(e):
            raise InvalidRequest(f"{name} must be positive") from None
        raise InvalidRequest(str(e)) from None


def _auth(entry: TokenEntry, *, lease_duration: int, client_token: str | None = None) -> Auth:
    return Auth(
        client_token=entry.id if client_token is None else client_token,
        accessor=entry.accessor,
        policies=list(entry.policies),
        token_policies=list(entry.policies),
        metadata=dict(entry.meta) if entry.meta else None,
        lease_duration=lease_duration,
        renewable=entry.renewable and entry.expire_time != 0,
        entity_id=entry.entity_id,
        token_type=entry.type,
        orphan=entry.orphan,
        num_uses=entry.num_uses,
    )


def _privileged(req: Request) -> bool:
    return req.sudo or req.is_root


class _TokenBackend:
    """Handlers of the token mount; one instance per store."""

    def __init__(self, store: "TokenStore") -> None:
        self.store = store

    # ---- create -------------------------------------------------------------------------

    async def create(self, req: Request, d: FieldData) -> Response:
        """``create``: a child of the caller (or an orphan, with sudo)."""
        return await self._create(req, d, orphan_path=False)

    async def create_orphan(self, req: Request, d: FieldData) -> Response:
        """``create-orphan``: an orphan token, ACL'd by the path itself."""
        return await self._create(req, d, orphan_path=True)

    async def create_role(self, req: Request, d: FieldData) -> Response:
        """``create/<role>``: token roles are not implemented, so every role is unknown."""
        raise InvalidRequest(f"unknown role {d.get('role_name')}")

    async def _create(self, req: Request, d: FieldData, *, orphan_path: bool) -> Response:
        parent = await self.store.lookup(req.client_token)
        if parent is None:
            raise InvalidRequest("parent token lookup failed: no parent found")
        if parent.num_uses > 0:
            raise InvalidRequest("restricted use token cannot generate child tokens")
        privileged = _privileged(req)

        token_type = d.get("type")
        if token_type == "batch":
            raise InvalidRequest("batch tokens are not supported")
        if token_type not in ("", "service"):
            raise InvalidRequest("invalid 'token_type' value")
        num_uses = int(d.get("num_uses"))
        if num_uses < 0:
            raise InvalidRequest("number of uses cannot be negative")

        token_id: str = d.get("id")
        if token_id and not privileged:
            raise InvalidRequest("root or sudo privileges required to specify token id")

        requested: list[str] = d.get("policies") or []
        no_default: bool = d.get("no_default_policy")
        if not requested:
            # Inherit the parent's policies; "default" only if the parent has it.
            policies = list(parent.policies)
            drop_default = no_default or "default" not in parent.policies
        elif not privileged:
            wanted = sanitize_policies(requested, add_default=False)
            have = sanitize_policies(parent.policies, add_default=False)
            if not set(wanted) <= set(have):
                raise InvalidRequest("child policies must be subset of parent")
            policies = list(wanted)
            drop_default = no_default or "default" not in parent.policies
        else:
            policies = list(requested)
            drop_default = no_default
        if "root" in sanitize_policies(policies, add_default=False) and not parent.is_root:
            raise InvalidRequest("root tokens may not be created without parent token being root")

        no_parent: bool = d.get("no_parent")
        if no_parent and not privileged:
            raise InvalidRequest("root or sudo privileges required to create orphan token")
        orphan = no_parent or orphan_path

        explicit_max_ttl = _duration(d, "explicit_max_ttl")
        period = _duration(d, "period")
        if period > 0 and not privileged:
            raise InvalidRequest("root or sudo privileges required to create periodic token")
        ttl = _duration(d, "ttl") if d.get("ttl") else _duration(d, "lease")

        entry = await self.store.create(
            parent,
            policies=policies,
            ttl=ttl,
            explicit_max_ttl=explicit_max_ttl,
            num_uses=num_uses,
            display_name=d.get("display_name"),
            meta=d.get("meta") or {},
            period=period,
            no_parent=orphan,
            renewable=d.get("renewable"),
            token_id=token_id or None,
            path=f"auth/token/{req.path}",
            no_default_policy=drop_default,
        )
        return Response(auth=_auth(entry, lease_duration=entry.ttl))

    # ---- lookup -------------------------------------------------------------------------

    async def _lookup_token(self, token: str, *, include_id: bool = True) -> Response:
        if not token:
            raise InvalidRequest("missing token ID")
        entry = await self.store.lookup(token)
        if entry is None:
            raise PermissionDenied("bad token")
        return Response(data=lookup_data(entry, self.store.now(), include_id=include_id))

    async def lookup(self, req: Request, d: FieldData) -> Response:
        """``lookup``: the named token (or the caller's, when none is named)."""
        return await self._lookup_token(d.get("token") or req.client_token)

    async def lookup_self(self, req: Request, d: FieldData) -> Response:
        """``lookup-self``: the caller's token (also on its last use)."""
        entry = await self.store.lookup(req.client_token, allow_pending=True)
        if entry is None:
            raise PermissionDenied("bad token")
        return Response(data=lookup_data(entry, self.store.now(), include_id=True))

    async def lookup_accessor(self, req: Request, d: FieldData) -> Response:
        """``lookup-accessor``: the token behind an accessor, without its id."""
        entry = await self._by_accessor(d)
        return Response(data=lookup_data(entry, self.store.now(), include_id=False))

    async def _by_accessor(self, d: FieldData) -> TokenEntry:
        accessor: str = d.get("accessor")
        if not accessor:
            raise InvalidRequest("missing accessor")
        entry = await self.store.lookup_accessor(accessor)
        if entry is None:
            raise InvalidRequest("invalid accessor")
        return entry

    # ---- renew --------------------------------------------------------------------------

    async def _renew(self, token: str, increment: int, *, hide_id: bool = False) -> Response:
        if not token:
            raise InvalidRequest("missing token ID")
        entry = await self.store.lookup(token)
        if entry is None:
            raise InvalidRequest("token not found")
        renewed = await self.store.renew(entry, increment)
        auth = _auth(renewed, lease_duration=renewed.current_lease_ttl(),
                     client_token="" if hide_id else None)
        return Response(auth=auth)

    async def renew(self, req: Request, d: FieldData) -> Response:
        """``renew``: extend the named token's lease."""
        return await self._renew(d.get("token"), d.get("increment"))

    async def renew_self(self, req: Request, d: FieldData) -> Response:
        """``renew-self``: extend the caller's lease."""
        return await self._renew(req.client_token, d.get("increment"))

    async def renew_accessor(self, req: Request, d: FieldData) -> Response:
        """``renew-accessor``: extend the lease of the token behind an accessor."""
        entry = await self._by_accessor(d)
        return await self._renew(entry.id, d.get("increment"), hide_id=True)

    # ---- revoke -------------------------------------------------------------------------

    async def revoke(self, req: Request, d: FieldData) -> None:
        """``revoke``: the named token and its tree; unknown tokens are not an error."""
        token: str = d.get("token")
        if not token:
            raise InvalidRequest("missing token ID")
        if await self.store.lookup(token) is not None:
            await self.store.revoke_tree(token)

    async def revoke_self(self, req: Request, d: FieldData) -> None:
        """``revoke-self``: the caller's token and its tree."""
        await self.store.revoke_tree(req.client_token)

    async def revoke_accessor(self, req: Request, d: FieldData) -> Response | None:
        """``revoke-accessor``: the tree of the token behind an accessor."""
        accessor: str = d.get("accessor")
        if not accessor:
            raise InvalidRequest("missing accessor")
        entry = await self.store.lookup_accessor(accessor)
        if entry is None:
            return Response(warnings=["No token found with this accessor"])
        await self.store.revoke_tree(entry.id)
        return None

    async def revoke_orphan(self, req: Request, d: FieldData) -> None:
        """``revoke-orphan`` (sudo): only the named token; its children become orphans."""
        token: str = d.get("token")
        if not token:
            raise InvalidRequest("missing token ID")
        if not _privileged(req):
            raise InvalidRequest("root or sudo privileges required to revoke and orphan")
        if await self.store.lookup(token) is None:
            raise InvalidRequest("token to revoke not found")
        await self.store.revoke_orphan(token)

    # ---- listing and housekeeping ---------------------------------------------------------

    async def list_accessors(self, req: Request, d: FieldData) -> Response:
        """``accessors/`` LIST (sudo): every token accessor."""
        if not _privileged(req):
            raise PermissionDenied()
        return Response(data={"keys": await self.store.accessors()})

    async def tidy(self, req: Request, d: FieldData) -> Response:
        """``tidy``: revoke expired tokens and drop dangling index entries (202)."""
        await self.store.tidy()
        return Response(warnings=[_TIDY_WARNING], status=202)

    def paths(self) -> list[Path]:
        """The mount's framework paths."""
        up = Operation.UPDATE
        return [
            Path(r"accessors/?", {Operation.LIST: self.list_accessors},
                 synopsis="List token accessors (requires sudo)."),
            Path(r"create-orphan", {up: self.create_orphan}, _CREATE_FIELDS,
                 synopsis="The token create path is used to create new orphan tokens."),
            Path(r"create/(?P<role_name>[\w.@-]+)", {up: self.create_role}, _CREATE_FIELDS,
                 synopsis="This token create path is used to create new tokens adhering to the given role."),
            Path(r"create", {up: self.create}, _CREATE_FIELDS,
                 synopsis="The token create path is used to create new tokens."),
            Path(r"lookup", {Operation.READ: self.lookup, up: self.lookup}, _TOKEN_FIELD,
                 synopsis="This endpoint will lookup a token and its properties."),
            Path(r"lookup-accessor", {up: self.lookup_accessor}, _ACCESSOR_FIELD,
                 synopsis="This endpoint will lookup a token associated with the given accessor "
                          "and its properties. Response will not contain the token ID."),
            Path(r"lookup-self", {Operation.READ: self.lookup_self, up: self.lookup_self}, _TOKEN_FIELD,
                 synopsis="This endpoint will lookup a token and its properties."),
            Path(r"renew", {up: self.renew}, {**_TOKEN_FIELD, **_INCREMENT_FIELD},
                 synopsis="This endpoint will renew the given token and prevent expiration."),
            Path(r"renew-accessor", {up: self.renew_accessor}, {**_ACCESSOR_FIELD, **_INCREMENT_FIELD},
                 synopsis="This endpoint will renew a token associated with the given accessor "
                          "and its properties. Response will not contain the token ID."),
            Path(r"renew-self", {up: self.renew_self}, {**_TOKEN_FIELD, **_INCREMENT_FIELD},
                 synopsis="This endpoint will renew the token used to call it and prevent expiration."),
            Path(r"revoke", {up: self.revoke}, _TOKEN_FIELD,
                 synopsis="This endpoint will delete the given token and all of its child tokens."),
            Path(r"revoke-accessor", {up: self.revoke_accessor}, _ACCESSOR_FIELD,
                 synopsis="This endpoint will delete the token associated with the accessor and "
                          "all of its child tokens."),
            Path(r"revoke-orphan", {up: self.revoke_orphan}, _TOKEN_FIELD,
                 synopsis="This endpoint will delete the token and orphan its child tokens."),
            Path(r"revoke-self", {up: self.revoke_self},
                 synopsis="This endpoint will delete the token used to call it and all of its "
                          "child tokens."),
            Path(r"tidy", {up: self.tidy},
                 synopsis="This endpoint performs cleanup tasks that can be run if certain error "
                          "conditions have occurred."),
        ]


def build_backend(store: "TokenStore") -> Backend:
    """The framework backend of the ``auth/token/`` mount over ``store``."""
    return Backend(
        _TokenBackend(store).paths(),
        help="The token credential backend is always enabled and builtin to Vault. Client "
             "tokens are used to identify a client and to allow Vault to associate policies "
             "and ACLs which are enforced on every request.",
        backend_type="token",
    )
