"""``vault operator rotate|key-status|rekey|generate-root``: the key ceremonies.

Output follows Vault's CLI (command/operator_rekey.go, operator_generate_root.go,
operator_rotate.go). PGP keys are given as paths to files holding a public key in binary
or base64 form, as Vault's ``-pgp-keys``/``-pgp-key`` flags take them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
import string
from typing import Any, Mapping, Sequence

from vaultraft.cli.args import Flag, Kind
from vaultraft.cli.base import EXIT_LOCAL, EXIT_OK, CommandError, Context, Invocation, Registry, api_errors, begin, read_secret_input
from vaultraft.cli.output import columnize, go_value, table_output, wrap_at_length

_BASE62 = string.ascii_letters + string.digits


def read_pgp_key_file(path: str) -> str:
    """A public key file (binary, or already base64) as Vault's API takes it: base64."""
    if path.startswith("keybase:"):
        raise CommandError("keybase:<user> PGP keys are not supported; give a path to a public key file")
    try:
        with open(path.removeprefix("@"), "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise CommandError(f"Error reading PGP key file {path}: {err.strerror or err}") from None
    text = raw.strip()
    try:
        base64.b64decode(text, validate=True)
        return text.decode()
    except (binascii.Error, ValueError):
        return base64.b64encode(raw).decode()


def pgp_key_list(inv: Invocation, name: str) -> list[str]:
    """The base64 keys named by a comma-separated list flag of file paths."""
    return [read_pgp_key_file(p.strip()) for item in inv.flags.items(name) for p in item.split(",") if p.strip()]


def _read_key(ctx: Context, arg: str, prompt: str) -> tuple[str, bool]:
    """The key from the argument, stdin (``-``) or a prompt; True when it was prompted."""
    if arg == "-":
        return ctx.stdin.read().strip(), False
    if arg:
        return arg.strip(), False
    return read_secret_input(ctx, prompt), True


def _install_time(value: str) -> str:
    try:
        t = dt.datetime.fromisoformat(value.rstrip("Z")[:26].rstrip("."))
    except ValueError:
        return value
    return t.strftime("%d %b %y %H:%M UTC")


def key_status_lines(status: Mapping[str, Any]) -> str:
    """Vault's printKeyStatus."""
    lines = [f"Key Term | {status.get('term', 0)}", f"Install Time | {_install_time(str(status.get('install_time', '')))}"]
    if status.get("encryptions") is not None:
        lines.append(f"Encryption Count | {status['encryptions']}")
    return columnize(lines)


def cmd_key_status(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator key-status: the active encryption key's term, install time and use count."""
    inv = begin(ctx, argv, [])
    inv.at_most(0)
    with api_errors("Error reading key status"):
        status = inv.client.call("GET", "sys/key-status") or {}
    status = status.get("data") or status
    if inv.table:
        inv.ui.output(key_status_lines(status))
        return EXIT_OK
    return inv.ui.data({k: status.get(k) for k in ("term", "install_time", "encryptions")}, ordered=True)


def cmd_rotate(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator rotate: install a new encryption key term (old terms still decrypt)."""
    inv = begin(ctx, argv, [])
    inv.at_most(0)
    with api_errors("Error rotating key"):
        inv.client.call("PUT", "sys/rotate")
    with api_errors("Error reading key status"):
        status = inv.client.call("GET", "sys/key-status") or {}
    status = status.get("data") or status
    if not inv.table:
        return inv.ui.data({k: status.get(k) for k in ("term", "install_time", "encryptions")}, ordered=True)
    inv.ui.output("Success! Rotated key")
    inv.ui.output("")
    inv.ui.output(key_status_lines(status))
    return EXIT_OK


# ---- rekey ---------------------------------------------------------------------------------------

_REKEY_FLAGS = [
    Flag("init", Kind.BOOL), Flag("cancel", Kind.BOOL), Flag("status", Kind.BOOL),
    Flag("key-shares", Kind.INT, default=5, aliases=("n",)), Flag("key-threshold", Kind.INT, default=3, aliases=("t",)),
    Flag("nonce"), Flag("pgp-keys", Kind.LIST), Flag("target", default="barrier"), Flag("verify", Kind.BOOL),
    Flag("backup", Kind.BOOL), Flag("backup-delete", Kind.BOOL, aliases=("delete",)),
    Flag("backup-retrieve", Kind.BOOL, aliases=("retrieve",)),
]


def _rekey_base(inv: Invocation) -> str:
    target = inv.flags.text("target").strip().lower()
    if target == "barrier":
        return "sys/rekey"
    if target in ("recovery", "hsm"):
        return "sys/rekey-recovery-key"
    raise CommandError(f"Unknown target: {inv.flags.text('target')}")


def _rekey_status_table(status: Mapping[str, Any], verify: bool) -> str:
    b = go_value
    lines = ["Key | Value", f"Nonce | {status.get('nonce', '')}", f"Started | {b(bool(status.get('started')))}"]
    if verify:
        lines += [f"New Shares | {status.get('n', 0)}", f"New Threshold | {status.get('t', 0)}",
                  f"Verification Progress | {status.get('progress', 0)}/{status.get('t', 0)}"]
        return table_output(lines)
    if status.get("started"):
        lines += [f"Rekey Progress | {status.get('progress', 0)}/{status.get('required', 0)}",
                  f"New Shares | {status.get('n', 0)}", f"New Threshold | {status.get('t', 0)}",
                  f"Verification Required | {b(bool(status.get('verification_required')))}"]
    fps = status.get("pgp_fingerprints") or []
    if fps:
        lines += [f"PGP Fingerprints | [{' '.join(fps)}]", f"Backup | {b(bool(status.get('backup')))}"]
    return table_output(lines)


def _print_rekey_status(inv: Invocation, status: Mapping[str, Any], verify: bool) -> int:
    if inv.table:
        inv.ui.output(_rekey_status_table(status, verify))
        return EXIT_OK
    return inv.ui.data(dict(status), ordered=True)


def _print_new_keys(inv: Invocation, status: Mapping[str, Any], resp: Mapping[str, Any], base: str) -> int:
    if not inv.table:
        return inv.ui.data(dict(resp), ordered=True)
    out = inv.ui.output
    out("")
    keys, b64 = list(resp.get("keys") or []), list(resp.get("keys_base64") or [])
    shown = b64 if len(b64) == len(keys) else keys
    fps = list(resp.get("pgp_fingerprints") or [])
    for i, key in enumerate(shown, 1):
        out(f"Key {i} fingerprint: {fps[i - 1]}; value: {key}" if fps else f"Key {i}: {key}")
    out("")
    out(f"Operation nonce: {resp.get('nonce', '')}")
    n, t = status.get("n", 0), status.get("t", 0)
    if fps and resp.get("backup"):
        where = "core/recovery-keys-backup" if base.endswith("recovery-key") else "core/unseal-keys-backup"
        out("")
        out(wrap_at_length(f'The encrypted unseal keys are backed up to "{where}" in the storage backend. Remove '
                           'these keys at any time using "vaultraft operator rekey -backup-delete". Vault does not '
                           "automatically remove these keys."))
    out("")
    if not resp.get("verification_required"):
        out(wrap_at_length(f"Vault rekeyed with {n} key shares and a key threshold of {t}. Please securely "
                           "distribute the key shares printed above. When Vault is re-sealed, restarted, or "
                           f"stopped, you must supply at least {t} of these keys to unseal it before it can start "
                           "servicing requests."))
        return EXIT_OK
    out(wrap_at_length(f"Vault has created a new key, split into {n} key shares and a key threshold of {t}. These "
                       "will not be active until after verification is complete. Please securely distribute the "
                       "key shares printed above. When Vault is re-sealed, restarted, or stopped, you must supply "
                       f"at least {t} of these keys to unseal it before it can start servicing requests."))
    out("")
    inv.ui.warn(wrap_at_length("Again, these key shares are _not_ valid until verification is performed. Do not "
                               "lose or discard your current key shares until after verification is complete or you "
                               "will be unable to unseal Vault. If you cancel the rekey process or seal Vault before "
                               "verification is complete the new shares will be discarded and the current shares "
                               "will remain valid."))
    out("")
    inv.ui.warn(wrap_at_length("The current verification status, including initial nonce, is shown below."))
    out("")
    with api_errors("Error reading rekey status"):
        vstatus = inv.client.call("GET", f"{base}/verify") or {}
    return _print_rekey_status(inv, vstatus, True)


def cmd_rekey(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator rekey [-target=recovery] [-init|-cancel|-status|-verify|-backup-retrieve|-backup-delete] [KEY]."""
    inv = begin(ctx, argv, _REKEY_FLAGS)
    inv.at_most(1)
    base = _rekey_base(inv)
    flags, verify = inv.flags, inv.flags.on("verify")
    client = inv.client
    recovery = base.endswith("recovery-key")
    if flags.on("backup-delete"):
        with api_errors("Error deleting rekey stored keys"):
            client.call("DELETE", "sys/rekey/recovery-key-backup" if recovery else "sys/rekey/backup")
        inv.ui.output("Success! Delete stored keys (if they existed)")
        return EXIT_OK
    if flags.on("backup-retrieve"):
        with api_errors("Error retrieving rekey stored keys"):
            secret = client.read("sys/rekey/recovery-key-backup" if recovery else "sys/rekey/backup")
        if secret is None:
            raise CommandError("No backed-up keys found", EXIT_LOCAL)
        return inv.ui.secret(secret)
    if flags.on("cancel"):
        nonce = flags.text("nonce")
        with api_errors("Error canceling rekey"):
            if verify:
                client.call("DELETE", f"{base}/verify")
            else:
                if not nonce:  # Vault asks for the nonce within 10 minutes of -init
                    nonce = str((client.call("GET", f"{base}/init") or {}).get("nonce") or "")
                client.call("DELETE", f"{base}/init", body={"nonce": nonce} if nonce else None)
        inv.ui.output("Success! Canceled rekeying (if it was started)")
        return EXIT_OK
    if flags.on("init"):
        pgp_keys = pgp_key_list(inv, "pgp-keys")
        body: dict[str, Any] = {"secret_shares": flags.number("key-shares"), "secret_threshold": flags.number("key-threshold"),
                                "backup": flags.on("backup"), "require_verification": verify}
        if pgp_keys:
            body["pgp_keys"] = pgp_keys
        with api_errors("Error initializing rekey"):
            status = client.call("PUT", f"{base}/init", body=body) or {}
        if inv.table and not pgp_keys:
            inv.ui.warn(wrap_at_length("WARNING! If you lose the keys after they are returned, there is no recovery. "
                                       "Consider canceling this operation and re-initializing with the -pgp-keys flag "
                                       "to protect the returned unseal keys along with -backup to allow recovery of "
                                       "the encrypted keys in case of emergency. You can delete the stored keys "
                                       "later using the -delete flag."))
            inv.ui.output("")
        return _print_rekey_status(inv, status, False)
    path = f"{base}/verify" if verify else f"{base}/init"
    if flags.on("status"):
        with api_errors("Error reading rekey status"):
            return _print_rekey_status(inv, client.call("GET", path) or {}, verify)
    with api_errors("Error getting rekey status"):
        status = client.call("GET", path) or {}
    if not status.get("started"):
        raise CommandError(wrap_at_length('No rekey is in progress. Start a rekey process by running '
                                          '"vaultraft operator rekey -init".'))
    key, prompted = _read_key(ctx, inv.args[0] if inv.args else "", "Unseal Key (will be hidden): ")
    nonce = str(status.get("nonce") or "") if prompted else flags.text("nonce")
    if not nonce:
        raise CommandError("Missing nonce value: specify it via the -nonce flag")
    if not key:
        raise CommandError("A key is required: give it as the argument, on stdin with '-', or at the prompt")
    with api_errors("Error posting unseal key"):
        resp = client.call("PUT", f"{base}/verify" if verify else f"{base}/update", body={"key": key, "nonce": nonce}) or {}
    if not resp.get("complete"):
        with api_errors("Error reading rekey status"):
            return _print_rekey_status(inv, client.call("GET", path) or {}, verify)
    if verify:
        inv.ui.output("Rekey verification successful.")
        return EXIT_OK
    return _print_new_keys(inv, status, resp, base)


# ---- generate-root --------------------------------------------------------------------------------

_GENROOT_FLAGS = [
    Flag("init", Kind.BOOL), Flag("cancel", Kind.BOOL), Flag("status", Kind.BOOL), Flag("decode"),
    Flag("generate-otp", Kind.BOOL), Flag("otp"), Flag("pgp-key"), Flag("nonce"),
    Flag("dr-token", Kind.BOOL), Flag("recovery-token", Kind.BOOL),
]


def decode_encoded_token(encoded: str, otp: str) -> str:
    """Vault 1.10+ decoding: unpadded base64 of token XOR otp."""
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise CommandError(f"Error decoding base64'd token: {err}") from None
    if len(raw) != len(otp):
        raise CommandError("Error xoring token: length of byte slices is not equivalent")
    return bytes(a ^ b for a, b in zip(raw, otp.encode())).decode("utf-8", "replace")


def _genroot_table(inv: Invocation, status: Mapping[str, Any]) -> int:
    if not inv.table:
        return inv.ui.data(dict(status), ordered=True)
    b = go_value
    lines = [f"Nonce | {status.get('nonce', '')}", f"Started | {b(bool(status.get('started')))}",
             f"Progress | {status.get('progress', 0)}/{status.get('required', 0)}",
             f"Complete | {b(bool(status.get('complete')))}"]
    if status.get("pgp_fingerprint"):
        lines.append(f"PGP Fingerprint | {status['pgp_fingerprint']}")
    if status.get("encoded_token"):
        lines.append(f"Encoded Token | {status['encoded_token']}")
    elif status.get("encoded_root_token"):
        lines.append(f"Encoded Root Token | {status['encoded_root_token']}")
    if status.get("otp"):
        inv.ui.warn(wrap_at_length("A One-Time-Password has been generated for you and is shown in the OTP field. "
                                   "You will need this value to decode the resulting root token, so keep it safe."))
        lines.append(f"OTP | {status['otp']}")
    if status.get("otp_length"):
        lines.append(f"OTP Length | {status['otp_length']}")
    inv.ui.output(columnize(lines))
    return EXIT_OK


def cmd_generate_root(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator generate-root [-init [-otp=..|-pgp-key=..]|-cancel|-status|-decode=..|-generate-otp] [KEY]."""
    inv = begin(ctx, argv, _GENROOT_FLAGS)
    inv.at_most(1)
    flags, client = inv.flags, inv.client
    if flags.on("recovery-token"):
        raise CommandError("recovery tokens are not supported by this server")
    # -dr-token: the same ceremony on a DR secondary, minting a DR operation token
    base = "sys/replication/dr/secondary/generate-operation-token" if flags.on("dr-token") else "sys/generate-root"
    if flags.on("generate-otp"):
        with api_errors("Error getting root generation status"):
            length = int((client.call("GET", f"{base}/attempt") or {}).get("otp_length") or 0)
        otp = "".join(secrets.choice(_BASE62) for _ in range(length)) if length else \
            base64.b64encode(secrets.token_bytes(16)).decode()
        if inv.table:
            inv.ui.raw(otp)
            return EXIT_OK
        return inv.ui.data({"otp": otp, "otp_length": len(otp)})
    if flags.text("decode"):
        encoded, otp = flags.text("decode"), flags.text("otp")
        if encoded == "-":
            encoded = ctx.stdin.read().strip()
        if not otp:
            raise CommandError("Missing otp: use -otp to supply it")
        token = decode_encoded_token(encoded, otp)
        if inv.table:
            inv.ui.raw(token)
            return EXIT_OK
        return inv.ui.data({"token": token})
    if flags.on("cancel"):
        with api_errors("Error canceling root token generation"):
            client.call("DELETE", f"{base}/attempt")
        inv.ui.output("Success! Root token generation canceled (if it was started)")
        return EXIT_OK
    if flags.on("init"):
        otp, pgp_file = flags.text("otp"), flags.text("pgp-key")
        if otp and pgp_file:
            raise CommandError("Error initializing: cannot specify both -otp and -pgp-key")
        body: dict[str, Any] = {}
        if otp:
            body["otp"] = otp
        if pgp_file:
            body["pgp_key"] = read_pgp_key_file(pgp_file)
        with api_errors("Error initializing root generation"):
            return _genroot_table(inv, client.call("PUT", f"{base}/attempt", body=body) or {})
    with api_errors("Error getting root generation status"):
        status = client.call("GET", f"{base}/attempt") or {}
    if flags.on("status"):
        return _genroot_table(inv, status)
    if not status.get("started"):
        inv.ui.error(wrap_at_length('No root generation is in progress. Start a root generation by running '
                                    '"vaultraft operator generate-root -init".'))
        return EXIT_LOCAL
    key, prompted = _read_key(ctx, inv.args[0] if inv.args else "", "Unseal Key (will be hidden): ")
    nonce = str(status.get("nonce") or "") if prompted else flags.text("nonce")
    if not nonce:
        raise CommandError("Missing nonce value: specify it via the -nonce flag")
    with api_errors("Error posting unseal key"):
        resp = client.call("PUT", f"{base}/update", body={"key": key, "nonce": nonce}) or {}
    return _genroot_table(inv, resp)


def register() -> Registry:
    """This module's commands for the dispatcher."""
    return {
        ("operator", "rotate"): (cmd_rotate, "Rotates the underlying encryption key"),
        ("operator", "key-status"): (cmd_key_status, "Provides information about the active encryption key"),
        ("operator", "rekey"): (cmd_rekey, "Generates new unseal keys"),
        ("operator", "generate-root"): (cmd_generate_root, "Generates a new root token"),
    }
