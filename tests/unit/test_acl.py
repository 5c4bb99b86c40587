"""ACL evaluation: Vault's matching, priority, merging and parameter constraints."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vaultraft.logical import Operation
from vaultraft.policy import ACL, IdentityContext, PathRule, Policy, load_policy, parse_policy, root_policy
from vaultraft.policy.parser import segment_wildcards


def acl(*texts: str) -> ACL:
    return ACL([load_policy(f"p{i}", t) for i, t in enumerate(texts)])


def pol(name: str, *rules: tuple[str, set[str]]) -> Policy:
    return Policy(name=name, raw="", rules=tuple(PathRule(p, frozenset(c)) for p, c in rules))


# --- matching examples from Vault's policy docs --------------------------------------


def test_exact_path_beats_glob() -> None:
    a = acl('path "secret/*" { capabilities = ["create"] }\npath "secret/foo" { capabilities = ["read"] }')
    assert a.capabilities("secret/foo") == ["read"]
    assert a.capabilities("secret/bar") == ["create"]


def test_glob_suffix_matches_any_suffix() -> None:
    a = acl('path "secret/foo*" { capabilities = ["read"] }')
    for path in ("secret/foo", "secret/food", "secret/foo/bar", "secret/foo/bar/baz"):
        assert a.capabilities(path) == ["read"], path
    for path in ("secret/fo", "secret/bar", "secret"):
        assert a.capabilities(path) == ["deny"], path


def test_zip_prefix_example() -> None:
    a = acl('path "secret/zip-*" { capabilities = ["read"] }')
    assert a.allowed("read", "secret/zip-zap").allowed
    assert a.allowed("read", "secret/zip-zap/zong").allowed
    assert not a.allowed("read", "secret/zip").allowed


def test_plus_matches_exactly_one_segment() -> None:
    a = acl('path "secret/+/teamb" { capabilities = ["read"] }')
    assert a.capabilities("secret/foo/teamb") == ["read"]
    assert a.capabilities("secret/bar/teamb") == ["read"]
    assert a.capabilities("secret/teamb") == ["deny"]
    assert a.capabilities("secret/foo/bar/teamb") == ["deny"]
    assert a.capabilities("secret/foo/teamb/x") == ["deny"]
    b = acl('path "secret/+/+/teamb" { capabilities = ["read"] }')
    assert b.capabilities("secret/foo/bar/teamb") == ["read"]
    assert b.capabilities("secret/bar/foo/teamb") == ["read"]
    assert b.capabilities("secret/foo/teamb") == ["deny"]


def test_plus_teamb_beats_secret_star() -> None:
    a = acl(
        'path "secret/*" { capabilities = ["list"] }',
        'path "secret/+/teamb" { capabilities = ["read", "update"] }',
    )
    # same first-wildcard position; the pattern not ending in * wins
    assert a.capabilities("secret/foo/teamb") == ["read", "update"]
    assert a.match("secret/foo/teamb") == ("secret/+/teamb", a.match("secret/foo/teamb")[1])  # type: ignore[index]
    assert a.capabilities("secret/foo/teamc") == ["list"]


def test_docs_priority_example_secret_star_vs_plus_star() -> None:
    # "secret/*" and "secret/+/*": same first wildcard, both globs; fewer + wins.
    a = acl('path "secret/*" { capabilities = ["read"] }', 'path "secret/+/*" { capabilities = ["update"] }')
    assert a.capabilities("secret/foo/bar") == ["read"]


@pytest.mark.parametrize(
    ("winner", "loser", "path"),
    [
        # 1) the first wildcard or glob occurs later
        ("foo/a*", "foo/+", "foo/ab"),
        ("foo/bar/+/baz", "foo/+/bar/baz", "foo/bar/bar/baz"),
        # 2) not ending in *
        ("foo/+/bar", "foo/+/ba*", "foo/x/bar"),
        ("foo/+", "foo/*", "foo/x"),
        # 3) fewer + segments
        ("foo/+/bar/baz", "foo/+/+/baz", "foo/x/bar/baz"),
        # 4) longer
        ("foo/+/bar/ba*", "foo/+/bar/b*", "foo/x/bar/baz"),
        # 5) lexicographically larger
        ("+/a/+", "+/+/a", "x/a/a"),
    ],
)
def test_priority_rules(winner: str, loser: str, path: str) -> None:
    for order in ((winner, loser), (loser, winner)):
        a = ACL([pol("a", (order[0], {"read"})), pol("b", (order[1], {"list"}))])
        found = a.match(path, "read")
        assert found is not None and found[0] == winner


def test_list_accepts_exact_rule_without_trailing_slash() -> None:
    a = acl('path "secret/metadata/app" { capabilities = ["list"] }')
    assert a.allowed("list", "secret/metadata/app/").allowed
    assert not a.allowed("read", "secret/metadata/app/").allowed


def test_list_on_wildcard_rule_without_trailing_slash() -> None:
    # Vault 1.15.2+: "+/sys/policies/acl" allows LIST on "ns1/sys/policies/acl/".
    a = acl('path "+/sys/policies/acl" { capabilities = ["list"] }')
    assert a.allowed("list", "ns1/sys/policies/acl/").allowed
    assert a.capabilities("ns1/sys/policies/acl/") == ["list"]


def test_leading_slash_in_request_path() -> None:
    assert acl('path "secret/foo" { capabilities = ["read"] }').allowed("read", "//secret/foo").allowed


def test_star_alone_matches_everything() -> None:
    a = acl('path "*" { capabilities = ["read"] }')
    assert a.capabilities("") == ["read"]
    assert a.capabilities("any/thing/at/all") == ["read"]


def test_literal_plus_and_inner_star_are_literal() -> None:
    a = acl('path "secret/a+c" { capabilities = ["read"] }\npath "secret/*/x" { capabilities = ["list"] }')
    assert a.capabilities("secret/a+c") == ["read"]
    assert a.capabilities("secret/abc") == ["deny"]
    assert a.capabilities("secret/*/x") == ["list"]
    assert a.capabilities("secret/y/x") == ["deny"]


# --- merging ---------------------------------------------------------------------------


def test_same_path_across_policies_is_a_union() -> None:
    a = acl('path "secret/*" { capabilities = ["read"] }', 'path "secret/*" { capabilities = ["list"] }')
    assert a.capabilities("secret/x") == ["list", "read"]
    result = a.allowed("read", "secret/x")
    assert result.allowed and result.granting_policies == ("p0",)


def test_deny_wins_across_policies_in_any_order() -> None:
    deny = 'path "secret/+/x" { capabilities = ["deny"] }'
    grant = 'path "secret/+/x" { capabilities = ["read", "sudo"] }'
    for texts in ((deny, grant), (grant, deny)):
        a = acl(*texts)
        assert a.capabilities("secret/a/x") == ["deny"]
        assert not a.allowed("read", "secret/a/x").allowed


def test_deny_on_glob_does_not_override_more_specific_grant() -> None:
    a = acl('path "secret/*" { capabilities = ["deny"] }', 'path "secret/open" { capabilities = ["read"] }')
    assert a.capabilities("secret/open") == ["read"]
    assert a.capabilities("secret/closed") == ["deny"]


def test_more_specific_pattern_shadows_a_broader_grant() -> None:
    # Vault does not union across *different* patterns: the most specific one governs.
    a = acl('path "secret/*" { capabilities = ["read"] }', 'path "secret/foo" { capabilities = ["list"] }')
    assert a.capabilities("secret/foo") == ["list"]


def test_empty_acl_denies() -> None:
    a = ACL([])
    assert a.capabilities("secret/foo") == ["deny"]
    r = a.allowed("read", "secret/foo")
    assert not r.allowed and r.failed_check == "capability" and r.matched_path is None


# --- operations -----------------------------------------------------------------------


def test_operations_map_to_capabilities() -> None:
    a = acl('path "sys/leases/renew" { capabilities = ["update"] }\npath "kv/*" { capabilities = ["patch"] }')
    assert a.allowed("update", "sys/leases/renew").allowed
    assert a.allowed("renew", "sys/leases/renew").allowed
    assert a.allowed("revoke", "sys/leases/renew").allowed
    assert not a.allowed("read", "sys/leases/renew").allowed
    assert a.allowed(Operation.PATCH, "kv/data/x").allowed
    assert not a.allowed(Operation.UPDATE, "kv/data/x").allowed
    assert not a.allowed("frobnicate", "kv/data/x").allowed


def test_help_is_always_allowed() -> None:
    assert ACL([]).allowed(Operation.HELP, "secret/anything").allowed


def test_sudo_gives_root_privs() -> None:
    a = acl('path "sys/audit/*" { capabilities = ["update", "sudo"] }\npath "sys/mounts/*" { capabilities = ["update"] }')
    r = a.allowed("update", "sys/audit/file")
    assert r.allowed and r.root_privs and not r.is_root
    r = a.allowed("update", "sys/mounts/kv")
    assert r.allowed and not r.root_privs


def test_root_acl_allows_everything() -> None:
    for a in (ACL.root(), ACL([root_policy(), load_policy("x", 'path "*" { capabilities = ["deny"] }')])):
        assert a.is_root
        assert a.capabilities("sys/seal") == ["root"]
        r = a.allowed("delete", "sys/raw/whatever", {"x": 1})
        assert r.allowed and r.root_privs and r.is_root
        assert a.has_mount_access("secret/")
        assert a.resultant_acl() == {"root": True}


# --- parameter constraints --------------------------------------------------------------

PARAMS = """
path "secret/foo" {
  capabilities = ["create", "update", "read", "patch"]
  allowed_parameters = {
    "bar" = ["zip", "zap"]
    "glob" = ["foo-*", "*-bar", "*mid*"]
    "any" = []
  }
}
"""


def test_allowed_parameters() -> None:
    a = acl(PARAMS)
    assert a.allowed("update", "secret/foo", {"bar": "zip"}).allowed
    assert a.allowed("update", "secret/foo", {"bar": "zap", "any": {"x": 1}}).allowed
    r = a.allowed("update", "secret/foo", {"bar": "zoo"})
    assert not r.allowed and (r.failed_check, r.failed_parameter) == ("allowed_parameters", "bar")
    r = a.allowed("create", "secret/foo", {"bar": "zip", "other": 1})
    assert not r.allowed and (r.failed_check, r.failed_parameter) == ("allowed_parameters", "other")
    # keys are matched case-insensitively
    assert a.allowed("update", "secret/foo", {"BAR": "zip"}).allowed
    # no data at all passes; reads are never parameter-checked
    assert a.allowed("update", "secret/foo", {}).allowed
    assert a.allowed("read", "secret/foo", {"other": 1}).allowed
    assert not a.allowed("patch", "secret/foo", {"other": 1}).allowed


@pytest.mark.parametrize(
    ("value", "ok"),
    [("foo-1", True), ("1-bar", True), ("xmidx", True), ("foo", False), ("bar-1", False), (5, False)],
)
def test_allowed_parameter_value_globs(value: Any, ok: bool) -> None:
    assert acl(PARAMS).allowed("update", "secret/foo", {"glob": value}).allowed is ok


def test_allowed_parameter_lists_and_comma_strings() -> None:
    a = acl(PARAMS)
    assert a.allowed("update", "secret/foo", {"bar": ["zip", "zap"]}).allowed
    assert not a.allowed("update", "secret/foo", {"bar": ["zip", "nope"]}).allowed
    assert a.allowed("update", "secret/foo", {"bar": "zip, zap"}).allowed
    assert not a.allowed("update", "secret/foo", {"bar": "zip,nope"}).allowed


def test_star_allowed_parameter() -> None:
    a = acl('path "a" {\n capabilities = ["update"]\n allowed_parameters = { "*" = [] }\n}')
    assert a.allowed("update", "a", {"anything": 1, "else": "x"}).allowed
    b = acl('path "a" {\n capabilities = ["update"]\n allowed_parameters = { "*" = []\n "bar" = ["zip"] }\n}')
    assert b.allowed("update", "a", {"other": 1, "bar": "zip"}).allowed
    assert not b.allowed("update", "a", {"bar": "zap"}).allowed


def test_bare_star_value_is_literal() -> None:
    # Vault's GlobbedStringsMatch: a one-character pattern only matches itself.
    a = acl('path "a" {\n capabilities = ["update"]\n allowed_parameters = { "x" = ["*"] }\n}')
    assert a.allowed("update", "a", {"x": "*"}).allowed
    assert not a.allowed("update", "a", {"x": "anything"}).allowed


def test_denied_parameters() -> None:
    a = acl('path "a" {\n capabilities = ["update"]\n denied_parameters = { "bar" = ["zip", "x-*"]\n "baz" = [] }\n}')
    assert a.allowed("update", "a", {"bar": "zap"}).allowed
    r = a.allowed("update", "a", {"bar": "x-1"})
    assert not r.allowed and (r.failed_check, r.failed_parameter) == ("denied_parameters", "bar")
    assert not a.allowed("update", "a", {"baz": "anything"}).allowed
    assert not a.allowed("update", "a", {"bar": ["zap", "zip"]}).allowed
    assert not a.allowed("update", "a", {"bar": "zap,zip"}).allowed
    star = acl('path "a" {\n capabilities = ["update"]\n denied_parameters = { "*" = [] }\n}')
    assert not star.allowed("update", "a", {"x": 1}).allowed
    assert star.allowed("update", "a", {}).allowed


def test_denied_beats_allowed() -> None:
    a = acl(
        'path "a" {\n capabilities = ["update"]\n allowed_parameters = { "bar" = [] }\n'
        ' denied_parameters = { "bar" = ["zip"] }\n}'
    )
    assert a.allowed("update", "a", {"bar": "zap"}).allowed
    assert not a.allowed("update", "a", {"bar": "zip"}).allowed


def test_required_parameters() -> None:
    a = acl('path "a" {\n capabilities = ["create", "update", "read"]\n required_parameters = ["bar", "baz"]\n}')
    assert a.allowed("create", "a", {"bar": 1, "baz": 2, "x": 3}).allowed
    r = a.allowed("create", "a", {"bar": 1})
    assert not r.allowed and (r.failed_check, r.failed_parameter) == ("required_parameters", "baz")
    assert not a.allowed("update", "a").allowed
    assert a.allowed("read", "a").allowed


def test_typed_parameter_values() -> None:
    a = acl('{"path": {"a": {"capabilities": ["update"], "allowed_parameters": {"n": [1, true], "z": [null]}}}}')
    assert a.allowed("update", "a", {"n": 1}).allowed
    assert a.allowed("update", "a", {"n": True}).allowed
    assert a.allowed("update", "a", {"z": None}).allowed
    assert not a.allowed("update", "a", {"n": "1"}).allowed
    assert not a.allowed("update", "a", {"n": 2}).allowed
    assert not a.allowed("update", "a", {"z": 0}).allowed


def test_parameter_merging_across_policies() -> None:
    a = acl(
        'path "a" {\n capabilities = ["update"]\n allowed_parameters = { "bar" = ["zip"] }\n}',
        'path "a" {\n capabilities = ["update"]\n allowed_parameters = { "bar" = ["zap"]\n "baz" = [] }\n}',
    )
    assert a.allowed("update", "a", {"bar": "zip"}).allowed
    assert a.allowed("update", "a", {"bar": "zap", "baz": "q"}).allowed
    assert not a.allowed("update", "a", {"bar": "zop"}).allowed
    b = acl(
        'path "a" {\n capabilities = ["update"]\n allowed_parameters = { "bar" = ["zip"] }\n}',
        'path "a" {\n capabilities = ["update"]\n allowed_parameters = { "bar" = [] }\n}',
    )
    assert b.allowed("update", "a", {"bar": "anything"}).allowed


def test_wrapping_ttl_constraints() -> None:
    a = acl('path "a" {\n capabilities = ["read"]\n min_wrapping_ttl = "1m"\n max_wrapping_ttl = "1h"\n}')
    assert a.allowed("read", "a", wrap_ttl=300).allowed
    assert a.allowed("read", "a", wrap_ttl=60).allowed
    assert a.allowed("read", "a", wrap_ttl=3600).allowed
    assert a.allowed("read", "a").failed_check == "max_wrapping_ttl"
    assert a.allowed("read", "a", wrap_ttl=7200).failed_check == "max_wrapping_ttl"
    assert a.allowed("read", "a", wrap_ttl=30).failed_check == "min_wrapping_ttl"


def test_wrapping_ttls_merge_to_the_smaller_value() -> None:
    a = acl(
        'path "a" {\n capabilities = ["read"]\n max_wrapping_ttl = 600\n}',
        'path "a" {\n capabilities = ["read"]\n max_wrapping_ttl = 300\n}',
    )
    assert a.allowed("read", "a", wrap_ttl=300).allowed
    assert not a.allowed("read", "a", wrap_ttl=400).allowed


# --- templating, mount access, resultant ACL ----------------------------------------------


def test_templated_rules() -> None:
    p = parse_policy("t", 'path "kv/data/{{identity.entity.name}}/*" { capabilities = ["read"] }')
    assert ACL([p]).capabilities("kv/data/alice/x") == ["deny"]
    a = ACL([p], IdentityContext(entity_id="e1", entity_name="alice"))
    assert a.capabilities("kv/data/alice/x") == ["read"]
    assert a.capabilities("kv/data/bob/x") == ["deny"]


def test_has_mount_access() -> None:
    a = acl(
        'path "secret/data/app/*" { capabilities = ["read"] }\n'
        'path "denied/x" { capabilities = ["deny"] }\n'
        'path "kv/+/team/*" { capabilities = ["list"] }'
    )
    assert a.has_mount_access("secret/")
    assert not a.has_mount_access("denied/")
    assert not a.has_mount_access("other/")
    assert a.has_mount_access("kv/")
    # a leading + segment could match inside any mount
    assert acl('path "+/team/*" { capabilities = ["list"] }').has_mount_access("denied/")


def test_resultant_acl() -> None:
    a = acl(
        'path "secret/foo" {\n capabilities = ["read", "update"]\n required_parameters = ["x"]\n}\n'
        'path "secret/bar/*" { capabilities = ["list"] }\n'
        'path "secret/no" { capabilities = ["deny"] }'
    )
    assert a.resultant_acl() == {
        "root": False,
        "exact_paths": {
            "secret/foo": {"capabilities": ["read", "update"], "required_parameters": ["x"]},
            "secret/no": {"capabilities": ["deny"]},
        },
        "glob_paths": {"secret/bar/": {"capabilities": ["list"]}},
    }


# --- properties ---------------------------------------------------------------------------

_SEGMENTS = ["a", "b", "ab", "+"]
_CAPS = ["create", "read", "update", "patch", "delete", "list", "sudo"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segs = draw(st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=4))
    path = "/".join(segs)
    if draw(st.booleans()):
        path = path + ("/*" if segs[-1] == "+" else "*")
    return path


_request_paths = st.lists(st.sampled_from(["a", "b", "ab", "abc", "ba", ""]), min_size=1, max_size=5).map("/".join)
_cap_sets = st.sets(st.sampled_from(_CAPS), min_size=1)
_policies = st.lists(st.lists(st.tuples(patterns(), _cap_sets), min_size=1, max_size=4), min_size=1, max_size=4)


def build(policies: list[list[tuple[str, set[str]]]]) -> list[Policy]:
    return [pol(f"p{i}", *rules) for i, rules in enumerate(policies)]


def oracle(patterns_: set[str], path: str) -> str | None:
    """The governing pattern by Vault's documented rules, written independently (regexes)."""
    path = path.lstrip("/")
    if path in patterns_ and not path.endswith("*") and not segment_wildcards(path):
        return path
    best: tuple[tuple[int, int, int, int, str], str] | None = None
    for p in patterns_:
        is_glob = p.endswith("*")
        body = p[:-1] if is_glob else p
        if segment_wildcards(p):
            rx = "/".join("[^/]*" if s == "+" else re.escape(s) for s in body.split("/"))
            first = p.index("+")
        elif is_glob:
            rx = re.escape(body)
            first = len(body)
        else:
            continue
        if not re.fullmatch(rx + (".*" if is_glob else ""), path, re.S):
            continue
        plus = body.split("/").count("+") if segment_wildcards(p) else 0
        key = (first, 0 if is_glob else 1, -plus, len(body), body)
        if best is None or key > best[0]:
            best = (key, p)
    return None if best is None else best[1]


