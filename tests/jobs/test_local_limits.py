"""`modelpress run` compresses in a child process with resource limits: a model that
allocates past --max-memory fails that run with one line, and the parent carries on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelpress.jobs.limits import Limits, format_size, out_of_memory, parse_size
from modelpress.jobs.local import run_local

from .conftest import PYTHON, REPO, job_env, make_spec, write_spec

BOMB_FLOATS = 750_000_000  # 3 GiB of float32: past a 2 GiB limit, harmless without one on a test machine
LIMIT = "2GiB"


def write_bomb(directory: Path) -> tuple[Path, Path]:
    """A 4-in, 4-out linear model whose graph also fills a 3 GiB tensor, and data that fits it."""
    shape = helper.make_tensor("bomb_shape", TensorProto.INT64, [1], [BOMB_FLOATS])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    nodes = [
        helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"], value=helper.make_tensor("v", 1, [1], [0.0])),
        helper.make_node("ReduceSum", ["bomb"], ["zero"], keepdims=0),
        helper.make_node("MatMul", ["input", "w"], ["logits"]),
        helper.make_node("Add", ["logits", "zero"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [shape, weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_path, data_path = directory / "bomb.onnx", directory / "val.npz"
    onnx.save(model, model_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    np.savez(data_path, x=x, y=x.argmax(1))
    return model_path, data_path


@pytest.fixture
def bomb_spec(tmp_path: Path) -> Path:
    model, data = write_bomb(tmp_path)
    return write_spec(tmp_path / "cm.yaml", make_spec(model.as_uri(), data.as_uri(), (tmp_path / "out").as_uri()))


def test_a_model_past_the_memory_limit_fails_the_run_in_one_line(bomb_spec: Path, tmp_path: Path) -> None:
    events: list[tuple[str, int, int]] = []
    summary = run_local(bomb_spec, tmp_path / "work", Limits(max_memory=parse_size(LIMIT)), lambda *e: events.append(e))
    assert summary.outcome == "Failed"
    assert summary.reason == "the compression step exceeded its memory limit of 2 GiB (--max-memory)"
    # Progress came back from the child (the baseline is measured there), and the parent lives on.
    assert ("download", 2, 2) in events and ("baseline", 0, 1) in events
    assert not (tmp_path / "out").exists()  # nothing was uploaded


def test_the_cli_prints_the_limit_and_no_traceback(bomb_spec: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "modelpress.cli",
            "run",
            str(bomb_spec),
            "--workdir",
            str(tmp_path / "w"),
            "--max-memory",
            LIMIT,
        ],
        env=job_env(COLUMNS="160"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Failed: the compression step exceeded its memory limit of 2 GiB (--max-memory)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_step_past_the_cpu_limit_is_stopped(bomb_spec: Path, tmp_path: Path) -> None:
    """One CPU second does not even cover importing torch: the child is stopped by SIGXCPU."""
    summary = run_local(bomb_spec, tmp_path / "work", Limits(max_cpu_seconds=1), lambda *e: None)
    assert summary.outcome == "Failed"
    assert summary.reason == "the compression step exceeded its CPU time limit of 1 seconds (--max-cpu-seconds)"


def test_sizes_and_allocation_failures() -> None:
    assert parse_size("8GiB") == 8 * 2**30 == parse_size("8g") and parse_size("512MiB") == 2**29
    assert parse_size("0") == 0 and format_size(parse_size("1.5GiB")) == "1.5 GiB"
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
    try:
        try:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        except RuntimeError as inner:
            raise ValueError("the model cannot run on this data") from inner
    except ValueError as outer:
        assert out_of_memory(outer)
    assert not out_of_memory(ValueError("shape mismatch"))
