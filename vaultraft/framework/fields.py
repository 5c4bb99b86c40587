"""Field schemas and typed access to request data (Vault's TypeString, TypeInt, ...)."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from vaultraft.logical import InvalidRequest


class FieldType(str, enum.Enum):
    """Vault's field types, with the JSON/OpenAPI type each maps to."""

    STRING = "string"
    NAME = "name"  # a string restricted to Vault's GenericNameRegex
    LOWER_STRING = "lowercase_string"
    INT = "int"
    BOOL = "bool"
    MAP = "map"
    KV_PAIRS = "keypair"  # map of string -> string
    SLICE = "slice"  # list of anything
    STRING_SLICE = "string_slice"
    COMMA_STRING_SLICE = "comma_string_slice"  # list or "a,b,c"
    DURATION = "duration_second"  # int seconds or "1h30m"
    HEADER = "header"


_ZERO: dict[FieldType, Any] = {
    FieldType.STRING: "",
    FieldType.NAME: "",
    FieldType.LOWER_STRING: "",
    FieldType.INT: 0,
    FieldType.BOOL: False,
    FieldType.MAP: None,
    FieldType.KV_PAIRS: None,
    FieldType.SLICE: None,
    FieldType.STRING_SLICE: None,
    FieldType.COMMA_STRING_SLICE: None,
    FieldType.DURATION: 0,
    FieldType.HEADER: None,
}

_OPENAPI: dict[FieldType, dict[str, Any]] = {
    FieldType.STRING: {"type": "string"},
    FieldType.NAME: {"type": "string"},
    FieldType.LOWER_STRING: {"type": "string"},
    FieldType.INT: {"type": "integer"},
    FieldType.BOOL: {"type": "boolean"},
    FieldType.MAP: {"type": "object"},
    FieldType.KV_PAIRS: {"type": "object"},
    FieldType.SLICE: {"type": "array"},
    FieldType.STRING_SLICE: {"type": "array", "items": {"type": "string"}},
    FieldType.COMMA_STRING_SLICE: {"type": "array", "items": {"type": "string"}},
    FieldType.DURATION: {"type": "string", "format": "duration"},
    FieldType.HEADER: {"type": "object"},
}

