"""The install, Argo CD, metrics and troubleshooting docs say what the code does.

Docs drift silently; these tests tie every checkable statement to its source: the
argocd-cm snippet to health.lua, the metrics tables to the registered collectors, the
Helm flags to the chart's schema, the example objects to the API types, the RBAC table
to the rendered ClusterRole.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import textwrap
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from prometheus_client.metrics import MetricWrapperBase

from modelpress.summary import ExitCode
from modelpress.validate import check_object

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CHART_DIR = REPO / "charts" / "modelpress"
HEALTH_LUA = REPO / "argocd" / "modelpress.io" / "CompressedModel" / "health.lua"
# The serving runtime plus every operator module: a metric added anywhere there must be documented.
METRIC_MODULES = ("modelpress.jobs.serving", "modelpress.jobs.shadow", "modelpress.jobs.feedback") + tuple(
    f"modelpress.operator.{m.name}"
    for m in pkgutil.iter_modules(importlib.import_module("modelpress.operator").__path__)
)


def code_blocks(doc: str, lang: str) -> list[str]:
    """Fenced blocks of one language, dedented (blocks inside list items are indented)."""
    pattern = re.compile(r"^([ \t]*)```" + lang + r"\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(m.group(2)) for m in pattern.finditer(doc)]


def yaml_docs(doc: str) -> list[dict[str, Any]]:
    return [d for block in code_blocks(doc, "yaml") for d in yaml.safe_load_all(block) if d]


def test_argocd_cm_snippet_embeds_health_lua_verbatim() -> None:
    (cm,) = [d for d in yaml_docs((DOCS / "argocd.md").read_text()) if d["kind"] == "ConfigMap"]
    assert cm["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    assert cm["data"] == {"resource.customizations.health.modelpress.io_CompressedModel": HEALTH_LUA.read_text()}


def test_argocd_applications_point_at_the_chart_with_valid_values() -> None:
    apps = [d for d in yaml_docs((DOCS / "argocd.md").read_text()) if d["kind"] == "Application"]
    assert len(apps) == 2 and all(a["apiVersion"] == "argoproj.io/v1alpha1" for a in apps)
    (operator_app,) = [a for a in apps if "helm" in a["spec"]["source"]]
    assert (REPO / operator_app["spec"]["source"]["path"] / "Chart.yaml").exists()
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(operator_app["spec"]["source"]["helm"]["valuesObject"])


def registered_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Exposed name -> (type, labels) for every collector the modules define."""
    out = {}
    for module_name in METRIC_MODULES:
        for value in vars(importlib.import_module(module_name)).values():
            if isinstance(value, MetricWrapperBase):
                for metric in value.describe():
                    name = metric.name + ("_total" if metric.type == "counter" else "")
                    out[name] = (metric.type, frozenset(value._labelnames))
    return out


def documented_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    row = re.compile(r"^\| `(modelpress_\w+)` \| (\w+) \|([^|]*)\|", re.MULTILINE)
    out = {}
    for name, kind, labels in row.findall((DOCS / "metrics.md").read_text()):
        out[name] = (kind, frozenset(re.findall(r"`(\w+)`", labels)))
    return out


def test_metrics_reference_lists_exactly_the_registered_metrics() -> None:
    registered = registered_metrics()
    assert len(registered) >= 10
    assert documented_metrics() == registered


def test_promql_in_metrics_doc_uses_real_series() -> None:
    """Every series a documented query reads exists (histograms via _bucket/_count/_sum)."""
    exposed = set()
    for name, (kind, _) in registered_metrics().items():
        exposed |= {name} | ({f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else set())
        exposed |= {f"{name}_count", f"{name}_sum"} if kind == "summary" else set()
    for block in code_blocks((DOCS / "metrics.md").read_text(), "promql"):
        for series in re.findall(r"\b(modelpress_\w+)\b", block):
            assert series in exposed, series


def helm_commands(doc: str) -> list[str]:
    """The --set flags of each shell block, joined as one Helm --set expression."""
    out = []
    for block in code_blocks(doc, "sh"):
        sets = [m.strip("'\"") for m in re.findall(r"--set\s+(\S+)", block)]
        if sets:
            out.append(",".join(sets))
    return out


def assert_known_keys(given: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
    """Every key set exists in values.yaml (the schema alone would allow free-form maps)."""
    for key, value in given.items():
        assert key in defaults, f"--set {where}: no such value {key!r}"
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            assert_known_keys(value, defaults[key], where)


def test_install_helm_flags_are_real_chart_values() -> None:
    commands = helm_commands((DOCS / "install.md").read_text())
    assert len(commands) >= 2
    with helm.Chart.load(CHART_DIR) as chart:
        defaults = chart.values
        for expression in commands:
            parsed = helm.parse_set_string(expression)
            chart.validate_schema(parsed)
            assert_known_keys(parsed, defaults, expression)


def test_install_values_table_names_real_keys() -> None:
    table = re.findall(r"^\| (`[^|]+`) \| `", (DOCS / "install.md").read_text(), re.MULTILINE)
    keys = [k for cell in table for k in re.findall(r"`([\w.]+)`", cell)]
    assert "watchNamespaces" in keys and len(keys) >= 10
    with helm.Chart.load(CHART_DIR) as chart:
        values = chart.values
    for key in keys:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"install.md documents {key}, not in values.yaml"
            node = node[part]


def test_install_rbac_table_matches_the_rendered_cluster_role(render) -> None:
    # Everything a cluster-wide install can grant (kserve and kopf scanning on).
    (role,) = [o for o in render({"rbac": {"kserve": True, "kopfScanning": True}}) if o["kind"] == "ClusterRole"]
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    text = (DOCS / "install.md").read_text()
    section = text.split("### What the operator may do", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for resource_cell, verbs_cell in re.findall(r"^\| `([^`]+)`[^|]* \| ([^|]+) \|", section, re.MULTILINE):
        if resource_cell.startswith(("kopfpeerings", "namespaces")):
            continue  # off in a default install; test_chart checks those rules
        plural = resource_cell.split(".", 1)[0]
        documented |= {(plural, v.strip()) for v in re.findall(r"[a-z]+", verbs_cell.split(";")[0])}
    assert documented == granted


def test_the_quickstart_compressedmodel_is_valid() -> None:
    """install.md is the only doc that shows a CompressedModel; it must pass every rule."""
    models = [d for d in yaml_docs((DOCS / "install.md").read_text()) if d.get("kind") == "CompressedModel"]
    assert models, "the quickstart shows a CompressedModel"
    for model in models:
        assert check_object(model) == [], model["metadata"]["name"]


def test_troubleshooting_exit_codes_match_the_job_contract() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    for code, word in ((ExitCode.VALIDATED, "validated"), (ExitCode.REJECTED, "rejected"), (ExitCode.FAILED, "failed")):
        assert f"`{code.value}` {word}" in text


OWN_DOCS = ("install.md", "argocd.md", "troubleshooting.md", "metrics.md")


def test_docs_link_to_files_that_exist() -> None:
    for doc in (DOCS / name for name in OWN_DOCS):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
