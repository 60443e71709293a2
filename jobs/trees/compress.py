"""Shrinking a tree ensemble: which trees to keep, and which splits to drop.

Ensemble pruning keeps ``k`` trees: for boosting, the prefix of the boosting order that
scores best on the method's data (later trees correct earlier ones, so only a prefix is
a valid smaller model: it equals scikit-learn's ``staged_predict`` at that length); for
forests, ordered aggregation (Martínez-Muñoz & Suárez, "Pruning in ordered bagging
ensembles", ICML 2006): grow the sub-ensemble greedily, each time adding the tree that
makes it most accurate, and rescale the kept trees so they still average.

Tree pruning turns splits into leaves bottom-up: below ``max_depth``, where a branch sees
fewer than ``min_samples_leaf`` of the method's samples, or where all leaves under a split
lie within a tolerance. A collapsed subtree becomes one leaf holding the coverage-weighted
mean of its leaves (what the subtree returned on average over the data that reaches it).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from modelpress.jobs.trees.ensemble import LEAF, Ensemble, Tree, compact, copy_tree, make_leaf

# Candidate trees scored at once by the forest's greedy selection: bounds its memory to
# GREEDY_BLOCK x samples x outputs float64.
GREEDY_BLOCK = 32


# --------------------------------------------------------------------------- scoring


def _threshold(e: Ensemble) -> float:
    """Where onnxruntime splits a one-column binary classifier's score: 0.5 for positive
    weights with no link (probability-like votes), 0 otherwise (a margin)."""
    positive = all((t.value[t.has_weight] >= 0).all() for t in e.trees)
    return 0.5 if e.post_transform == "NONE" and positive else 0.0


def predict(e: Ensemble, raw: np.ndarray, threshold: float) -> np.ndarray:
    """Classes from raw scores [..., N, n_outputs] (post transforms keep the order of scores)."""
    if raw.shape[-1] == 1:
        return (raw[..., 0] > threshold).astype(np.int64)
    return np.argmax(raw, axis=-1)


def score(e: Ensemble, raw: np.ndarray, target: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(primary, tie-break) per candidate for raw scores [..., N, n_outputs], higher is better.

    Classifiers: accuracy, then the mean margin of the right class. Regressors: minus the
    mean squared error against ``target`` [N, n_outputs].
    """
    if e.op != "TreeEnsembleClassifier":
        mse = np.mean((raw - target) ** 2, axis=(-2, -1))
        return -mse, np.zeros_like(mse)
    y = target.astype(np.int64)
    acc = np.mean(predict(e, raw, threshold) == y, axis=-1)
    if raw.shape[-1] == 1:
        margin = (raw[..., 0] - threshold) * (2 * y - 1)
    else:
        right = np.take_along_axis(raw, np.broadcast_to(y[:, None], (*raw.shape[:-1], 1)), axis=-1)[..., 0]
        others = np.where(np.arange(raw.shape[-1]) == y[:, None], -np.inf, raw)
        margin = right - others.max(axis=-1)
    return acc, margin.mean(axis=-1)