_NAME_RE = re.compile(r"\w(([\w.@-]+)?\w)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Field:
    """One request field: its type, default, and documentation."""

    type: FieldType = FieldType.STRING
    description: str = ""
    default: Any = None
    required: bool = False
    # Fields listed as query parameters in OpenAPI (taken from the URL for reads).
    query: bool = False

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI schema of this field."""
        schema = dict(_OPENAPI[self.type])
        if self.description:
            schema["description"] = self.description
        if self.default is not None:
            schema["default"] = self.default
        return schema


def parse_duration(value: Any) -> int:
    """Whole seconds from an int, a numeric string, or a Go duration ("1h30m", "90s", "2d");
    a fraction of a second is dropped.

    Raises ValueError for anything else or for a negative duration.
    """
    return int(parse_duration_seconds(value))


def parse_duration_seconds(value: Any) -> float:
    """Seconds, fractions kept ("500ms" is 0.5), from what :func:`parse_duration` accepts.

    Raises ValueError for anything else or for a negative duration.
    """
    secs: float
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, (int, float)):
        secs = value
    elif isinstance(value, str):
        s = value.strip()
        if s == "":
            return 0
        if re.fullmatch(r"-?\d+", s):
            secs = int(s)
        else:
            pos, total = 0, 0.0
            for m in _DURATION_PART.finditer(s):
                if m.start() != pos:
                    raise ValueError(f"invalid duration {value!r}")
                total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                pos = m.end()
            if pos != len(s) or pos == 0:
                raise ValueError(f"invalid duration {value!r}")
            secs = total
    else:
        raise ValueError(f"invalid duration {value!r}")
    if secs < 0:
        raise ValueError("duration must not be negative")
    return secs


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("1", "t", "true", "y", "yes"):
            return True
        if s in ("0", "f", "false", "n", "no", ""):
            return False
    raise ValueError(f"cannot parse {v!r} as bool")


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        return int(v)
    raise ValueError(f"cannot parse {v!r} as int")


def _to_str_list(v: Any, comma: bool) -> list[str]:
    if isinstance(v, str):
        if comma:
            return [p.strip() for p in v.split(",") if p.strip()]
        return [v]
    if isinstance(v, (list, tuple)):
        out: list[str] = []
        for item in v:
            if isinstance(item, (dict, list)):
                raise ValueError("expected a list of strings")
            s = str(item).strip() if comma else str(item)
            if s or not comma:
                out.append(s)
        return out
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [str(v)]
    raise ValueError("expected a list of strings")


def _to_map(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if isinstance(v, dict):
        return v
    if isinstance(v, str):
        if v.strip() == "":
            return {}
        parsed = json.loads(v)
        if isinstance(parsed, dict):
            return parsed
    raise ValueError("expected a map")


def convert(ftype: FieldType, value: Any) -> Any:
    """Convert a raw JSON/query value to ``ftype``; raises ValueError when it cannot."""
    if ftype in (FieldType.STRING, FieldType.LOWER_STRING, FieldType.NAME):
        if isinstance(value, (dict, list)):
            raise ValueError("expected a string")
        s = "" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
        if ftype is FieldType.LOWER_STRING:
            s = s.lower()
        if ftype is FieldType.NAME and s and not _NAME_RE.fullmatch(s):
            raise ValueError("invalid name")
        return s
    if ftype is FieldType.INT:
        return _to_int(value)
    if ftype is FieldType.BOOL:
        return _to_bool(value)
    if ftype is FieldType.DURATION:
        return parse_duration(value)
    if ftype in (FieldType.MAP, FieldType.HEADER):
        return _to_map(value)
    if ftype is FieldType.KV_PAIRS:
        if isinstance(value, list):
            out: dict[str, str] = {}
            for item in value:
                k, sep, val = str(item).partition("=")
                if not sep:
                    raise ValueError(f"expected key=value, got {item!r}")
                out[k] = val
            return out
        m = _to_map(value)
        return None if m is None else {str(k): str(v) for k, v in m.items()}
    if ftype is FieldType.SLICE:
        return value if isinstance(value, list) else [value]
    if ftype is FieldType.STRING_SLICE:
        return _to_str_list(value, comma=False)
    if ftype is FieldType.COMMA_STRING_SLICE:
        return _to_str_list(value, comma=True)
    raise ValueError(f"unknown field type {ftype}")


class FieldData:
    """Typed access to a request's fields, validated against a path's schema."""

    def __init__(self, schema: Mapping[str, Field], raw: Mapping[str, Any]) -> None:
        self.schema = schema
        self.raw = dict(raw)

    def validate(self) -> None:
        """Convert every present field once, so a bad value fails before the handler runs."""
        for name, f in self.schema.items():
            if name in self.raw:
                self.get(name)
            elif f.required:
                raise InvalidRequest(f"missing required field {name!r}")

    def has(self, name: str) -> bool:
        """Whether the client sent ``name``."""
        return name in self.raw

    def get(self, name: str) -> Any:
        """The converted value, the field's default, or its type's zero value."""
        f = self.schema.get(name)
        if f is None:
            raise KeyError(f"field {name!r} is not in the schema")
        if name not in self.raw:
            return f.default if f.default is not None else _ZERO[f.type]
        try:
            return convert(f.type, self.raw[name])
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise InvalidRequest(f'error converting input for field "{name}": {e}') from None

    def get_ok(self, name: str) -> tuple[Any, bool]:
        """``(value, True)`` if sent, else ``(default, False)``."""
        return self.get(name), name in self.raw

    def unknown(self) -> list[str]:
        """Sent fields the schema does not know (Vault warns about these)."""
        return sorted(k for k in self.raw if k not in self.schema)
