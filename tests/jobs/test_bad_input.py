"""Bad input ends as a Failed summary with a readable reason (exit code 1), never a
traceback, and never runs code shipped inside the input."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress.jobs.entrypoint import run_job
from modelpress.summary import ExitCode, JobSummary

from .conftest import free_port, make_spec, run_job_process, write_spec


class PlantsMarker:
    """Unpickling this creates a file: proof that a loader unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def run(tmp_path: Path, model: Path, dataset: Path, fmt: str = "onnx", **kw) -> JobSummary:
    doc = make_spec(model.as_uri(), dataset.as_uri(), (tmp_path / "out").as_uri(), fmt=fmt, **kw)
    return run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")


def assert_failed(summary: JobSummary, *fragments: str) -> None:
    assert summary.outcome == "Failed"
    assert summary.exit_code == ExitCode.FAILED
    for fragment in fragments:
        assert fragment in summary.reason, summary.reason
    assert "Traceback" not in summary.reason


def test_truncated_onnx(tmp_path: Path, digits_dir: Path) -> None:
    data = (digits_dir / "model.onnx").read_bytes()
    (tmp_path / "model.onnx").write_bytes(data[: len(data) // 2])
    summary = run(tmp_path, tmp_path / "model.onnx", digits_dir / "val.npz")
    assert_failed(summary, "source.storageUri: model.onnx is not a valid ONNX model")


def test_garbage_onnx(tmp_path: Path, digits_dir: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x00\x01not a protobuf at all" * 50)
    assert_failed(run(tmp_path, tmp_path / "model.onnx", digits_dir / "val.npz"), "not a valid ONNX model")


@pytest.mark.parametrize("fmt", ["onnx", "pytorch-export"])
def test_pickle_is_refused_not_unpickled(tmp_path: Path, digits_dir: Path, fmt: str) -> None:
    marker = tmp_path / "unpickled"
    (tmp_path / "model.bin").write_bytes(pickle.dumps(PlantsMarker(marker)))
    pickle.loads((tmp_path / "model.bin").read_bytes())  # the payload really works...
    assert marker.exists()
    marker.unlink()
    summary = run(tmp_path, tmp_path / "model.bin", digits_dir / "val.npz", fmt=fmt)
    assert_failed(summary, "source.storageUri: model.bin is a Python pickle", "never unpickles")
    assert not marker.exists()  # ...and the job did not run it


def test_torch_save_file_is_refused(tmp_path: Path, digits_dir: Path) -> None:
    marker = tmp_path / "unpickled"
    torch.save({"model": PlantsMarker(marker)}, tmp_path / "model.pt")
    summary = run(tmp_path, tmp_path / "model.pt", digits_dir / "val.npz", fmt="pytorch-export")
    assert_failed(summary, "written by torch.save (a pickle)", "torch.export.save")
    assert not marker.exists()


def test_pt2_with_a_pickled_payload_is_refused(tmp_path: Path, digits_dir: Path) -> None:
    """A .pt2 whose weight config says use_pickle: torch.export.load would unpickle it."""
    marker = tmp_path / "unpickled"
    evil = tmp_path / "model.pt2"
    with zipfile.ZipFile(digits_dir / "model.pt2") as src, zipfile.ZipFile(evil, "w") as dst:
        config_name = next(n for n in src.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(src.read(config_name))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        for item in src.infolist():
            data = src.read(item)
            if item.filename == config_name:
                data = json.dumps(config).encode()
            elif item.filename.endswith("/weights/" + first["path_name"]):
                data = pickle.dumps(PlantsMarker(marker))
            dst.writestr(item, data)
    summary = run(tmp_path, evil, digits_dir / "val.npz", fmt="pytorch-export")
    assert_failed(summary, "holds a pickled object", "never unpickles")
    assert not marker.exists()


def test_dataset_shape_does_not_fit_the_model(tmp_path: Path, digits_dir: Path) -> None:
    np.savez(tmp_path / "val.npz", x=np.zeros((20, 32), np.float32), y=np.zeros(20, np.int64))
    summary = run(tmp_path, digits_dir / "model.onnx", tmp_path / "val.npz")
    assert_failed(summary, "validation.dataset: samples of 'input' have shape (32,)", "expects (64,)")


def test_labels_do_not_fit_the_model(tmp_path: Path, digits_dir: Path) -> None:
    with np.load(digits_dir / "val.npz") as val:
        x, y = val["x"], val["y"]
    np.savez(tmp_path / "val.npz", x=x, y=y + 5)  # labels up to 14 for a 10-class model
    summary = run(tmp_path, digits_dir / "model.onnx", tmp_path / "val.npz")
    assert_failed(summary, "validation.dataset: labels must be class indices 0..9", "10 outputs")


def test_missing_labels_for_accuracy(tmp_path: Path, digits_dir: Path) -> None:
    with np.load(digits_dir / "val.npz") as val:
        np.savez(tmp_path / "val.npz", x=val["x"])
    assert_failed(
        run(tmp_path, digits_dir / "model.onnx", tmp_path / "val.npz"), "metric accuracy needs labels: add an array y"
    )


def test_dataset_arrays_disagree(tmp_path: Path, digits_dir: Path) -> None:
    np.savez(tmp_path / "val.npz", x=np.zeros((20, 64), np.float32), y=np.zeros(19, np.int64))
    assert_failed(
        run(tmp_path, digits_dir / "model.onnx", tmp_path / "val.npz"),
        "validation.dataset.storageUri: arrays in val.npz disagree on the number of samples",
    )


def test_empty_dataset(tmp_path: Path, digits_dir: Path) -> None:
    np.savez(tmp_path / "val.npz", x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    summary = run(tmp_path, digits_dir / "model.onnx", tmp_path / "val.npz")
    assert_failed(summary, "validation.dataset.storageUri: val.npz holds no samples")


def test_static_quantization_without_calibration_is_rejected_before_work(tmp_path: Path) -> None:
    """Nothing is downloaded or loaded: the URIs below do not even exist."""
    summary = run(
        tmp_path, tmp_path / "missing.onnx", tmp_path / "missing.npz", steps=[{"quantize": {"mode": "static"}}]
    )
    assert_failed(summary, "validation.calibration", "static quantization needs calibration data")
    assert not (tmp_path / "work").exists()


def test_unreachable_uri(tmp_path: Path, digits_dir: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}/model.onnx"  # nothing listens there
    doc = make_spec(uri, (digits_dir / "val.npz").as_uri(), (tmp_path / "out").as_uri())
    summary = run_job(write_spec(tmp_path / "cm.yaml", doc), tmp_path / "work")
    assert_failed(summary, f"source.storageUri: cannot read {uri}: ")


def test_bad_input_exits_1_with_the_reason_in_the_termination_log(tmp_path: Path, digits_dir: Path) -> None:
    shutil.copy(digits_dir / "val.npz", tmp_path / "val.npz")
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    doc = make_spec((tmp_path / "model.onnx").as_uri(), (tmp_path / "val.npz").as_uri(), (tmp_path / "o").as_uri())
    proc, log = run_job_process(tmp_path, "--spec", str(write_spec(tmp_path / "cm.yaml", doc)))
    assert proc.returncode == 1
    summary = json.loads(log.read_text())
    assert summary["outcome"] == "Failed"
    assert summary["reason"].startswith("source.storageUri: model.onnx is not a valid ONNX model")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_npz_with_pickled_objects_is_refused_not_unpickled(tmp_path: Path, digits_dir: Path) -> None:
    marker = tmp_path / "unpickled"
    np.savez(tmp_path / "val.npz", x=np.array([PlantsMarker(marker)] * 3, dtype=object), y=np.zeros(3, np.int64))
    summary = run(tmp_path, digits_dir / "model.onnx", tmp_path / "val.npz")
    assert_failed(summary, "validation.dataset.storageUri: val.npz holds object arrays", "plain numeric arrays")
    assert not marker.exists()


def test_dataset_without_the_models_inputs(tmp_path: Path, digits_dir: Path) -> None:
    np.savez(tmp_path / "val.npz", features=np.zeros((5, 64), np.float32))
    assert_failed(
        run(tmp_path, digits_dir / "model.onnx", tmp_path / "val.npz"),
        "val.npz has arrays ['features']; the model needs x (and optionally y for labels)",
    )
