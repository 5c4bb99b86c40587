"""Vault ACL policies: parse HCL/JSON policy text, compile a token's ACL, decide requests.

Core uses :func:`parse_policy` on ``sys/policy`` writes, :func:`load_policy` for stored
text, and builds an :class:`ACL` from a token's policies for every request.
"""

from vaultraft.policy.acl import ACL, AclResult, Permissions, glob_match, value_allowed, value_denied
from vaultraft.policy.builtin import (
    CONTROL_GROUP_POLICY_NAME,
    DEFAULT_POLICY,
    DEFAULT_POLICY_NAME,
    NON_ASSIGNABLE_POLICIES,
    RESPONSE_WRAPPING_POLICY,
    RESPONSE_WRAPPING_POLICY_NAME,
    ROOT_POLICY_NAME,
    check_policy_deletable,
    default_policy,
    default_policy_text,
    response_wrapping_policy,
    root_policy,
    sanitize_policies,
)
from vaultraft.policy.parser import (
    CAPABILITIES,
    IMMUTABLE_POLICIES,
    IdentityContext,
    PathRule,
    Policy,
    check_policy_writable,
    decode_policy_text,
    load_policy,
    parse_policy,
    render_template,
    sanitize_policy_name,
)

__all__ = [
    "ACL",
    "CAPABILITIES",
    "CONTROL_GROUP_POLICY_NAME",
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_NAME",
    "IMMUTABLE_POLICIES",
    "NON_ASSIGNABLE_POLICIES",
    "RESPONSE_WRAPPING_POLICY",
    "RESPONSE_WRAPPING_POLICY_NAME",
    "ROOT_POLICY_NAME",
    "AclResult",
    "IdentityContext",
    "PathRule",
    "Permissions",
    "Policy",
    "check_policy_deletable",
    "check_policy_writable",
    "decode_policy_text",
    "default_policy",
    "default_policy_text",
    "glob_match",
    "load_policy",
    "parse_policy",
    "render_template",
    "response_wrapping_policy",
    "root_policy",
    "sanitize_policies",
    "sanitize_policy_name",
    "value_allowed",
    "value_denied",
]
