"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the load generator.

Why not aiohttp's client: on this 2-core machine the load generator shares the CPU with
every server process it measures, and aiohttp's client costs about 0.45 ms of CPU per
request — a quarter of the whole budget at 1,000 requests/s. This client pre-encodes each
request and parses only the status line, ``Content-Length`` and ``Connection`` of the
answer, about a fifth of that. It speaks exactly what vaultraft's listener answers (bodies
with a Content-Length, or none); anything else raises :class:`ProtocolError`.

Plain ``http://`` only: the benchmarks run the cluster's loopback listeners without TLS.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote, urlsplit

__all__ = ["ProtocolError", "RawConnection", "encode_request"]

_MAX_HEADER_BYTES = 64 * 1024
#: What stays unescaped in a request path (RFC 3986 pchar, "/" and an already-escaped "%").
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class ProtocolError(Exception):
    """The server's answer was not an HTTP/1.1 response this client can frame."""


def encode_request(method: str, host: str, path: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """The bytes of one HTTP/1.1 request (keep-alive, Content-Length framing); ``path`` is
    percent-encoded as a URL client would (a space becomes ``%20``)."""
    lines = [f"{method} {quote(path, safe=_PATH_SAFE)} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body) if body else 0}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class RawConnection:
    """One keep-alive connection to ``base_url``'s host; reconnects after the server closes.

    :meth:`send` is not re-entrant: one request at a time per connection.
    """

    def __init__(self, base_url: str) -> None:
        """Remember the target; nothing connects until the first :meth:`send`."""
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the raw client speaks plain http only, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.netloc = parts.netloc
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> int:
        """Send one encoded request and read the whole answer; its status code.

        Raises OSError / asyncio.IncompleteReadError when the connection fails (the next
        call reconnects) and ProtocolError for an answer it cannot frame.
        """
        return (await self.send_for(request, b""))[0]

    async def send_for(self, request: bytes, header: bytes) -> tuple[int, bytes | None]:
        """As :meth:`send`, also returning the value of response header ``header`` (lower
        case; None when absent)."""
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, close, value = _parse_head(head, header)
            if length:
                await reader.readexactly(length)
        except BaseException:
            await self.close()
            raise
        if close:
            await self.close()
        return status, value

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def _parse_head(head: bytes, header: bytes = b"") -> tuple[int, int, bool, bytes | None]:
    """(status, Content-Length, whether the server closes, value of ``header``) of a
    response head."""
    if len(head) > _MAX_HEADER_BYTES:
        raise ProtocolError("response head too large")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError("not an HTTP/1.x status line")
    try:
        status = int(parts[1])
    except ValueError as e:
        raise ProtocolError("bad status code") from e
    length = 0
    close = parts[0] == b"HTTP/1.0"
    value: bytes | None = None
    for line in lines[1:]:
        name, _, raw = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(raw.strip())
        elif name == b"transfer-encoding":
            raise ProtocolError("chunked responses are not supported")
        elif name == b"connection":
            close = raw.strip().lower() == b"close"
        elif header and name == header:
            value = raw.strip()
    return status, length, close, value
