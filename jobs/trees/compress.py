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

Cost-complexity pruning (Breiman et al., "Classification and Regression Trees", 1984, ch. 3
and 10; scikit-learn's ``ccp_alpha``) prunes each tree to the smallest subtree minimising
R + alpha x leaves, where R measures fidelity rather than fit: the squared change of the
tree's output over the method's samples. A boosted tree fits residuals we do not have, so
the tree's own output is the target: collapsing subtree T_t into one leaf costs
R(t) - R(T_t) = sum over the samples reaching t of |collapsed value - the subtree's value|^2.
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


def _aggregate(e: Ensemble, total: np.ndarray, k: int, averaged: bool, n: int | None = None) -> np.ndarray:
    """Raw scores of a ``k``-tree sub-ensemble whose contributions sum to ``total``.
    ``averaged``: a forest whose leaves hold their share of a SUM (scikit-learn's divided
    by n), rescaled by n/k when written (:func:`keep_trees`) so it keeps averaging.
    ``n``, ``k``: counted in groups of trees (:func:`forest_groups`) when given."""
    n = e.n_trees if n is None else n
    if e.aggregate == "AVERAGE":  # onnxruntime divides by the number of trees itself
        total = total / (k * e.n_trees / n)
    elif averaged:
        total = total * (n / k)
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


def best_prefix(
    e: Ensemble, contributions: np.ndarray, target: np.ndarray, rounds: int, size: int | None = None
) -> tuple[int, float]:
    """(trees, score) of the best-scoring prefix of at most ``rounds`` boosting rounds
    (``size`` trees each, by default :meth:`Ensemble.round_size`; ties: the longer prefix)."""
    threshold = _threshold(e)
    size = size or e.round_size()
    total = np.zeros(contributions.shape[1:])
    best, best_key = size, (-np.inf, -np.inf)
    for r in range(min(rounds, e.n_trees // size)):
        total += contributions[r * size : (r + 1) * size].sum(axis=0)
        primary, tie = score(e, _aggregate(e, total, (r + 1) * size, averaged=False), target, threshold)
        key = (float(primary), float(tie))
        if key >= best_key:
            best, best_key = (r + 1) * size, key
    return best, best_key[0]


def forest_groups(e: Ensemble) -> list[list[int]]:
    """The units a forest is subset by: single trees, or where every tree scores one class
    and each class has as many (LightGBM's rf, XGBoost's random forests with several classes),
    one tree of each class: the j-th tree of every class, so every class keeps as many trees
    and the n/k rescaling stays right for each."""
    if e.n_outputs < 2:
        return [[i] for i in range(e.n_trees)]
    owners = [np.flatnonzero(t.has_weight.any(axis=0)) for t in e.trees]
    if any(len(o) != 1 for o in owners):
        return [[i] for i in range(e.n_trees)]
    per_class: list[list[int]] = [[] for _ in range(e.n_outputs)]
    for i, o in enumerate(owners):
        per_class[int(o[0])].append(i)
    if len({len(c) for c in per_class}) != 1:
        return [[i] for i in range(e.n_trees)]
    return [sorted(group) for group in zip(*per_class, strict=True)]


def ordered_aggregation(
    e: Ensemble, contributions: np.ndarray, target: np.ndarray, k: int, groups: list[list[int]] | None = None
) -> tuple[list[int], float]:
    """(tree indices, score) of ``k`` trees, or of ``k`` of the ``groups`` of trees, chosen
    greedily: each step adds the one that makes the sub-ensemble score best (accuracy, then
    margin; or squared error)."""
    if groups is not None:
        units = np.stack([contributions[g].sum(axis=0) for g in groups])
        chosen, last = _ordered(e, units, target, k)
        return sorted(i for u in chosen for i in groups[u]), last
    return _ordered(e, contributions, target, k)


def _ordered(e: Ensemble, contributions: np.ndarray, target: np.ndarray, k: int) -> tuple[list[int], float]:
    n = len(contributions)
    threshold = _threshold(e)
    remaining = list(range(n))
    chosen: list[int] = []
    total = np.zeros(contributions.shape[1:])
    last = -np.inf
    for step in range(k):
        keys: list[tuple[float, float, int]] = []
        for start in range(0, len(remaining), GREEDY_BLOCK):
            block = remaining[start : start + GREEDY_BLOCK]
            raw = _aggregate(e, total[None] + contributions[block], step + 1, averaged=True, n=n)
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


def cost_complexity_prune(tree: Tree, visits: np.ndarray, alpha: float) -> Tree:
    """``tree`` pruned by minimal cost-complexity at ``alpha`` (in squared output units
    summed over the samples: the caller scales the spec's alpha); nodes removed.

    Weakest-link pruning collapses the subtree with the smallest
    g(t) = (R(t) - R(T_t)) / (|leaves(T_t)| - 1) while g(t) <= alpha. Its result is the
    smallest subtree minimising R + alpha x leaves (Breiman et al. 1984, sec. 10.2), which
    one bottom-up pass finds: a node becomes a leaf when that costs no more than the best
    its children can do. That is O(nodes) where repeating the weakest link is O(nodes^2),
    and no library prunes an ONNX tree (scikit-learn prunes only while fitting).

    R(t), the sum of squares of the tree's output around its mean over the samples reaching
    t, is merged from the children's (Chan et al.'s parallel update, no cancellation); leaves
    of the tree as given cost 0. Unreached subtrees cost nothing and collapse for any alpha
    (to the plain mean of their leaves, as :func:`prune_tree` does).
    """
    t = copy_tree(tree)
    leaf = t.mode == LEAF
    cov = visits.astype(np.float64)
    weighted = np.where(leaf[:, None], t.value * cov[:, None], 0.0)
    plain = np.where(leaf[:, None], t.value, 0.0)
    leaves = leaf.astype(np.float64)
    has = t.has_weight.copy()
    spread = np.zeros(t.size)  # R(t): the squared change collapsing t makes on its samples
    best = np.where(leaf, alpha, 0.0)  # min over prunings of T_t of R + alpha x leaves
    collapse = np.zeros(t.size, bool)
    for i in range(t.size - 1, -1, -1):  # pre-order reversed: children before parents
        if leaf[i]:
            continue
        a, b = t.true_child[i], t.false_child[i]
        weighted[i] = weighted[a] + weighted[b]
        plain[i] = plain[a] + plain[b]
        leaves[i] = leaves[a] + leaves[b]
        has[i] = has[a] | has[b]
        spread[i] = spread[a] + spread[b]
        if cov[a] > 0 and cov[b] > 0:
            gap = weighted[a] / cov[a] - weighted[b] / cov[b]
            spread[i] += cov[a] * cov[b] / (cov[a] + cov[b]) * float(gap @ gap)
        keep = best[a] + best[b]
        collapse[i] = spread[i] + alpha <= keep  # ties collapse: the smallest minimising subtree
        best[i] = min(spread[i] + alpha, keep)
    for node in np.flatnonzero(collapse).tolist():  # nodes under a collapsed one vanish in compact
        make_leaf(t, node, weighted[node] / cov[node] if cov[node] > 0 else plain[node] / leaves[node], has[node])
    return compact(t)
