"""``vault policy write|read|list|delete`` over ``sys/policies/acl``."""

from __future__ import annotations

from typing import Sequence

from vaultraft.cli.base import EXIT_OK, EXIT_REMOTE, CommandError, Context, Registry, api_errors, begin


def _name(raw: str) -> str:
    return raw.strip().lower()


def cmd_write(ctx: Context, argv: Sequence[str]) -> int:
    """vault policy write NAME FILE|-: upload the HCL policy in FILE (or stdin)."""
    inv = begin(ctx, argv, [])
    inv.exactly(2)
    name, source = _name(inv.args[0]), inv.args[1].strip()
    if source == "-":
        rules = ctx.stdin.read()
    else:
        try:
            with open(source, encoding="utf-8") as handle:
                rules = handle.read()
        except OSError as err:
            raise CommandError(f"Error opening policy file: open {source}: {err.strerror}", EXIT_REMOTE) from err
    with api_errors("Error uploading policy"):
        inv.client.write(f"sys/policies/acl/{name}", {"policy": rules})
    inv.ui.output(f"Success! Uploaded policy: {name}")
    return EXIT_OK


def cmd_read(ctx: Context, argv: Sequence[str]) -> int:
    """vault policy read NAME: print the policy's HCL (or ``{"policy": ...}`` as JSON)."""
    inv = begin(ctx, argv, [])
    inv.exactly(1)
    name = _name(inv.args[0])
    with api_errors(f"Error reading policy named {name}"):
        secret = inv.client.read(f"sys/policies/acl/{name}")
    data = secret.data if secret is not None else None
    rules = (data or {}).get("policy", (data or {}).get("rules"))
    if rules is None:
        raise CommandError(f"No policy named: {name}", EXIT_REMOTE)
    if inv.table:
        inv.ui.output(str(rules).strip())
        return EXIT_OK
    return inv.ui.data({"policy": rules})


def cmd_list(ctx: Context, argv: Sequence[str]) -> int:
    """vault policy list: the names of all ACL policies, one per line."""
    inv = begin(ctx, argv, [])
    inv.at_most(0)
    with api_errors("Error listing policies"):
        secret = inv.client.list("sys/policies/acl")
    names = [str(k) for k in ((secret.data or {}).get("keys") or [])] if secret is not None else []
    if not inv.table:
        return inv.ui.data(names)
    for name in names:
        inv.ui.output(name)
    return EXIT_OK


def cmd_delete(ctx: Context, argv: Sequence[str]) -> int:
    """vault policy delete NAME: remove the policy (tokens keep the name, gaining nothing)."""
    inv = begin(ctx, argv, [])
    inv.exactly(1)
    name = _name(inv.args[0])
    with api_errors(f"Error deleting {name}"):
        inv.client.delete(f"sys/policies/acl/{name}")
    inv.ui.output(f"Success! Deleted policy: {name}")
    return EXIT_OK


def register() -> Registry:
    """This module's commands for the dispatcher."""
    return {
        ("policy", "write"): (cmd_write, "Uploads a named policy from a file"),
        ("policy", "read"): (cmd_read, "Prints the contents of a policy"),
        ("policy", "list"): (cmd_list, "Lists the installed policies"),
        ("policy", "delete"): (cmd_delete, "Deletes a policy by name"),
    }
