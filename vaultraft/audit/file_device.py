"""Vault's ``file`` audit device: one JSON line per entry, appended to a file.

Options (all strings, as Vault stores them): ``file_path`` (required; ``stdout`` and
``discard`` are special), ``log_raw``, ``hmac_accessor``, ``elide_list_responses``,
``format`` (``json``), ``prefix``, ``mode`` (octal, default ``0600``; ``0000`` keeps the
file's mode) and ``skip_test``. Blocking file work runs in the default executor.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import sys
import threading
from collections.abc import Collection, Mapping
from typing import Any

from vaultraft.audit.entry import elide_list_response, hash_entry
from vaultraft.audit.hashing import Salt
from vaultraft.logical.errors import InvalidRequest

_STDOUT = "stdout"
_DISCARD = "discard"
_KNOWN = frozenset(
    {"file_path", "path", "log_raw", "hmac_accessor", "elide_list_responses", "format", "prefix",
     "mode", "skip_test"}
)
_ENTERPRISE_ONLY = frozenset({"filter", "fallback", "exclude"})
_TRUE = frozenset({"1", "t", "true"})
_FALSE = frozenset({"0", "f", "false"})


def normalize_options(options: Mapping[str, Any]) -> dict[str, str]:
    """Vault keeps audit options as strings: booleans become ``"true"``/``"false"``."""
    out: dict[str, str] = {}
    for k, v in options.items():
        if isinstance(v, bool):
            out[str(k)] = "true" if v else "false"
        elif isinstance(v, (str, int, float)):
            out[str(k)] = str(v)
        else:
            raise InvalidRequest(f'audit option "{k}" must be a string')
    return out


def _parse_bool(options: Mapping[str, str], key: str, default: bool) -> bool:
    if key not in options:
        return default
    v = options[key].strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise InvalidRequest(f'unable to parse "{key}": expected a boolean')


def _parse_mode(raw: str) -> int:
    try:
        mode = int(raw.strip(), 8)
    except ValueError:
        raise InvalidRequest(f'unable to parse "mode": {raw!r} is not an octal file mode') from None
    if mode < 0 or mode > 0o777:
        raise InvalidRequest(f'unable to parse "mode": {raw!r} is not a file permission mode')
    if mode & 0o111:
        raise InvalidRequest("file audit devices cannot use file modes with executable permissions")
    return mode


class FileDevice:
    """One enabled ``file`` audit device.

    Construction validates the options (``InvalidRequest`` on a bad one) and, unless
    ``skip_test`` is true, opens the file so a device that cannot write is refused at
    enable time. :meth:`write` raises ``OSError`` when the entry could not be recorded.
    """

    device_type = "file"

    def __init__(self, path_name: str, options: Mapping[str, Any], salt: Salt) -> None:
        opts = normalize_options(options)
        bad = sorted(_ENTERPRISE_ONLY & opts.keys())
        if bad:
            raise InvalidRequest(f"enterprise-only options supplied: {', '.join(bad)}")
        file_path = (opts.get("file_path") or opts.get("path") or "").strip()
        if not file_path:
            raise InvalidRequest('"file_path" is required')
        if file_path.lower() in (_STDOUT, _DISCARD):
            file_path = file_path.lower()
        fmt = opts.get("format", "json").strip().lower()
        if fmt == "jsonx":
            raise InvalidRequest('unsupported "format": jsonx is not supported, use json')
        if fmt != "json":
            raise InvalidRequest(f'unsupported "format": {fmt!r} (use json)')

        self.path_name = path_name
        self.options = opts
        self.salt = salt
        self.file_path = file_path
        self.log_raw = _parse_bool(opts, "log_raw", False)
        self.hmac_accessor = _parse_bool(opts, "hmac_accessor", True)
        self.elide_list_responses = _parse_bool(opts, "elide_list_responses", False)
        self.prefix = opts.get("prefix", "")
        self.mode = _parse_mode(opts.get("mode", "0600"))
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._closed = False

        if file_path not in (_STDOUT, _DISCARD) and not _parse_bool(opts, "skip_test", False):
            with self._lock:
                try:
                    self._open()
                except OSError as e:
                    raise InvalidRequest(
                        f'audit backend failed test message: unable to open file "{file_path}": '
                        f"{e.strerror or e}"
                    ) from None

    # ------------------------------------------------------------------ formatting

    def hash(self, value: str) -> str:
        """The HMAC of ``value`` under this device's salt (``sys/audit-hash``)."""
        return self.salt.hmac(value)

    def format(
        self,
        entry: dict[str, Any],
        *,
        non_hmac_request_keys: Collection[str] = (),
        non_hmac_response_keys: Collection[str] = (),
    ) -> bytes:
        """The line this device writes for a raw entry: prefix + JSON + newline."""
        if self.elide_list_responses:
            entry = elide_list_response(entry)
        if not self.log_raw:
            entry = hash_entry(
                entry,
                self.salt,
                hmac_accessor=self.hmac_accessor,
                non_hmac_request_keys=non_hmac_request_keys,
                non_hmac_response_keys=non_hmac_response_keys,
            )
        text = json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=_json_default)
        return (self.prefix + text + "\n").encode("utf-8")

    async def log(
        self,
        entry: dict[str, Any],
        *,
        non_hmac_request_keys: Collection[str] = (),
        non_hmac_response_keys: Collection[str] = (),
    ) -> None:
        """Format and append one entry off the event loop; raises ``OSError`` on failure."""
        line = self.format(
            entry, non_hmac_request_keys=non_hmac_request_keys, non_hmac_response_keys=non_hmac_response_keys
        )
        await asyncio.get_running_loop().run_in_executor(None, self.write, line)

    # ------------------------------------------------------------------ file handling

    def _open(self) -> None:
        """Open the file for appending (lock held). Never creates directories."""
        if self._fd is not None:
            return
        fd = os.open(self.file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode or 0o600)
        try:
            # Fix the mode of a pre-existing file; never chmod a device such as /dev/null.
            if self.mode and stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchmod(fd, self.mode)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def write(self, line: bytes) -> None:
        """Append ``line`` synchronously (called in an executor); one reopen-and-retry on error."""
        if self._closed:
            raise OSError(errno.EBADF, "audit device is closed")
        if self.file_path == _DISCARD:
            return
        if self.file_path == _STDOUT:
            out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
            if out is not None:
                out.write(line)
            else:
                sys.stdout.write(line.decode("utf-8"))
            sys.stdout.flush()
            return
        with self._lock:
            try:
                self._open()
                self._write_all(line)
            except OSError:
                self._close()
                self._open()
                self._write_all(line)

    def reload(self) -> None:
        """Close and reopen the file (SIGHUP, log rotation). Raises ``OSError`` if it cannot."""
        if self.file_path in (_STDOUT, _DISCARD) or self._closed:
            return
        with self._lock:
            self._close()
            self._open()

    def close(self) -> None:
        """Release the file descriptor (on disable or seal)."""
        with self._lock:
            self._closed = True
            self._close()


def _json_default(value: Any) -> Any:
    """JSON for values ``json`` does not know (only reached for log_raw devices or numbers)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
