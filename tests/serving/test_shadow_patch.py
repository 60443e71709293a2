"""How the rollout loop patches a user's InferenceService in and out of shadowing: the user's
own model args stay, only the ``--shadow_*`` flags come and go, and a shadowing predictor
never matches a plain one (so the change is applied, not skipped)."""

from __future__ import annotations

from typing import Any

from modelpress import api
from modelpress.operator.inference_service import build_inference_service
from modelpress.operator.rollout import Traffic
from modelpress.operator.rollout_handlers import _keep_users_args, _matches
from modelpress.operator.settings import Settings

STABLE, CANDIDATE = "s3://models/fp32/", "s3://models/out/abcd/"


def model() -> api.CompressedModel:
    return api.CompressedModel.model_validate(
        {
            "apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "digits", "namespace": "ml"},
            "spec": {
                "source": {"storageUri": "s3://models/digits.onnx", "format": "onnx", "task": "classification"},
                "compression": {"steps": [{"quantize": {"mode": "dynamic"}}]},
                "validation": {"dataset": {"storageUri": "s3://d/val.npz", "format": "npz"}, "metric": "accuracy",
                               "maxAccuracyDrop": {"absolute": 0.01}},
                "output": {"storageUri": "s3://models/out/"},
                "serving": {"rollout": {"shadow": {"sampleFraction": 0.5}}},
            },
        }
    )  # fmt: skip


def users(args: list[str] | None) -> dict[str, Any]:
    m: dict[str, Any] = {"modelFormat": {"name": "onnx"}, "storageUri": STABLE}
    if args is not None:
        m["args"] = args
    return {"spec": {"predictor": {"model": m}}}


def test_shadowing_adds_its_flags_after_the_users_args_and_removes_only_them_after() -> None:
    shadowing = build_inference_service(model(), Traffic(STABLE, shadow_uri=CANDIDATE), Settings(), owned=False)
    desired = _keep_users_args(shadowing, users(["--log_level=debug"]))
    args = desired["spec"]["predictor"]["model"]["args"]
    assert args[0] == "--log_level=debug" and args[1] == "--shadow_model_dir=/mnt/candidate" and len(args) == 5
    assert shadowing["spec"]["predictor"]["model"]["args"][0] == "--shadow_model_dir=/mnt/candidate"  # not mutated
    assert not _matches(users(["--log_level=debug"]), desired)

    plain = build_inference_service(model(), Traffic(STABLE), Settings(), owned=False)
    after = _keep_users_args(plain, desired)  # the InferenceService still shadowing, the rollout ended
    assert after["spec"]["predictor"]["model"]["args"] == ["--log_level=debug"]
    assert not _matches(desired, after)
    assert "args" not in _keep_users_args(plain, users(None))["spec"]["predictor"]["model"]
