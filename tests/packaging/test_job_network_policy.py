"""The chart's NetworkPolicy for compression pods: it selects exactly the pods the
operator's Job builder labels, and lets them reach object storage and DNS only."""

from __future__ import annotations

import copy
import ipaddress

import kubernetes_validate
import pytest

from modelpress import api
from modelpress.operator import job_builder
from modelpress.operator.settings import Settings

KUBE_VERSION = "1.33.0"


def policies(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def compression_pod_labels() -> dict[str, str]:
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "m", "namespace": "team-a"},
        "spec": {
            "source": {"storageUri": "s3://b/m.onnx", "format": "onnx", "task": "classification"},
            "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
            "validation": {
                "dataset": {"storageUri": "s3://b/v.npz", "format": "npz"},
                "metric": "accuracy",
                "maxAccuracyDrop": {"absolute": 0.01},
            },
            "output": {"storageUri": "s3://b/out/"},
        },
    }
    job = job_builder.build_job(api.CompressedModel.model_validate(doc), Settings())
    return job["spec"]["template"]["metadata"]["labels"]


def test_one_policy_per_watched_namespace_selecting_the_compression_pods(render) -> None:
    rendered = policies(render({"watchNamespaces": ["team-a", "team-b"]}))
    assert [p["metadata"]["namespace"] for p in rendered] == ["team-a", "team-b"]
    labels = compression_pod_labels()
    for policy in rendered:
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)
        spec = policy["spec"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
        assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
        dns, storage = spec["egress"]
        assert "to" not in dns and {p["port"] for p in dns["ports"]} == {53}
        assert [p["port"] for p in storage["ports"]] == [443, 80]
        (block,) = storage["to"]
        excepted = [ipaddress.ip_network(c) for c in block["ipBlock"]["except"]]
        # The cluster's usual pod/service ranges (hence the API server) and cloud metadata are out of reach.
        for address in ("10.96.0.1", "172.20.0.10", "192.168.1.1", "100.64.0.1", "169.254.169.254"):
            assert any(ipaddress.ip_address(address) in net for net in excepted), address
        assert not any(ipaddress.ip_address("52.216.0.1") in net for net in excepted)  # S3 stays reachable


def test_a_cluster_wide_install_needs_the_namespaces_listed(render) -> None:
    assert policies(render({})) == []
    listed = policies(render({"jobNetworkPolicy": {"namespaces": ["ml"], "egressPorts": [9000]}}))
    assert [p["metadata"]["namespace"] for p in listed] == ["ml"]
    assert [p["port"] for p in listed[0]["spec"]["egress"][1]["ports"]] == [9000]


def test_the_policy_can_be_turned_off_or_extended(render) -> None:
    off = {"watchNamespaces": ["ml"], "jobNetworkPolicy": {"enabled": False}}
    assert policies(render(off)) == []
    minio = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}]}
    extended = policies(render({"watchNamespaces": ["ml"], "jobNetworkPolicy": {"extraEgress": [minio]}}))
    assert extended[0]["spec"]["egress"][-1] == minio


@pytest.mark.parametrize("bad", [{"exceptCIDRs": ["everything"]}, {"egressPorts": [0]}, {"namespaces": ["Bad_NS"]}])
def test_bad_values_are_refused(render, bad: dict) -> None:
    with pytest.raises(Exception, match="jobNetworkPolicy"):
        render(copy.deepcopy({"jobNetworkPolicy": bad}))
