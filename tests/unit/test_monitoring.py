"""The PrometheusRule's alerts and the Grafana dashboard: every expression parses with a real
PromQL parser (promql-parser, the Rust parser of GreptimeDB), and names only metrics the operator
exports; the chart's copies for kustomize users match."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from keyrotor import metrics
from keyrotor.model import Reason

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "deploy" / "helm" / "keyrotor" / "files"
ALERTS = yaml.safe_load((FILES / "alerts.yaml").read_text())
DASHBOARD = json.loads((FILES / "dashboard.json").read_text())
RULES = [rule for group in ALERTS["groups"] for rule in group["rules"]]
# Grafana's own variables are not PromQL; they are replaced as Grafana does before querying.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*"}


def exported_names() -> set[str]:
    """Every series name the operator's registry can export (``keyrotor_*``)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("keyrotor"):
            continue
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


def selectors(expression: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expression), visit)
    return found


def metric_names(expression: str) -> set[str]:
    return {s.name for s in selectors(expression) if s.name}


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            expression = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expression = expression.replace(variable, value)
            found.append((panel["title"], expression))
    return found


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alert_expression_parses_and_names_exported_metrics(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    assert names <= exported_names(), names - exported_names()
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    if "for" in rule:
        promql_parser.parse_duration(rule["for"])


def test_the_required_alerts_exist() -> None:
    assert {r["alert"] for r in RULES} >= {
        "KeyrotorOperatorDown",
        "KeyrotorRotationFailed",
        "KeyrotorAccessKeyTooOld",
        "KeyrotorMirroredKeyRevoked",
    }


def test_alert_reasons_are_reasons_the_operator_sets() -> None:
    known = {v for k, v in vars(Reason).items() if k.isupper()}
    for rule in RULES:
        for selector in selectors(rule["expr"]):
            for matcher in selector.matchers.matchers:
                if matcher.name == "reason":
                    listed = set(matcher.value.split("|"))
                    assert listed <= known, (rule["alert"], listed - known)


def test_a_broken_expression_is_refused_by_the_parser() -> None:
    """The parser is strict enough to catch what a typo makes."""
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (namespace (keyrotor_leader)")
    with pytest.raises(ValueError):
        promql_parser.parse("rate(keyrotor_rotations_total[5x])")


@pytest.mark.parametrize(("title", "expression"), dashboard_expressions())
def test_dashboard_query_parses_and_names_exported_metrics(title: str, expression: str) -> None:
    names = metric_names(expression)
    assert names, (title, expression)
    assert names <= exported_names(), (title, names - exported_names())


def test_dashboard_variables_and_layout() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    query = variables["namespace"]["query"]["query"]
    metric = re.fullmatch(r"label_values\((\w+), namespace\)", query)
    assert metric is not None and metric.group(1) in exported_names()
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_sre_metrics_are_exported() -> None:
    assert exported_names() >= {
        "keyrotor_access_key_age_seconds",
        "keyrotor_access_key_max_age_seconds",
        "keyrotor_next_rotation_seconds",
        "keyrotor_last_sync_timestamp_seconds",
        "keyrotor_objects",
        "keyrotor_object_ready",
        "keyrotor_rotations_total",
        "keyrotor_aws_api_calls_total",
        "keyrotor_sync_sweep_duration_seconds_bucket",
        "keyrotor_leader",
    }
    assert metrics.max_key_age({"rotation": {"scheduleExpression": "cron(0 4 * * ? *)"}}) is None
