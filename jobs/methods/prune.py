"""Magnitude pruning: unstructured (zeroes) on torch or ONNX, structured (fewer units) on torch.

unstructured: global magnitude over every Linear/Conv weight with
``torch.nn.utils.prune.global_unstructured`` made permanent with ``prune.remove``; on
ONNX, the same global rule over MatMul/Gemm weight initializers in numpy (there is no
library for ONNX initializers). Zeroes compress well but do not run faster.

neurons / channels: remove whole output units of a Linear / Conv and the matching
input columns of the layer it feeds (see ``_torch_graph.prunable_pairs``), ranked by
the L2 norm of their weights. The model really gets smaller and faster; the final
output layer is never shrunk. Optional fine-tuning recovers accuracy.
"""

from __future__ import annotations

import copy

import numpy as np
from onnx import numpy_helper
from torch import fx
from torch.nn.utils import prune

from modelpress.api import Prune
from modelpress.jobs.methods import Method, MethodData, ModelHandle, SearchContext, StepResult, Variant, register
from modelpress.jobs.methods import _torch_graph as tg
from modelpress.jobs.methods._onnx_graph import initializers, matmul_weights


@register
class PruneMethod(Method[Prune]):
    key = "prune"
    stages = frozenset({"torch", "onnx"})

    def ladder(self, config: Prune, context: SearchContext) -> list[Variant]:
        """3/4, 1/2 and 1/4 of the asked sparsity (rounded; at least 1%)."""
        return [
            self.variant(config.model_copy(update={"sparsity": round(config.sparsity * f, 3)}), level=i)
            for i, f in enumerate((0.75, 0.5, 0.25), start=1)
            if config.sparsity * f >= 0.01
        ]

    def apply(self, model: ModelHandle, config: Prune, data: MethodData) -> StepResult:
        if model.stage == "onnx":
            if config.structure != "unstructured":
                raise ValueError(
                    f"prune.structure {config.structure!r} needs a torch model (pytorch-export or "
                    "hf-transformers source, before any quantize step); on ONNX use structure: unstructured"
                )
            return _unstructured_onnx(model, config)
        gm = tg.graph_module(model, data.train)
        # Embedding models have no labels: fine-tune towards the unpruned model's outputs.
        teacher = tg.frozen(tg.copy_module(gm)) if config.fine_tune_epochs and data.task == "embedding" else None
        before = tg.count_parameters(gm)
        if config.structure == "unstructured":
            changes = _unstructured_torch(gm, config.sparsity)
        else:
            kinds = ("linear",) if config.structure == "neurons" else ("conv",)
            pairs = tg.prunable_pairs(gm, kinds)
            if not pairs:
                raise ValueError(
                    f"prune.structure {config.structure!r}: the model has no "
                    f"{'Linear' if kinds == ('linear',) else 'Conv'} layer that feeds another one through "
                    "elementwise ops only, so no units can be removed safely; use structure: unstructured"
                )
            changes = {"widths": tg.shrink_pairs(gm, pairs, 1.0 - config.sparsity)}
        tg.fit(
            gm,
            data.train,
            data.task,
            config.fine_tune_epochs,
            config.learning_rate,
            data.seed,
            loss_fn=tg.match_outputs(teacher.to(data.device)) if teacher is not None else None,
            device=data.device,
        )
        changes.update(
            {
                "structure": config.structure,
                "parametersBefore": before,
                "parametersAfter": tg.count_parameters(gm),
                "fineTuneEpochs": config.fine_tune_epochs,
            }
        )
        return StepResult(model.with_model(module=gm), changes)


def _unstructured_torch(gm: fx.GraphModule, sparsity: float) -> dict:
    slots = tg.weight_slots(gm)
    if not slots:
        raise ValueError("prune: the model has no Linear or Conv weights to prune")
    prune.global_unstructured(slots, pruning_method=prune.L1Unstructured, amount=sparsity)
    for owner, name in slots:
        prune.remove(owner, name)  # make the zeroes permanent plain parameters again
    total = sum(getattr(o, n).numel() for o, n in slots)
    zeros = sum(int((getattr(o, n) == 0).sum()) for o, n in slots)
    return {"sparsity": round(zeros / total, 4)}


def _unstructured_onnx(model: ModelHandle, config: Prune) -> StepResult:
    proto = copy.deepcopy(model.proto)
    inits = initializers(proto)
    names = sorted({name for _, name in matmul_weights(proto)})
    if not names:
        raise ValueError("prune: the ONNX graph has no MatMul/Gemm weight initializers to prune")
    weights = {n: numpy_helper.to_array(inits[n]) for n in names}
    magnitudes = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    k = int(round(config.sparsity * magnitudes.size))
    if k:
        # Same rule as torch's global L1: the k smallest magnitudes overall become zero.
        threshold = np.partition(magnitudes, k - 1)[k - 1]
        for name, w in weights.items():
            pruned = np.where(np.abs(w) <= threshold, np.zeros_like(w), w)
            inits[name].CopyFrom(numpy_helper.from_array(pruned, name))
    zeros = sum(int((numpy_helper.to_array(inits[n]) == 0).sum()) for n in names)
    changes = {"structure": "unstructured", "sparsity": round(zeros / magnitudes.size, 4)}
    return StepResult(model.with_model(onnx_model=proto), changes)
