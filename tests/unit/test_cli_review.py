"""Operator CLI review, with no database: the quota options of `model add` and `model quota` are
refused before anything connects (finding 7)."""

from __future__ import annotations

import pytest

from pgingest import cli

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
