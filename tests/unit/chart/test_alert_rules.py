"""promtool, built from Prometheus' own Go module, accepts the chart's alert rules as rendered: valid PromQL, valid
templates in the annotations, durations that parse (make test-prometheus, the last tier of make test)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from chart_render import Chart

from strata_dev import binaries

pytestmark = pytest.mark.prometheus

MONITORING = ["--set", "monitoring.prometheusRule.enabled=true"]


def rule_file(chart: Chart, folder: Path, *flags: str) -> Path:
    """The rendered PrometheusRule's groups as a Prometheus rule file."""
    spec = chart.render(*MONITORING, *flags)[("PrometheusRule", "rel")]["spec"]
    path = folder / "strata-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}))
    return path


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    promtool = binaries.ensure_tool("promtool")
    return subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_charts_alert_rules(chart: Chart, tmp_path: Path) -> None:
    proc = check_rules(rule_file(chart, tmp_path, "--set", "monitoring.prometheusRule.queuedTooLongSeconds=600"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


def test_promtool_refuses_a_broken_rule(chart: Chart, tmp_path: Path) -> None:
    # the check is real: the same file with one expression broken fails, naming the problem
    path = rule_file(chart, tmp_path)
    path.write_text(path.read_text().replace("min by (pool) (", "min by (pool) ((", 1))
    proc = check_rules(path)
    assert proc.returncode != 0
    assert "parse error" in proc.stdout + proc.stderr
