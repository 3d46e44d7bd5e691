"""contrib/: the Grafana dashboard and the Prometheus alerts name only metrics ringd exports,
and the rules pass promtool (check and unit tests) where it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import REPO, DaemonProcess

DASHBOARD = REPO / "contrib" / "grafana" / "ringd.json"
ALERTS = REPO / "contrib" / "prometheus" / "ringd-alerts.yml"
ALERT_TESTS = REPO / "contrib" / "prometheus" / "ringd-alerts.test.yml"
METRIC = re.compile(r"\bringd_[a-z0-9_]+\b")
# The series a metric family of each type exports (prometheus_client's naming; the
# text format's TYPE line of a counter already names it ..._total).
SUFFIXES = {
    "counter": ("", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def exported(metrics_text: str) -> set[str]:
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":
                name = name.removesuffix("_total") + "_total"
            names |= {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return names


def test_every_metric_the_dashboard_and_alerts_name_is_exported(daemon: DaemonProcess) -> None:
    from ringd.cli.client import get

    # A RAM-disk mapping, so that its families are there too (empty families are
    # still described: HELP and TYPE lines).
    (daemon.folder / "shm").mkdir()
    daemon.config.write_text(
        daemon.config.read_text() + "ramdisk:\n  - {source: shm, target: data/selfplay/ramdisk}\n"
    )
    daemon.start()
    names = exported(get(daemon.socket, "/metrics").decode())
    named = {m for expr in dashboard_exprs() + alert_exprs() for m in METRIC.findall(expr)}
    assert len(named) >= 15
    assert named - names == set(), f"not exported: {sorted(named - names)}"


def test_the_dashboard_shows_what_operators_look_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "ringd"
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Games per config",
        "+N / threshold",
        "Ingest rate",
        "Detection latency",
        "Jobs finished",
        "GPU utilisation",
        "Samples per second",
        "Oldest unflushed game",
        "Rejected lines",
    ):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"


def test_the_alerts_cover_the_issue_list() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "RingdNoNewGames",
        "RingdConfigInBackoff",
        "RingdRamdiskLagging",
        "RingdIngestErrors",
        "RingdTrainerUnavailable",
    } <= names


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt-get install prometheus)",
)
@pytest.mark.parametrize(
    "command", [["check", "rules", ALERTS.name], ["test", "rules", ALERT_TESTS.name]]
)
def test_promtool_accepts_the_rules_and_their_unit_tests(command: list[str]) -> None:
    result = subprocess.run(
        ["promtool", *command],
        cwd=Path(ALERTS).parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
