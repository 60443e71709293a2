"""Post-training quantization with ONNX Runtime's own tools (onnxruntime.quantization).

dynamic: int8 weights, activations quantized at run time (``quantize_dynamic``).
static:  int8 QDQ calibrated on ``MethodData.calibration`` (``quantize_static``).
fp16:    float16 weights and compute, float32 at the graph boundary (keep_io_types)
         so clients keep sending float32; ORT's converter (onnxconverter-common when
         installed is the same code, ORT ships its own copy).
int4-weight-only: MatMulNBits blocks of ``blockSize`` weights (``MatMulNBitsQuantizer``).
smoothing (dynamic/static): SmoothQuant-style activation smoothing before quantizing
         (``_smooth.py``), calibrated on ``MethodData.calibration``.

The ORT tools read and write files, so each call works in a private temp directory.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from modelpress.api import Quantize
from modelpress.jobs.dataset import Samples
from modelpress.jobs.methods import Method, MethodData, ModelHandle, SearchContext, StepResult, Variant, register
from modelpress.jobs.methods._onnx_graph import check_node_names, gemm_to_matmul, topological_sort, weight_bytes
from modelpress.jobs.methods._smooth import smooth, smoothed_weights

log = logging.getLogger(__name__)

# Marks a graph that already went through ORT's pre-processing (the search quantizes one
# graph many times; pre-processing a 90 MB encoder costs seconds each time).
PREPROCESSED = "modelpress.quantize.preprocessed"
# One sample per batch: the histogram calibrators (entropy, percentile) stack the
# collected outputs and fail on a short last batch; text samples also stay unpadded.
CALIBRATION_BATCH = 1
# SmoothQuant alphas the search tries before keeping nodes in float (int8 modes, with
# calibration data). 0.75 moved MiniLM from 0.9929 to 0.9967 mean cosine; 0.5 is the paper's default.
SMOOTHING_RUNGS = (0.75, 0.5)
QUANTIZABLE_OPS = ("MatMul", "Gemm")  # what every mode quantizes: the nodes worth keeping in float


@register
class QuantizeMethod(Method[Quantize]):
    key = "quantize"
    stages = frozenset({"onnx"})

    def ladder(self, config: Quantize, context: SearchContext) -> list[Variant]:
        """After the step as asked: smoothing, per-channel flipped, then the 1, 2, 4 most
        sensitive nodes in float.

        For int8 with calibration data and no smoothing asked, smoothing rungs come first:
        they keep every node in int8 (level 0, as compressed as asked) and are exact in
        float, so they are tried before keeping nodes in float; the exclusion rungs then
        build on the first smoothing rung (per-channel, which smoothing needs: the weights
        absorb the activation scales).
        """
        int8 = config.mode in ("dynamic", "static")  # the int8 modes have per-channel scales and smoothing
        smoothed = [config.model_copy(update={"smoothing": alpha, "per_channel": True}) for alpha in SMOOTHING_RUNGS]
        base = config
        out = []
        if int8 and context.calibrated and config.smoothing is None:
            out += [self.variant(c) for c in smoothed]
            base = smoothed[0]
        out.append(self.variant(base, level=1, exclude_top=1))
        if int8:
            out.append(self.variant(config.model_copy(update={"per_channel": not config.per_channel})))
        out += [self.variant(base, level=lvl, exclude_top=k) for lvl, k in ((2, 2), (3, 4))]
        return out

    def prepare(self, model: ModelHandle) -> ModelHandle:
        """ORT's pre-processing, once for every variant and ranking run on this input.

        Fusions rename nodes (``X`` becomes ``X/MatMulAddFusion``), so the search ranks and
        excludes nodes on the pre-processed graph: the names it picks are then the names
        the quantizer sees. The graph is marked, so :meth:`apply` does not redo it.
        """
        if model.onnx_model is None:
            return model
        return model.with_model(onnx_model=pre_process(model.onnx_model))

    def rankable_nodes(self, model: ModelHandle, config: Quantize) -> list[str]:
        """Named MatMul/Gemm nodes not already excluded, largest weights first (the biggest
        share of the size and time, so worth ranking first)."""
        if model.onnx_model is None:
            return []
        graph = model.onnx_model.graph
        sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
        nodes = [
            n for n in graph.node if n.op_type in QUANTIZABLE_OPS and n.name and n.name not in config.exclude_nodes
        ]
        nodes.sort(key=lambda n: -sum(sizes.get(x, 0) for x in n.input))
        return [n.name for n in nodes]

    def leave_out(self, config: Quantize, nodes: Sequence[str], among: Sequence[str]) -> Quantize:
        """Keep ``nodes`` in float (added to ``excludeNodes``)."""
        if not set(among) - set(nodes):
            raise ValueError(
                f"only {len(among)} quantizable node(s): keeping {len(nodes)} in float would quantize nothing"
            )
        extra = [n for n in nodes if n not in config.exclude_nodes]
        return config.model_copy(update={"exclude_nodes": [*config.exclude_nodes, *extra]})

    def apply(self, model: ModelHandle, config: Quantize, data: MethodData) -> StepResult:
        if model.onnx_model is None:
            raise ValueError("quantize works on ONNX graphs; export the model first")
        with tempfile.TemporaryDirectory(prefix="modelpress-quantize-") as tmp:
            work = Path(tmp)
            calibrated = data.calibration is not None and len(data.calibration) > 0
            if config.mode == "static" and not calibrated:
                raise ValueError(
                    "quantize mode static needs calibration samples: set validation.calibration "
                    "(a dataset of representative inputs), or use mode: dynamic"
                )
            if config.smoothing is not None and not calibrated:
                raise ValueError(
                    "quantize.smoothing needs calibration samples: set validation.calibration, or drop smoothing"
                )
            source = pre_process(model.onnx_model)
            # After pre-processing: ORT's optimizer would fuse MatMul+Add back into Gemm.
            source = gemm_to_matmul(source)
            check_node_names(source, list(config.exclude_nodes), "quantize.excludeNodes")
            smoothed = 0
            if config.smoothing is not None:
                source, smoothed = smooth(source, data.calibration, config.smoothing, set(config.exclude_nodes))
            # ORT's calibrators print progress to stdout; the job's stdout is for its own log.
            with contextlib.redirect_stdout(io.StringIO()):
                quantized = _QUANTIZERS[config.mode](source, config, data, work)
        # The pre-processed mark is for this job's trials; an artifact fed back in as a
        # source must be pre-processed like any other graph.
        _drop_props(quantized, PREPROCESSED)
        onnx.checker.check_model(quantized)
        changes = {
            "mode": config.mode,
            "weightBytesBefore": weight_bytes(model.onnx_model),
            "weightBytesAfter": weight_bytes(quantized),
            "excludedNodes": list(config.exclude_nodes),
        }
        if config.smoothing is not None:
            changes["smoothedActivations"] = smoothed
        return StepResult(
            model.with_model(onnx_model=quantized),
            changes,
        )


def _drop_props(model: onnx.ModelProto, key: str) -> None:
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)


def pre_process(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's recommended step before quantizing: shape inference + basic fusions.

    It only improves what the quantizers can see; when its symbolic shape inference
    cannot handle a graph we quantize the graph as it is rather than fail the step.
    Fusions rename nodes (``X`` -> ``X/MatMulAddFusion``), so the search ranks nodes on
    this same graph.
    """
    from onnxruntime.quantization import quant_pre_process

    if any(p.key == PREPROCESSED for p in model.metadata_props):
        return copy.deepcopy(model)  # already done: pre-processing again would give the same graph

    # When its symbolic shape inference is incomplete, ORT dumps sym_shape_infer_temp.onnx
    # (+ a uuid .data file the size of the weights) into the *current directory* before
    # raising; run it inside a scratch directory so a failed pre-process leaves nothing
    # behind. The job is single-threaded, so changing directory here is safe.
    with tempfile.TemporaryDirectory(prefix="modelpress-preprocess-") as tmp, contextlib.chdir(tmp):
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "preprocessed.onnx"
        onnx.save(model, src)
        try:
            quant_pre_process(str(src), str(dst))
        except Exception as exc:  # ORT raises bare Exceptions from its shape inference
            log.warning("ORT quantization pre-processing failed (%s); using the graph as is", exc)
            processed = copy.deepcopy(model)
        else:
            processed = onnx.load(dst)
    onnx.helper.set_model_props(processed, {**{p.key: p.value for p in processed.metadata_props}, PREPROCESSED: "1"})
    return processed


