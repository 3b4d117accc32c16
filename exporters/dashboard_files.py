"""Writes every Grafana dashboard as JSON: `python -m exporters.dashboard_files`
turns the specs in dashboard_specs.py, dashboard_soak.py and dashboard_training.py
into exporters/dashboards/*.json.

Kept apart from exporters.grafana, the building blocks the specs import, so that
the specs and the blocks do not import each other."""

from __future__ import annotations

import json
import sys

from exporters.dashboard_soak import soak
from exporters.dashboard_specs import live
from exporters.dashboard_training import training
from exporters.grafana import DASHBOARD_DIR


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(), indent=2) + "\n"
        for name, build in (
            ("modelsoak-live.json", live),
            ("modelsoak-soak.json", soak),
            ("modelsoak-training.json", training),
        )
    }


def main() -> int:
    DASHBOARD_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (DASHBOARD_DIR / name).write_text(text)
        print(f"wrote {DASHBOARD_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
