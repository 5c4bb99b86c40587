"""The CLI's command-line grammar: Go-style flags, k=v data, dispatch and usage exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vaultraft.cli.args import Flag, Kind, Parsed, UsageError, parse_flags, parse_kv_data, parse_kv_strings
from vaultraft.cli.base import Context
from vaultraft.cli.main import run

FLAGS = [
    Flag("format", default="table", env="VAULT_FORMAT"),
    Flag("field"),
    Flag("force", Kind.BOOL, aliases=("f",)),
    Flag("cas", Kind.INT, default=-1),
    Flag("ttl", Kind.DURATION),
    Flag("policy", Kind.LIST),
    Flag("metadata", Kind.MAP),
]


def parse(*argv: str, env: dict[str, str] | None = None) -> Parsed:
    return parse_flags(list(argv), FLAGS, env or {})


# --- flags ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["-format=json"], ["-format", "json"], ["--format=json"], ["--format", "json"]])
def test_value_flags_accept_every_go_spelling(argv: list[str]) -> None:
    assert parse(*argv).text("format") == "json"


def test_defaults_then_environment_then_command_line() -> None:
    assert parse().text("format") == "table"
    assert parse(env={"VAULT_FORMAT": "json"}).text("format") == "json"
    assert parse("-format=table", env={"VAULT_FORMAT": "json"}).text("format") == "table"
    assert not parse(env={"VAULT_FORMAT": "json"}).is_set("format")
    assert parse("-format=json").is_set("format")


def test_boolean_flags_take_no_separate_value() -> None:
    parsed = parse("-force", "secret/foo")
    assert parsed.on("force") is True
    assert parsed.args == ("secret/foo",)
    assert parse("-f=false", "x").on("force") is False
    # "-force false": the "false" is a positional argument, as in Go.
    assert parse("-force", "false").args == ("false",)


def test_parsing_stops_at_the_first_positional_argument() -> None:
    parsed = parse("-field=password", "secret/foo", "-format=json")
    assert parsed.text("field") == "password"
    assert parsed.args == ("secret/foo", "-format=json")
    assert parsed.text("format") == "table"


def test_double_dash_ends_flags_and_lone_dash_is_positional() -> None:
    assert parse("--", "-format=json").args == ("-format=json",)
    assert parse("-force", "-", "k=v").args == ("-", "k=v")


def test_a_value_flag_consumes_the_next_word_even_if_it_looks_like_a_flag() -> None:
    assert parse("-field", "-x").text("field") == "-x"


def test_int_duration_list_and_map_values() -> None:
    parsed = parse("-cas=0", "-ttl=1h30m", "-policy=a,b", "-policy", "c", "-metadata", "k=v", "-metadata=x=y=z")
    assert parsed.number("cas") == 0
    assert parsed.seconds("ttl") == 5400
    assert parsed.items("policy") == ["a", "b", "c"]
    assert parsed.pairs("metadata") == {"k": "v", "x": "y=z"}
    assert parse().number("cas") == -1
    assert parse().seconds("ttl") is None
    assert parse("-ttl=90").seconds("ttl") == 90


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-nope"], "flag provided but not defined: -nope"),
        (["-field"], "flag needs an argument: -field"),
        (["-cas=abc"], 'invalid value "abc" for flag -cas: parse error'),
        (["-force=maybe"], 'invalid value "maybe" for flag -force: parse error'),
        (["-metadata=novalue"], 'invalid value "novalue" for flag -metadata: missing = in KV pair: "novalue"'),
        (["---x"], "bad flag syntax: ---x"),
        (["-=x"], "bad flag syntax: -=x"),
    ],
)
def test_mistakes_are_usage_errors_with_go_messages(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse(*argv)
    assert str(err.value) == message


# --- k=v data -----------------------------------------------------------------------------


def test_key_value_pairs_and_repeated_keys() -> None:
    assert parse_kv_data(["a=1", "b=x=y", "", "a=2", "a=3"], None) == {"a": ["1", "2", "3"], "b": "x=y"}


def test_values_from_files_and_the_escape(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cr3t\n")
    data = parse_kv_data([f"password=@{tmp_path / 'pw'}", "handle=\\@alice"], None)
    assert data == {"password": "s3cr3t\n", "handle": "@alice"}


def test_a_value_from_stdin_and_a_json_object_from_stdin() -> None:
    assert parse_kv_data(["cert=-"], io.StringIO("PEM DATA")) == {"cert": "PEM DATA"}
    data = parse_kv_data(["-", "extra=1"], io.StringIO('{"a": 1, "b": {"c": true}}'))
    assert data == {"a": 1, "b": {"c": True}, "extra": "1"}


def test_a_whole_json_file(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('{"user": "u", "n": [1, 2]}')
    assert parse_kv_data([f"@{tmp_path / 'd.json'}"], None) == {"user": "u", "n": [1, 2]}


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["novalue"], None, "format must be key=value"),
        (["a=-", "b=-"], "x", "stdin already consumed"),
        (["-"], None, "stdin is not supported"),
        (["-"], "[1, 2]", "stdin must contain a JSON object"),
        (["-"], "{nope", "error parsing JSON from stdin"),
        (["k=@/definitely/not/here"], None, "error reading file"),
    ],
)
def test_data_mistakes(args: list[str], stdin: str | None, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_kv_data(args, io.StringIO(stdin) if stdin is not None else None)
    assert message in str(err.value)


def test_string_only_data_rejects_json_values() -> None:
    assert parse_kv_strings(["file_path=/tmp/a"], None) == {"file_path": "/tmp/a"}
    with pytest.raises(ValueError):
        parse_kv_strings(["-"], io.StringIO('{"n": 1}'))


# --- dispatch and local-error exit codes ----------------------------------------------------


def cli(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    # An address nobody listens on: these commands must fail before any request.
    environ = {"VAULT_ADDR": "http://127.0.0.1:9", "HOME": "/nonexistent", **(env or {})}
    code = run(list(argv), Context(stdin=io.StringIO(stdin), stdout=out, stderr=err, environ=environ))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["kv", "get"], "Not enough arguments (expected 1, got 0)\n"),
        (["kv", "get", "a", "b"], "Too many arguments (expected 1, got 2)\n"),
        (["kv", "put", "secret/foo"], "Must supply data\n"),
        (["write", "secret/foo"], "Must supply data or use -force\n"),
        (["read", "-bogus", "x"], "flag provided but not defined: -bogus\n"),
        (["read", "-format=xml", "x"], "Invalid output format: xml\n"),
        (["policy", "write", "only-name"], "Not enough arguments (expected 2, got 1)\n"),
        (["token", "revoke"], "Not enough arguments (expected 1 or -self, got 0)\n"),
        (["token", "revoke", "-self", "-accessor"], "Cannot use -self with -accessor!\n"),
        (["token", "revoke", "-mode=wide", "t"], "Invalid mode: wide\n"),
        (["kv", "undelete", "secret/foo"], 'No versions provided, use the "-versions" flag to specify the version to undelete.\n'),
        (["login", "-method=userpass"], "Unknown auth method: userpass."),
        (["status", "extra"], "Too many arguments (expected 0, got 1)\n"),
    ],
)
def test_local_mistakes_exit_1_before_any_request(argv: list[str], message: str) -> None:
    code, out, err = cli(*argv)
    assert code == 1
    assert out == ""
    assert err.startswith(message)


def test_unknown_commands_groups_and_help() -> None:
    code, _, err = cli("frobnicate")
    assert code == 127 and "Usage: vaultraft <command>" in err
    code, _, err = cli("kv")
    assert code == 1 and "Usage: vaultraft kv <subcommand>" in err and "metadata" in err
    code, _, err = cli("kv", "metadata", "nope")
    assert code == 1 and "Usage: vaultraft kv metadata <subcommand>" in err
    code, _, err = cli("kv", "get", "-h")
    assert code == 0 and err.startswith("Usage: vault kv get")
    assert cli()[0] == 127
    assert cli("--help")[0] == 0


def test_version() -> None:
    code, out, _ = cli("version")
    assert code == 0 and out.startswith("Vaultraft v")
