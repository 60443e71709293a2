"""Render the Helm chart with the real Helm engine (helm-python-sdk's libhelm, offline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "modelpress"
RELEASE = "modelpress"
RELEASE_NAMESPACE = "modelpress-system"

Render = Callable[..., list[dict[str, Any]]]


def render_chart(values: dict[str, Any] | None = None, namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
    """Every object ``helm install`` would create from templates/ (CRDs not included)."""
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(values=values or {}, name=RELEASE, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def chart_crds() -> list[dict[str, Any]]:
    """The CRDs Helm applies from crds/ before the templates."""
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        return [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]


@pytest.fixture(scope="session")
def render() -> Render:
    return render_chart


@pytest.fixture(scope="session")
def crds() -> list[dict[str, Any]]:
    return chart_crds()
