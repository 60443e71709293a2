"""Fixtures for operator tests: an emulated cluster and the operator running against it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # k8s_emulator, cluster (importlib import mode)

from cluster import Cluster  # noqa: E402


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path) as c:
        yield c


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained digits MLP as model.onnx plus val.npz (what users would upload)."""
    import numpy as np
    import torch

    from modelpress.jobs.examples.digits import INPUT_NAME, OUTPUT_NAME, train_digits_mlp
    from modelpress.jobs.export import to_onnx
    from modelpress.jobs.methods import ModelHandle

    out = tmp_path_factory.mktemp("digits")
    module, _train, val = train_digits_mlp(seed=0, hidden=(64,), epochs=8)
    x_val = np.stack([f[INPUT_NAME] for f in val.features])
    handle = ModelHandle([INPUT_NAME], [OUTPUT_NAME], module=module, dynamic_axes={INPUT_NAME: {0: "batch"}})
    with torch.no_grad():
        onnx_model = to_onnx(handle, {INPUT_NAME: x_val[:8]}).onnx_model
    (out / "model.onnx").write_bytes(onnx_model.SerializeToString())
    np.savez(out / "val.npz", x=x_val, y=val.labels)
    return out


@pytest.fixture(autouse=True)
def _quick_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short latency sampling in the job processes: these tests check behaviour, not speed."""
    monkeypatch.setenv("MODELPRESS_LATENCY_BUDGET_S", "0.05")
