"""Benchmarks for vaultraft: an HTTP load generator (:mod:`benchmarks.load`) and the scenario runner
(:mod:`benchmarks.run`, ``python -m benchmarks.run``). Loopback targets only."""
