"""Core's side of replication: role records, the manager that runs the shipper, the operations."""
