#!/usr/bin/env python3
"""Writes (or, with --check, compares) k8s/components/prometheus-rule/prometheusrule.yaml from
deploy/prometheus/alerts.yaml, so the PrometheusRule and the plain rule file never differ."""
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/alerts.yaml"
TARGET = ROOT / "k8s/components/prometheus-rule/prometheusrule.yaml"


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "portico", "labels": {"prometheus": "portico", "role": "alert-rules"}},
        "spec": {"groups": groups},
    }
    header = "# Generated from deploy/prometheus/alerts.yaml by tools/prometheus_rule.py: edit that file.\n"
    return header + yaml.safe_dump(rule, sort_keys=False, width=100)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run tools/prometheus_rule.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
