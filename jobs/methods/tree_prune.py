"""Tree pruning (``pruneTrees``): turn splits of every tree into leaves and remove the
nodes below (depth, coverage on the method's data, leaf-value tolerance; see
:func:`modelpress.jobs.trees.compress.prune_tree`), then by cost-complexity on what those
left (:func:`modelpress.jobs.trees.compress.cost_complexity_prune`). Trees left as a single leaf are
folded into the base score where the model has one. Run it after ``pruneEnsemble``: a
boosted prefix is chosen by boosting rounds, which folding no longer shows."""

from __future__ import annotations

import dataclasses

from modelpress.api import PruneTrees
from modelpress.jobs.methods import (
    Method,
    MethodData,
    ModelHandle,
    SearchContext,
    StepResult,
    Variant,
    _trees,
    register,
)
from modelpress.jobs.trees import compress
from modelpress.jobs.trees.ensemble import LEAF, write


@register
class PruneTreesMethod(Method[PruneTrees]):
    key = "pruneTrees"
    stages = frozenset({"onnx"})

    def ladder(self, config: PruneTrees, context: SearchContext) -> list[Variant]:
        """Cut less, every setting at once: depth +1/+2, min samples, tolerance and alpha halved/quartered."""
        out: list[Variant] = []
        for level, (extra, divisor) in enumerate(((1, 2), (2, 4)), start=1):
            update: dict[str, float] = {}
            if config.max_depth is not None:
                update["max_depth"] = min(512, config.max_depth + extra)
            if config.min_samples_leaf is not None:
                update["min_samples_leaf"] = max(1, config.min_samples_leaf // divisor)
            if config.leaf_tolerance is not None:
                update["leaf_tolerance"] = config.leaf_tolerance / divisor
            if config.cost_complexity is not None:
                update["cost_complexity"] = config.cost_complexity / divisor
            milder = config.model_copy(update=update)
            if milder != config and all(milder != v.config for v in out):
                out.append(self.variant(milder, level=level))
        return out

    def apply(self, model: ModelHandle, config: PruneTrees, data: MethodData) -> StepResult:
        ensemble = _trees.load(model)
        tolerance = None
        if config.leaf_tolerance is not None:
            tolerance = config.leaf_tolerance * compress.leaf_range(ensemble)
        x, _ = _trees.inputs(model, ensemble, data)  # coverage weighs every collapsed leaf
        visits = [t.visits(x) for t in ensemble.trees]
        trees = [
            compress.prune_tree(t, v, config.max_depth, config.min_samples_leaf, tolerance)
            for t, v in zip(ensemble.trees, visits, strict=True)
        ]
        if config.cost_complexity:  # 0 prunes nothing, as scikit-learn's ccp_alpha
            if (config.max_depth, config.min_samples_leaf, tolerance) != (None, None, None):
                visits = [t.visits(x) for t in trees]  # the other options pruned first: cost what they left
            # The spec's alpha is per sample and relative to the widest leaf range (squared),
            # so one value means the same for every tree and every model's output scale.
            alpha = config.cost_complexity * len(x) * compress.leaf_range(ensemble) ** 2
            trees = [compress.cost_complexity_prune(t, v, alpha) for t, v in zip(trees, visits, strict=True)]
        pruned = compress.fold_constant_trees(dataclasses.replace(ensemble, trees=trees))
        changes = {
            "treesBefore": ensemble.n_trees,
            "treesAfter": pruned.n_trees,
            "nodesBefore": ensemble.n_nodes,
            "nodesAfter": pruned.n_nodes,
            "leavesBefore": sum(int((t.mode == LEAF).sum()) for t in ensemble.trees),
            "leavesAfter": sum(int((t.mode == LEAF).sum()) for t in pruned.trees),
            "maxDepthBefore": max(t.depth() for t in ensemble.trees),
            "maxDepthAfter": max(t.depth() for t in pruned.trees),
        }
        return StepResult(model.with_model(onnx_model=write(model.proto, pruned)), changes)
