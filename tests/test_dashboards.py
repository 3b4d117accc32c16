"""Dashboards and the stack's Prometheus configuration, checked without a Prometheus.

(tests/test_exporters_prometheus.py evaluates every expression on a real one.)
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from exporters import dashboard_files, grafana
from exporters.stack import RULES, default_jobs, prometheus_config

NAMES = ["modelsoak-live.json", "modelsoak-soak.json", "modelsoak-training.json"]
BUILTINS = {"__rate_interval", "__interval", "__range"}


def _panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_committed_json_is_what_the_specs_render() -> None:
    rendered = dashboard_files.render()
    assert sorted(rendered) == NAMES
    for name, text in rendered.items():
        assert (grafana.DASHBOARD_DIR / name).read_text() == text, (
            f"{name} is stale: run `python -m exporters.dashboard_files`"
        )


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_is_provisioning_ready(name: str) -> None:
    doc = grafana.load(name)
    assert doc["uid"] == name.removesuffix(".json")
    assert doc["schemaVersion"] >= 39
    assert doc.get("id") is None  # provisioning assigns ids
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in ("model", "instance", "run_id"):
        assert variables[var]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variables[var]["allValue"] == ".*", "selectors use =~, so All must be a regex"


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_and_target_uses_the_datasource_variable(name: str) -> None:
    doc = grafana.load(name)
    for panel in _panels(doc):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize("name", NAMES)
def test_variables_used_are_defined(name: str) -> None:
    doc = grafana.load(name)
    defined = {v["name"] for v in doc["templating"]["list"]} | BUILTINS
    for q in grafana.queries(doc):
        used = {a or b for a, b in re.findall(r"\$(\w+)|\$\{(\w+)\}", q.expr)}
        assert used <= defined, f"{q.panel}: {used - defined}"
        grafana.substitute(q.expr, dict.fromkeys(defined, "x"))


@pytest.mark.parametrize("name", NAMES)
def test_layout_has_unique_ids_and_no_overlaps(name: str) -> None:
    panels = _panels(grafana.load(name))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_substitute_replaces_both_spellings_and_refuses_unknown_names() -> None:
    assert grafana.substitute(
        'a{m=~"$model"}[${__rate_interval}]', {"model": "x", "__rate_interval": "5s"}
    ) == ('a{m=~"x"}[5s]')
    with pytest.raises(KeyError):
        grafana.substitute("$nope", {})


def test_stack_config_scrapes_our_jobs() -> None:
    cfg = prometheus_config(default_jobs(), scrape_interval_s=1.5)
    assert cfg["global"]["scrape_interval"] == "1500ms"
    assert cfg["global"]["evaluation_interval"] == "1500ms"
    assert cfg["rule_files"] == [str(RULES)]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["modelsoak-server"]["static_configs"][0]["targets"] == ["127.0.0.1:8002"]
    assert jobs["modelsoak-loadgen"]["static_configs"][0]["targets"] == ["127.0.0.1:8089", "127.0.0.1:8090"]
    assert jobs["modelsoak-pushgateway"]["honor_labels"] is True
    assert "honor_labels" not in jobs["modelsoak-server"]
