"""Parsing Vault ACL policies: HCL, JSON, the legacy shorthand, errors, builtins."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultraft.logical import InvalidRequest
from vaultraft.policy import (
    ACL,
    DEFAULT_POLICY,
    IdentityContext,
    check_policy_deletable,
    decode_policy_text,
    default_policy,
    load_policy,
    parse_policy,
    render_template,
    response_wrapping_policy,
    root_policy,
    sanitize_policies,
)

DOCS_HCL = """
# Dev servers have version 2 of KV secrets engine mounted by default, so will
# need these paths to grant permissions:
path "secret/data/*" {
  capabilities = ["create", "update"]
}

path "secret/data/foo" {
  capabilities = ["read"]
}
"""

DOCS_JSON = """
{
  "path": {
    "secret/*": {
      "capabilities": ["create", "read", "update", "delete", "list"]
    },
    "secret/super-secret": {
      "capabilities": ["deny"]
    }
  }
}
"""


def rule(policy_text: str, index: int = 0):  # type: ignore[no-untyped-def]
    return load_policy("t", policy_text).rules[index]


def parse_error(text: str, name: str = "p") -> str:
    with pytest.raises(InvalidRequest) as exc:
        parse_policy(name, text)
    return str(exc.value)


# --- valid policies ---------------------------------------------------------------


def test_hcl_policy_from_docs() -> None:
    p = parse_policy("Dev-Policy", DOCS_HCL)
    assert p.name == "dev-policy"
    assert p.raw == DOCS_HCL
    assert [r.path for r in p.rules] == ["secret/data/*", "secret/data/foo"]
    assert p.rules[0].capabilities == {"create", "update"}
    assert p.rules[0].is_prefix and not p.rules[0].has_segment_wildcards
    assert p.rules[1].capabilities == {"read"}
    assert not p.rules[1].is_prefix
    assert not p.templated


def test_json_policy_from_docs() -> None:
    p = parse_policy("json", DOCS_JSON)
    caps = {r.path: r.capabilities for r in p.rules}
    assert caps == {
        "secret/*": {"create", "read", "update", "delete", "list"},
        "secret/super-secret": {"deny"},
    }
    acl = ACL([p])
    assert acl.capabilities("secret/super-secret") == ["deny"]
    assert acl.capabilities("secret/other") == ["create", "delete", "list", "read", "update"]


def test_json_path_as_list_of_objects() -> None:
    text = json.dumps({"path": [{"a": {"capabilities": ["read"]}}, {"b": {"capabilities": ["list"]}}]})
    p = parse_policy("j", text)
    assert [(r.path, set(r.capabilities)) for r in p.rules] == [("a", {"read"}), ("b", {"list"})]


@pytest.mark.parametrize(
    ("legacy", "expected"),
    [
        ("read", {"read", "list"}),
        ("write", {"create", "read", "update", "delete", "list"}),
        ("sudo", {"create", "read", "update", "delete", "list", "sudo"}),
        ("deny", {"deny"}),
    ],
)
def test_legacy_policy_shorthand(legacy: str, expected: set[str]) -> None:
    assert rule(f'path "secret/x" {{ policy = "{legacy}" }}').capabilities == expected


def test_legacy_shorthand_adds_to_capabilities() -> None:
    r = rule('path "a" {\n policy = "read"\n capabilities = ["update"]\n}')
    assert r.capabilities == {"read", "list", "update"}


def test_deny_clears_other_capabilities_and_constraints() -> None:
    r = rule('path "a" {\n capabilities = ["read", "deny", "sudo"]\n allowed_parameters = { "x" = [] }\n}')
    assert r.capabilities == {"deny"}
    assert r.allowed_parameters is None


def test_all_capabilities_accepted() -> None:
    caps = ["create", "read", "update", "patch", "delete", "list", "sudo", "subscribe"]
    assert rule(f'path "a" {{ capabilities = {json.dumps(caps)} }}').capabilities == set(caps)


def test_leading_slash_is_stripped() -> None:
    assert rule('path "/secret/foo" { capabilities = ["read"] }').path == "secret/foo"


def test_segment_wildcards_detected() -> None:
    r = rule('path "secret/+/teamb" { capabilities = ["read"] }')
    assert r.has_segment_wildcards and not r.is_prefix
    r = rule('path "secret/+/*" { capabilities = ["read"] }')
    assert r.has_segment_wildcards and not r.is_prefix


def test_parameters_and_wrapping_ttls() -> None:
    r = rule(
        """
        path "secret/foo" {
          capabilities = ["create", "update"]
          allowed_parameters = {
            "Bar" = ["zip", "zap"]
            "*"   = []
          }
          denied_parameters = {
            "baz" = ["x-*"]
          }
          required_parameters = ["bar"]
          min_wrapping_ttl = "1s"
          max_wrapping_ttl = "90m"
        }
        """
    )
    assert dict(r.allowed_parameters or {}) == {"bar": ("zip", "zap"), "*": ()}
    assert dict(r.denied_parameters or {}) == {"baz": ("x-*",)}
    assert r.required_parameters == ("bar",)
    assert (r.min_wrapping_ttl, r.max_wrapping_ttl) == (1, 5400)


def test_parameter_values_keep_json_types() -> None:
    text = json.dumps({"path": {"a": {"capabilities": ["update"], "allowed_parameters": {"n": [1, True, "s"]}}}})
    assert dict(rule(text).allowed_parameters or {}) == {"n": (1, True, "s")}


def test_integer_wrapping_ttl() -> None:
    assert rule('path "a" {\n capabilities = ["read"]\n max_wrapping_ttl = 300\n}').max_wrapping_ttl == 300


def test_comment_name_mfa_and_control_group_keys_are_accepted() -> None:
    p = parse_policy(
        "x",
        'name = "ignored"\npath "a" {\n comment = "hi"\n capabilities = ["read"]\n mfa_methods = ["m1"]\n}',
    )
    assert p.name == "x"
    assert p.rules[0].mfa_methods == ("m1",)


def test_same_path_twice_in_one_policy_keeps_both_blocks() -> None:
    # pyhcl alone would let the second block overwrite the first; Vault keeps both.
    for text in (
        'path "a" { capabilities = ["deny"] }\npath "a" { capabilities = ["read"] }',
        'path "a" { capabilities = ["read"] }\npath "a" { capabilities = ["deny"] }',
    ):
        p = parse_policy("dup", text)
        assert len(p.rules) == 2
        assert ACL([p]).capabilities("a") == ["deny"]
    p = parse_policy("dup", 'path "a" { capabilities = ["read"] }\npath "a" { capabilities = ["list"] }')
    assert ACL([p]).capabilities("a") == ["list", "read"]


def test_same_path_twice_in_json_keeps_both() -> None:
    text = '{"path": {"a": {"capabilities": ["read"]}, "a": {"capabilities": ["deny"]}}}'
    assert ACL([parse_policy("j", text)]).capabilities("a") == ["deny"]


def test_templated_paths_are_flagged() -> None:
    p = load_policy("t", 'path "kv/{{identity.entity.id}}/*" { capabilities = ["read"] }')
    assert p.templated and p.rules[0].templated


def test_comment_only_policy_has_no_rules() -> None:
    assert parse_policy("c", "# nothing here\n").rules == ()


# --- names -----------------------------------------------------------------------


def test_name_is_trimmed_and_lowercased() -> None:
    assert parse_policy("  MyPolicy ", 'path "a" { capabilities = ["read"] }').name == "mypolicy"


@pytest.mark.parametrize("name", ["root", "ROOT", " root ", "response-wrapping", "control-group"])
def test_immutable_policies_cannot_be_written(name: str) -> None:
    msg = parse_error('path "a" { capabilities = ["read"] }', name=name)
    assert msg == f'cannot update "{name.strip().lower()}" policy'


def test_empty_name_and_empty_text_are_refused() -> None:
    assert parse_error('path "a" { capabilities = ["read"] }', name="  ") == "policy name must be provided in the URL"
    assert parse_error("   \n") == "'policy' parameter not supplied or empty"


def test_deletion_rules() -> None:
    with pytest.raises(InvalidRequest, match='cannot delete "root" policy'):
        check_policy_deletable("Root")
    with pytest.raises(InvalidRequest, match="^cannot delete default policy$"):
        check_policy_deletable("default")
    assert check_policy_deletable(" Ops ") == "ops"


def test_sanitize_policies() -> None:
    assert sanitize_policies([" Ops", "dev", "ops", ""]) == ["default", "dev", "ops"]
    assert sanitize_policies(["dev"], add_default=False) == ["dev"]
    assert sanitize_policies(["dev", "root"]) == ["root"]


# --- errors ----------------------------------------------------------------------


def test_unknown_capability() -> None:
    msg = parse_error('path "secret/foo" { capabilities = ["read", "bogus"] }')
    assert msg == 'failed to parse policy: path "secret/foo": invalid capability "bogus"'


def test_root_is_not_a_grantable_capability() -> None:
    assert "invalid capability \"root\"" in parse_error('path "a" { capabilities = ["root"] }')


def test_unknown_legacy_policy() -> None:
    msg = parse_error('path "secret/foo" { policy = "admin" }')
    assert msg == 'failed to parse policy: path "secret/foo": invalid policy "admin"'


def test_invalid_keys() -> None:
    assert parse_error('paths "a" { capabilities = ["read"] }') == 'failed to parse policy: invalid key "paths"'
    msg = parse_error('path "a" { capabilites = ["read"] }')
    assert msg == 'failed to parse policy: path "a": invalid key "capabilites"'


def test_plus_star_is_forbidden() -> None:
    msg = parse_error('path "secret/+*" { capabilities = ["read"] }')
    assert msg == "failed to parse policy: path \"secret/+*\": invalid use of wildcards ('+*' is forbidden)"


def test_bad_wrapping_ttls() -> None:
    assert parse_error('path "a" {\n capabilities = ["read"]\n min_wrapping_ttl = "soon"\n}').startswith(
        "failed to parse policy: error parsing min_wrapping_ttl: "
    )
    msg = parse_error('path "a" {\n capabilities = ["read"]\n min_wrapping_ttl = 60\n max_wrapping_ttl = 30\n}')
    assert msg == "failed to parse policy: max_wrapping_ttl cannot be less than min_wrapping_ttl"


def test_non_tail_wildcard_parameter_key() -> None:
    msg = parse_error('path "a" {\n capabilities = ["update"]\n allowed_parameters = { "fo*" = [] }\n}')
    assert 'parameter key "fo*" cannot contain non-tail wildcards' in msg


def test_unbalanced_template() -> None:
    msg = parse_error('path "kv/{{identity.entity.id" { capabilities = ["read"] }')
    assert msg == "failed to parse policy: failed to validate policy templating: unbalanced templating characters"


@pytest.mark.parametrize(
    "text",
    [
        'path "a" { capabilities = ["read"] ',
        'path "a" { capabilities = ["read"] }}',
        'path "a" { capabilities = ["read" }',
        'path "a { capabilities = ["read"] }',
        "path \"a\" {\n  capabilities = [\"read\"]\n  / bad\n}",
        '{"path": {"a": {"capabilities": ["read"]}}',
        '{"path": ',
        "[1, 2]",
    ],
)
def test_malformed_text_is_one_line_invalid_request(text: str) -> None:
    msg = parse_error(text)
    assert msg.startswith("failed to parse policy: ")
    assert "\n" not in msg and "Traceback" not in msg
    assert len(msg) < 200


def test_syntax_error_names_position() -> None:
    msg = parse_error('path "a" {\n  capabilities = ["read"]\n  x = = 1\n}')
    assert msg.startswith("failed to parse policy: At 3:")


# --- builtins ----------------------------------------------------------------------


def test_default_policy_parses_with_vault_paths() -> None:
    p = default_policy()
    assert p.name == "default" and p.raw == DEFAULT_POLICY and p.templated
    caps = {r.path: set(r.capabilities) for r in p.rules}
    assert caps["auth/token/lookup-self"] == {"read"}
    assert caps["auth/token/renew-self"] == {"update"}
    assert caps["auth/token/revoke-self"] == {"update"}
    assert caps["sys/capabilities-self"] == {"update"}
    assert caps["sys/control-group/request"] == {"update"}
    assert caps["cubbyhole/*"] == {"create", "read", "update", "delete", "list"}
    assert caps["sys/wrapping/unwrap"] == {"update"}
    assert caps["sys/tools/hash"] == {"update"}
    assert caps["sys/internal/ui/resultant-acl"] == {"read"}
    assert caps["identity/entity/id/{{identity.entity.id}}"] == {"read"}
    assert caps["identity/oidc/provider/+/authorize"] == {"read", "update"}
    assert len(p.rules) == 18
    # the default policy is writable by clients (only deletion is refused)
    assert parse_policy("default", DEFAULT_POLICY).rules == p.rules


def test_default_policy_acl() -> None:
    acl = ACL([default_policy()])
    assert acl.capabilities("cubbyhole/my/secret") == ["create", "delete", "list", "read", "update"]
    assert acl.capabilities("auth/token/lookup-self") == ["read"]
    assert acl.capabilities("identity/oidc/provider/default/authorize") == ["read", "update"]
    assert acl.capabilities("secret/foo") == ["deny"]
    # templated lines are ignored without an identity ...
    assert acl.capabilities("identity/entity/id/{{identity.entity.id}}") == ["deny"]
    # ... and rendered with one
    with_entity = ACL([default_policy()], IdentityContext(entity_id="e-1", entity_name="alice"))
    assert with_entity.capabilities("identity/entity/id/e-1") == ["read"]
    assert with_entity.capabilities("identity/entity/name/alice") == ["read"]
    assert with_entity.capabilities("identity/entity/id/e-2") == ["deny"]


def test_response_wrapping_and_root_policies() -> None:
    rw = ACL([response_wrapping_policy()])
    assert rw.capabilities("cubbyhole/response") == ["create", "read"]
    assert rw.capabilities("sys/wrapping/unwrap") == ["update"]
    root = root_policy()
    assert root.name == "root" and root.rules == ()
    assert ACL([root]).capabilities("anything/at/all") == ["root"]


def test_render_template() -> None:
    ident = IdentityContext(
        entity_id="e1", entity_name="bob", entity_metadata={"team": "blue"}, groups=(("g1", "admins"),)
    )
    assert render_template("kv/{{identity.entity.id}}/*", ident) == "kv/e1/*"
    assert render_template("kv/{{ identity.entity.metadata.team }}", ident) == "kv/blue"
    assert render_template("kv/{{identity.groups.names.admins.id}}", ident) == "kv/g1"
    assert render_template("kv/{{identity.groups.ids.g1.name}}", ident) == "kv/admins"
    assert render_template("kv/{{identity.entity.metadata.missing}}", ident) is None
    assert render_template("kv/{{identity.entity.id}}", None) is None
    assert render_template("kv/{{identity.entity.name}}", IdentityContext(entity_id="e", entity_name="a*")) is None


def test_decode_policy_text() -> None:
    text = 'path "a" { capabilities = ["read"] }'
    assert decode_policy_text(base64.b64encode(text.encode()).decode()) == text
    assert decode_policy_text(text) == text


# --- round trip ----------------------------------------------------------------------

_segment = st.sampled_from(["secret", "data", "foo", "+", "a-b", "x.y"])
_pattern = st.builds(
    lambda segs, star: "/".join(segs) + ("*" if star and not segs[-1] == "+" else ""),
    st.lists(_segment, min_size=1, max_size=4),
    st.booleans(),
)
_caps = st.sets(st.sampled_from(["create", "read", "update", "patch", "delete", "list", "sudo"]), min_size=1)
_rules = st.lists(st.tuples(_pattern, _caps), min_size=1, max_size=5, unique_by=lambda t: t[0])


@settings(max_examples=60, deadline=None)
@given(_rules)
def test_hcl_and_json_agree(rules: list[tuple[str, set[str]]]) -> None:
    hcl = "\n".join(f'path "{p}" {{\n  capabilities = {json.dumps(sorted(c))}\n}}' for p, c in rules)
    js = json.dumps({"path": {p: {"capabilities": sorted(c)} for p, c in rules}})
    from_hcl = parse_policy("h", hcl)
    from_json = parse_policy("j", js)
    assert from_hcl.rules == from_json.rules
    assert [(r.path, set(r.capabilities)) for r in from_hcl.rules] == [(p, c) for p, c in rules]


_tokens = st.sampled_from(
    ['path', '"a"', '"b/+/*"', "{", "}", "[", "]", "=", ",", '"read"', '"deny"', "capabilities", "policy",
     "allowed_parameters", "required_parameters", "max_wrapping_ttl", "1", "true", '"1h"', "\n", "#c\n",
     ":", "name", "null", "{{", "}}"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_tokens, max_size=25).map(" ".join))
def test_arbitrary_text_parses_or_fails_with_one_line_invalid_request(text: str) -> None:
    try:
        policy = load_policy("f", text)
    except InvalidRequest as e:
        assert str(e).startswith("failed to parse policy: ") and "\n" not in str(e)
    else:
        assert all(r.capabilities <= {"deny", "read", "list"} for r in policy.rules)  # policy = "read" adds list
