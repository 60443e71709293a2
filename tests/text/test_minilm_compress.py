"""all-MiniLM-L6-v2 end to end: export to ONNX, dynamic int8 with the registered quantize method.

Fidelity is the cosine between each compressed embedding and the fp32 torch model's
embedding of the same real English sentence (batches unpadded per batch, as users send them).
"""

from __future__ import annotations

import numpy as np

from modelpress.api import Quantize
from modelpress.jobs.methods import MethodData, get_method


def test_onnx_export_matches_torch(minilm_onnx, fidelity_samples, torch_embeddings, run_onnx, rowwise_cosine):
    assert [i.name for i in minilm_onnx.onnx_model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in minilm_onnx.onnx_model.graph.output] == ["sentence_embedding"]
    exported = run_onnx(minilm_onnx.onnx_model, fidelity_samples, batch_size=16)
    assert rowwise_cosine(exported, torch_embeddings).min() > 0.9999
    single = run_onnx(minilm_onnx.onnx_model, fidelity_samples.take(3), batch_size=1)  # dynamic batch + length
    assert rowwise_cosine(single, torch_embeddings[:3]).min() > 0.9999


def test_dynamic_int8_keeps_fidelity_and_is_much_smaller(
    minilm_onnx, fidelity_samples, torch_embeddings, run_onnx, rowwise_cosine
):
    data = MethodData(task="embedding", train=fidelity_samples, calibration=fidelity_samples.take(8))
    # Per-channel scales: per-tensor int8 leaves MiniLM at ~0.967 mean cosine (the FFN output
    # projections have outlier channels); per-channel is also what sentence-transformers' recipe uses.
    result = get_method("quantize").apply(minilm_onnx, Quantize(mode="dynamic", per_channel=True), data)

    quantized = result.model.onnx_model
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & {node.op_type for node in quantized.graph.node}
    fp32_bytes = len(minilm_onnx.onnx_model.SerializeToString())
    int8_bytes = len(quantized.SerializeToString())
    assert fp32_bytes / int8_bytes >= 3.5, f"int8 is only {fp32_bytes / int8_bytes:.2f}x smaller"

    fidelity = rowwise_cosine(run_onnx(quantized, fidelity_samples, batch_size=16), torch_embeddings)
    assert fidelity.mean() >= 0.99, f"mean cosine fidelity {fidelity.mean():.4f}"
    assert np.isfinite(fidelity).all()


def test_fused_export_matches_torch_and_quantizes_attention(
    minilm_fused, fidelity_samples, torch_embeddings, run_onnx, rowwise_cosine
):
    ops = [node.op_type for node in minilm_fused.onnx_model.graph.node]
    assert ops.count("Attention") == 6  # one fused attention kernel per MiniLM layer
    assert "EmbedLayerNormalization" in ops
    # SkipLayerNormalization rewritten as Sum + LayerNormalization (5x faster on ORT's CPU kernels)
    assert "SkipLayerNormalization" not in ops and ops.count("Sum") == ops.count("LayerNormalization") == 12
    assert rowwise_cosine(run_onnx(minilm_fused.onnx_model, fidelity_samples), torch_embeddings).min() > 0.9999

    data = MethodData(task="embedding", train=fidelity_samples, calibration=fidelity_samples.take(8))
    quantized = get_method("quantize").apply(minilm_fused, Quantize(mode="dynamic", per_channel=True), data).model
    assert "QAttention" in {node.op_type for node in quantized.onnx_model.graph.node}
    fidelity = rowwise_cosine(run_onnx(quantized.onnx_model, fidelity_samples), torch_embeddings)
    assert fidelity.mean() >= 0.99, f"mean cosine fidelity {fidelity.mean():.4f}"


def test_smoothing_brings_fused_int8_closer_to_fp32(
    minilm_fused, fidelity_samples, calibration_samples, torch_embeddings, run_onnx, rowwise_cosine
):
    """SmoothQuant-style smoothing (calibrated on other sentences) beats plain per-channel int8."""
    data = MethodData(task="embedding", train=calibration_samples, calibration=calibration_samples)
    quantize = get_method("quantize")
    fidelity = {}
    for alpha in (None, 0.75):
        result = quantize.apply(minilm_fused, Quantize(mode="dynamic", per_channel=True, smoothing=alpha), data)
        embeddings = run_onnx(result.model.onnx_model, fidelity_samples)
        fidelity[alpha] = float(rowwise_cosine(embeddings, torch_embeddings).mean())
    assert result.changes["smoothedActivations"] == 24  # 4 per layer: attention, its output, FFN in, FFN out
    assert "QAttention" in {node.op_type for node in result.model.onnx_model.graph.node}
    # Measured: 0.9929 -> 0.9967 on the benchmark's 192 sentences.
    assert fidelity[0.75] >= 0.995 and fidelity[0.75] - fidelity[None] >= 0.002, fidelity
