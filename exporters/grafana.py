"""Grafana dashboard JSON, built from Python so every panel is written once and checked.

`python -m exporters.dashboard_files` writes exporters/dashboards/*.json from the
definitions in exporters/dashboard_specs.py (live), exporters/dashboard_soak.py
and exporters/dashboard_training.py (a test fails when the committed JSON differs). `queries()` and `substitute()` let tests evaluate every PromQL
expression of a dashboard against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass
class Q:
    """One PromQL target of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass
class Panel:
    kind: str  # timeseries, stat, state-timeline, table
    title: str
    queries: list[Q]
    unit: str = "short"
    description: str = ""
    w: int = 12
    h: int = 8
    stack: bool = False
    no_value: str = ""
    mappings: list[dict[str, Any]] = field(default_factory=list)
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    transformations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Row:
    title: str
    panels: list[Panel]


def bool_mapping(zero: tuple[str, str], one: tuple[str, str]) -> list[dict[str, Any]]:
    """A value mapping 0 -> (text, colour), 1 -> (text, colour)."""
    return [
        {
            "type": "value",
            "options": {
                "0": {"text": zero[0], "color": zero[1], "index": 0},
                "1": {"text": one[0], "color": one[1], "index": 1},
            },
        }
    ]


def _target(ref: str, q: Q) -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "expr": q.expr,
        "legendFormat": q.legend or "__auto",
        "range": not q.instant,
        "instant": q.instant,
        "format": "table" if q.table else "time_series",
        "editorMode": "code",
    }


def _field_config(p: Panel) -> dict[str, Any]:
    steps = p.thresholds or [(None, "green")]
    defaults: dict[str, Any] = {
        "unit": p.unit,
        "color": {"mode": "palette-classic" if p.kind == "timeseries" else "thresholds"},
        "thresholds": {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]},
        "mappings": p.mappings,
    }
    if p.no_value:
        defaults["noValue"] = p.no_value
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 25 if p.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
        }
    return {"defaults": defaults, "overrides": []}


def _options(p: Panel) -> dict[str, Any]:
    if p.kind == "timeseries":
        base: dict[str, Any] = {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif p.kind == "stat":
        base = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value_and_name",
            "justifyMode": "auto",
            "orientation": "auto",
        }
    elif p.kind == "state-timeline":
        base = {
            "showValue": "auto",
            "mergeValues": True,
            "rowHeight": 0.8,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        }
    else:
        base = {"showHeader": True, "cellHeight": "sm"}
    return {**base, **p.options}


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y},
        "fieldConfig": _field_config(p),
        "options": _options(p),
        "targets": [_target(chr(ord("A") + i), q) for i, q in enumerate(p.queries)],
    }
    if p.transformations:
        out["transformations"] = p.transformations
    return out


def _layout(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows full width; panels left to right, wrapping at Grafana's 24 columns."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x, line_h = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.w > 24:
                x, y, line_h = 0, y + line_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid, x, line_h = pid + 1, x + p.w, max(line_h, p.h)
        y += line_h
    return panels


def query_variable(name: str, label: str, query: str, description: str = "") -> dict[str, Any]:
    """A multi-value Prometheus label_values() variable with "All" meaning any value."""
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
        "refresh": 2,  # on time-range change: new runs and models show up
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "regex": "",
        "hide": 0,
        "options": [],
    }


def datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    rows: list[Row],
    variables: list[dict[str, Any]],
    time_from: str = "now-30m",
    refresh: str = "10s",
    annotations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["modelsoak"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "links": [],
        "annotations": {"list": [builtin, *(annotations or [])]},
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": _layout(rows),
    }


def alerts_annotation() -> dict[str, Any]:
    """Firing modelsoak alerts as annotations on every time-series panel."""
    return {
        "name": "modelsoak alerts",
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": "red",
        "step": "15s",
        "titleFormat": "{{alertname}}",
        "textFormat": "{{instance}} {{source}} {{run_id}}",
        "useValueForTime": False,
        "expr": 'ALERTS{alertname=~"Modelsoak.*", alertstate="firing"}',
    }


# ---------------------------------------------------------------- reading back


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL expression of a dashboard, and where it sits."""

    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool


def queries(doc: dict[str, Any]) -> Iterator[PanelQuery]:
    """Every target expression of every panel (rows' nested panels too) and annotation."""
    stack = list(doc.get("panels", []))
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for t in panel.get("targets", []):
            yield PanelQuery(doc["uid"], panel["title"], t["refId"], t["expr"], bool(t.get("instant")))
    for ann in doc.get("annotations", {}).get("list", []):
        if "expr" in ann:
            yield PanelQuery(doc["uid"], f"annotation: {ann['name']}", "-", ann["expr"], False)


def variable_queries(doc: dict[str, Any]) -> dict[str, str]:
    """Name -> label_values(...) query of each query variable."""
    return {v["name"]: v["definition"] for v in doc["templating"]["list"] if v["type"] == "query"}


_VAR = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $name / ${name} (Grafana's variables and built-ins such as
    $__rate_interval) with concrete values; an unknown variable raises KeyError."""

    def one(m: re.Match[str]) -> str:
        return values[m.group(1) or m.group(2)]

    return _VAR.sub(one, expr)


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((DASHBOARD_DIR / name).read_text()))
