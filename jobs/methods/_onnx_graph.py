"""Small ONNX graph helpers shared by the ONNX-stage methods (quantize, prune, lowRank).

Hand-written on purpose: ONNX Runtime's dynamic int8 quantizer and its MatMulNBits
(int4) quantizer only handle ``MatMul``, while torch's exporter writes ``nn.Linear``
as ``Gemm``; ORT's optimizers only fuse the other way (MatMul+Add -> Gemm). The
rewrite is a few lines of onnx.helper/numpy_helper, so no extra dependency.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every ``Gemm(A, W[, C])`` with a constant 2-D ``W`` is ``MatMul (+ Add)``.

    The MatMul keeps the Gemm's node name (so ``excludeNodes`` written against the
    exported graph still match); the bias Add is named ``<name>_bias``.
    """
    model = copy.deepcopy(model)
    inits = initializers(model)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or node.input[1] not in inits or not plain:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
            name = f"{node.input[1]}_t"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), name))
        else:
            name = node.input[1]
        has_bias = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], name], [product], name=node.name))
        if has_bias:
            nodes.append(
                onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unused_initializers(model)
    return model


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def matmul_weights(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """(node, weight initializer name) for each MatMul/Gemm with a constant 2-D weight."""
    inits = initializers(model)
    out = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            if len(inits[node.input[1]].dims) == 2:
                out.append((node, node.input[1]))
    return out


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by initializers (what quantization shrinks)."""
    return sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def check_node_names(model: onnx.ModelProto, names: list[str], field: str) -> None:
    """Fail with the list of real node names when ``names`` mentions one the graph lacks."""
    known = {n.name for n in model.graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        sample = sorted(known)[:20]
        raise ValueError(f"{field}: no node named {unknown} in the ONNX graph; node names are e.g. {sample}")


def topological_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes so each comes after its producers (the ONNX checker requires it).

    ORT's float16 converter appends its boundary Cast nodes at the end of the graph;
    onnxruntime runs that, but other tools and the checker refuse it.
    """
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"ONNX graph has a cycle or a missing input near node {pending[0].name!r}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model
