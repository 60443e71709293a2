"""What the operator actually asks of the API server, for exact RBAC.

``observed_rbac(workdir)`` runs a representative scenario (a model validated, one with an
invalid spec, one whose Job fails, one whose pods cannot be created, one deleted) against the stand-in and returns the
distinct ``(verb, group, resource, subresource, namespace)`` tuples the operator used.
The chart's Role/ClusterRole tests compare their rules with this list.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster import Cluster, ContainerResult, running_operator, sample_model
from k8s_emulator import rbac_usage

from modelpress.summary import JobSummary

NAMESPACE = "ml"


def _doc(name: str, metric: str = "accuracy") -> dict[str, Any]:
    """A valid model (a bad ``metric`` makes it invalid); no retries, so "broken" fails at once."""
    doc = sample_model(name, NAMESPACE, job={"gpu": 0, "backoffLimit": 0})
    doc["spec"]["validation"]["metric"] = metric
    return doc


async def _runner(job: Mapping[str, Any], root: Path) -> ContainerResult:
    name = job["metadata"]["labels"]["modelpress.io/compressedmodel"]
    if name == "broken":
        return ContainerResult(1, JobSummary(outcome="Failed", reason="bad input").to_termination_message(), "Error")
    rh = job["metadata"]["labels"]["modelpress.io/recipe-hash"]
    summary = JobSummary(
        outcome="Validated",
        recipeHash=rh,
        artifact={"storageUri": f"s3://m/out/{rh}"},
        results={"passed": True, "speedup": 2.0, "sizeRatio": 0.3, "accuracyDrop": 0.0},
    )
    return ContainerResult(0, summary.to_termination_message(), "Completed")


def observed_rbac(workdir: Path) -> list[tuple[str, str, str, str, str]]:
    """Run the scenario (operator namespaced to ``ml``); return the sorted distinct
    (verb, group, resource, subresource, namespace). Cluster-wide mode uses the same
    verbs with namespace "" and no namespaces list/watch (see test_operator_command)."""
    with Cluster(workdir, runner=_runner, namespace=NAMESPACE) as c:
        with running_operator(c, pod_check_seconds="0.2"):
            c.apply_model(_doc("good"))
            c.apply_model(_doc("invalid", metric="mse"))
            c.apply_model(_doc("broken"))
            no_pods = _doc("no-pods")
            no_pods["spec"]["job"]["serviceAccountName"] = "missing"
            c.apply_model(no_pods)
            c.wait_phase("good", "Validated", 60)
            c.wait_phase("broken", "Failed", 60)
            c.wait_for(
                "invalid reported", lambda: (c.model("invalid") or {}).get("status", {}).get("phase") == "Failed"
            )
            c.wait_for(
                "no-pods reported",
                lambda: any(
                    cond.get("reason") == "FailedCreate"
                    for cond in (c.model("no-pods") or {}).get("status", {}).get("conditions", [])
                ),
            )
            c.delete_model("good")
            c.delete_model("no-pods")
            c.wait_for("owned objects collected", lambda: len(c.objects("batch", "jobs")) == 1)
            c.wait_for("events", lambda: len(c.events()) >= 3)
        return rbac_usage(c.server.audit)
