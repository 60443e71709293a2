"""Shared fixtures for the compression-method tests: one real digits model per session.

The tests use a narrower MLP than the example (256 wide, not 1024) so the whole
directory trains and fine-tunes in seconds on one shared core; the benchmark uses the
full width.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from modelpress.jobs.dataset import Samples
from modelpress.jobs.examples.digits import INPUT_NAME, OUTPUT_NAME, train_digits_mlp
from modelpress.jobs.export import to_onnx
from modelpress.jobs.methods import MethodData, ModelHandle, get_method

# Load every method module now: get_method() only discovers them while the registry is
# empty, and test modules import single method modules (e.g. low_rank) at collection.
get_method("quantize")

TEST_HIDDEN = (256, 256)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.nn.Module, Samples, Samples]:
    return train_digits_mlp(seed=0, hidden=TEST_HIDDEN, epochs=12)


@pytest.fixture(scope="session")
def _digits_onnx(digits) -> ModelHandle:
    module, _, val = digits
    return to_onnx(torch_handle(module), {INPUT_NAME: batch_of(val, 8)})


@pytest.fixture
def torch_model(digits) -> ModelHandle:
    """A fresh copy per test, so one test's surgery can never leak into another."""
    return torch_handle(copy.deepcopy(digits[0]))


@pytest.fixture
def onnx_model(_digits_onnx) -> ModelHandle:
    h = _digits_onnx
    return ModelHandle(
        list(h.input_names),
        list(h.output_names),
        onnx_model=copy.deepcopy(h.onnx_model),
        dynamic_axes=copy.deepcopy(h.dynamic_axes),
    )


@pytest.fixture
def data(digits) -> MethodData:
    _, train, _ = digits
    return MethodData(task="classification", train=train, calibration=train.take(200), seed=0)


@pytest.fixture
def val(digits) -> Samples:
    return digits[2]


def torch_handle(module: torch.nn.Module) -> ModelHandle:
    return ModelHandle([INPUT_NAME], [OUTPUT_NAME], module=module, dynamic_axes={INPUT_NAME: {0: "batch"}})


def batch_of(samples: Samples, n: int | None = None) -> np.ndarray:
    return np.stack([f[INPUT_NAME] for f in samples.features[:n]])


def predict(handle: ModelHandle, x: np.ndarray) -> np.ndarray:
    """Model outputs for a batch, from either stage (ONNX through onnxruntime)."""
    if handle.module is not None:
        with torch.no_grad():
            return handle.module(**{INPUT_NAME: torch.from_numpy(x)}).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(handle.onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: x})[0]


def accuracy(handle: ModelHandle, samples: Samples) -> float:
    return float((predict(handle, batch_of(samples)).argmax(1) == samples.labels).mean())


def parameters(handle: ModelHandle) -> int:
    if handle.module is not None:
        return sum(p.numel() for p in handle.module.parameters())
    return sum(int(np.prod(t.dims)) for t in handle.onnx_model.graph.initializer)


def onnx_bytes(handle: ModelHandle) -> int:
    return len(handle.onnx_model.SerializeToString())


def fingerprint(handle: ModelHandle) -> bytes:
    """Everything a method could mutate, as bytes (for the must-not-mutate checks)."""
    if handle.module is not None:
        state = handle.module.state_dict()
        return (
            b"".join(k.encode() + v.detach().numpy().tobytes() for k, v in state.items()) + repr(handle.module).encode()
        )
    return onnx.ModelProto.SerializeToString(handle.onnx_model, deterministic=True)