@settings(max_examples=200, deadline=None)
@given(_policies, _request_paths)
def test_most_specific_match_agrees_with_docs_oracle(policies: list[list[tuple[str, set[str]]]], path: str) -> None:
    a = ACL(build(policies))
    all_patterns = {p for rules in policies for p, _ in rules}
    found = a.match(path, "read")
    assert (found[0] if found else None) == oracle(all_patterns, path)


@settings(max_examples=120, deadline=None)
@given(_policies, _request_paths, st.data())
def test_deny_always_wins(policies: list[list[tuple[str, set[str]]]], path: str, data: st.DataObject) -> None:
    all_patterns = sorted({p for rules in policies for p, _ in rules})
    target = data.draw(st.sampled_from(all_patterns))
    position = data.draw(st.integers(min_value=0, max_value=len(policies)))
    with_deny = build(policies)
    with_deny.insert(position, pol("denier", (target, {"deny"})))
    a = ACL(with_deny)
    # every operation whose governing rule is the denied pattern is refused (``list`` of
    # "x/" is governed by an exact "x" when there is one, as in Vault; sys/capabilities
    # matches in list mode)
    for op in ("create", "read", "update", "patch", "delete", "list"):
        found = a.match(path, op)
        if found is not None and found[0] == target:
            assert not a.allowed(op, path).allowed, op
            if op == "list":
                assert a.capabilities(path) == ["deny"]
    # the denied pattern's own literal path (when it has no wildcard) is always denied
    if not target.endswith("*") and not segment_wildcards(target):
        assert a.capabilities(target) == ["deny"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "ab", "a+", "*a"]), min_size=1, max_size=4).map("/".join), _request_paths)
