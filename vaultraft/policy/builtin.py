"""The policies Vault ships: ``default``, ``response-wrapping`` and the notional ``root``.

``DEFAULT_POLICY`` is the exact text Vault 1.15 writes on first unseal; it may be edited
but never deleted. ``root`` is never stored: it has no rules and grants everything.
"""

from __future__ import annotations

from functools import cache
from typing import Iterable

from vaultraft.logical import InvalidRequest
from vaultraft.policy.parser import IMMUTABLE_POLICIES, Policy, load_policy, sanitize_policy_name

DEFAULT_POLICY_NAME = "default"
ROOT_POLICY_NAME = "root"
RESPONSE_WRAPPING_POLICY_NAME = "response-wrapping"
CONTROL_GROUP_POLICY_NAME = "control-group"

#: Policies that exist but may not be attached to tokens by clients.
NON_ASSIGNABLE_POLICIES: tuple[str, ...] = (RESPONSE_WRAPPING_POLICY_NAME, CONTROL_GROUP_POLICY_NAME)

__all__ = [
    "CONTROL_GROUP_POLICY_NAME",
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_NAME",
    "IMMUTABLE_POLICIES",
    "NON_ASSIGNABLE_POLICIES",
    "RESPONSE_WRAPPING_POLICY",
    "RESPONSE_WRAPPING_POLICY_NAME",
    "ROOT_POLICY_NAME",
    "check_policy_deletable",
    "default_policy",
    "default_policy_text",
    "response_wrapping_policy",
    "root_policy",
    "sanitize_policies",
]

DEFAULT_POLICY = """
# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own entity by id or name
path "identity/entity/id/{{identity.entity.id}}" {
  capabilities = ["read"]
}
path "identity/entity/name/{{identity.entity.name}}" {
  capabilities = ["read"]
}


# Allow a token to look up its resultant ACL from all policies. This is useful
# for UIs. It is an internal path because the format may change at any time
# based on how the internal ACL features and capabilities change.
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body; old path for
# old clients, new path for newer
path "sys/renew" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties. This requires knowing the lease ID ahead
# of time and does not divulge any sensitive information.
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given
# response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token. This is a convenience to
# avoid client token swapping since this is also part of the response wrapping
# policy.
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}

# Allow checking the status of a Control Group request if the user has the
# accessor
path "sys/control-group/request" {
    capabilities = ["update"]
}

# Allow a token to make requests to the Authorization Endpoint for OIDC providers.
path "identity/oidc/provider/+/authorize" {
    capabilities = ["read", "update"]
}
"""

RESPONSE_WRAPPING_POLICY = """
path "cubbyhole/response" {
    capabilities = ["create", "read"]
}

path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}
"""


def default_policy_text() -> str:
    """The text of the shipped ``default`` policy (what the store writes on first unseal)."""
    return DEFAULT_POLICY


@cache
def default_policy() -> Policy:
    """The shipped ``default`` policy, parsed (what the policy store writes if absent)."""
    return load_policy(DEFAULT_POLICY_NAME, DEFAULT_POLICY)


@cache
def response_wrapping_policy() -> Policy:
    """The fixed policy of response-wrapping tokens."""
    return load_policy(RESPONSE_WRAPPING_POLICY_NAME, RESPONSE_WRAPPING_POLICY)


def root_policy() -> Policy:
    """The ``root`` policy: no rules, never stored; an ACL holding it allows everything."""
    return Policy(name=ROOT_POLICY_NAME, raw="")


def check_policy_deletable(name: str) -> str:
    """Return the sanitized name, or raise InvalidRequest with Vault's refusal text."""
    clean = sanitize_policy_name(name)
    if clean in IMMUTABLE_POLICIES:
        raise InvalidRequest(f'cannot delete "{clean}" policy')
    if clean == DEFAULT_POLICY_NAME:
        raise InvalidRequest("cannot delete default policy")
    return clean


def sanitize_policies(names: Iterable[str], add_default: bool = True) -> list[str]:
    """Vault's policyutil.SanitizePolicies for a token's policy list.

    Names are trimmed, lower-cased, de-duplicated and sorted, empties dropped;
    ``default`` is added when asked; a list holding ``root`` becomes just ``["root"]``.
    """
    clean = {sanitize_policy_name(n) for n in names}
    clean.discard("")
    if ROOT_POLICY_NAME in clean:
        return [ROOT_POLICY_NAME]
    if add_default:
        clean.add(DEFAULT_POLICY_NAME)
    return sorted(clean)
