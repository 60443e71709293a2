"""The anchor recipe, run inside benchmarks/anchor/.venv (sentence-transformers + Optimum).

This is sentence-transformers' own documented way to get a fast CPU model:

    model = SentenceTransformer(model_dir, backend="onnx")        # Optimum ONNX export
    export_dynamic_quantized_onnx_model(model, "avx512_vnni", dir)  # Optimum ORTQuantizer

It writes the exported fp32 and quantized ONNX files plus the anchor's own
``encode()`` embeddings (its own tokenizer, pooling and normalisation) for the given
sentences, so the benchmark can time the anchor's graph side by side with ModelPress's
candidates in one process and check that its harness reproduces ``encode()``.

    benchmarks/anchor/.venv/bin/python benchmarks/anchor/run_anchor.py MODEL_DIR SENTENCES OUT_DIR
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG = "avx512_vnni"


def main(model_dir: Path, sentences_file: Path, out_dir: Path) -> None:
    import numpy as np
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    torch.set_num_threads(1)
    sentences = [s for s in sentences_file.read_text(encoding="utf-8").splitlines() if s.strip()]
    work = out_dir / "model"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(model_dir, work)  # the recipe writes onnx/ into the model directory

    started = time.perf_counter()
    model = SentenceTransformer(str(work), backend="onnx", device="cpu")
    model.save_pretrained(str(work))  # keeps the exported onnx/model.onnx next to the config
    export_dynamic_quantized_onnx_model(model, CONFIG, str(work))
    seconds = time.perf_counter() - started
    quantized_file = work / "onnx" / f"model_qint8_{CONFIG}.onnx"
    quantized = SentenceTransformer(
        str(work), backend="onnx", device="cpu", model_kwargs={"file_name": f"onnx/{quantized_file.name}"}
    )
    np.save(out_dir / "encode_int8.npy", quantized.encode(sentences, batch_size=32, convert_to_numpy=True))
    info = {
        "recipe": f'SentenceTransformer(dir, backend="onnx") + export_dynamic_quantized_onnx_model(model, "{CONFIG}")',
        "sentence_transformers": sentence_transformers.__version__,
        "optimum_onnx": _version("optimum-onnx"),
        "transformers": _version("transformers"),
        "onnxruntime": _version("onnxruntime"),
        "fp32_onnx": str(work / "onnx" / "model.onnx"),
        "int8_onnx": str(quantized_file),
        "export_and_quantize_seconds": round(seconds, 2),
        "max_seq_length": quantized.max_seq_length,
    }
    (out_dir / "anchor.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
