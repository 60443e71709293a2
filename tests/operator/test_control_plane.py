"""What a real control plane showed (issue #16), each against the stricter test cluster:
TLS logins with embedded credentials, objects the API server refuses, pods the Job
controller cannot create, and status that must not go stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from cluster import Cluster, Gate, running_operator, sample_model
from helpers import condition
from tls import CertAuthority

from modelpress.operator.kube import ApiError, Kube
from modelpress.validate import check_object


def _status(c: Cluster, name: str = "digits") -> dict[str, Any]:
    return (c.model(name) or {}).get("status") or {}


# --------------------------------------------------------------------------- TLS logins


@pytest.mark.parametrize("client_cert", [False, True], ids=["token+embedded-ca", "client-certificate-data"])
def test_operator_logs_in_with_credentials_embedded_in_the_kubeconfig(tmp_path: Path, client_cert: bool) -> None:
    """kubeconfigs from kind/kubeadm/EKS/GKE embed the CA (and sometimes the client cert) as base64."""
    with Cluster(tmp_path, runner=Gate(), client_cert=client_cert) as c, running_operator(c):
        c.apply_model(sample_model())
        c.wait_phase("digits", "Validated", timeout=60)
        # The operator's own client (not only kopf's watches) got through: it created the Job and wrote status.
        assert [j["metadata"]["name"] for j in c.objects("batch", "jobs")]
        assert condition(_status(c), "Validated")["status"] == "True"


def test_api_client_trusts_only_the_configured_ca(tmp_path: Path) -> None:
    """The same kubeconfig login kopf does; a server whose certificate another CA signed is refused."""
    with Cluster(tmp_path, client_cert=True) as c:

        async def read(connection: kopf.ConnectionInfo) -> dict[str, Any]:
            kube = Kube(connection)
            try:
                return await kube.request("GET", "/api/v1/namespaces/ml/configmaps")
            finally:
                await kube.close()

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KUBECONFIG", str(c.kubeconfig))
            conn = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        assert conn is not None and conn.ca_data and conn.certificate_data
        assert asyncio.run(read(conn))["items"] == []

        other = CertAuthority.generate()  # another cluster's CA did not sign this server's certificate
        stranger = kopf.ConnectionInfo(server=c.url, ca_data=other.ca_pem, token="t")
        with pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            asyncio.run(read(stranger))


# --------------------------------------------------------------------------- refused objects


def test_a_job_the_api_server_refuses_fails_the_model_and_an_edit_retries(tmp_path: Path) -> None:
    """requests above limits pass the CRD (no quantity arithmetic there) but not the server's Job validation."""
    over = {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}, "gpu": 0}
    with Cluster(tmp_path, runner=Gate()) as c, running_operator(c):
        c.apply_model(sample_model(job=over))
        st = c.wait_phase("digits", "Failed", timeout=30)["status"]
        compressed = condition(st, "Compressed")
        assert compressed["reason"] == "JobRefused"
        assert (
            "(422)" in compressed["message"] and "must be less than or equal to cpu limit of 1" in compressed["message"]
        )
        assert condition(st, "Validated")["status"] == "False" and condition(st, "Ready")["reason"] == "JobRefused"
        assert c.objects("batch", "jobs") == []
        c.wait_for("a Warning Event", lambda: [e for e in c.events("digits") if e["reason"] == "JobRefused"], 10)

        # job.* is not part of the recipe, so only the edit (a new generation) may try again.
        c.patch_model("digits", {"spec": {"job": {"resources": {"requests": {"cpu": "1"}}}}})
        c.wait_phase("digits", "Validated", timeout=30)
        assert len(c.objects("batch", "jobs")) == 1


def test_operator_asks_for_strict_field_validation(tmp_path: Path) -> None:
    """The server's default (Warn) would drop a field the builder got wrong; Strict names it."""
    pod = {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}
    spec = {"template": {"spec": pod}, "bogus": 1}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ml"}, "spec": spec}

    async def create() -> None:
        kube = Kube(c.connection(token="t"))
        try:
            await kube.create(job)
        finally:
            await kube.close()

    with Cluster(tmp_path) as c:
        with pytest.raises(ApiError) as err:
            asyncio.run(create())
    assert err.value.status == 400 and 'strict decoding error: unknown field "spec.bogus"' in err.value.message


# --------------------------------------------------------------------------- pods never created


@pytest.mark.parametrize(
    ("job", "expected", "fix"),
    [
        ({"serviceAccountName": "no-such-sa"}, 'serviceaccount "no-such-sa" not found', "add_service_account"),
        ({"priorityClassName": "no-such-pc"}, "no PriorityClass with name no-such-pc was found", "add_priority_class"),
    ],
)
def test_pods_the_job_controller_cannot_create_are_reported(
    tmp_path: Path, job: dict[str, str], expected: str, fix: str
) -> None:
    with Cluster(tmp_path, runner=Gate()) as c, running_operator(c, pod_check_seconds="0.2"):
        c.apply_model(sample_model(job={"gpu": 0, **job}))
        c.wait_for(
            "Compressed=False FailedCreate",
            lambda: condition(_status(c), "Compressed")["reason"] == "FailedCreate" if _status(c) else False,
            30,
        )
        st = _status(c)
        assert st["phase"] == "Compressing"  # the Job controller keeps trying: a fix lets it through
        assert expected in condition(st, "Compressed")["message"]
        assert "spec.job." in condition(st, "Ready")["message"]  # names the field that fixes it
        assert c.objects("", "pods") == []
        c.wait_for(
            "a Warning Event on the model", lambda: [e for e in c.events("digits") if e["reason"] == "FailedCreate"]
        )

        name = next(iter(job.values()))
        if fix == "add_service_account":
            c.sync(c.add_service_account, name)
        else:
            c.sync(c.add_priority_class, name)
        c.wait_phase("digits", "Validated", timeout=30)


