"""Operator CLI review, with no database: the quota options of `model add` and `model quota` are
refused before anything connects (finding 7), a password of the connection string never reaches
the terminal (finding 10), `status --watch` takes a positive number of seconds and `adopt pgai
--max-input-tokens` a positive number of tokens (the two minor findings).

The database side of the review (a paused source in `status` and `source list`, `model add`
refused without a trace, `model backfill|quota` of an unknown model) is tests/test_cli_review.py.
"""

from __future__ import annotations

import pytest

from pgingest import cli, cli_support

# Nothing listens on port 1: a connection string that parses fails to connect, fast.
BAD_PERCENT = "postgresql://app:Summer%26x%zz!@127.0.0.1:1/pgingest"
SPACE_IN_URL = "postgresql://app:Summer x!@127.0.0.1:1/pgingest"
SPACE_IN_KEYWORDS = "host=127.0.0.1 port=1 dbname=pgingest user=app password=Summer Winter!"
PARSES = "postgresql://app:Summer%26x@127.0.0.1:1/pgingest?connect_timeout=2"


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """``pgingest <argv>``: (exit code, stdout, stderr); an argparse error is its SystemExit."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--rpm", "0"),
        ("--tpm", "-3"),
        ("--rpm", "nan"),
        ("--headroom", "5"),
        ("--headroom", "-0.1"),
    ],
)
@pytest.mark.parametrize("command", ["add", "quota"])
def test_quota_options_are_checked_before_any_connection(
    capsys: pytest.CaptureFixture[str], command: str, option: str, value: str
) -> None:
    argv = ["model", command, "q1"]
    if command == "add":
        argv += ["--model-id", "m", "--dimensions", "3", "--base-url", "http://127.0.0.1:1/v1"]
    code, out, err = run(capsys, [*argv, option, value, "--database-url", PARSES])
    assert code == 2
    assert "usage:" in err and option in err
    assert "registered" not in out


COMMANDS = [
    ["status"],
    ["model", "list"],
    ["model", "backfill", "v1"],
    ["source", "list"],
    ["search", "hello"],
    ["maintenance"],
    ["install", "--plan"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        (BAD_PERCENT, ["Summer", "%zz"]),
        (SPACE_IN_URL, ["Summer", "x!"]),
        (SPACE_IN_KEYWORDS, ["Summer", "Winter"]),
    ],
    ids=["percent", "url-space", "keywords-space"],
)
def test_an_unparsable_connection_string_never_prints_its_password(
    capsys: pytest.CaptureFixture[str], argv: list[str], url: str, secrets: list[str]
) -> None:
    code, out, err = run(capsys, [*argv, "--database-url", url])
    assert code == 2  # invalid arguments
    for secret in secrets:
        assert secret not in out + err
    assert "connection string" in err and "not valid" in err, err


@pytest.mark.parametrize("argv", [["status"], ["model", "list"], ["source", "list"]])
def test_the_password_of_database_url_is_not_printed_either(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", BAD_PERCENT)
    code, out, err = run(capsys, argv)
    assert code != 0
    assert "Summer" not in out + err
    assert "percent-encoded" in err  # what to fix is still said


def test_a_connection_error_of_a_valid_string_is_shown_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, ["status", "--database-url", PARSES])
    assert code == 2
    assert "Summer" not in err
    assert "127.0.0.1" in err  # libpq's own message is kept


def test_redact_conninfo() -> None:
    # The password of a string that parses, in any form it may be quoted in.
    text = 'x "Summer&x" Summer%26x postgresql://app:Summer%26x@h/db password=Summer&x'
    red = cli_support.redact_conninfo(text, PARSES)
    assert "Summer" not in red
    # A string that does not parse: the tokens libpq quotes from it.
    assert cli_support.redact_conninfo(
        'invalid percent-encoded token: "Summer%26x%zz!"\n', BAD_PERCENT
    ) == ('invalid percent-encoded token: "***"\n')
    assert "Winter" not in cli_support.redact_conninfo(
        'missing "=" after "Winter!" in connection info string', SPACE_IN_KEYWORDS
    )
    # Nothing to hide: unchanged.
    assert cli_support.redact_conninfo("relation does not exist", "dbname=x") == (
        "relation does not exist"
    )


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "x"])
def test_status_watch_must_be_a_positive_number_of_seconds(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, out, err = run(capsys, ["status", "--watch", value, "--database-url", PARSES])
    assert code == 2
    assert "usage:" in err and "--watch" in err
    assert "ValueError" not in err and out == ""


@pytest.mark.parametrize("value", ["-5", "0"])
def test_adopt_pgai_max_input_tokens_must_be_positive(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, out, err = run(
        capsys,
        ["adopt", "pgai", "--dry-run", "--max-input-tokens", value, "--database-url", PARSES],
    )
    assert code == 2
    assert "--max-input-tokens" in err and "positive" in err
    assert out == ""