def targets(e: Ensemble, contributions: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """What selection scores against: the labels, or without them the full ensemble's own
    predictions (then "accuracy" is agreement with the source model)."""
    full = _aggregate(e, contributions.sum(axis=0), e.n_trees, averaged=False)
    if e.op == "TreeEnsembleClassifier":
        if labels is not None:
            return np.asarray(labels).reshape(-1).astype(np.int64)
        return predict(e, full, _threshold(e))
    if labels is not None:
        return np.asarray(labels, dtype=np.float64).reshape(full.shape)
    return full


def _aggregate(e: Ensemble, total: np.ndarray, k: int, averaged: bool) -> np.ndarray:
    """Raw scores of a ``k``-tree sub-ensemble whose contributions sum to ``total``.
    ``averaged``: a forest whose leaves hold their share of a SUM (scikit-learn's divided
    by n), rescaled by n/k when written (:func:`keep_trees`) so it keeps averaging."""
    if e.aggregate == "AVERAGE":  # onnxruntime divides by the number of trees itself
        total = total / k
    elif averaged:
        total = total * (e.n_trees / k)
    return total + (0.0 if e.base_values is None else e.base_values)


# --------------------------------------------------------------------------- ensemble pruning


def averages(e: Ensemble, contributions: np.ndarray) -> bool:
    """Forest (True) or boosting, for an ensemble whose node does not say (see
    :meth:`Ensemble.could_average`): which reading makes the first half of the trees
    reproduce the whole on the data. Half a forest, rescaled by 2, is about the forest;
    half of a boosting sequence, as it is, is about the boosted model, while doubling it
    doubles everything the early rounds learnt."""
    if e.aggregate == "AVERAGE":
        return True
    if not e.could_average():
        return False
    size = e.round_size()
    half = max(size, (e.n_trees // size // 2) * size)
    full = contributions.sum(axis=0)
    part = contributions[:half].sum(axis=0)
    as_forest = float(np.mean((part * (e.n_trees / half) - full) ** 2))
    as_boosting = float(np.mean((part - full) ** 2))
    return as_forest <= as_boosting


def best_prefix(e: Ensemble, contributions: np.ndarray, target: np.ndarray, rounds: int) -> tuple[int, float]:
    """(trees, score) of the best-scoring prefix of at most ``rounds`` boosting rounds
    (:meth:`Ensemble.round_size` trees each; ties: the longer prefix)."""
    threshold = _threshold(e)
    size = e.round_size()
    total = np.zeros(contributions.shape[1:])
    best, best_key = size, (-np.inf, -np.inf)
    for r in range(min(rounds, e.n_trees // size)):
        total += contributions[r * size : (r + 1) * size].sum(axis=0)
        primary, tie = score(e, _aggregate(e, total, (r + 1) * size, averaged=False), target, threshold)
        key = (float(primary), float(tie))
        if key >= best_key:
            best, best_key = (r + 1) * size, key
    return best, best_key[0]


def ordered_aggregation(e: Ensemble, contributions: np.ndarray, target: np.ndarray, k: int) -> tuple[list[int], float]:
    """(indices, score) of ``k`` trees chosen greedily: each step adds the tree that makes
    the sub-ensemble score best (accuracy, then margin; or squared error)."""
    threshold = _threshold(e)
    remaining = list(range(e.n_trees))
    chosen: list[int] = []
    total = np.zeros(contributions.shape[1:])
    last = -np.inf
    for step in range(k):
        keys: list[tuple[float, float, int]] = []
        for start in range(0, len(remaining), GREEDY_BLOCK):
            block = remaining[start : start + GREEDY_BLOCK]
            raw = _aggregate(e, total[None] + contributions[block], step + 1, averaged=True)
            primary, tie = score(e, raw, target, threshold)
            keys.extend((float(p), float(t), -j) for p, t, j in zip(primary, tie, block, strict=True))
        primary_best, _, neg = max(keys)
        chosen.append(-neg)
        remaining.remove(-neg)
        total += contributions[-neg]
        last = primary_best
    return sorted(chosen), last


def keep_trees(e: Ensemble, indices: list[int], averaged: bool) -> Ensemble:
    """The sub-ensemble of ``indices``; an ``averaged`` forest's SUM-encoded leaves rescaled
    by n/k so it still averages."""
    trees = [copy_tree(e.trees[i]) for i in indices]
    if averaged and e.aggregate == "SUM" and len(indices) != e.n_trees:
        for t in trees:
            t.value *= e.n_trees / len(indices)
    return replace(e, trees=trees)


def fold_constant_trees(e: Ensemble) -> Ensemble:
    """Trees that are one leaf add the same to every prediction: added to the base score
    and removed, where the node has one (boosting; a forest has none to add to) and sums.
    Converged boosting grows many of them, and pruning makes more."""
    if e.base_values is None or e.aggregate != "SUM":
        return e
    constant = [t.mode[0] == LEAF for t in e.trees]  # node 0 is the root
    if not any(constant) or all(constant):  # an ensemble keeps at least one tree
        return e
    base = e.base_values + sum(t.value[0] for t, c in zip(e.trees, constant, strict=True) if c)
    return replace(e, trees=[t for t, c in zip(e.trees, constant, strict=True) if not c], base_values=base)


# --------------------------------------------------------------------------- tree pruning


def leaf_range(e: Ensemble) -> float:
    """The widest spread of leaf values within one tree: what a relative tolerance scales."""
    spreads = [float(np.ptp(t.value[t.is_leaf], axis=0).max()) for t in e.trees]
    return max(spreads, default=0.0)


def prune_tree(
    tree: Tree, visits: np.ndarray, max_depth: int | None, min_samples_leaf: int | None, tolerance: float | None
) -> Tree:
    """``tree`` with splits turned into leaves (see the module docstring); nodes removed."""
    t = copy_tree(tree)
    n = t.size
    leaf = t.mode == LEAF
    cov = visits.astype(np.float64)
    weighted = np.where(leaf[:, None], t.value * cov[:, None], 0.0)  # sum of coverage x leaf value below
    plain = np.where(leaf[:, None], t.value, 0.0)  # sum of leaf values below (no coverage: plain mean)
    leaves = leaf.astype(np.float64)
    low = np.where(leaf[:, None], t.value, np.inf)
    high = np.where(leaf[:, None], t.value, -np.inf)
    has = t.has_weight.copy()
    for i in range(n - 1, -1, -1):  # pre-order reversed: children before parents
        if leaf[i]:
            continue
        a, b = t.true_child[i], t.false_child[i]
        weighted[i] = weighted[a] + weighted[b]
        plain[i] = plain[a] + plain[b]
        leaves[i] = leaves[a] + leaves[b]
        low[i], high[i] = np.minimum(low[a], low[b]), np.maximum(high[a], high[b])
        has[i] = has[a] | has[b]

    def collapse(i: int) -> int:
        value = weighted[i] / cov[i] if cov[i] > 0 else plain[i] / leaves[i]
        make_leaf(t, i, value, has[i])
        return i

    # Recursion depth is bounded by the tree's depth (<= MAX_DEPTH, checked when read).
    def visit(i: int, depth: int) -> int:
        if leaf[i]:
            return i
        if max_depth is not None and depth >= max_depth:
            return collapse(i)
        a, b = int(t.true_child[i]), int(t.false_child[i])
        if min_samples_leaf is not None:
            small_a, small_b = cov[a] < min_samples_leaf, cov[b] < min_samples_leaf
            if small_a and small_b:
                return collapse(i)
            if small_a or small_b:  # the split barely routes anything: its other side takes its place
                return visit(b if small_a else a, depth)
        if tolerance is not None and float((high[i] - low[i]).max()) <= tolerance:
            return collapse(i)
        t.true_child[i] = visit(a, depth + 1)
        t.false_child[i] = visit(b, depth + 1)
        return i

    return compact(t, visit(0, 0))  # the root moves when its own split was spliced out
