"""Raft replication for vaultraft (pysyncobj underneath)."""
