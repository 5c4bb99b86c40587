"""The ``vaultraft`` entry point: Vault's command tree dispatched to per-family modules.

Each family module exposes ``register()`` → {command words: (handler, synopsis)}; the
longest run of leading words that names a command wins, so ``operator raft ...`` or
``kv metadata patch`` slot in by adding entries. ``server`` is handed to the server
package untouched. :func:`run` never raises: errors become Vault's exit codes.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

from vaultraft.cli import audit, generic, kv, operator, policy, raft, secrets, token
from vaultraft.cli.base import EXIT_LOCAL, EXIT_REMOTE, CommandError, Context, Registry
from vaultraft.cli.client import APIError

EXIT_NOT_FOUND = 127  # mitchellh/cli: unknown command
_HELP_FLAGS = frozenset({"-h", "-help", "--help"})
_VERSION_FLAGS = frozenset({"-v", "-version", "--version"})


def commands() -> Registry:
    """Every command the CLI knows, keyed by its words."""
    table: Registry = {}
    for module in (generic, operator, kv, token, policy, secrets, audit, raft):
        table.update(module.register())
    return table


def _listing(table: Registry, prefix: tuple[str, ...]) -> list[str]:
    names: dict[str, str] = {}
    for words, (_, synopsis) in table.items():
        if words[: len(prefix)] == prefix and len(words) > len(prefix):
            child = words[len(prefix)]
            names.setdefault(child, synopsis if len(words) == len(prefix) + 1 else f"Interact with {child} commands")
    width = max((len(n) for n in names), default=0)
    return [f"    {name.ljust(width)}    {names[name]}" for name in sorted(names)]


def usage(table: Registry, prefix: tuple[str, ...] = ()) -> str:
    """Help for the top level or for a command group."""
    if not prefix:
        head = "Usage: vaultraft <command> [args]\n\nCommands:\n"
        return head + "\n".join(["    server    Start a vaultraft server", "    witness   Run a DR fencing witness",
                                  *_listing(table, prefix)])
    words = " ".join(prefix)
    return f"Usage: vaultraft {words} <subcommand> [options] [args]\n\nSubcommands:\n" + "\n".join(_listing(table, prefix))


def _command_help(words: tuple[str, ...], doc: str | None) -> str:
    first = (doc or "").strip().splitlines()[0] if doc else " ".join(words)
    return f"Usage: {first}\n\nFlags go before arguments; see Vault's documentation for `vault {' '.join(words)}`."


def _wants_help(args: Sequence[str]) -> bool:
    for arg in args:
        if arg == "--":
            return False
        if arg in _HELP_FLAGS:
            return True
    return False


def run(argv: Sequence[str], ctx: Context) -> int:
    """Run one command line; return Vault's exit code (0 ok, 1 local error, 2 server error)."""
    table = commands()
    if not argv:
        ctx.stderr.write(usage(table) + "\n")
        return EXIT_NOT_FOUND
    if argv[0] in _HELP_FLAGS:
        ctx.stderr.write(usage(table) + "\n")
        return 0
    if argv[0] in _VERSION_FLAGS:
        return generic.cmd_version(ctx, [])
    if argv[0] == "server":
        from vaultraft.server import run_server_cli

        return int(run_server_cli(list(argv[1:])))
    if argv[0] == "witness":
        from vaultraft.replication.witness_cli import run_witness_cli

        return run_witness_cli(list(argv[1:]))
    words = tuple(argv)
    for n in range(len(words), 0, -1):
        if words[:n] in table:
            handler, _ = table[words[:n]]
            args = list(argv[n:])
            if _wants_help(args):
                ctx.stderr.write(_command_help(words[:n], handler.__doc__) + "\n")
                return 0
            try:
                return handler(ctx, args)
            except CommandError as err:
                ctx.stderr.write(err.message + "\n")
                return err.code
            except APIError as err:
                ctx.stderr.write(f"{err}\n")
                return EXIT_REMOTE
    group = next((words[:n] for n in range(len(words), 0, -1) if any(k[:n] == words[:n] for k in table)), None)
    if group is not None:
        ctx.stderr.write(usage(table, group) + "\n")
        return EXIT_LOCAL
    ctx.stderr.write(usage(table) + "\n")
    return EXIT_NOT_FOUND


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Console-script entry point: run ``argv`` (default sys.argv[1:]) with the real streams."""
    ctx = Context(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr, environ=os.environ if environ is None else environ)
    try:
        return run(list(sys.argv[1:] if argv is None else argv), ctx)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_LOCAL
    except ImportError as err:
        sys.stderr.write(f"Error: {err}\n")
        return EXIT_LOCAL
    except Exception as err:  # noqa: BLE001 — the CLI reports, it never raises to the user
        sys.stderr.write(f"Error: unexpected {type(err).__name__}: {err}\n")
        return EXIT_LOCAL


if __name__ == "__main__":
    sys.exit(main())
