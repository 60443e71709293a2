"""The modelpress-onnx runtime runs in the slim serving image (kserve, onnxruntime, numpy,
tokenizers): started with torch, transformers and the rest of the compression stack
unimportable, it still loads an ONNX model and answers V1 and V2 requests."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import onnx
from helpers import free_port, wait_http
from onnx import TensorProto, helper

from .conftest import stop_process

# What the job image has and the serving image does not (Dockerfile, pyproject's `serving` extra).
BLOCKED = ("torch", "transformers", "onnx", "onnxscript", "sklearn", "safetensors")
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10

# Runs the runtime's main() as `python -m modelpress.jobs.serving` does, after putting a finder in
# front of sys.meta_path that refuses the blocked packages as if they were not installed.
LAUNCHER = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = set(sys.argv.pop(1).split(","))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in the serving image)", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    import modelpress.jobs.serving  # the import path on its own, then the real entry point
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    sys.exit(modelpress.jobs.serving.main(sys.argv[1:]))
    """
)


def write_linear_model(model_dir: Path) -> None:
    """``logits = input @ WEIGHTS`` in the artifact layout (model/1/model.onnx)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], WEIGHTS.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = model_dir / "model" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(model, path)


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_the_runtime_serves_with_torch_and_transformers_unimportable(tmp_path: Path) -> None:
    write_linear_model(tmp_path / "artifact")
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="slim-runtime-", suffix=".log", dir=tmp_path)[1])
    argv = [sys.executable, str(launcher), ",".join(BLOCKED), "--model_dir", str(tmp_path / "artifact")]
    argv += ["--model_name", "linear", "--http_port", str(port), "--enable_grpc", "false"]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v2/models/linear/ready", proc=proc, log=log)
        x = np.array([[1, 0, 0, 0], [0.5, 1, -1, 2]], dtype=np.float32)
        v2 = post(
            f"{url}/v2/models/linear/infer",
            {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]},
        )
        (out,) = v2["outputs"]
        assert out["name"] == "logits" and out["shape"] == [2, 3]
        np.testing.assert_allclose(np.reshape(out["data"], (2, 3)), x @ WEIGHTS, rtol=1e-6)
        v1 = post(f"{url}/v1/models/linear:predict", {"instances": x.tolist()})
        np.testing.assert_allclose(v1["predictions"], x @ WEIGHTS, rtol=1e-6)
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            assert 'modelpress_inference_requests_total{artifact_digest="' in resp.read().decode()
    finally:
        stop_process(proc)
    assert "blocked: not in the serving image" not in log.read_text(), log.read_text()[-3000:]


def test_the_blocker_really_blocks(tmp_path: Path) -> None:
    """Guard against a silent finder: importing a blocked package through it fails."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.replace("import modelpress.jobs.serving", "import modelpress.jobs.hf"))
    proc = subprocess.run(
        [sys.executable, str(launcher), ",".join(BLOCKED)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "No module named 'torch' (blocked: not in the serving image)" in proc.stderr


def test_the_runtime_and_the_job_agree_on_the_artifact_layout() -> None:
    from modelpress.jobs import artifact, serving

    assert serving.MODEL_RELPATH == artifact.MODEL_RELPATH
