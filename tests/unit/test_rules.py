"""The shipped alerting rules: valid for promtool, and every alert tested both ways (it fires for
the listener in trouble, it stays quiet for a healthy one) with promtool's own rule evaluator."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.conftest import ROOT, need

RULES = ROOT / "contrib" / "prometheus" / "tcpq-top.rules.yml"
TESTS = ROOT / "tests" / "prometheus" / "tcpq-top.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    need(shutil.which("promtool") is not None, "needs promtool (Debian package prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=TESTS.parent)


def test_promtool_check_rules():
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout


def test_promtool_test_rules():
    proc = promtool("test", "rules", TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case_and_names_the_next_command():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    cases = [c for t in yaml.safe_load(TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for rule in rules:
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no case where it stays quiet"
        assert "Next: ssh" in rule["annotations"]["summary"], rule["alert"]
        if rule["alert"] != "TcpqExporterProbesDown":
            assert "{{ $labels.lport }}" in rule["annotations"]["summary"]


def test_a_wrong_expectation_fails(tmp_path):
    """The rule tests can fail: the same file with one expected value changed does."""
    bad = TESTS.read_text().replace("drops or overflows 1.00/s", "drops or overflows 9.00/s")
    assert bad != TESTS.read_text()
    path = TESTS.parent / f"_mutated_{tmp_path.name}.test.yml"
    path.write_text(bad)
    try:
        proc = promtool("test", "rules", path.name)
    finally:
        path.unlink()
    assert proc.returncode != 0
