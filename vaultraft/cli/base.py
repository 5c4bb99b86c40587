"""What every command shares: its environment, flag parsing, the client and exit codes.

Exit codes are Vault's: 0 success, 1 a local error (bad flags, wrong argument count,
unreadable file), 2 an error from or reaching the server. Commands raise
:class:`CommandError` with the message and code; :func:`vaultraft.cli.main.run` prints it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Mapping, Sequence

from vaultraft.cli.args import HTTP_FLAGS, OUTPUT_FLAGS, Flag, Parsed, UsageError, parse_duration, parse_flags
from vaultraft.cli.client import APIError, Client, ClientConfig
from vaultraft.cli.output import FORMATS, UI

EXIT_OK = 0
EXIT_LOCAL = 1
EXIT_REMOTE = 2
TOKEN_FILE = ".vault-token"


class CommandError(Exception):
    """Stop the command: print ``message`` to stderr and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_LOCAL) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@contextmanager
def api_errors(prefix: str | None, code: int = EXIT_REMOTE) -> Iterator[None]:
    """Turn an APIError inside the block into ``CommandError("<prefix>: <error>", code)``."""
    try:
        yield
    except APIError as err:
        raise CommandError(f"{prefix}: {err}" if prefix else str(err), code) from err


@dataclass
class Context:
    """The process environment a command runs in (injectable for tests)."""

    stdin: IO[str]
    stdout: IO[str]
    stderr: IO[str]
    environ: Mapping[str, str] = field(default_factory=dict)


Command = Callable[[Context, Sequence[str]], int]
# A module's commands for the dispatcher: the words that name it → (handler, synopsis).
Registry = dict[tuple[str, ...], tuple[Command, str]]


def token_helper_path(environ: Mapping[str, str]) -> Path:
    """Vault's internal token helper file: ``~/.vault-token``."""
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / TOKEN_FILE


def stored_token(environ: Mapping[str, str]) -> str:
    """The token in the helper file, or "" when there is none."""
    try:
        return token_helper_path(environ).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def store_token(environ: Mapping[str, str], token: str) -> None:
    """Write ``token`` to the helper file with mode 0600, as Vault does."""
    path = token_helper_path(environ)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token)
    os.chmod(path, 0o600)


def client_config(flags: Parsed, environ: Mapping[str, str]) -> ClientConfig:
    """Connection settings from the HTTP flags (which already fold in VAULT_* defaults)."""
    timeout = 60.0
    if environ.get("VAULT_CLIENT_TIMEOUT"):
        try:
            timeout = float(parse_duration(environ["VAULT_CLIENT_TIMEOUT"])) or 60.0
        except ValueError:
            raise CommandError(f"invalid value for VAULT_CLIENT_TIMEOUT: {environ['VAULT_CLIENT_TIMEOUT']!r}") from None
    return ClientConfig(
        address=flags.text("address") or "https://127.0.0.1:8200",
        token=environ.get("VAULT_TOKEN", "").strip() or stored_token(environ),
        ca_cert=flags.text("ca-cert"),
        ca_path=flags.text("ca-path"),
        client_cert=flags.text("client-cert"),
        client_key=flags.text("client-key"),
        skip_verify=flags.on("tls-skip-verify"),
        timeout=timeout,
        follow_redirects=not flags.on("disable-redirects"),
    )


@dataclass
class Invocation:
    """One parsed command line: flags, positional args, the UI and (lazily) the client."""

    ctx: Context
    flags: Parsed
    ui: UI
    _client: Client | None = None

    @property
    def args(self) -> tuple[str, ...]:
        """Positional arguments after the flags."""
        return self.flags.args

    @property
    def client(self) -> Client:
        """The HTTP client for this invocation's address and token."""
        if self._client is None:
            self._client = Client(client_config(self.flags, self.ctx.environ))
        return self._client

    @property
    def table(self) -> bool:
        """Whether output is Vault's default table format."""
        return self.ui.format == "table"

    def exactly(self, n: int) -> None:
        """Vault's argument-count check for commands taking exactly ``n`` arguments."""
        got = len(self.args)
        if got < n:
            raise CommandError(f"Not enough arguments (expected {n}, got {got})")
        if got > n:
            raise CommandError(f"Too many arguments (expected {n}, got {got})")

    def at_most(self, n: int) -> None:
        """Fail when more than ``n`` positional arguments were given."""
        if len(self.args) > n:
            raise CommandError(f"Too many arguments (expected {n}, got {len(self.args)})")


def begin(ctx: Context, argv: Sequence[str], flags: Sequence[Flag], *, http: bool = True, output: bool = True) -> Invocation:
    """Parse a command's flags (plus the shared HTTP/output groups) into an Invocation.

    Raises CommandError(code 1) for a malformed command line or an unknown format.
    """
    specs = [*(HTTP_FLAGS if http else ()), *(OUTPUT_FLAGS if output else ()), *flags]
    try:
        parsed = parse_flags(argv, specs, ctx.environ)
    except UsageError as err:
        raise CommandError(str(err)) from err
    fmt = parsed.text("format").lower() if output else "table"
    if fmt not in FORMATS:
        raise CommandError(f"Invalid output format: {fmt}")
    return Invocation(ctx=ctx, flags=parsed, ui=UI(ctx.stdout, ctx.stderr, fmt or "table"))


def read_secret_input(ctx: Context, prompt: str) -> str:
    """A secret from the terminal (hidden prompt) or, when stdin is not a tty, stdin's first line."""
    if ctx.stdin.isatty():
        import getpass

        return getpass.getpass(prompt).strip()
    return ctx.stdin.readline().strip()
