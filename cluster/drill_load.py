"""The drill's clients: writer threads that record every acknowledged KV v2 write, and a
parallel read-back.

Writers talk plain HTTP (``http.client``, one connection per request, no redirects, no
request forwarding) to one target node at a time; :meth:`WriteLoad.repoint` moves every
writer to another node and aborts the requests still in flight to the old one, the way a
client library fails over. A write counts as acknowledged only on a 2xx answer; it is
recorded with its key, value, the ``X-Vault-Index`` of the answer (the answering node's
applied Raft index, which is at or above the write's own index), the site that answered
and its invoke/ack times (``time.monotonic()``).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cluster.local import REQUEST_ERRORS
from cluster.node import Node

NO_FORWARD = {"X-Vault-No-Request-Forwarding": "true"}


@dataclass(frozen=True)
class Ack:
    """One acknowledged write."""

    key: str
    value: str
    index: int
    site: str
    invoke: float
    ack: float


@dataclass
class WriteLoad:
    """``writers`` threads writing distinct keys under ``mount`` (KV v2) through the target.

    ``token`` is sent as X-Vault-Token and never logged. Not started until :meth:`start`;
    :meth:`stop` joins the threads. Thread-safe: ``acks`` only grows.
    """

    mount: str
    token: str = field(repr=False)
    writers: int = 4
    timeout: float = 2.0
    prefix: str = field(default_factory=lambda: f"drill-{uuid.uuid4().hex[:8]}")
    acks: list[Ack] = field(default_factory=list)
    errors: int = 0
    _target: tuple[Node, str] | None = None
    _generation: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _inflight: dict[int, http.client.HTTPConnection] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, node: Node, site: str) -> WriteLoad:
        """Start the writers against ``node`` (of ``site``)."""
        self._target = (node, site)
        for w in range(self.writers):
            t = threading.Thread(target=self._run, args=(w,), name=f"drill-writer-{w}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def repoint(self, node: Node | None, site: str = "") -> None:
        """Send every later write to ``node`` (None: pause) and abort requests in flight."""
        with self._lock:
            self._target = (node, site) if node is not None else None
            self._generation += 1
            conns = list(self._inflight.values())
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Stop and join the writers (at most one request timeout)."""
        self._stop.set()
        self.repoint(None)
        for t in self._threads:
            t.join(self.timeout + 5)

    def acked_by(self, site: str) -> list[Ack]:
        """The acknowledged writes answered by ``site`` (a snapshot)."""
        return [a for a in list(self.acks) if a.site == site]

    def _run(self, w: int) -> None:
        n = 0
        while not self._stop.is_set():
            with self._lock:
                target, gen = self._target, self._generation
            if target is None:
                time.sleep(0.01)
                continue
            node, site = target
            key, value = f"{self.prefix}/{w}-{n}", uuid.uuid4().hex
            n += 1
            conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=self.timeout)
            with self._lock:
                if gen != self._generation:
                    continue
                self._inflight[w] = conn
            t0 = time.monotonic()
            code, index = _post(conn, f"/v1/{self.mount}/data/{key}", {"data": {"v": value}}, self.token)
            t1 = time.monotonic()
            with self._lock:
                self._inflight.pop(w, None)
            if code is not None and 200 <= code < 300:
                self.acks.append(Ack(key, value, index, site, t0, t1))
            else:
                with self._lock:
                    self.errors += 1
                time.sleep(0.02)


def _post(conn: http.client.HTTPConnection, path: str, body: Any, token: str) -> tuple[int | None, int]:
    """POST ``body``; (status or None when there was no answer, X-Vault-Index or 0)."""
    headers = {"X-Vault-Token": token, "Content-Type": "application/json", **NO_FORWARD}
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, int(resp.getheader("X-Vault-Index") or 0)
    except (*REQUEST_ERRORS, http.client.HTTPException):
        return None, 0
    finally:
        conn.close()


def read_back(node: Node, mount: str, token: str, acks: Iterable[Ack], threads: int = 4,
              timeout: float = 5.0) -> list[tuple[Ack, int | None, str | None]]:
    """Read every acknowledged write from ``node``; those that do not come back with their
    value, as (ack, status, value read). A request without an answer is retried 3 times."""
    todo = list(acks)
    bad: list[tuple[Ack, int | None, str | None]] = []
    lock = threading.Lock()
    headers = {"X-Vault-Token": token, **NO_FORWARD}

    def one(a: Ack) -> tuple[int | None, str | None]:
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
            try:
                conn.request("GET", f"/v1/{mount}/data/{a.key}", headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                if resp.status == 200:
                    return 200, str(json.loads(raw)["data"]["data"]["v"])
                if resp.status == 404:
                    return 404, None
                code: int | None = resp.status
            except (*REQUEST_ERRORS, http.client.HTTPException):
                code = None
            finally:
                conn.close()
            time.sleep(0.2)
        return code, None

    def worker(chunk: list[Ack]) -> None:
        for a in chunk:
            code, value = one(a)
            if code != 200 or value != a.value:
                with lock:
                    bad.append((a, code, value))

    parts = [todo[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=worker, args=(p,), daemon=True) for p in parts if p]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return bad
