"""The command line imports the modules of the command it runs only (issue 19: a worker process
does not pay for ``status``, ``model``, ``source`` and ``adopt``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pgingest import cli

OTHERS = ("pgingest.status", "pgingest.models_cli", "pgingest.sources_cli", "pgingest.adopt_pgai")


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["worker", "--drain"], "worker"),
        (["--log-level", "DEBUG", "--log-format", "json", "worker"], "worker"),
        (["--log-level=DEBUG", "status", "--json"], "status"),
        (["model", "list"], "model"),
        (["--version"], None),
        ([], None),
    ],
)
def test_command_of(argv: list[str], command: str | None) -> None:
    assert cli.command_of(argv) == command


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_a_worker_builds_its_own_command_only() -> None:
    mods = _imported_after(
        "from pgingest import cli\n"
        "a = cli.build_parser('worker').parse_args(['worker', '--drain', '--batch-size', '7'])\n"
        "assert a.drain and a.batch_size == 7 and a.func is cli.cmd_worker"
    )
    assert "pgingest.cli" in mods
    assert not mods & set(OTHERS)


def test_every_command_is_there_when_none_or_another_is_named() -> None:
    for command in (None, "status", "model", "nonsense"):
        choices = cli.build_parser(command)._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        assert {"worker", "install", "status", "model", "source", "adopt"} <= set(choices)


def test_an_unknown_command_is_refused_with_the_list() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pgingest.cli", "nonsense"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "invalid choice: 'nonsense'" in out.stderr and "'status'" in out.stderr