def test_pattern_without_wildcards_only_matches_itself(pattern: str, path: str) -> None:
    assume(not pattern.endswith("*") and not segment_wildcards(pattern))
    a = ACL([pol("p", (pattern, {"read"}))])
    assert a.allowed("read", path).allowed is (path.lstrip("/") == pattern)
    assert a.allowed("read", pattern).allowed


@settings(max_examples=120, deadline=None)
@given(_policies, _request_paths, st.data())
def test_adding_a_policy_on_existing_patterns_never_removes_capabilities(
    policies: list[list[tuple[str, set[str]]]], path: str, data: st.DataObject
) -> None:
    # Merging is a union per pattern; a new *more specific* pattern may shadow a broader
    # one (see test_more_specific_pattern_shadows_a_broader_grant), so the extra policy
    # reuses patterns that already exist.
    all_patterns = sorted({p for rules in policies for p, _ in rules})
    extra = data.draw(st.lists(st.tuples(st.sampled_from(all_patterns), _cap_sets), min_size=1, max_size=3))
    before = set(ACL(build(policies)).capabilities(path)) - {"deny"}
    after = set(ACL(build(policies) + [pol("extra", *extra)]).capabilities(path)) - {"deny"}
    assert before <= after


@settings(max_examples=100, deadline=None)
@given(_policies, _request_paths, st.sampled_from(["create", "read", "update", "patch", "delete", "list"]))
def test_allowed_agrees_with_capabilities(
    policies: list[list[tuple[str, set[str]]]], path: str, op: str
) -> None:
    a = ACL(build(policies))
    caps = a.capabilities(path)
    # capabilities() evaluates like a LIST (Vault's ACL.Capabilities), which also falls
    # back to the path without its trailing slash; other operations never do.
    if op != "list" and not path.endswith("/"):
        assert a.allowed(op, path).allowed is (op in caps)
    assert ACL.root().allowed(op, path).allowed
