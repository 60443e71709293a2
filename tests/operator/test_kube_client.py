"""The API seam on its own: retries, AlreadyExists as success, conflicts, typed errors, token
rotation and a new login."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cluster import Cluster
from k8s_emulator import Fault

from modelpress.operator import kube as kube_mod
from modelpress.operator.kube import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    Kube,
    NotFound,
    resource_path,
)

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
                with pytest.raises(NotFound) as err:
                    await kube.get("v1", "ConfigMap", "ml", "absent")
                return err.value.status, kube._session_args["headers"]["Authorization"]
            finally:
                await kube.close()

        status, auth = run(go())
        assert status == 404 and auth == "Bearer rotated"  # the 401 was retried with the new token
        assert c.model("m")["status"] == {"phase": "Pending"}


def test_errors_are_typed_by_what_they_mean(tmp_path: Path) -> None:
    """Callers catch the meaning (NotFound, Conflict...), never compare status codes."""
    path = resource_path("v1", "configmaps", "ml")
    with Cluster(tmp_path) as c:
        c.server.faults.append(Fault("list", "pods", 403))

        async def go() -> list[tuple[type[ApiError], int]]:
            kube = Kube(c.connection(token="t"))
            calls = [
                kube.get("v1", "ConfigMap", "ml", "absent"),
                kube.request("POST", path, CM),  # a second create of the same name
                kube.request("POST", path, {**CM, "metadata": {"namespace": "ml"}}),  # no name
                kube.request("POST", path, {"apiVersion": "v1", "kind": "ConfigMap"}),  # no metadata
                kube.list("v1", "Pod", "ml"),
            ]
            try:
                await kube.create(CM)
                raised = []
                for call in calls:
                    with pytest.raises(ApiError) as err:
                        await call
                    raised.append((type(err.value), err.value.status))
                assert await kube.find("v1", "ConfigMap", "ml", "absent") is None
                assert await kube.delete("v1", "ConfigMap", "ml", "absent") is False
                return raised
            finally:
                await kube.close()

        assert run(go()) == [(NotFound, 404), (AlreadyExists, 409), (Invalid, 422), (BadRequest, 400), (Forbidden, 403)]
    assert not issubclass(AlreadyExists, Conflict)  # a precondition that failed is not a name taken


def test_a_new_login_swaps_the_session_and_closes_the_old_one_after_a_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kopf logs in again: calls from then on carry the new credentials; the old session
    stays open for the calls already on it and is closed after the grace, or by close()."""
    with Cluster(tmp_path) as c:

        async def go() -> None:
            kube = Kube(c.connection(token="old"))
            try:
                await kube.create(CM)
                first = kube._session
                in_flight = asyncio.create_task(kube.get("v1", "ConfigMap", "ml", "x"))
                await asyncio.sleep(0)  # the call has taken the session
                kube.login(c.connection(token="new"))
                assert (await in_flight)["data"] == {"a": "1"} and first is not None and not first.closed
                await kube.get("v1", "ConfigMap", "ml", "x")
                second = kube._session
                assert second is not None and second is not first
                assert second.headers["Authorization"] == "Bearer new"
                monkeypatch.setattr(kube_mod, "SESSION_TIMEOUT_S", 0.0)
                kube.login(c.connection(token="newer"))
                kube.login(c.connection(token="newest"))  # nothing opened since: nothing more to retire
                await kube._retired[second]  # its (now empty) grace
                assert second.closed and not first.closed and list(kube._retired) == [first]
            finally:
                await kube.close()
            assert first.closed and not kube._retired

        run(go())
