"""The API-server stand-in behaves like kube-apiserver where the operator depends on it.

Exercised over real HTTP, as the operator uses it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster
from k8s_emulator import LabelSelector, Store, count_requests, rbac_usage

BASE = "/apis/modelpress.io/v1alpha1/namespaces/ml/compressedmodels"


def call(
    c: Cluster, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    req = urllib.request.Request(
        c.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(req, timeout=10, context=c.ssl_context()) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def watch(c: Cluster, path: str, timeout_s: int = 1) -> list[dict[str, Any]]:
    sep = "&" if "?" in path else "?"
    with urllib.request.urlopen(
        f"{c.url}{path}{sep}watch=true&timeoutSeconds={timeout_s}", timeout=10, context=c.ssl_context()
    ) as resp:
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


MERGE = "application/merge-patch+json"


@pytest.fixture()
def c(tmp_path: Path):
    with Cluster(tmp_path) as cluster:
        yield cluster


def make(c: Cluster, name: str = "m", labels: dict[str, str] | None = None) -> dict[str, Any]:
    code, obj = call(
        c,
        "POST",
        BASE,
        {
            "apiVersion": "modelpress.io/v1alpha1",
            "kind": "CompressedModel",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"a": 1},
            "status": {"phase": "Forged"},
        },
    )
    assert code == 201, obj
    return obj


def test_create_sets_server_fields_and_refuses_duplicates(c: Cluster) -> None:
    obj = make(c)
    meta = obj["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1 and meta["namespace"] == "ml"
    assert "status" not in obj  # status is the status subresource's business
    code, err = call(c, "POST", BASE, {"metadata": {"name": "m"}, "spec": {}})
    assert code == 409 and err["reason"] == "AlreadyExists"


def test_generation_and_status_subresource(c: Cluster) -> None:
    obj = make(c)
    _, after_label = call(c, "PATCH", f"{BASE}/m", {"metadata": {"labels": {"x": "y"}}}, MERGE)
    assert after_label["metadata"]["generation"] == 1
    assert int(after_label["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    _, ignored = call(c, "PATCH", f"{BASE}/m", {"status": {"phase": "Sneaky"}}, MERGE)
    assert "status" not in ignored
    _, st = call(c, "PATCH", f"{BASE}/m/status", {"status": {"phase": "Validated"}, "spec": {"a": 9}}, MERGE)
    assert st["status"] == {"phase": "Validated"} and st["spec"] == {"a": 1} and st["metadata"]["generation"] == 1
    _, spec = call(c, "PATCH", f"{BASE}/m", {"spec": {"a": 2}}, MERGE)
    assert spec["metadata"]["generation"] == 2 and spec["status"] == {"phase": "Validated"}


def test_stale_writes_conflict_and_json_patch_test(c: Cluster) -> None:
    obj = make(c)
    stale = obj["metadata"]["resourceVersion"]
    call(c, "PATCH", f"{BASE}/m", {"spec": {"a": 2}}, MERGE)
    code, err = call(
        c, "PATCH", f"{BASE}/m/status", {"metadata": {"resourceVersion": stale}, "status": {"phase": "X"}}, MERGE
    )
    assert code == 409 and err["reason"] == "Conflict"
    code, _ = call(c, "PUT", f"{BASE}/m", {**obj, "spec": {"a": 5}})
    assert code == 409
    ops = [{"op": "test", "path": "/spec/a", "value": 1}, {"op": "replace", "path": "/spec/a", "value": 3}]
    code, _ = call(c, "PATCH", f"{BASE}/m", ops, "application/json-patch+json")
    assert code == 422  # a is 2 now: the test op fails, nothing changes
    ops[0]["value"] = 2
    code, ok = call(c, "PATCH", f"{BASE}/m", ops, "application/json-patch+json")
    assert code == 200 and ok["spec"]["a"] == 3


def test_label_selectors_and_watch_resume(c: Cluster) -> None:
    make(c, "a", {"tier": "gold"})
    b = make(c, "b", {"tier": "silver"})
    make(c, "c")
    names = lambda sel: [o["metadata"]["name"] for o in call(c, "GET", f"{BASE}?labelSelector={sel}")[1]["items"]]  # noqa: E731
    assert names("tier%3Dgold") == ["a"]
    assert names("tier") == ["a", "b"] and names("%21tier") == ["c"]
    assert names("tier%20in%20(gold,silver)") == ["a", "b"] and names("tier%21%3Dgold") == ["b", "c"]
    _, listing = call(c, "GET", BASE)
    rv = listing["metadata"]["resourceVersion"]
    call(c, "PATCH", f"{BASE}/b", {"spec": {"a": 7}}, MERGE)
    call(c, "DELETE", f"{BASE}/c")
    events = watch(c, f"{BASE}?resourceVersion={rv}")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("MODIFIED", "b"), ("DELETED", "c")]
    assert events[0]["object"]["metadata"]["uid"] == b["metadata"]["uid"]
    only_gold = watch(c, f"{BASE}?labelSelector=tier%3Dgold")
    assert [e["object"]["metadata"]["name"] for e in only_gold] == ["a"]


def test_cascading_delete_and_audit(c: Cluster) -> None:
    owner = make(c)
    ref = {
        "apiVersion": "modelpress.io/v1alpha1",
        "kind": "CompressedModel",
        "name": "m",
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    code, _ = call(
        c,
        "POST",
        "/api/v1/namespaces/ml/configmaps",
        {"metadata": {"name": "m-1", "ownerReferences": [ref]}, "data": {}},
    )
    assert code == 201
    call(c, "DELETE", f"{BASE}/m")
    assert c.objects("", "configmaps") == []
    used = rbac_usage(c.server.audit)
    assert ("delete", "modelpress.io", "compressedmodels", "", "ml") in used
    assert ("create", "", "configmaps", "", "ml") in used
    counts = count_requests(c.server.audit)
    assert counts["write"] == 3 and counts["read"] == 0


def test_too_old_resource_version_is_gone(c: Cluster) -> None:
    import collections

    c.server.log[("modelpress.io", "compressedmodels")] = collections.deque(maxlen=2)
    first = make(c, "a")
    make(c, "b")
    make(c, "c")  # the log now starts after a's creation
    events = watch(c, f"{BASE}?resourceVersion={int(first['metadata']['resourceVersion']) - 1}")
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
    latest = watch(c, f"{BASE}?resourceVersion={first['metadata']['resourceVersion']}")
    assert [e["object"]["metadata"]["name"] for e in latest] == ["b", "c"]


def test_store_indexes_follow_relabels_owners_and_deletes() -> None:
    """Lists and cascades read the store's label and owner indexes: they must match a full scan."""
    store = Store()

    def pod(name: str, job: str, owner: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {"job-name": job}, "ownerReferences": [{"uid": owner}]}}

    def names(selector: str, ns: str | None = "ml") -> list[str]:
        return [o["metadata"]["name"] for o in store.select("", "pods", ns, LabelSelector(selector))]

    store[("", "pods", "ml", "p1")] = pod("p1", "a", "u1")
    store[("", "pods", "ml", "p2")] = pod("p2", "b", "u2")
    store[("", "pods", "other", "p3")] = pod("p3", "a", "u1")
    assert names("job-name=a") == ["p1"] and names("job-name=a", None) == ["p1", "p3"]
    store[("", "pods", "ml", "p1")] = pod("p1", "b", "u2")  # relabelled and re-owned
    assert names("job-name=a") == [] and names("job-name=b") == ["p1", "p2"]  # creation order, as before
    assert names("job-name in (a,b)", None) == ["p1", "p2", "p3"] and names("job-name!=b", None) == ["p3"]
    assert store.owned_by("u1") == [("", "pods", "other", "p3")]
    assert store.owned_by("u2") == [("", "pods", "ml", "p1"), ("", "pods", "ml", "p2")]
    del store[("", "pods", "ml", "p1")]
    assert names("job-name") == ["p2"] and store.owned_by("u2") == [("", "pods", "ml", "p2")]
    assert ("", "pods", "ml", "p1") not in store and len(store) == 2
    assert list(store) == [("", "pods", "ml", "p2"), ("", "pods", "other", "p3")]
