"""The node's state machine (sealed, unsealed, standby, active) and request pipeline.

``Core`` owns the barrier, the seal progress, the mount and auth tables, the router,
the token and policy stores and the audit broker. Only :mod:`vaultraft.http` and
:mod:`vaultraft.server` import it.
"""

from vaultraft.core.core import Core, CoreSettings, InitResult

__all__ = ["Core", "CoreSettings", "InitResult"]
