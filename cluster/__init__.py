"""Launch and drive vaultraft nodes (and later clusters and DR drills) on one machine."""
