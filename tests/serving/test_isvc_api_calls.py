"""The InferenceService calls of the API seam (operator/kube.py) against the API-server
stand-in: a missing one is None, a delete hits only the exact object it was read as."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cluster import Cluster

from modelpress.operator.inference_service import ISVC_API_VERSION, ISVC_KIND
from modelpress.operator.kube import Conflict, Kube

NS = "ml"


def isvc(uri: str) -> dict:
    return {
        "apiVersion": ISVC_API_VERSION,
        "kind": ISVC_KIND,
        "metadata": {"name": "digits", "namespace": NS},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": uri}}},
    }


def test_find_patch_and_delete_with_a_uid_precondition(tmp_path: Path) -> None:
    with Cluster(tmp_path, namespace=NS) as c:
        c.sync(c.server.declare, "serving.kserve.io", "v1beta1", "inferenceservices", ISVC_KIND)

        async def go() -> None:
            kube = Kube(c.connection(token="t"))
            try:
                assert await kube.find(ISVC_API_VERSION, ISVC_KIND, NS, "digits") is None
                first, created = await kube.create(isvc("s3://a/"))
                assert created
                patched = await kube.merge_patch(
                    ISVC_API_VERSION, ISVC_KIND, NS, "digits", {"spec": {"predictor": {"minReplicas": 2}}}
                )
                assert patched["spec"]["predictor"]["minReplicas"] == 2
                assert patched["spec"]["predictor"]["model"]["storageUri"] == "s3://a/"
                # Someone replaced it meanwhile: deleting by the old uid must not remove theirs.
                c.sync(c.server.delete, "serving.kserve.io", "inferenceservices", NS, "digits")
                c.sync(c.server.create, "serving.kserve.io", "inferenceservices", NS, isvc("s3://theirs/"), "v1beta1")
                with pytest.raises(Conflict):
                    await kube.delete(ISVC_API_VERSION, ISVC_KIND, NS, "digits", uid=first["metadata"]["uid"])
                theirs = await kube.find(ISVC_API_VERSION, ISVC_KIND, NS, "digits")
                assert theirs["spec"]["predictor"]["model"]["storageUri"] == "s3://theirs/"
                assert await kube.delete(ISVC_API_VERSION, ISVC_KIND, NS, "digits", uid=theirs["metadata"]["uid"])
                assert await kube.find(ISVC_API_VERSION, ISVC_KIND, NS, "digits") is None
                assert not await kube.delete(ISVC_API_VERSION, ISVC_KIND, NS, "digits")  # already gone
            finally:
                await kube.close()

        asyncio.run(go())
