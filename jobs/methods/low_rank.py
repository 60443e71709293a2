"""Low-rank factorization: W (out x in) ~= B (out x r) @ A (r x in) from a truncated SVD.

On torch, ``linear(x, W, b)`` becomes ``linear(linear(x, A), B, b)``; on ONNX a MatMul
(or Gemm) weight becomes two MatMuls. The rank keeps ``energy`` of the cumulative
squared singular values, or ``rankRatio`` of min(in, out). A layer is left alone when
the factors would not hold fewer parameters than W (r * (in + out) >= in * out).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from modelpress.api import LowRank
from modelpress.jobs.methods import Method, MethodData, ModelHandle, SearchContext, StepResult, Variant, register
from modelpress.jobs.methods import _torch_graph as tg
from modelpress.jobs.methods._onnx_graph import drop_unused_initializers, gemm_to_matmul, initializers, matmul_weights


def choose_rank(singular_values: np.ndarray, config: LowRank) -> int:
    """The rank the config asks for (at least 1)."""
    if config.rank_ratio is not None:
        return max(1, int(round(config.rank_ratio * len(singular_values))))
    assert config.energy is not None  # LowRank validates exactly one of rankRatio, energy
    energy = np.cumsum(singular_values.astype(np.float64) ** 2)
    return int(np.searchsorted(energy / energy[-1], config.energy - 1e-12) + 1)


def factorize(weight: np.ndarray, config: LowRank) -> tuple[np.ndarray, np.ndarray] | None:
    """(A [r, in], B [out, r]) with B @ A ~= weight [out, in], or None when it would not shrink."""
    out_dim, in_dim = weight.shape
    # torch's SVD honours the job's pinned thread count; numpy's BLAS spawns its own
    # threads and was ~10x slower on a shared 2-core node for a 1024x1024 weight.
    u, s, vh = (t.numpy() for t in torch.linalg.svd(torch.tensor(weight, dtype=torch.float64), full_matrices=False))
    r = choose_rank(s, config)
    if r * (in_dim + out_dim) >= in_dim * out_dim:
        return None
    root = np.sqrt(s[:r])
    return (root[:, None] * vh[:r]).astype(weight.dtype), (u[:, :r] * root).astype(weight.dtype)


@register
class LowRankMethod(Method[LowRank]):
    key = "lowRank"
    stages = frozenset({"torch", "onnx"})

    def ladder(self, config: LowRank, context: SearchContext) -> list[Variant]:
        """Keep more: the energy left out halved and quartered, or 1.5x and 2x the rank ratio."""
        if config.energy is not None:
            energies = [1 - (1 - config.energy) / d for d in (2, 4)]
            return [
                self.variant(config.model_copy(update={"energy": round(v, 4)}), level=i)
                for i, v in enumerate(energies, start=1)
                if v < 1
            ]
        ratio = config.rank_ratio
        assert ratio is not None  # the API validates exactly one of energy, rankRatio
        ratios = [min(1.0, ratio * f) for f in (1.5, 2.0)]
        return [
            self.variant(config.model_copy(update={"rank_ratio": round(v, 4)}), level=i)
            for i, v in enumerate(ratios, start=1)
            if v > ratio
        ]

    def apply(self, model: ModelHandle, config: LowRank, data: MethodData) -> StepResult:
        if model.stage == "onnx":
            return _onnx(model, config)
        gm = tg.graph_module(model, data.train)
        before = tg.count_parameters(gm)
        ranks: dict[str, list[int]] = {}
        for node in tg.layers(gm, ("linear",)):
            weight_node = tg.node_arg(node, 1)
            weight_name = tg.attr_name(weight_node)
            weight = tg.get_param(gm, weight_node).detach()
            factors = factorize(weight.numpy(), config)
            if factors is None:
                continue
            a, b = (torch.from_numpy(f) for f in factors)
            owner_path, _, attr = weight_name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            owner.register_parameter(f"{attr}_lowrank_a", nn.Parameter(a))
            owner.register_parameter(f"{attr}_lowrank_b", nn.Parameter(b))
            prefix = f"{owner_path}." if owner_path else ""
            with gm.graph.inserting_before(node):
                a_node = gm.graph.get_attr(f"{prefix}{attr}_lowrank_a")
                b_node = gm.graph.get_attr(f"{prefix}{attr}_lowrank_b")
                hidden = gm.graph.call_function(tg.LINEAR, (node.args[0], a_node))
            node.args = (hidden, b_node, *node.args[2:])
            if not weight_node.users:
                gm.graph.erase_node(weight_node)
                delattr(owner, attr)
            ranks[weight_name] = [min(weight.shape), a.shape[0]]
        gm.graph.lint()
        gm.recompile()
        changes = {"ranks": ranks, "parametersBefore": before, "parametersAfter": tg.count_parameters(gm)}
        handle = model.with_model(module=gm)
        return StepResult(handle, changes)


def _onnx(model: ModelHandle, config: LowRank) -> StepResult:
    proto = gemm_to_matmul(model.proto)  # a copy; Gemm(transB) weights become plain [in, out]
    before = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    inits = initializers(proto)
    ranks: dict[str, list[int]] = {}
    nodes: list[onnx.NodeProto] = []
    # A node's first output identifies it: output names are unique in a graph, node
    # names may be empty or repeated (and protobuf hands out new wrappers per access).
    targets = {node.output[0]: name for node, name in matmul_weights(proto) if node.op_type == "MatMul"}
    for node in proto.graph.node:
        name = targets.get(node.output[0]) if node.op_type == "MatMul" else None
        factors = None if name is None else factorize(numpy_helper.to_array(inits[name]).T, config)
        if factors is None:
            nodes.append(node)
            continue
        a, b = factors  # MatMul computes x @ W with W [in, out] = (B @ A).T = A.T @ B.T
        out = node.output[0]  # unique, also when several MatMuls share one weight
        first, second = f"{out}_lowrank_a", f"{out}_lowrank_b"
        proto.graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(a.T), first),
                numpy_helper.from_array(np.ascontiguousarray(b.T), second),
            ]
        )
        hidden = f"{out}_lowrank"
        nodes.append(
            onnx.helper.make_node("MatMul", [node.input[0], first], [hidden], name=f"{node.name or out}_lowrank_a")
        )
        nodes.append(onnx.helper.make_node("MatMul", [hidden, second], list(node.output), name=node.name))
        ranks[node.name or out] = [min(a.shape[1], b.shape[0]), a.shape[0]]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    drop_unused_initializers(proto)
    onnx.checker.check_model(proto)
    after = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    return StepResult(
        model.with_model(onnx_model=proto), {"ranks": ranks, "parametersBefore": before, "parametersAfter": after}
    )
