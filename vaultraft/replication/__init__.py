"""Cluster-to-cluster replication: the WAL shipper (wire protocol, primary-side server,
secondary-side client, activation token and key bundle). See DESIGN.md beside this file.

Import the submodules directly (``vaultraft.replication.server`` etc.); this package module
imports nothing so that importing ``interfaces`` stays cheap.
"""
