"""What both tree methods do around their work: find the ensemble, read the data it sees."""

from __future__ import annotations

import numpy as np

from modelpress.jobs.errors import StepInputError
from modelpress.jobs.methods import MethodData, ModelHandle
from modelpress.jobs.trees.ensemble import Ensemble, NotATreeEnsemble, read, tree_input

# Samples of the method's data the trees are evaluated on (selection, coverage), and the
# most memory the per-tree contributions [trees, samples, outputs] (float64) of ensemble
# pruning may take: large ensembles are scored on fewer samples.
MAX_SAMPLES = 5000
CONTRIBUTION_BYTES = 512 * 2**20
TREE_SOURCES = "source.format sklearn, xgboost or lightgbm, or an onnx model with a TreeEnsemble node"


def load(model: ModelHandle) -> Ensemble:
    """The model's tree ensemble; a model without one is the recipe's fault (:class:`StepInputError`)."""
    try:
        return read(model.proto)
    except NotATreeEnsemble as e:
        raise StepInputError(f"{e}: tree methods need a tree model ({TREE_SOURCES})") from e
    except ValueError as e:
        raise StepInputError(f"the model's tree ensemble cannot be read: {e}") from e


def inputs(
    model: ModelHandle, ensemble: Ensemble, data: MethodData, per_tree: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(what the trees read [N, n_features], labels or None) for the method's training data.
    ``per_tree``: the caller holds every tree's contributions, so N fits CONTRIBUTION_BYTES."""
    samples = data.train if len(data.train) else data.calibration
    limit = MAX_SAMPLES
    if per_tree:
        limit = max(1, min(limit, CONTRIBUTION_BYTES // (8 * ensemble.n_trees * ensemble.n_outputs)))
    x = tree_input(model.proto, samples, limit)
    ensemble.check_features(x.shape[1])
    labels = None if samples.labels is None else np.asarray(samples.labels)[: len(x)]
    return x, labels
