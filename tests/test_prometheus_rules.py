"""The Prometheus rules in ops/prometheus: ``promtool check rules`` and ``promtool test rules``.

promtool comes from Debian's ``prometheus`` package (scripts/install-system.sh extracts it, and
``make test`` runs that first): where it is missing these tests fail, they never skip.

Beyond the unit tests themselves: every alert has a test where it fires and one where it stays
silent, and each of those tests is shown to matter: with the alert's expression made to never
match, its firing tests fail; made to always match, its silent tests fail.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "ops" / "prometheus" / "pgingest-rules.yml"
TESTS = ROOT / "ops" / "prometheus" / "pgingest-rules.test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed: run scripts/install-system.sh (make deps)"
    return path


def run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=240, check=False
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def checks_of(test: dict[str, Any], alert: str) -> list[dict[str, Any]]:
    return [c for c in test.get("alert_rule_test", []) if c["alertname"] == alert]


def firing_tests(suite: dict[str, Any], alert: str) -> list[dict[str, Any]]:
    return [t for t in suite["tests"] if any(c["exp_alerts"] for c in checks_of(t, alert))]


def silent_tests(suite: dict[str, Any], alert: str, for_s: int) -> list[dict[str, Any]]:
    """Tests with a check that the alert is silent at a time when, had its expression matched
    all along, it would be firing (past its ``for``)."""
    return [
        t
        for t in suite["tests"]
        if any(
            not c["exp_alerts"] and duration_s(c["eval_time"]) >= for_s for c in checks_of(t, alert)
        )
    ]


def test_promtool_check_rules(promtool: str) -> None:
    res = run(promtool, "check", "rules", RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    res = run(promtool, "test", "rules", TESTS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout and "FAILED" not in res.stdout


def test_every_alert_has_a_firing_and_a_silent_test() -> None:
    rules, suite = load(RULES), load(TESTS)
    missing = []
    for name, rule in alerts(rules).items():
        for_s = duration_s(rule.get("for", "0s"))
        if not firing_tests(suite, name):
            missing.append(f"{name}: no test where it fires")
        if not silent_tests(suite, name, for_s):
            missing.append(f"{name}: no test where it stays silent past its 'for' ({for_s} s)")
    assert not missing, missing
    assert len(alerts(rules)) >= 15


def test_every_alert_has_a_runbook_section() -> None:
    readme = (ROOT / "ops" / "README.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", readme, flags=re.M)
    }
    for name, rule in alerts(load(RULES)).items():
        assert rule["annotations"]["runbook"] == f"ops/README.md#{name.lower()}"
        assert name.lower() in headings, f"ops/README.md has no section {name}"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")


def _mutants(tmp_path: Path) -> list[tuple[str, Path]]:
    """(what should fail, test file) for each alert twice: never matching (its firing tests
    only) and always matching (its silent tests only)."""
    rules, suite = load(RULES), load(TESTS)
    out = []
    for name, rule in alerts(rules).items():
        for how, wrap, tests in (
            ("never", "({}) unless on () vector(1)", firing_tests(suite, name)),
            (
                "always",
                "({}) or vector(1)",
                silent_tests(suite, name, duration_s(rule.get("for", "0s"))),
            ),
        ):
            mutant = copy.deepcopy(rules)
            alerts(mutant)[name]["expr"] = wrap.format(rule["expr"])
            d = tmp_path / f"{name}-{how}"
            d.mkdir()
            (d / RULES.name).write_text(yaml.safe_dump(mutant, sort_keys=False))
            (d / "test.yml").write_text(
                yaml.safe_dump({**suite, "tests": tests, "rule_files": [RULES.name]})
            )
            out.append((f"{name} {how}", d / "test.yml"))
    return out


def test_each_alert_test_fails_when_its_expression_is_broken(promtool: str, tmp_path: Path) -> None:
    mutants = _mutants(tmp_path)
    # One promtool per file (given several, it tests them concurrently and interleaves output).
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda m: run(promtool, "test", "rules", m[1]), mutants))
    for res in results:
        assert "FAILED" in res.stdout + res.stderr or res.returncode == 0, res.stdout + res.stderr
    survived = [
        what for (what, _), res in zip(mutants, results, strict=True) if res.returncode == 0
    ]
    assert not survived, f"tests still pass with these alerts broken: {survived}"
