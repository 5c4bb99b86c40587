"""Path-level commands: ``status``, ``read``, ``write``, ``list``, ``delete``, ``login``."""

from __future__ import annotations

from typing import Any, Sequence

from vaultraft.cli.args import Flag, Kind, parse_bool, parse_kv_data, parse_kv_strings
from vaultraft.cli.base import (
    EXIT_LOCAL,
    EXIT_OK,
    EXIT_REMOTE,
    CommandError,
    Context,
    Invocation,
    Registry,
    api_errors,
    begin,
    read_secret_input,
    store_token,
)
from vaultraft.cli.client import Secret
from vaultraft.cli.operator import output_seal_status
from vaultraft.cli.output import wrap_at_length


def sanitize_path(path: str) -> str:
    """Vault's sanitizePath: trimmed, without leading or trailing slashes."""
    return path.strip().strip("/")


def kv_data(inv: Invocation, args: Sequence[str]) -> dict[str, Any]:
    """Parse ``k=v`` data arguments; CommandError(1) with Vault's message on a mistake."""
    try:
        return parse_kv_data(args, inv.ctx.stdin)
    except ValueError as err:
        raise CommandError(f"Failed to parse K=V data: {err}") from err


def output_listing(inv: Invocation, secret: Secret | None, path: str) -> int:
    """Print a LIST response as Vault's list commands do; 2 when there is nothing."""
    keys = (secret.data or {}).get("keys") if secret is not None else None
    if not inv.table and not isinstance(keys, list):
        inv.ui.data({})
        return EXIT_REMOTE
    if secret is None or secret.data is None:
        raise CommandError(f"No value found at {path}", EXIT_REMOTE)
    if not isinstance(keys, list):
        raise CommandError(f"No entries found at {path}", EXIT_REMOTE)
    return inv.ui.keys(secret)


def cmd_status(ctx: Context, argv: Sequence[str]) -> int:
    """vault status: seal and HA state; exit 0 unsealed, 2 sealed, 1 on error."""
    inv = begin(ctx, argv, [])
    inv.at_most(0)
    with api_errors("Error checking seal status", EXIT_LOCAL):
        status = inv.client.call("GET", "sys/seal-status") or {}
    code = output_seal_status(inv, status)
    return EXIT_REMOTE if status.get("sealed") else code


def cmd_read(ctx: Context, argv: Sequence[str]) -> int:
    """vault read PATH [k=v...]: print the secret at PATH (the k=v become query parameters)."""
    inv = begin(ctx, argv, [])
    if not inv.args:
        raise CommandError("Not enough arguments (expected 1, got 0)")
    path = sanitize_path(inv.args[0])
    params = kv_data(inv, inv.args[1:])
    with api_errors(f"Error reading {path}"):
        secret = inv.client.read(path, params or None)
    if secret is None:
        raise CommandError(f"No value found at {path}", EXIT_REMOTE)
    if inv.flags.text("field"):
        return inv.ui.field(secret, inv.flags.text("field"))
    return inv.ui.secret(secret)


def cmd_write(ctx: Context, argv: Sequence[str]) -> int:
    """vault write [-force] PATH [k=v... | @file | -]: write data to PATH."""
    inv = begin(ctx, argv, [Flag("force", Kind.BOOL, aliases=("f",))])
    if not inv.args:
        raise CommandError("Not enough arguments (expected 1, got 0)")
    if len(inv.args) == 1 and not inv.flags.on("force"):
        raise CommandError("Must supply data or use -force")
    path = sanitize_path(inv.args[0])
    data = kv_data(inv, inv.args[1:])
    with api_errors(f"Error writing data to {path}"):
        secret = inv.client.write(path, data)
    if secret is None:
        if inv.table:
            inv.ui.output(f"Success! Data written to: {path}")
        return EXIT_OK
    if inv.flags.text("field"):
        return inv.ui.field(secret, inv.flags.text("field"))
    return inv.ui.secret(secret)


def cmd_list(ctx: Context, argv: Sequence[str]) -> int:
    """vault list PATH: the keys under PATH."""
    inv = begin(ctx, argv, [])
    inv.exactly(1)
    path = sanitize_path(inv.args[0]) + "/"
    with api_errors(f"Error listing {path}"):
        secret = inv.client.list(path)
    return output_listing(inv, secret, path)


def cmd_delete(ctx: Context, argv: Sequence[str]) -> int:
    """vault delete PATH [k=v...]: delete PATH (the k=v become query parameters)."""
    inv = begin(ctx, argv, [])
    if not inv.args:
        raise CommandError("Not enough arguments (expected 1, got 0)")
    path = sanitize_path(inv.args[0])
    params = kv_data(inv, inv.args[1:])
    with api_errors(f"Error deleting {path}"):
        secret = inv.client.delete(path, params or None)
    if secret is None or not (secret.data or secret.warnings):
        if inv.table:
            inv.ui.output(f"Success! Data deleted (if it existed) at: {path}")
        return EXIT_OK
    return inv.ui.secret(secret)


def token_login_secret(token: str, data: dict[str, Any]) -> Secret:
    """The auth block Vault's token auth CLI handler builds from a lookup-self response.

    As api.Secret's Token* helpers: policies are the token's then the identity ones (in
    that order, not de-duplicated); an empty identity list is null; metadata comes from
    ``metadata`` or ``meta`` and is null only when both are.
    """
    token_policies = [str(p) for p in data.get("policies") or []]
    identity = [str(p) for p in data.get("identity_policies") or []]
    meta = data.get("metadata") if data.get("metadata") is not None else data.get("meta")
    return Secret(
        auth={
            "client_token": str(data.get("id") or token),
            "accessor": str(data.get("accessor") or ""),
            "policies": token_policies + identity or None,
            "token_policies": token_policies or None,
            "identity_policies": identity or None,
            "metadata": dict(meta) if isinstance(meta, dict) else None,
            "lease_duration": int(data.get("ttl") or 0),
            "renewable": bool(data.get("renewable")),
        }
    )


