"""Ensemble pruning (``pruneEnsemble``): keep fewer trees of a tree ensemble.

Boosted ensembles keep the best-scoring prefix of their boosting order, forests a subset
chosen by ordered aggregation (see :mod:`modelpress.jobs.trees.compress`); both are
scored on the method's data, never on the held-out split the gate measures. Kept trees
that are a single leaf are folded into the base score (the outputs stay the same).
"""

from __future__ import annotations

import math

from modelpress.api import PruneEnsemble
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
from modelpress.jobs.trees.ensemble import write


@register
class PruneEnsembleMethod(Method[PruneEnsemble]):
    key = "pruneEnsemble"
    stages = frozenset({"onnx"})

    def ladder(self, config: PruneEnsemble, context: SearchContext) -> list[Variant]:
        """Keep more: 1.5x and 2x the trees (fractions stop short of all trees, which would change nothing)."""
        if config.fraction is not None:
            fractions = [round(config.fraction * f, 4) for f in (1.5, 2.0)]
            return [
                self.variant(config.model_copy(update={"fraction": v}), level=i)
                for i, v in enumerate(fractions, start=1)
                if v < 1.0
            ]
        assert config.trees is not None  # the API validates exactly one of trees, fraction
        return [
            self.variant(config.model_copy(update={"trees": math.ceil(config.trees * f)}), level=i)
            for i, f in enumerate((1.5, 2.0), start=1)
        ]

    def apply(self, model: ModelHandle, config: PruneEnsemble, data: MethodData) -> StepResult:
        ensemble = _trees.load(model)
        x, labels = _trees.inputs(model, ensemble, data, per_tree=True)
        contributions = ensemble.contributions(x)
        if config.ensemble == "auto":
            forest = compress.averages(ensemble, contributions)
        else:
            forest = config.ensemble == "forest"
        # Boosting counts rounds: a multi-class round is one tree per class (Ensemble.round_size).
        size = 1 if forest else ensemble.round_size()
        n = ensemble.n_trees // size
        k = config.trees if config.trees is not None else round((config.fraction or 1.0) * n)
        k = min(n, max(1, k))
        target = compress.targets(ensemble, contributions, labels)
        if forest:
            keep, score = compress.ordered_aggregation(ensemble, contributions, target, k)
        else:
            length, score = compress.best_prefix(ensemble, contributions, target, k)
            keep = list(range(length))
        pruned = compress.fold_constant_trees(compress.keep_trees(ensemble, keep, averaged=forest))
        changes = {
            "ensemble": "forest" if forest else "boosted",
            **({"treesPerRound": size} if size > 1 else {}),
            "treesBefore": ensemble.n_trees,
            "treesAfter": pruned.n_trees,
            "nodesBefore": ensemble.n_nodes,
            "nodesAfter": pruned.n_nodes,
            # accuracy (classifiers) or minus the mean squared error on the method's data
            "selectionScore": round(score, 6),
        }
        return StepResult(model.with_model(onnx_model=write(model.proto, pruned)), changes)
