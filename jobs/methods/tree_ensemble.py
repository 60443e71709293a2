"""Ensemble pruning (``pruneEnsemble``): keep fewer trees of a tree ensemble.

Boosted ensembles keep the best-scoring prefix of their boosting order, forests a subset
chosen by ordered aggregation (see :mod:`modelpress.jobs.trees.compress`); both are
scored on the method's data, never on the held-out split the gate measures. Kept trees
that are a single leaf are folded into the base score (the outputs stay the same).

``ensemble: auto`` takes the kind the model's metadata records (what the tree loaders
write from the source library: :func:`modelpress.jobs.trees.ensemble.mark`) and infers it
from the trees and the data only where the model says nothing (an ONNX source from
elsewhere). XGBoost's boosted forests (num_parallel_tree > 1, several rounds) are boosted:
they keep a prefix of whole rounds.
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
from modelpress.jobs.trees.ensemble import declared, mark, write


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
        kind, per_round = declared(model.proto, ensemble.n_trees)
        if config.ensemble != "auto":
            forest = config.ensemble == "forest"
        elif kind is not None:
            forest = kind == "forest"
        else:
            forest = compress.averages(ensemble, contributions)
        # Boosting counts rounds: a multi-class round is one tree per class (Ensemble.round_size),
        # or what the model records (XGBoost's num_parallel_tree trees per class). A forest
        # whose trees each score one class is subset one tree per class at a time.
        size = 1 if forest else per_round or ensemble.round_size()
        groups = compress.forest_groups(ensemble) if forest else None
        n = len(groups) if groups is not None else ensemble.n_trees // size
        k = config.trees if config.trees is not None else round((config.fraction or 1.0) * n)
        k = min(n, max(1, k))
        target = compress.targets(ensemble, contributions, labels)
        if forest:
            keep, score = compress.ordered_aggregation(ensemble, contributions, target, k, groups)
        else:
            length, score = compress.best_prefix(ensemble, contributions, target, k, size)
            keep = list(range(length))
        pruned = compress.fold_constant_trees(compress.keep_trees(ensemble, keep, averaged=forest))
        out = write(model.proto, pruned)
        # What the next step reads: folded trees leave rounds that are no longer whole.
        mark(out, "forest" if forest else "boosted", size if pruned.n_trees == len(keep) else 1)
        changes = {
            "ensemble": "forest" if forest else "boosted",
            "ensembleFrom": "spec" if config.ensemble != "auto" else "model" if kind else "inferred",
            **({"treesPerRound": size} if size > 1 else {}),
            "treesBefore": ensemble.n_trees,
            "treesAfter": pruned.n_trees,
            "nodesBefore": ensemble.n_nodes,
            "nodesAfter": pruned.n_nodes,
            # accuracy (classifiers) or minus the mean squared error on the method's data
            "selectionScore": round(score, 6),
        }
        return StepResult(model.with_model(onnx_model=out), changes)
