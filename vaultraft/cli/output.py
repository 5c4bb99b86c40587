"""Vault's CLI output: the Key/Value table, ``-format=json`` and ``-field`` raw values.

The table is ryanuber/columnize as Vault configures it (columns split on a delimiter,
cells trimmed, empty cells shown as ``n/a``, four spaces between columns, a dashed
underline under the header); values are rendered as Go's ``%v`` would (``[a b]``,
``map[k:v]``, ``<nil>``) and TTL-looking integers as short durations (``768h``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import IO, Any, Mapping, Sequence

from vaultraft.cli.client import STRUCT_MEMBERS, Secret

HOPE_DELIM = "\u2668"  # Vault's "♨": a column delimiter we hope no secret contains
FORMATS = ("table", "json")
MAX_LINE_LENGTH = 78


def go_value(value: Any) -> str:
    """Render ``value`` as Go's ``fmt`` ``%v`` renders decoded JSON."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def go_quoted_list(values: Sequence[Any] | None) -> str:
    """Go's ``%q`` of a string slice: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(str(v), ensure_ascii=False) for v in values or ()) + "]"


def go_duration(seconds: int) -> str:
    """Go's time.Duration.String() for a whole number of seconds."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    hours, rem = divmod(s, 3600)
    minutes, secs = divmod(rem, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def human_duration(seconds: int) -> str:
    """Vault's humanDuration: Go's duration string without the pesky zeros (``768h``, ``1h1s``)."""
    text = go_duration(seconds)
    if text.endswith("m0s"):
        text = text[:-2]
    idx = text.find("h0m")
    if idx > 0:
        text = text[: idx + 1] + text[idx + 3 :]
    return text


def looks_like_duration(key: str) -> bool:
    """Vault's looksLikeDuration: keys whose integer values print as durations."""
    return (
        key in ("period", "ttl", "duration", "lease_max", "ttl_max")
        or key.endswith(("_period", "_ttl", "_duration"))
    )


def _cell(key: str, value: Any) -> str:
    if looks_like_duration(key) and isinstance(value, int) and not isinstance(value, bool):
        return human_duration(value)
    return go_value(value)


def columnize(lines: Sequence[str], delim: str = "|", glue: str = "    ", empty: str = "n/a") -> str:
    """ryanuber/columnize.Format as Vault's columnOutput configures it."""
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.split(delim)]
        rows.append([c if c else empty for c in cells])
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    out = []
    for row in rows:
        parts = [cell.ljust(widths[i]) + glue for i, cell in enumerate(row[:-1])]
        out.append("".join(parts) + row[-1])
    return "\n".join(out)


def table_output(lines: Sequence[str], delim: str = "|") -> str:
    """Vault's tableOutput: the first line is the header, underlined with dashes."""
    if not lines:
        return ""
    underline = delim.join("-" * len(h.strip()) for h in lines[0].split(delim))
    return columnize([lines[0], underline, *lines[1:]], delim=delim)


def map_table(data: Mapping[str, Any]) -> str:
    """Vault's TableFormatter.OutputMap: sorted Key/Value rows ("" for an empty map)."""
    if not data:
        return ""
    rows = [f"{k} {HOPE_DELIM} {_cell(k, data[k])}" for k in sorted(data)]
    return table_output([f"Key{HOPE_DELIM}Value", *rows], delim=HOPE_DELIM)


