"""The alerting rules (ops/prometheus/alerts.yml): valid, tested with promtool, loaded by
compose's Prometheus and shipped unchanged as the Kubernetes PrometheusRule."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "ops" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
PROMETHEUS_RULE = ROOT / "ops" / "k8s" / "base" / "monitoring" / "prometheus-rule.yaml"
# What an operator must hear about (the list), by alert name.
ALERTS = {"ProcessDown", "DeadLettersArriving", "OutboxOldestEventAging", "HighServerErrorRatio", "CircuitOpen",
          "NotificationBacklog", "WebhookBacklog"}


def promtool_or_skip():
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool is not installed (Debian's prometheus package; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def promtool(*args):
    run = subprocess.run([promtool_or_skip(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def rules():
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_are_valid():
    assert "SUCCESS" in promtool("check", "rules", RULES.name)


def test_the_rules_fire_when_they_should_and_only_then():
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_every_alert_is_there_with_a_severity_and_is_tested():
    tested = {case["alertname"] for test in yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert {rule["alert"] for rule in rules()} == ALERTS == tested
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_compose_prometheus_loads_the_rules():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["volumes"])
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert [mounts[f"./{RULES.relative_to(ROOT)}"]] == config["rule_files"]


def test_the_prometheus_rule_ships_the_same_groups():
    shipped = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert shipped["kind"] == "PrometheusRule"
    assert shipped["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"], (
        f"{PROMETHEUS_RULE.relative_to(ROOT)}: copy the groups of {RULES.relative_to(ROOT)} into spec.groups")