def _dynamic(model: onnx.ModelProto, config: Quantize, data: MethodData, work: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = work / "in.onnx", work / "dynamic.onnx"
    onnx.save(model, src)
    # Smoothing meets large activations with large weights. x86 CPUs without VNNI run
    # dynamic int8 (uint8 x int8) with VPMADDUBSW, whose int16 pair sums then saturate
    # (ORT's docs on quantization precision); 7-bit weights cannot saturate. On MiniLM:
    # mean cosine 0.982 with 8-bit smoothed weights, 0.9967 with 7-bit. Only the
    # smoothed weights get the reduced range, the others keep all 8 bits.
    override = {"axis": 1, "reduce_range": True} if config.per_channel else {"reduce_range": True}
    overrides = {name: [override] for name in smoothed_weights(model)}
    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=config.per_channel,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.exclude_nodes),
        extra_options={"TensorQuantOverrides": overrides} if overrides else None,
    )
    return onnx.load(dst)


def _static(model: onnx.ModelProto, config: Quantize, data: MethodData, work: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[config.calibration_method]
    src, dst = work / "in.onnx", work / "static.onnx"
    onnx.save(model, src)
    inputs = [i.name for i in model.graph.input]
    quantize_static(
        str(src),
        str(dst),
        _CalibrationReader(data.calibration, inputs),
        quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.exclude_nodes),
        calibrate_method=method,
        # Symmetric activations are what ORT's CPU int8 kernels are fastest with.
        extra_options={"ActivationSymmetric": True, "CalibTensorRangeSymmetric": False},
    )
    return onnx.load(dst)


def _fp16(model: onnx.ModelProto, config: Quantize, data: MethodData, work: Path) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(
        copy.deepcopy(model), keep_io_types=True, node_block_list=list(config.exclude_nodes) or None
    )
    return topological_sort(converted)


def _int4(model: onnx.ModelProto, config: Quantize, data: MethodData, work: Path) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        copy.deepcopy(model),
        bits=4,
        block_size=config.block_size,
        is_symmetric=True,
        nodes_to_exclude=list(config.exclude_nodes),
    )
    quantizer.process()
    return quantizer.model.model


_QUANTIZERS = {"dynamic": _dynamic, "static": _static, "fp16": _fp16, "int4-weight-only": _int4}


class _CalibrationReader(CalibrationDataReader):
    """ORT's calibration reader protocol over our Samples (batches in order, one pass)."""

    def __init__(self, samples: Samples, input_names: list[str]) -> None:
        missing = [n for n in input_names if n not in samples.input_names]
        if missing:
            raise ValueError(
                f"validation.calibration: samples lack model inputs {missing} (they have {samples.input_names})"
            )
        self._names = input_names
        self._batches: Iterator = samples.batches(CALIBRATION_BATCH)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {n: batch[0][n] for n in self._names}
