"""Core's own ``sys/`` backend, built from framework paths like any engine.

Unlike engines it may reach into core (mount table, policy store, audit, barrier):
``sys/`` is where an operator controls the node. The unauthenticated endpoints
(init, unseal, seal-status, health, leader, and the share-collecting rekey and
generate-root endpoints) are served by :mod:`vaultraft.http` before the pipeline,
because they must work without a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultraft.framework import Backend

if TYPE_CHECKING:
    from vaultraft.core.core import Core


def build_sys_backend(core: "Core") -> Backend:
    """The ``sys/`` backend bound to ``core``."""
    from vaultraft.core.sys import audit, capabilities, keys, misc, mounts, policy, raft, replication

    paths = [
        *mounts.paths(core),
        *policy.paths(core),
        *capabilities.paths(core),
        *audit.paths(core),
        *misc.paths(core),
        *keys.paths(core),
        *raft.paths(core),
        *replication.paths(core),
    ]
    return Backend(paths, help="system endpoints used for control, policy and debugging", backend_type="system")
