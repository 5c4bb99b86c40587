"""vaultraft's command-line client: Vault's CLI grammar over Vault's HTTP API.

It is a pure HTTP client (it never imports the server side); ``vaultraft server ...`` is
the one command handed to :mod:`vaultraft.server`. Entry point: :func:`vaultraft.cli.main.main`.
"""
