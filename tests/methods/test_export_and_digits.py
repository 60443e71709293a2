"""The digits example and torch -> ONNX export, on the real data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import yaml

from modelpress.api import CompressedModel
from modelpress.jobs.examples.digits import build
from modelpress.jobs.export import to_onnx
from modelpress.jobs.methods import ModelHandle

from .conftest import accuracy, batch_of, fingerprint, predict, torch_handle


def test_trained_digits_model_is_accurate(digits):
    module, train, val = digits
    handle = torch_handle(module)
    assert accuracy(handle, val) > 0.95
    assert len(train) + len(val) == 1797


def test_export_keeps_names_dynamic_batch_and_outputs(torch_model, val):
    before = fingerprint(torch_model)
    exported = to_onnx(torch_model, {"input": batch_of(val, 1)})  # batch 1 must still export a dynamic axis
    assert exported.stage == "onnx" and torch_model.stage == "torch"
    assert fingerprint(torch_model) == before
    graph = exported.onnx_model.graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = batch_of(val, 37)  # a batch size never seen at export time
    np.testing.assert_allclose(predict(exported, x), predict(torch_model, x), rtol=1e-4, atol=1e-4)


def test_export_refuses_onnx_handle(onnx_model, val):
    try:
        to_onnx(onnx_model, {"input": batch_of(val, 2)})
    except ValueError as exc:
        assert "torch-stage" in str(exc)
    else:
        raise AssertionError("exporting an ONNX handle must fail")


def test_build_writes_a_valid_example(tmp_path):
    path = build(tmp_path / "demo")
    manifest = CompressedModel.model_validate(yaml.safe_load(path.read_text()))
    out = tmp_path / "demo"
    assert manifest.spec.source.format == "pytorch-export"
    assert manifest.spec.compression.search.enabled
    assert manifest.spec.source.storage_uri == (out / "model.pt2").as_uri()
    assert manifest.spec.output.storage_uri.startswith((out / "artifacts").as_uri())
    val = np.load(out / "val.npz")
    calib = np.load(out / "calib.npz")
    assert val["x"].dtype == np.float32 and val["x"].shape[1] == 64 and val["y"].dtype == np.int64
    assert calib["x"].shape == (1257, 64) and manifest.spec.validation.calibration.samples == 200
    onnx.checker.check_model(onnx.load(out / "model.onnx"))
    # The exported program loads back and, re-exported, agrees with the shipped ONNX.
    loaded = torch_handle(torch.export.load(out / "model.pt2").module())
    reexported = to_onnx(loaded, {"input": val["x"][:4]})
    shipped = ModelHandle(["input"], ["logits"], onnx_model=onnx.load(out / "model.onnx"))
    np.testing.assert_allclose(predict(reexported, val["x"]), predict(shipped, val["x"]), rtol=1e-4, atol=1e-4)
    assert (predict(shipped, val["x"]).argmax(1) == val["y"]).mean() > 0.95


def test_program_exported_with_a_fixed_batch_still_exports_a_dynamic_batch(tmp_path, torch_model, val):
    program = torch.export.export(torch_model.module.eval(), (), {"input": torch.from_numpy(batch_of(val, 4))})
    torch.export.save(program, tmp_path / "fixed.pt2")
    fixed = torch_handle(torch.export.load(tmp_path / "fixed.pt2").module())
    exported = to_onnx(fixed, {"input": batch_of(val, 4)})
    x = batch_of(val, 7)
    np.testing.assert_allclose(predict(exported, x), predict(torch_model, x), rtol=1e-4, atol=1e-4)


class FixedBatch(torch.nn.Module):
    """Hard-codes the batch size in its graph: no export can make that axis dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.fc(input).reshape(4, 10)


def test_model_that_fixes_the_batch_is_a_clear_error(val):
    with pytest.raises(ValueError, match=r"only runs at the traced sizes.*remove hard-coded sizes"):
        to_onnx(torch_handle(FixedBatch().eval()), {"input": batch_of(val, 4)})