def secret_table(secret: Secret) -> str:
    """Vault's TableFormatter.OutputSecret: lease, auth, wrap info and data rows ("" when none)."""
    d = HOPE_DELIM
    out: list[str] = []
    if secret.lease_duration > 0:
        if secret.lease_id:
            out.append(f"lease_id {d} {secret.lease_id}")
            out.append(f"lease_duration {d} {human_duration(secret.lease_duration)}")
            out.append(f"lease_renewable {d} {go_value(secret.renewable)}")
        else:
            out.append(f"refresh_interval {d} {human_duration(secret.lease_duration)}")
    auth = secret.auth
    if auth is not None:
        duration = int(auth.get("lease_duration") or 0)
        out.append(f"token {d} {auth.get('client_token', '')}")
        out.append(f"token_accessor {d} {auth.get('accessor', '')}")
        out.append(f"token_duration {d} {human_duration(duration) if duration else '∞'}")
        out.append(f"token_renewable {d} {go_value(bool(auth.get('renewable')))}")
        out.append(f"token_policies {d} {go_quoted_list(auth.get('token_policies'))}")
        out.append(f"identity_policies {d} {go_quoted_list(auth.get('identity_policies'))}")
        out.append(f"policies {d} {go_quoted_list(auth.get('policies'))}")
        for key, value in (auth.get("metadata") or {}).items():
            out.append(f"token_meta_{key} {d} {go_value(value)}")
    wrap = secret.wrap_info
    if wrap is not None:
        out.append(f"wrapping_token: {d} {wrap.get('token', '')}")
        out.append(f"wrapping_accessor: {d} {wrap.get('accessor', '')}")
        out.append(f"wrapping_token_ttl: {d} {human_duration(int(wrap.get('ttl') or 0))}")
        out.append(f"wrapping_token_creation_time: {d} {wrap.get('creation_time', '')}")
        out.append(f"wrapping_token_creation_path: {d} {wrap.get('creation_path', '')}")
        if wrap.get("wrapped_accessor"):
            out.append(f"wrapped_accessor: {d} {wrap['wrapped_accessor']}")
    for key in sorted(secret.data or {}):
        out.append(f"{key} {d} {_cell(key, (secret.data or {})[key])}")
    if not out:
        return ""
    return table_output([f"Key{d}Value", *out], delim=d)


def list_table(keys: Sequence[Any]) -> str:
    """Vault's TableFormatter.OutputList: a sorted "Keys" column ("" when empty)."""
    if not keys:
        return ""
    return table_output(["Keys", *sorted(str(k) for k in keys)], delim=HOPE_DELIM)


def warnings_text(secret: Secret | None) -> str:
    """The warnings block Vault prints (to stderr) before a table; "" when there are none."""
    if secret is None or not secret.warnings:
        return ""
    lines = ["WARNING! The following warnings were returned from Vault:\n"]
    for warning in secret.warnings:
        lines.append(wrap_at_length(f"* {warning}", pad=2))
        lines.append("")
    return "\n".join(lines)


