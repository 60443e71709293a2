"""The API seam on its own: retries, AlreadyExists as success, conflicts, token rotation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cluster import Cluster
from k8s_emulator import Fault

from modelpress.operator.kube import ApiError, Conflict, Kube

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ml"}, "data": {"a": "1"}}


def run(coro):  # the client lives on its own loop here; the emulator has another
    return asyncio.run(coro)


def test_create_retries_and_treats_already_exists_as_success(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.server.faults.append(Fault("create", "configmaps", 503, times=2))

        async def go():
            kube = Kube(c.connection(token="t"))
            try:
                first = await kube.create(CM)
                second = await kube.create({**CM, "data": {"a": "2"}})
                return first, second
            finally:
                await kube.close()

        (obj, created), (again, created_again) = run(go())
        assert created and not created_again
        assert again["metadata"]["uid"] == obj["metadata"]["uid"] and again["data"] == {"a": "1"}
        assert c.server.faults[0].hits == 2


def test_status_precondition_conflict_and_token_rotation(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("rotated\n")
    with Cluster(tmp_path) as c:
        model = c.apply_model(
            {
                "apiVersion": "modelpress.io/v1alpha1",
                "kind": "CompressedModel",
                "metadata": {"name": "m", "namespace": "ml"},
                "spec": {},
            }
        )
        c.patch_model("m", {"spec": {"changed": True}})
        c.server.faults.append(Fault("get", "configmaps", 401))

        async def go():
            kube = Kube(c.connection(token="expired"))
            kube.token_path = str(token)
            try:
                with pytest.raises(Conflict):
                    await kube.patch_model_status(
                        "ml", "m", {"phase": "Pending"}, resource_version=model["metadata"]["resourceVersion"]
                    )
                await kube.patch_model_status("ml", "m", {"phase": "Pending"})
                with pytest.raises(ApiError) as err:
                    await kube.get("v1", "ConfigMap", "ml", "absent")
                return err.value.status, kube._session_args["headers"]["Authorization"]
            finally:
                await kube.close()

        status, auth = run(go())
        assert status == 404 and auth == "Bearer rotated"  # the 401 was retried with the new token
        assert c.model("m")["status"] == {"phase": "Pending"}