def _token_auth(inv: Invocation, config: dict[str, str]) -> Secret:
    """Vault's token auth CLI handler: ``token=`` (prompted when absent) and ``lookup=``."""
    lookup = True
    if "lookup" in config:
        try:
            lookup = parse_bool(config["lookup"])
        except ValueError:
            raise CommandError(
                f'Error authenticating: Failed to parse "lookup" as boolean: strconv.ParseBool: parsing '
                f'"{config["lookup"]}": invalid syntax', EXIT_REMOTE) from None
    token = config["token"] if "token" in config else read_secret_input(inv.ctx, "Token (will be hidden): ")
    token = token.strip()
    if not token:
        raise CommandError(
            "Error authenticating: a token must be passed to auth, please view the help for more information",
            EXIT_REMOTE,
        )
    if not lookup:
        return Secret(auth={"client_token": token})
    with api_errors("Error authenticating: error looking up token"):
        body = inv.client.with_token(token).call("GET", "auth/token/lookup-self")
    if not isinstance(body, dict):
        raise CommandError("Error authenticating: empty response from lookup-self", EXIT_REMOTE)
    return token_login_secret(token, dict(body.get("data") or {}))


def cmd_login(ctx: Context, argv: Sequence[str]) -> int:
    """vault login [-method=token] [-no-store] [-no-print] [-token-only] [TOKEN | - | token=T lookup=B]."""
    inv = begin(
        ctx,
        argv,
        [
            Flag("method", default="token"),
            Flag("path"),
            Flag("no-store", Kind.BOOL),
            Flag("no-print", Kind.BOOL),
            Flag("token-only", Kind.BOOL),
        ],
    )
    no_store, field = inv.flags.on("no-store"), inv.flags.text("field")
    if inv.flags.on("token-only"):  # documented to override -no-store and -field
        no_store, field = True, "token"
    if no_store and inv.flags.on("no-print"):
        raise CommandError("-no-store and -no-print cannot be used together")
    method = sanitize_path(inv.flags.text("method")) or "token"
    if method != "token":
        raise CommandError(wrap_at_length(
            f'Unknown auth method: {method}. Use "vault auth list" to see the complete list of auth '
            "methods. Additionally, some auth methods are only available via the HTTP API."
        ))
    args = list(inv.args)
    if args and "=" not in args[0]:
        args[0] = "token=" + args[0]  # `vault login TOKEN` and `vault login -` (stdin)
    try:
        config = parse_kv_strings(args, ctx.stdin)
    except ValueError as err:
        raise CommandError(f"Error parsing configuration: {err}") from err
    secret = _token_auth(inv, config)
    token = str((secret.auth or {}).get("client_token", ""))
    if not no_store:
        try:
            store_token(ctx.environ, token)
        except OSError as err:
            inv.ui.error(f"Error storing token: {err.strerror}")
            inv.ui.error(wrap_at_length(
                "Authentication was successful, but the token was not persisted. The resulting "
                "token is shown below for your records."
            ) + "\n")
            inv.ui.secret(secret)
            return EXIT_REMOTE
        if ctx.environ.get("VAULT_TOKEN"):
            inv.ui.warn(wrap_at_length(
                "WARNING! The VAULT_TOKEN environment variable is set! This takes precedence over "
                "the value set by this command. To use the value set by this command, unset the "
                "VAULT_TOKEN environment variable or set it to the token displayed below."
            ) + "\n")
    elif not inv.flags.on("token-only"):
        inv.ui.warn(wrap_at_length(
            "The token was not stored in token helper. Set the VAULT_TOKEN environment variable or "
            "pass the token below with each request to Vault."
        ) + "\n")
    if inv.flags.on("no-print"):
        return EXIT_OK
    if field:
        return inv.ui.field(secret, field)
    if inv.table:
        inv.ui.output(wrap_at_length(
            "Success! You are now authenticated. The token information displayed below is "
            'already stored in the token helper. You do NOT need to run "vault login" again. '
            "Future Vault requests will automatically use this token."
        ) + "\n")
    return inv.ui.secret(secret)


def cmd_version(ctx: Context, argv: Sequence[str]) -> int:
    """vault version: this client's version and the Vault API version it speaks."""
    from vaultraft import VAULT_COMPAT_VERSION, __version__

    begin(ctx, argv, [], http=False, output=False).at_most(0)
    ctx.stdout.write(f"Vaultraft v{__version__} (Vault API v{VAULT_COMPAT_VERSION})\n")
    return EXIT_OK


def register() -> Registry:
    """This module's commands for the dispatcher."""
    return {
        ("status",): (cmd_status, "Print seal and HA status"),
        ("read",): (cmd_read, "Read data and retrieves secrets"),
        ("write",): (cmd_write, "Write data, configuration, and secrets"),
        ("list",): (cmd_list, "List data or secrets"),
        ("delete",): (cmd_delete, "Delete secrets and configuration"),
        ("login",): (cmd_login, "Authenticate locally"),
        ("version",): (cmd_version, "Prints the version"),
    }
