"""``vault token create|lookup|renew|revoke`` against the token store at ``auth/token/``."""

from __future__ import annotations

from typing import Any, Sequence

from vaultraft.cli.args import Flag, Kind
from vaultraft.cli.base import EXIT_OK, CommandError, Context, Invocation, Registry, api_errors, begin
from vaultraft.cli.client import Secret

ACCESSOR_FLAG = Flag("accessor", Kind.BOOL, usage="Treat the argument as an accessor instead of a token.")


def _show(inv: Invocation, secret: Secret | None) -> int:
    if secret is None:
        return EXIT_OK
    if inv.flags.text("field"):
        return inv.ui.field(secret, inv.flags.text("field"))
    return inv.ui.secret(secret)


def create_request(inv: Invocation) -> dict[str, Any]:
    """The auth/token/create body Vault's CLI sends for the given flags."""
    flags = inv.flags
    body: dict[str, Any] = {
        "display_name": flags.text("display-name"),
        "num_uses": flags.number("use-limit") or 0,
        "renewable": flags.on("renewable"),
    }
    if flags.text("id"):
        body["id"] = flags.text("id")
    if flags.items("policy"):
        body["policies"] = flags.items("policy")
    if flags.pairs("metadata"):
        body["meta"] = flags.pairs("metadata")
    for flag, key in (("ttl", "ttl"), ("explicit-max-ttl", "explicit_max_ttl"), ("period", "period")):
        seconds = flags.seconds(flag)
        if seconds:
            body[key] = f"{seconds}s"
    if flags.on("no-default-policy"):
        body["no_default_policy"] = True
    if flags.text("type"):
        body["type"] = flags.text("type")
    if flags.text("entity-alias"):
        body["entity_alias"] = flags.text("entity-alias")
    return body


def cmd_create(ctx: Context, argv: Sequence[str]) -> int:
    """vault token create [-policy=P ... -ttl -explicit-max-ttl -period -use-limit -orphan -role ...]."""
    inv = begin(
        ctx,
        argv,
        [
            Flag("id"),
            Flag("display-name"),
            Flag("ttl", Kind.DURATION),
            Flag("explicit-max-ttl", Kind.DURATION),
            Flag("period", Kind.DURATION),
            Flag("renewable", Kind.BOOL, default=True),
            Flag("orphan", Kind.BOOL),
            Flag("no-default-policy", Kind.BOOL),
            Flag("use-limit", Kind.INT, default=0),
            Flag("role"),
            Flag("type"),
            Flag("policy", Kind.LIST),
            Flag("metadata", Kind.MAP),
            Flag("entity-alias"),
        ],
    )
    inv.at_most(0)
    body = create_request(inv)
    role = inv.flags.text("role")
    if role:
        path = f"auth/token/create/{role}"
    elif inv.flags.on("orphan"):
        path = "auth/token/create-orphan"
    else:
        path = "auth/token/create"
    with api_errors("Error creating token"):
        secret = inv.client.write(path, body, method="POST")
    return _show(inv, secret)


def cmd_lookup(ctx: Context, argv: Sequence[str]) -> int:
    """vault token lookup [-accessor] [TOKEN|ACCESSOR]: the token's properties (self when omitted)."""
    inv = begin(ctx, argv, [ACCESSOR_FLAG])
    args, accessor = inv.args, inv.flags.on("accessor")
    if accessor and len(args) < 1:
        raise CommandError(f"Not enough arguments with -accessor (expected 1, got {len(args)})")
    if accessor and len(args) > 1:
        raise CommandError(f"Too many arguments with -accessor (expected 1, got {len(args)})")
    if len(args) > 1:
        raise CommandError(f"Too many arguments (expected 0-1, got {len(args)})")
    with api_errors("Error looking up token"):
        if accessor:
            secret = inv.client.write("auth/token/lookup-accessor", {"accessor": args[0].strip()}, method="POST")
        elif args:
            secret = inv.client.write("auth/token/lookup", {"token": args[0].strip()}, method="POST")
        else:
            secret = inv.client.read("auth/token/lookup-self")
    return _show(inv, secret)


def cmd_renew(ctx: Context, argv: Sequence[str]) -> int:
    """vault token renew [-increment=D] [-accessor] [TOKEN]: extend a token's TTL (self when omitted)."""
    inv = begin(ctx, argv, [ACCESSOR_FLAG, Flag("increment", Kind.DURATION, aliases=("i",))])
    inv.at_most(1)
    args = inv.args
    body: dict[str, Any] = {}
    increment = inv.flags.seconds("increment")
    if increment is not None:
        body["increment"] = increment
    if inv.flags.on("accessor"):
        if not args:
            raise CommandError("Not enough arguments with -accessor (expected 1, got 0)")
        path, body["accessor"] = "auth/token/renew-accessor", args[0].strip()
    elif args:
        path, body["token"] = "auth/token/renew", args[0].strip()
    else:
        path = "auth/token/renew-self"
    with api_errors("Error renewing token"):
        secret = inv.client.write(path, body)
    return _show(inv, secret)


def cmd_revoke(ctx: Context, argv: Sequence[str]) -> int:
    """vault token revoke [-self | -accessor | -mode=orphan|path] [TOKEN]: revoke a token (and children)."""
    inv = begin(ctx, argv, [ACCESSOR_FLAG, Flag("self", Kind.BOOL), Flag("mode")])
    args, mode = inv.args, inv.flags.text("mode")
    self_, accessor = inv.flags.on("self"), inv.flags.on("accessor")
    if mode not in ("", "orphan", "path"):
        raise CommandError(f"Invalid mode: {mode}")
    if self_ and args:
        raise CommandError(f"Too many arguments with -self (expected 0, got {len(args)})")
    if not self_ and len(args) > 1:
        raise CommandError(f"Too many arguments (expected 1 or -self, got {len(args)})")
    if not self_ and not args:
        raise CommandError(f"Not enough arguments (expected 1 or -self, got {len(args)})")
    if self_ and accessor:
        raise CommandError("Cannot use -self with -accessor!")
    if self_ and mode:
        raise CommandError("Cannot use -self with -mode!")
    if accessor and mode:
        raise CommandError(f"Cannot use -accessor with -mode={mode}!")
    token = args[0].strip() if args else ""
    with api_errors("Error revoking token"):
        if self_:
            inv.client.write("auth/token/revoke-self")
        elif accessor:
            inv.client.write("auth/token/revoke-accessor", {"accessor": token})
        elif mode == "orphan":
            inv.client.write("auth/token/revoke-orphan", {"token": token})
        elif mode == "path":
            inv.client.write(f"sys/leases/revoke-prefix/{token}")
        else:
            inv.client.write("auth/token/revoke", {"token": token})
    inv.ui.output("Success! Revoked token (if it existed)")
    return EXIT_OK


def register() -> Registry:
    """This module's commands for the dispatcher."""
    return {
        ("token", "create"): (cmd_create, "Create a new token"),
        ("token", "lookup"): (cmd_lookup, "Display information about a token"),
        ("token", "renew"): (cmd_renew, "Renew a token lease"),
        ("token", "revoke"): (cmd_revoke, "Revoke a token and its children"),
    }