# --------------------------------------------------------------------------- status that must not go stale


def test_failed_model_says_why_it_was_not_validated(tmp_path: Path) -> None:
    with Cluster(tmp_path, runner=Gate(outcome="Failed")) as c, running_operator(c):
        c.apply_model(sample_model())
        st = c.wait_phase("digits", "Failed", timeout=30)["status"]
        validated = condition(st, "Validated")
        assert validated["status"] == "False" and "waiting" not in validated["message"]
        assert validated["reason"] == condition(st, "Compressed")["reason"]


def test_spec_edit_moves_every_condition_to_the_new_generation(tmp_path: Path) -> None:
    gate = Gate(open_=False)
    with Cluster(tmp_path, runner=gate) as c, running_operator(c):
        c.apply_model(sample_model())
        c.wait_for("the Job to run", lambda: gate.runs, 30)
        c.patch_model("digits", {"spec": {"job": {"backoffLimit": 1}}})  # not part of the recipe: same Job
        c.wait_for("observedGeneration 2", lambda: _status(c).get("observedGeneration") == 2, 30)
        assert condition(_status(c), "SpecValid")["observedGeneration"] == 2
        gate.event.set()
        st = c.wait_phase("digits", "Validated", timeout=30)["status"]
        assert {cond["type"]: cond["observedGeneration"] for cond in st["conditions"]} == {
            "SpecValid": 2,
            "Compressed": 2,
            "Validated": 2,
            "Ready": 2,
        }


def test_printed_ratios_are_rounded(tmp_path: Path) -> None:
    """`kubectl get cmodel` prints status values as they are; the operator stores them rounded."""
    from modelpress.operator.status import rounded_results

    assert rounded_results(
        {"accuracyDrop": 0.04549348699896045, "speedup": 2.345678, "sizeRatio": 0.25891, "trials": 3}
    ) == {
        "accuracyDrop": 0.0455,
        "speedup": 2.35,
        "sizeRatio": 0.259,
        "trials": 3,
    }


# --------------------------------------------------------------------------- validate vs the server


def _example(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = sample_model("parity")
    change(doc)
    return doc


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return change


def _drop_name(doc: dict[str, Any]) -> None:
    doc["metadata"] = {"generateName": "parity-", "namespace": "ml"}


PARITY = [
    ("unknown metadata field", _set("metadata.foo", "bar")),
    ("gpu written as 1.0", _set("spec.job.gpu", 1.0)),
    ("job: null", _set("spec.job", None)),
    ("quantize.mode: null", _set("spec.compression.steps", [{"quantize": {"mode": None}}])),
    ("compression.search: null", _set("spec.compression.search", None)),
    ("generateName without name", _drop_name),
    ("memory limit 'lots'", _set("spec.job.resources", {"limits": {"memory": "lots"}})),
    (
        "toleration Exists with a value",
        _set("spec.job.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
    ),
    ("node selector value with a space", _set("spec.job.nodeSelector", {"pool": "a b"})),
    ("label value with a space", _set("metadata.labels", {"team": "a b"})),
]


@pytest.mark.parametrize(("case", "change"), PARITY, ids=[p[0] for p in PARITY])
def test_validate_agrees_with_the_api_server(
    tmp_path: Path, case: str, change: Callable[[dict[str, Any]], None]
) -> None:
    """`modelpress validate` accepts exactly what the API server (CRD schema, CEL, strict decoding) accepts."""
    import json
    import urllib.error
    import urllib.request

    doc = _example(change)
    local = check_object(doc)
    with Cluster(tmp_path, crd_validation=True) as c:
        request = urllib.request.Request(
            f"{c.url}/apis/modelpress.io/v1alpha1/namespaces/ml/compressedmodels?fieldValidation=Strict",
            method="POST",
            data=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=c.ssl_context()) as resp:
                server_status, server_says = resp.status, ""
        except urllib.error.HTTPError as exc:
            server_status, server_says = exc.code, exc.read().decode()
    assert (local == []) == (server_status == 201), f"validate: {local}; server: {server_status} {server_says}"


def test_label_keys_the_crd_cannot_check_are_refused_locally() -> None:
    """Map keys have no schema in a CRD; validate and the operator refuse them before any Job."""
    problems = check_object(_example(_set("spec.job.nodeSelector", {"bad key!": "x"})))
    assert [p.path for p in problems] == ["spec.job"] and "'bad key!'" in problems[0].message