def _sorted_maps(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_maps(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_maps(v) for v in value]
    return value


def go_json(value: Any, *, sort_top: bool = True, structs: frozenset[str] = frozenset()) -> str:
    """JSON as Go's json.MarshalIndent(v, "", "  ") writes decoded maps: sorted keys, HTML escaped.

    With ``sort_top=False`` the top-level object keeps its order (a Go struct's fields), and
    so do the top-level members named in ``structs`` (nested structs); maps below are sorted.
    """
    if isinstance(value, dict) and not sort_top:
        value = {
            k: ({kk: _sorted_maps(vv) for kk, vv in v.items()} if k in structs and isinstance(v, dict) else _sorted_maps(v))
            for k, v in value.items()
        }
    else:
        value = _sorted_maps(value)
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def raw_field(secret: Secret, name: str) -> Any:
    """Vault's RawField: the value ``-field=name`` prints, or None when absent."""
    data = secret.data or {}
    if secret.auth is not None:
        auth = secret.auth
        mapping = {
            "token": "client_token",
            "token_accessor": "accessor",
            "token_duration": "lease_duration",
            "token_renewable": "renewable",
            "token_policies": "token_policies",
            "identity_policies": "identity_policies",
            "policies": "policies",
        }
        if name in mapping:
            return auth.get(mapping[name])
        return data.get(name)
    if secret.wrap_info is not None:
        wrap = secret.wrap_info
        wrap_names = {
            "wrapping_token": "token",
            "wrapping_accessor": "accessor",
            "wrapping_token_ttl": "ttl",
            "wrapping_token_creation_time": "creation_time",
            "wrapping_token_creation_path": "creation_path",
            "wrapped_accessor": "wrapped_accessor",
        }
        if name in wrap_names:
            return wrap.get(wrap_names[name])
        return data.get(name)
    simple: dict[str, Any] = {
        "lease_duration": secret.lease_duration,
        "lease_id": secret.lease_id,
        "request_id": secret.request_id,
        "renewable": secret.renewable,
        "refresh_interval": secret.lease_duration,
    }
    if name in simple:
        return simple[name]
    if name == "data":
        return data["data"] if "data" in data else data
    return data.get(name)


def pad_equal_signs(header: str, total_len: int) -> str:
    """Vault's padEqualSigns: ``== header ==`` centred over ``total_len`` columns."""
    signs = total_len - (len(header) + 2)
    if signs <= 0:
        signs = 4
    if signs % 2:
        signs += 1
    half = "=" * (signs // 2)
    return f"{half} {header} {half}"


def header_for_map(header: str, data: Mapping[str, Any]) -> str:
    """Vault's getHeaderForMap: a section header as wide as the table below it."""
    longest = max((len(k) for k in data), default=0)
    return pad_equal_signs(header, longest + 4 + 5)


def wrap_words(words: Sequence[str], limit: int, penalty: int = 100_000) -> list[list[str]]:
    """kr/text's WrapWords: lines of minimal raggedness (squared slack), as Vault wraps prose."""
    n = len(words)
    if n == 0:
        return []
    cost = [0] * (n + 1)
    brk = [n] * n
    for i in range(n - 1, -1, -1):
        length = len(words[i])
        widths = [length]
        for j in range(i + 1, n):
            length += 1 + len(words[j])
            widths.append(length)
        if widths[-1] <= limit:
            cost[i], brk[i] = 0, n
            continue
        best = None
        for j in range(i + 1, n):
            width = widths[j - 1 - i]
            c = (limit - width) ** 2 + cost[j] + (penalty if width > limit else 0)
            if best is None or c < best:
                best, brk[i] = c, j
        cost[i] = best if best is not None else 0
    lines, i = [], 0
    while i < n:
        lines.append(list(words[i : brk[i]]))
        i = brk[i]
    return lines


def wrap_at_length(text: str, pad: int = 0) -> str:
    """Vault's wrapAtLengthWithPadding: wrap prose to 78 columns, each line indented ``pad``."""
    words = text.strip().replace("\n", " ").split(" ")
    lines = wrap_words(words, MAX_LINE_LENGTH - pad)
    return "\n".join(" " * pad + " ".join(line) for line in lines)


@dataclass
class UI:
    """Where a command writes: stdout for results, stderr for errors and warnings."""

    stdout: IO[str]
    stderr: IO[str]
    format: str = "table"

    def output(self, text: str) -> None:
        """Print a line of results."""
        self.stdout.write(text + "\n")

    def error(self, text: str) -> None:
        """Print an error line to stderr."""
        self.stderr.write(text + "\n")

    def warn(self, text: str) -> None:
        """Print a warning line to stderr."""
        self.stderr.write(text + "\n")

    def raw(self, text: str) -> None:
        """Vault's PrintRaw: no trailing newline unless stdout is a terminal."""
        tty = getattr(self.stdout, "isatty", lambda: False)()
        self.stdout.write(text + ("\n" if tty else ""))

    def table(self, text: str) -> None:
        """Print a rendered table, if it has any rows."""
        if text:
            self.output(text)

    def secret(self, secret: Secret) -> int:
        """Vault's OutputSecret: the table (with warnings) or the whole envelope as JSON."""
        if self.format == "json":
            self.output(go_json(secret.to_json(), sort_top=False, structs=STRUCT_MEMBERS))
            return 0
        warnings = warnings_text(secret)
        if warnings:
            self.warn(warnings)
        self.table(secret_table(secret))
        return 0

    def data(self, data: Any, *, ordered: bool = False) -> int:
        """Vault's OutputData: a map as a Key/Value table, or any value as JSON."""
        if self.format == "json":
            self.output(go_json(data, sort_top=not ordered))
            return 0
        if isinstance(data, dict):
            self.table(map_table(data))
        elif isinstance(data, list):
            self.table(list_table(data))
        else:
            self.output(go_value(data))
        return 0

    def keys(self, secret: Secret) -> int:
        """Vault's OutputList: the ``keys`` of a LIST response."""
        keys = (secret.data or {}).get("keys") or []
        if self.format == "json":
            self.output(go_json(keys))
            return 0
        warnings = warnings_text(secret)
        if warnings:
            self.warn(warnings)
        self.table(list_table(keys))
        return 0

    def field(self, source: Secret | Mapping[str, Any], name: str) -> int:
        """Vault's PrintRawField: one value, raw in table format or JSON otherwise; 1 if absent."""
        value = raw_field(source, name) if isinstance(source, Secret) else source.get(name)
        if value is None:
            self.error(f'Field "{name}" not present in secret')
            return 1
        self.raw(go_value(value) if self.format == "table" else go_json(value))
        return 0
