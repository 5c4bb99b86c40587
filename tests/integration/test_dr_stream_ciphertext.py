"""What a DR primary ships is ciphertext only.

A real primary process streams to a secondary played by this test: the test activates
itself with a real secondary token (through the primary's API, as a secondary does), runs
the real replication client with a recording sink, and looks for a plaintext marker in every
byte it was shipped (bulk sync and WAL), while a token, a policy and a KV secret carrying the
marker are written on the primary.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator, Sequence

import msgpack
import pytest
import requests

from cluster.local import LocalCluster
from tests.integration.dr_helpers import MOUNT, client, node
from tests.unit.replication.memory import MemorySink
from vaultraft.raft.tls import NodeCert
from vaultraft.replication.activation import ActivationToken, generate_bundle_keypair, open_bundle
from vaultraft.replication.client import ReplicationClient
from vaultraft.storage.wal import WalEntry

pytestmark = pytest.mark.xdist_group("test_dr_stream_ciphertext")

MARKER = "PLAINTEXT-MARKER-7f3a9c"


class RecordingSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.shipped: list[bytes] = []

    async def bulk_put(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.shipped.extend(k.encode() + v for k, v in items)
        await super().bulk_put(items)

    async def apply_wal(self, lineage: str, entries: Sequence[WalEntry]) -> None:
        self.shipped.extend(raw for e in entries for raw in e.batches)
        await super().apply_wal(lineage, entries)


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    p = LocalCluster(tmp_path_factory.mktemp("cipher-primary"), size=1)
    try:
        p.up()
        client(p).sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        yield p
    finally:
        p.stop()


def _activate(p: LocalCluster) -> tuple[NodeCert, ActivationToken]:
    raw = client(p).write("sys/replication/dr/primary/secondary-token", id="recorder")["wrap_info"]["token"]
    token = ActivationToken.decode(raw, now=time.time())
    priv, pub = generate_bundle_keypair()
    r = requests.post(f"{node(p).addr}/v1/sys/replication/internal/activate", timeout=10,
                      json={"id": token.secondary_id, "secret": base64.b64encode(token.secret).decode(),
                            "public_key": pub})
    assert r.status_code == 200, r.text
    blob = base64.b64decode(r.json()["data"]["bundle"])
    b = msgpack.unpackb(open_bundle(priv, blob, b"vaultraft-replication-activation:recorder"), raw=False)
    return NodeCert(cert_pem=b["cert"], key_pem=b["key"], ca_pem=b["ca"]), token


def test_the_stream_carries_no_plaintext(primary: LocalCluster) -> None:
    p = primary
    c = client(p)
    c.secrets.kv.v2.create_or_update_secret("before", {"v": MARKER}, mount_point=MOUNT)
    c.write("sys/replication/dr/primary/enable")
    cert, token = _activate(p)
    sink = RecordingSink()

    async def run() -> None:
        rc = ReplicationClient(sink, cert, list(token.primary_cluster_addrs), "dr", secondary_id="recorder",
                               accept_server_id=lambda cn: cn.startswith("primary:"))
        task = asyncio.create_task(rc.run())
        try:
            for _ in range(200):
                if rc.status().state == "stream-wals":
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(c.secrets.kv.v2.create_or_update_secret, "after", {"v": MARKER}, mount_point=MOUNT)
            await asyncio.to_thread(c.sys.create_or_update_policy, "marker", f'path "{MARKER}/*" {{ capabilities = ["read"] }}')
            await asyncio.to_thread(c.auth.token.create, policies=["marker"], meta={"note": MARKER})
            want = (await asyncio.to_thread(node(p).request, "GET", "sys/replication/dr/status"))[1]["data"]["last_wal"]
            for _ in range(200):
                if sink.remote_index >= want:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert sink.complete and sink.received, "nothing was streamed"
    shipped = b"".join(sink.shipped)
    assert len(shipped) > 4_000  # the bulk sync and the WAL really were captured
    assert MARKER.encode() not in shipped
