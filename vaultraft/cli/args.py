"""Vault's command-line grammar: Go ``flag``-style options and ``k=v`` data arguments.

Flags come before positional arguments, as in Vault (Go's ``flag`` package stops at the
first non-flag). ``-name=value``, ``-name value``, ``--name`` and bare ``-name`` for
booleans are accepted; ``--`` ends the flags. Data arguments follow Vault's kvbuilder:
``k=v``, ``k=@file``, ``k=-`` (stdin text), ``@file.json`` and ``-`` (a JSON object).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import IO, Any, Mapping, Sequence


class UsageError(Exception):
    """A local mistake in the command line (Vault exits 1 for these)."""


class Kind(enum.Enum):
    """How a flag's text value is converted."""

    STR = "string"
    BOOL = "bool"
    INT = "int"
    DURATION = "duration"
    LIST = "list"  # repeatable and comma-separated, like Vault's StringSliceVar
    MAP = "map"  # repeatable k=v, like Vault's StringMapVar


@dataclass(frozen=True)
class Flag:
    """One option a command accepts; ``env`` supplies the default when set."""

    name: str
    kind: Kind = Kind.STR
    default: Any = None
    aliases: tuple[str, ...] = ()
    env: str | None = None
    usage: str = ""


@dataclass(frozen=True)
class Parsed:
    """Flag values (converted) and the positional arguments left after them."""

    values: Mapping[str, Any]
    args: tuple[str, ...]
    explicit: frozenset[str] = field(default_factory=frozenset)

    def is_set(self, name: str) -> bool:
        """Whether the flag was given on the command line (not a default or env)."""
        return name in self.explicit

    def text(self, name: str) -> str:
        """The flag as a string ("" when unset)."""
        value = self.values.get(name)
        return "" if value is None else str(value)

    def on(self, name: str) -> bool:
        """The flag as a boolean (False when unset)."""
        return bool(self.values.get(name))

    def number(self, name: str) -> int | None:
        """The flag as an int, or None when unset."""
        value = self.values.get(name)
        return None if value is None else int(value)

    def seconds(self, name: str) -> int | None:
        """The flag as seconds, or None when unset."""
        return self.number(name)

    def items(self, name: str) -> list[str]:
        """The flag's accumulated values."""
        return list(self.values.get(name) or ())

    def pairs(self, name: str) -> dict[str, str]:
        """The flag's accumulated k=v pairs."""
        return dict(self.values.get(name) or {})


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Whole seconds from Vault's duration syntax: plain seconds ("90") or Go units ("1h30m", "2d").

    "" is 0; ValueError for anything else or a negative duration. (Kept here rather than
    imported from the server's framework so the client starts fast and stays stdlib-only.)
    """
    s = text.strip()
    if s == "":
        return 0
    if re.fullmatch(r"-?\d+", s):
        secs = int(s)
    else:
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(s):
            if m.start() != pos:
                raise ValueError(f"invalid duration {text!r}")
            total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(f"invalid duration {text!r}")
        secs = int(total)
    if secs < 0:
        raise ValueError("duration must not be negative")
    return secs


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool; ValueError for anything else."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("parse error")


def _convert(flag: Flag, text: str, previous: Any) -> Any:
    if flag.kind is Kind.STR:
        return text
    if flag.kind is Kind.BOOL:
        return parse_bool(text)
    if flag.kind is Kind.INT:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError("parse error") from None
    if flag.kind is Kind.DURATION:
        return parse_duration(text)
    if flag.kind is Kind.LIST:
        items = list(previous or [])
        items.extend(part.strip() for part in text.split(",") if part.strip())
        return items
    pairs = dict(previous or {})
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"missing = in KV pair: {json.dumps(text)}")
    pairs[key] = value
    return pairs


def parse_flags(argv: Sequence[str], flags: Sequence[Flag], environ: Mapping[str, str]) -> Parsed:
    """Parse leading flags from ``argv`` as Go's flag package does; UsageError on mistakes.

    Defaults come from ``Flag.default``, overridden by ``environ[Flag.env]`` when present,
    overridden by the command line.
    """
    by_name: dict[str, Flag] = {}
    for flag in flags:
        for name in (flag.name, *flag.aliases):
            by_name[name] = flag
    values: dict[str, Any] = {}
    for flag in flags:
        values[flag.name] = flag.default
        if flag.env and environ.get(flag.env, "") != "":
            try:
                values[flag.name] = _convert(flag, environ[flag.env], None)
            except ValueError as exc:
                raise UsageError(f"invalid value {environ[flag.env]!r} for {flag.env}: {exc}") from None
    explicit: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if len(arg) < 2 or arg[0] != "-":
            break
        dashes = 2 if arg[1] == "-" else 1
        if arg == "--":
            i += 1
            break
        name = arg[dashes:]
        if not name or name[0] in "-=":
            raise UsageError(f"bad flag syntax: {arg}")
        i += 1
        name, has_value, text = name.partition("=")
        found = by_name.get(name)
        if found is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        flag = found
        if not has_value:
            if flag.kind is Kind.BOOL:
                text = "true"
            elif i < len(argv):
                text, i = argv[i], i + 1
            else:
                raise UsageError(f"flag needs an argument: -{name}")
        previous = values[flag.name] if flag.name in explicit else None
        try:
            values[flag.name] = _convert(flag, text, previous)
        except ValueError as exc:
            raise UsageError(f'invalid value "{text}" for flag -{name}: {exc}') from None
        explicit.add(flag.name)
    return Parsed(values=values, args=tuple(argv[i:]), explicit=frozenset(explicit))


# Flag groups shared by commands, as Vault's FlagSetHTTP / FlagSetOutputFormat / Field.
HTTP_FLAGS: tuple[Flag, ...] = (
    Flag("address", env="VAULT_ADDR", default="https://127.0.0.1:8200", usage="Address of the Vault server."),
    Flag("ca-cert", env="VAULT_CACERT", usage="Path on the local disk to a PEM-encoded CA certificate."),
    Flag("ca-path", env="VAULT_CAPATH", usage="Path on the local disk to a directory of PEM-encoded CA certificates."),
    Flag("client-cert", env="VAULT_CLIENT_CERT", usage="Path to a PEM-encoded client certificate."),
    Flag("client-key", env="VAULT_CLIENT_KEY", usage="Path to a PEM-encoded private key for -client-cert."),
    Flag("tls-skip-verify", Kind.BOOL, env="VAULT_SKIP_VERIFY", usage="Disable verification of TLS certificates."),
    Flag("namespace", aliases=("ns",), env="VAULT_NAMESPACE", usage="Accepted for compatibility; ignored."),
    Flag("disable-redirects", Kind.BOOL, env="VAULT_DISABLE_REDIRECTS", usage="Do not follow redirects."),
    Flag("non-interactive", Kind.BOOL, usage="Never prompt."),
)
FORMAT_FLAG = Flag("format", env="VAULT_FORMAT", default="table", usage='Print the output in the given format ("table" or "json").')
FIELD_FLAG = Flag("field", usage="Print only the field with the given name, raw.")
OUTPUT_FLAGS: tuple[Flag, ...] = (FORMAT_FLAG, FIELD_FLAG)


def _read_json_object(stream: IO[str], what: str) -> dict[str, Any]:
    try:
        value = json.load(stream)
    except json.JSONDecodeError as exc:
        raise ValueError(f"error parsing JSON from {what}: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must contain a JSON object")
    return value


def parse_kv_data(args: Sequence[str], stdin: IO[str] | None) -> dict[str, Any]:
    """Vault's kvbuilder: turn ``k=v`` style arguments into request data; ValueError on mistakes.

    ``k=@path`` reads the value from a file, ``k=\\@x`` escapes a literal ``@``, ``k=-``
    reads stdin as text, ``@path`` and ``-`` merge a JSON object from a file or stdin;
    a key repeated becomes a list of its values.
    """
    result: dict[str, Any] = {}
    stdin_used = False

    def take_stdin() -> IO[str]:
        nonlocal stdin_used
        if stdin is None:
            raise ValueError("stdin is not supported")
        if stdin_used:
            raise ValueError("stdin already consumed")
        stdin_used = True
        return stdin

    for raw in args:
        if raw == "":
            continue
        key, sep, value = raw.partition("=")
        if not sep:
            if raw == "-":
                result.update(_read_json_object(take_stdin(), "stdin"))
                continue
            if raw.startswith("@"):
                try:
                    with open(raw[1:], encoding="utf-8") as handle:
                        result.update(_read_json_object(handle, raw[1:]))
                except OSError as exc:
                    raise ValueError(f"error reading file: {exc.strerror}: {raw[1:]}") from None
                continue
            raise ValueError("format must be key=value")
        if value.startswith("@"):
            try:
                with open(value[1:], encoding="utf-8") as handle:
                    value = handle.read()
            except OSError as exc:
                raise ValueError(f"error reading file: {exc.strerror}: {value[1:]}") from None
        elif value.startswith("\\@"):
            value = value[1:]
        elif value == "-":
            value = take_stdin().read()
        if key in result:
            existing = result[key]
            result[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            result[key] = value
    return result


def parse_kv_strings(args: Sequence[str], stdin: IO[str] | None) -> dict[str, str]:
    """Like :func:`parse_kv_data` but every value must be a string (Vault's parseArgsDataString)."""
    data = parse_kv_data(args, stdin)
    out: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise ValueError(f"expected {key!r} to be a string, but got {type(value).__name__}")
        out[key] = value
    return out

