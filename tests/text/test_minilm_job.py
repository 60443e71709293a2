"""The job on an hf-transformers source: fused export, smoothed dynamic int8, cosine gate."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from modelpress.api import CompressedModel
from modelpress.jobs.artifact import MODEL_RELPATH
from modelpress.jobs.pipeline import run

JOB_SENTENCES, JOB_CALIBRATION = 24, 16


def jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path.as_uri()


def test_hf_source_is_exported_fused_and_smoothed(tmp_path, minilm_dir, sentences):
    doc = {
        "source": {"storageUri": minilm_dir.as_uri(), "format": "hf-transformers", "task": "embedding"},
        "compression": {"steps": [{"quantize": {"mode": "dynamic", "perChannel": True, "smoothing": 0.75}}]},
        "validation": {
            "dataset": {"storageUri": jsonl(tmp_path / "val.jsonl", sentences[:JOB_SENTENCES]), "format": "jsonl"},
            "calibration": {
                "storageUri": jsonl(tmp_path / "calib.jsonl", sentences[-JOB_CALIBRATION:]),
                "format": "jsonl",
                "samples": JOB_CALIBRATION,
            },
            "metric": "cosine",
            "maxAccuracyDrop": {"absolute": 0.01},
            "batchSize": 8,
        },
        "output": {"storageUri": (tmp_path / "out").as_uri()},
    }
    spec = CompressedModel.model_validate(
        {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressedModel", "metadata": {"name": "m"}, "spec": doc}
    ).spec
    result = run(spec, tmp_path / "work")
    summary = result.summary
    assert summary.results.passed, summary.reason
    assert summary.results.accuracy_drop <= 0.01
    (trial,) = result.report["trials"]
    assert trial["changes"][0]["quantize"]["smoothedActivations"] == 24
    model = onnx.load(str(tmp_path / "out" / summary.recipe_hash / MODEL_RELPATH))
    ops = {n.op_type for n in model.graph.node}
    assert {"QAttention", "QEmbedLayerNormalization", "Sum"} <= ops  # the fused export, quantized
