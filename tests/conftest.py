"""Shared fixtures: real server processes on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.node import Node


@pytest.fixture(scope="module")
def dev_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A ``server -dev`` process (root token "root"), shared by one test module."""
    node = Node(tmp_path_factory.mktemp("dev"))
    node.start_dev("root")
    yield node
    node.stop()


@pytest.fixture
def fresh_node(tmp_path: Path) -> Iterator[Node]:
    """An uninitialized node with LMDB storage in its own temp dir."""
    node = Node(tmp_path / "node")
    node.start()
    yield node
    node.stop()
    shutil.rmtree(tmp_path, ignore_errors=True)
