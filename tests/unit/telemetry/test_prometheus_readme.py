"""config/prometheus/README.md's alert table is the full list: every rule of alerts.yml, in its
order, with its severity, and no rule that is not there (the table listed 18 of 39 rules)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

PROM = Path(__file__).resolve().parents[3] / "config" / "prometheus"


def test_the_readme_table_lists_every_alert_rule_with_its_severity() -> None:
    rules = [(r["alert"], r["labels"]["severity"])
             for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"] if "alert" in r]
    table = re.findall(r"^\| (Replicad\w+) \| (\w+) \| (.+) \|$", (PROM / "README.md").read_text(), re.M)
    assert [(name, sev) for name, sev, _ in table] == rules
    assert all(len(when) > 20 for _, _, when in table)  # each says when it fires
    assert len(rules) >= 39
