"""An ONNX ``ai.onnx.ml`` TreeEnsembleClassifier/TreeEnsembleRegressor node as per-tree arrays.

What the tree compression methods work on: :func:`read` turns the node's flat attribute
lists (``nodes_*``, ``class_*``/``target_*``) into one :class:`Tree` per tree, the methods
evaluate trees here in numpy where they need per-tree contributions or per-node coverage
(:meth:`Tree.leaf_index`, :meth:`Tree.visits`), and :func:`write` puts a smaller ensemble
back: removed trees and nodes are physically gone, trees and nodes renumbered (each tree in
pre-order from its root), every other attribute of the node kept as it was.

Hand-written because no library edits these nodes: onnxmltools and skl2onnx only build
them from fitted models, and hummingbird compiles them to tensors (other operators).

The node's attributes are untrusted (the model is user input): every id is checked to
name a node of its own tree, trees must be trees (no shared or cyclic children), and
their depth is bounded, so evaluation and rewriting cannot loop or index out of range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

ML_DOMAIN = "ai.onnx.ml"
TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
# Deeper trees are refused: evaluation and rewriting walk one level at a time. scikit-learn
# forests grown without max_depth on large data reach ~60 levels.
MAX_DEPTH = 512
# Nodes x outputs held as float64 leaf values (plus a bool mask): ~0.5 GB at most. A
# 5-million-node (Limits.maxTreeNodes) model fits with up to 10 classes.
MAX_VALUE_CELLS = 50_000_000
MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ", "LEAF")
LEAF = MODES.index("LEAF")


class NotATreeEnsemble(ValueError):
    """The model holds no tree ensemble these methods can edit (or more than one)."""


@dataclass
class Tree:
    """One tree; node ``i`` of every array is the same node, node 0 is the root.

    ``true_child``/``false_child`` are node indices (-1 on leaves). ``value`` holds the
    leaf weights per output (class or target), ``has_weight`` which of them the source
    listed: written back as listed, so e.g. a multi-class GBDT tree stays one-class.
    """

    feature: np.ndarray  # int64 [n]
    threshold: np.ndarray  # [n], the dtype of the node's values attribute
    mode: np.ndarray  # int8 [n], index into MODES
    true_child: np.ndarray  # int64 [n]
    false_child: np.ndarray  # int64 [n]
    missing_true: np.ndarray  # bool [n]
    hitrate: np.ndarray  # float32 [n]
    value: np.ndarray  # float64 [n, n_outputs]
    has_weight: np.ndarray  # bool [n, n_outputs]

    @property
    def size(self) -> int:
        return len(self.feature)

    @property
    def is_leaf(self) -> np.ndarray:
        return self.mode == LEAF

    def _go_true(self, x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Which rows take the true branch, as onnxruntime decides it (NaN: ``missing_true``)."""
        thr, mode = self.threshold[nodes], self.mode[nodes]
        with np.errstate(invalid="ignore"):
            go = np.select(
                [mode == k for k in range(6)], [x <= thr, x < thr, x >= thr, x > thr, x == thr, x != thr], False
            )
        return go | (np.isnan(x) & self.missing_true[nodes])

    def _walk(self, x: np.ndarray, visits: np.ndarray | None = None) -> np.ndarray:
        idx = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        x = x.astype(self.threshold.dtype, copy=False)  # compare as onnxruntime does (float32 features)
        for _ in range(MAX_DEPTH + 1):
            if visits is not None:
                np.add.at(visits, idx[rows], 1)
            rows = rows[~self.is_leaf[idx[rows]]]
            if not len(rows):
                break
            nodes = idx[rows]
            go = self._go_true(x[rows, self.feature[nodes]], nodes)
            idx[rows] = np.where(go, self.true_child[nodes], self.false_child[nodes])
        return idx

    def leaf_index(self, x: np.ndarray) -> np.ndarray:
        """The leaf each row of ``x`` [N, n_features] lands in."""
        return self._walk(x)

    def visits(self, x: np.ndarray) -> np.ndarray:
        """How many rows of ``x`` pass through each node (the coverage pruning weighs by)."""
        counts = np.zeros(self.size, dtype=np.int64)
        self._walk(x, counts)
        return counts

    def contribution(self, x: np.ndarray) -> np.ndarray:
        """This tree's leaf weights for each row [N, n_outputs] (float64)."""
        return self.value[self.leaf_index(x)]

    def depth(self) -> int:
        return int(_depths(self).max())


@dataclass
class Ensemble:
    """The tree node's trees plus what the node does with their sum."""

    op: str  # TreeEnsembleClassifier or TreeEnsembleRegressor
    trees: list[Tree]
    n_outputs: int
    base_values: np.ndarray | None  # float64 [n_outputs] or None
    post_transform: str
    aggregate: str  # SUM, AVERAGE, MIN or MAX (classifiers always SUM)
    weights_prefix: str = "class"  # "class" for classifiers, "target" for regressors

    @property
    def n_trees(self) -> int:
        return len(self.trees)

    @property
    def n_nodes(self) -> int:
        return sum(t.size for t in self.trees)

    def could_average(self) -> bool:
        """Whether the trees may be a forest (averaged) rather than boosted: AVERAGE says so
        outright; skl2onnx writes forests as SUM with each leaf divided by the number of
        trees, no base score and no link function. Boosting without a base score or link
        looks the same (LightGBM regressors fold their start value into the first tree):
        :func:`modelpress.jobs.trees.compress.averages` decides those on data."""
        if self.aggregate == "AVERAGE":
            return True
        no_base = self.base_values is None or not np.any(self.base_values)
        return self.aggregate == "SUM" and self.post_transform == "NONE" and no_base

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Every tree's leaf weights per row: [n_trees, N, n_outputs] (float64)."""
        return np.stack([t.contribution(x) for t in self.trees]) if self.trees else np.zeros((0, len(x), 1))

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """The aggregated score before ``post_transform`` [N, n_outputs] (SUM/AVERAGE only)."""
        total = self.contributions(x).sum(axis=0)
        if self.aggregate == "AVERAGE":
            total = total / max(1, self.n_trees)
        return total + (0.0 if self.base_values is None else self.base_values)

    def round_size(self) -> int:
        """Trees per boosting round: multi-class boosting (scikit-learn, XGBoost, LightGBM)
        grows one tree per class each round, tree ``i`` scoring class ``i % classes``; a
        prefix of the ensemble is only a model of fewer rounds in whole rounds. 1 otherwise."""
        c = self.n_outputs
        if c < 2 or self.n_trees % c:
            return 1
        for i, t in enumerate(self.trees):
            if not (t.has_weight.any(axis=0) == (np.arange(c) == i % c)).all():
                return 1
        return c

    def counts(self) -> dict[str, int]:
        return {"trees": self.n_trees, "nodes": self.n_nodes}

    def check_features(self, n_features: int) -> None:
        """Refuse an ensemble that reads a feature the data does not have (ValueError)."""
        used = max(int(t.feature[~t.is_leaf].max(initial=-1)) for t in self.trees) + 1
        if used > n_features:
            raise ValueError(f"the trees read feature {used - 1} but the data has {n_features} features")


# --------------------------------------------------------------------------- what the source said

# metadata_props the tree loaders write (convert.py) from what the model's library says:
# whether the trees are a forest (averaged: any subset is a smaller model) or boosted
# (sequential: only a prefix is), and for boosting how many trees one round grows (one
# per class; times num_parallel_tree for XGBoost's boosted forests), with the number of
# trees it was said of: a later step that drops trees (folding one-leaf trees) leaves rounds
# that are no longer whole, and the count no longer matches. The tree node alone cannot
# always tell (a forest with a base score and a link looks boosted).
ENSEMBLE_KEY = "modelpress.ensemble"
ROUND_KEY = "modelpress.treesPerRound"
TREES_KEY = "modelpress.trees"
ENSEMBLE_KINDS = ("forest", "boosted")


def mark(model: onnx.ModelProto, kind: str, trees_per_round: int = 1) -> None:
    """Record what kind of ensemble ``model``'s tree node holds (replacing what it said before)."""
    assert kind in ENSEMBLE_KINDS
    props = {p.key: p.value for p in model.metadata_props if p.key not in (ENSEMBLE_KEY, ROUND_KEY, TREES_KEY)}
    props[ENSEMBLE_KEY] = kind
    if kind == "boosted" and trees_per_round > 1:
        tree_ids = next(a.ints for a in model.graph.node[find_node(model)].attribute if a.name == "nodes_treeids")
        props[ROUND_KEY] = str(trees_per_round)
        props[TREES_KEY] = str(len(set(tree_ids)))
    onnx.helper.set_model_props(model, props)


def declared(model: onnx.ModelProto, n_trees: int) -> tuple[str | None, int | None]:
    """(kind, trees per round) as the model's metadata says, each None where it says
    nothing usable. An ONNX source's metadata is the user's: a kind other than the two,
    or a round size said of another number of trees or that does not divide them, is
    ignored (inferred instead)."""
    props = {p.key: p.value for p in model.metadata_props}
    kind = props.get(ENSEMBLE_KEY)
    size = int(props[ROUND_KEY]) if re.fullmatch(r"[0-9]{1,9}", props.get(ROUND_KEY, "")) else 0
    whole = props.get(TREES_KEY) == str(n_trees) and 0 < size <= n_trees and n_trees % size == 0
    return (kind if kind in ENSEMBLE_KINDS else None), (size if whole else None)


# --------------------------------------------------------------------------- read


def find_node(model: onnx.ModelProto) -> int:
    """The index of the graph's one tree ensemble node (NotATreeEnsemble otherwise)."""
    found = [i for i, n in enumerate(model.graph.node) if n.domain == ML_DOMAIN and n.op_type in TREE_OPS]
    if len(found) == 1:
        return found[0]
    if found:
        raise NotATreeEnsemble(f"the model has {len(found)} tree ensemble nodes; tree methods edit a model with one")
    if any(n.domain == ML_DOMAIN and n.op_type == "TreeEnsemble" for n in model.graph.node):
        raise NotATreeEnsemble(
            "the model uses ai.onnx.ml TreeEnsemble (opset 5), not yet supported; convert it with "
            "TreeEnsembleClassifier/TreeEnsembleRegressor (ai.onnx.ml opset 1-3, the skl2onnx/onnxmltools default)"
        )
    raise NotATreeEnsemble(
        "the model holds no tree ensemble (ai.onnx.ml TreeEnsembleClassifier/TreeEnsembleRegressor node)"
    )


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    return out


def _floats(attrs: dict[str, Any], name: str) -> np.ndarray | None:
    """A float attribute given as a list (``name``) or a tensor (``name_as_tensor``; :func:`write` keeps the form)."""
    if f"{name}_as_tensor" in attrs:
        return np.asarray(attrs[f"{name}_as_tensor"]).reshape(-1)
    if name in attrs:
        return np.asarray(attrs[name], dtype=np.float32)
    return None


def read(model: onnx.ModelProto) -> Ensemble:
    """The graph's tree ensemble as :class:`Tree` arrays (NotATreeEnsemble / ValueError when malformed)."""
    node = model.graph.node[find_node(model)]
    attrs = _attrs(node)
    classifier = node.op_type == "TreeEnsembleClassifier"
    prefix = "class" if classifier else "target"

    tree_ids = np.asarray(attrs.get("nodes_treeids", []), dtype=np.int64)
    n = len(tree_ids)
    node_ids = np.asarray(attrs.get("nodes_nodeids", []), dtype=np.int64)
    features = np.asarray(attrs.get("nodes_featureids", []), dtype=np.int64)
    modes_raw = [m.decode() if isinstance(m, bytes) else str(m) for m in attrs.get("nodes_modes", [])]
    trues = np.asarray(attrs.get("nodes_truenodeids", []), dtype=np.int64)
    falses = np.asarray(attrs.get("nodes_falsenodeids", []), dtype=np.int64)
    values = _floats(attrs, "nodes_values")
    values = np.zeros(n, np.float32) if values is None else values
    missing = np.asarray(attrs.get("nodes_missing_value_tracks_true", [0] * n), dtype=np.int64)
    hitrates = _floats(attrs, "nodes_hitrates")
    hitrates = np.ones(n, np.float32) if hitrates is None else hitrates
    lengths = {len(a) for a in (node_ids, features, modes_raw, trues, falses, values, missing, hitrates)}
    if n == 0 or lengths != {n}:
        raise ValueError(f"{node.op_type} node {node.name!r}: the nodes_* attributes differ in length or are empty")
    unknown = sorted(set(modes_raw) - set(MODES))
    if unknown:
        raise ValueError(f"{node.op_type}: unsupported node mode {unknown[0][:40]!r}")
    modes = np.array([MODES.index(m) for m in modes_raw], dtype=np.int8)

    w_trees = np.asarray(attrs.get(f"{prefix}_treeids", []), dtype=np.int64)
    w_nodes = np.asarray(attrs.get(f"{prefix}_nodeids", []), dtype=np.int64)
    w_ids = np.asarray(attrs.get(f"{prefix}_ids", []), dtype=np.int64)
    weights = _floats(attrs, f"{prefix}_weights")
    weights = np.zeros(0, np.float32) if weights is None else weights
    if not len(w_ids) == len(w_trees) == len(w_nodes) == len(weights):
        raise ValueError(f"{node.op_type}: the {prefix}_* attributes differ in length")
    if len(w_ids) and w_ids.min() < 0:
        raise ValueError(f"{node.op_type}: negative {prefix}_ids")
    if classifier:
        labels = attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or []
        n_outputs = max(int(w_ids.max()) + 1 if len(w_ids) else 1, 1)
        if len(labels) and n_outputs > len(labels):
            raise ValueError(f"{node.op_type}: class_ids name {n_outputs} classes but the node has {len(labels)}")
    else:
        n_outputs = int(attrs.get("n_targets", 1))
        if len(w_ids) and w_ids.max() >= n_outputs:
            raise ValueError(f"{node.op_type}: target_ids go up to {w_ids.max()} but n_targets is {n_outputs}")
    if not 1 <= n_outputs <= 100_000:
        raise ValueError(f"{node.op_type}: {n_outputs} outputs is out of range")
    if n * n_outputs > MAX_VALUE_CELLS:
        raise ValueError(
            f"{node.op_type}: {n} nodes x {n_outputs} outputs is more than the {MAX_VALUE_CELLS} leaf values "
            "the tree methods hold in memory"
        )
    if features.min() < 0:
        raise ValueError(f"{node.op_type}: negative nodes_featureids")

    base = _floats(attrs, "base_values")
    base = None if base is None or not len(base) else base.astype(np.float64)
    if base is not None and len(base) != n_outputs:
        raise ValueError(f"{node.op_type}: {len(base)} base_values for {n_outputs} outputs")
    post = attrs.get("post_transform", b"NONE")
    post = post.decode() if isinstance(post, bytes) else str(post)
    aggregate = attrs.get("aggregate_function", b"SUM")
    aggregate = aggregate.decode() if isinstance(aggregate, bytes) else str(aggregate)

    trees: list[Tree] = []
    order = np.argsort(tree_ids, kind="stable")
    bounds = np.flatnonzero(np.diff(tree_ids[order])) + 1
    w_order = np.argsort(w_trees, kind="stable")
    w_groups = dict(zip(*_groups(w_trees[w_order]), strict=True))
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, n], strict=True):
        rows = order[start:stop]
        tid = int(tree_ids[rows[0]])
        ids = node_ids[rows]
        sorter = np.argsort(ids, kind="stable")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"{node.op_type}: tree {tid} repeats a node id")

        def local(wanted: np.ndarray, ids: np.ndarray = ids, sorter: np.ndarray = sorter) -> np.ndarray:
            """Node ids of this tree -> their index in ``rows`` (-2 where no node has the id)."""
            pos = np.minimum(np.searchsorted(ids, wanted, sorter=sorter), len(ids) - 1)
            return np.where(ids[sorter[pos]] == wanted, sorter[pos], -2)

        leaf = modes[rows] == LEAF
        true_child = np.where(leaf, -1, local(trues[rows]))
        false_child = np.where(leaf, -1, local(falses[rows]))
        if (true_child == -2).any() or (false_child == -2).any():
            raise ValueError(f"{node.op_type}: tree {tid} has a child id that is not a node of the tree")
        value = np.zeros((len(rows), n_outputs), np.float64)
        has_weight = np.zeros((len(rows), n_outputs), bool)
        lo, hi = w_groups.get(tid, (0, 0))
        mine = w_order[lo:hi]
        at = local(w_nodes[mine])
        if (at == -2).any() or not leaf[np.maximum(at, 0)].all():
            raise ValueError(f"{node.op_type}: a {prefix} weight of tree {tid} names a node that is not a leaf")
        np.add.at(value, (at, w_ids[mine]), weights[mine].astype(np.float64))
        has_weight[at, w_ids[mine]] = True
        tree = Tree(
            features[rows],
            values[rows],
            modes[rows],
            true_child,
            false_child,
            missing[rows] != 0,
            hitrates[rows].astype(np.float32),
            value,
            has_weight,
        )
        trees.append(_rooted(tree, tid, node.op_type))
    return Ensemble(node.op_type, trees, n_outputs, base, post, aggregate, prefix)


def _groups(sorted_ids: np.ndarray) -> tuple[list[int], list[tuple[int, int]]]:
    """(id, (start, stop)) runs of a sorted id array."""
    if not len(sorted_ids):
        return [], []
    cuts = np.flatnonzero(np.diff(sorted_ids)) + 1
    starts, stops = np.r_[0, cuts], np.r_[cuts, len(sorted_ids)]
    return [int(sorted_ids[s]) for s in starts], [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def _rooted(tree: Tree, tid: int, op: str) -> Tree:
    """``tree`` checked to be one tree (one root, every node reached once, depth bounded),
    reordered in pre-order so that node 0 is the root."""
    children = np.r_[tree.true_child, tree.false_child]
    children = children[children >= 0]
    is_child = np.zeros(tree.size, bool)
    is_child[children] = True
    roots = np.flatnonzero(~is_child)
    if len(roots) != 1 or len(children) != tree.size - 1 or len(np.unique(children)) != len(children):
        raise ValueError(f"{op}: tree {tid} is not a tree (its nodes do not hang from one root exactly once)")
    order = _preorder(tree, int(roots[0]))
    if len(order) != tree.size:
        raise ValueError(f"{op}: tree {tid} has nodes its root does not reach")
    out = _take(tree, order)
    if _depths(out).max() > MAX_DEPTH:
        raise ValueError(f"{op}: tree {tid} is deeper than {MAX_DEPTH} levels")
    return out


def _preorder(tree: Tree, root: int = 0) -> list[int]:
    order: list[int] = []
    stack = [root]
    while stack and len(order) <= tree.size:  # the bound stops a cycle in an unchecked tree
        i = stack.pop()
        order.append(i)
        if tree.mode[i] != LEAF:
            stack.extend((int(tree.false_child[i]), int(tree.true_child[i])))
    return order


def _take(tree: Tree, order: list[int]) -> Tree:
    """The nodes ``order`` (reachable ones, root first) renumbered 0..m-1."""
    idx = np.asarray(order, dtype=np.int64)
    new = np.full(tree.size, -1, np.int64)
    new[idx] = np.arange(len(idx))

    def remap(children: np.ndarray) -> np.ndarray:
        return np.where(children >= 0, new[np.maximum(children, 0)], -1)

    return Tree(
        tree.feature[idx],
        tree.threshold[idx],
        tree.mode[idx],
        remap(tree.true_child[idx]),
        remap(tree.false_child[idx]),
        tree.missing_true[idx],
        tree.hitrate[idx],
        tree.value[idx],
        tree.has_weight[idx],
    )


def _depths(tree: Tree) -> np.ndarray:
    """Each node's depth (root 0) of a tree in pre-order (parents before children)."""
    depth = np.zeros(tree.size, np.int64)
    for i in range(tree.size):
        if tree.mode[i] != LEAF:
            depth[tree.true_child[i]] = depth[tree.false_child[i]] = depth[i] + 1
    return depth


def compact(tree: Tree, root: int = 0) -> Tree:
    """``tree`` without the nodes ``root`` does not reach (after splits became leaves),
    renumbered in pre-order from ``root``."""
    return _take(tree, _preorder(tree, root))


def make_leaf(tree: Tree, i: int, value: np.ndarray, has_weight: np.ndarray) -> None:
    """Turn node ``i`` into a leaf in place (its subtree becomes unreachable: :func:`compact`)."""
    tree.mode[i] = LEAF
    tree.true_child[i] = tree.false_child[i] = -1
    tree.feature[i] = 0
    tree.threshold[i] = 0
    tree.value[i] = value
    tree.has_weight[i] = has_weight


def copy_tree(tree: Tree) -> Tree:
    return replace(tree, **{f: getattr(tree, f).copy() for f in tree.__dataclass_fields__})


# --------------------------------------------------------------------------- write


def write(model: onnx.ModelProto, ensemble: Ensemble) -> onnx.ModelProto:
    """A copy of ``model`` with its tree node replaced by ``ensemble`` (renumbered: trees
    0..T-1 in list order, each tree's nodes 0..m-1 in pre-order).

    Written lean, without changing any output: zero leaf weights are left out where adding
    zero is what they do (SUM/AVERAGE, and every class or target listed before still is:
    onnxruntime treats a two-class model listing one class as binary), and so are hit
    rates that are all 1 and missing-value flags that are all 0 (both optional). A
    scikit-learn forest's leaves list every class, mostly as zeros: most of its bytes.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = find_node(out)
    old = out.graph.node[index]
    e = ensemble
    trees = [compact(t) for t in e.trees]
    if not trees:
        raise ValueError("an ensemble needs at least one tree")
    tree_ids = np.concatenate([np.full(t.size, k, np.int64) for k, t in enumerate(trees)])
    node_ids = np.concatenate([np.arange(t.size, dtype=np.int64) for t in trees])
    cat = {name: np.concatenate([getattr(t, name) for t in trees]) for name in Tree.__dataclass_fields__}
    leaf = cat["mode"] == LEAF
    listed = [t.has_weight for t in trees]
    if e.aggregate in ("SUM", "AVERAGE"):
        nonzero = [t.has_weight & (t.value != 0) for t in trees]
        if set(np.flatnonzero(np.any([m.any(axis=0) for m in nonzero], axis=0))) == set(
            np.flatnonzero(np.any([m.any(axis=0) for m in listed], axis=0))
        ):
            listed = nonzero
    w_tree, w_node, w_id = [], [], []
    for k, mask in enumerate(listed):
        nodes, ids = np.nonzero(mask)
        w_tree.append(np.full(len(nodes), k, np.int64))
        w_node.append(nodes.astype(np.int64))
        w_id.append(ids.astype(np.int64))
    weights = np.concatenate([t.value[mask] for t, mask in zip(trees, listed, strict=True)])
    new: dict[str, Any] = {
        "nodes_treeids": tree_ids,
        "nodes_nodeids": node_ids,
        "nodes_featureids": np.where(leaf, 0, cat["feature"]),
        "nodes_modes": [MODES[m] for m in cat["mode"]],
        "nodes_truenodeids": np.where(leaf, 0, cat["true_child"]),
        "nodes_falsenodeids": np.where(leaf, 0, cat["false_child"]),
        "nodes_values": np.where(leaf, 0, cat["threshold"]).astype(cat["threshold"].dtype),
        "nodes_missing_value_tracks_true": cat["missing_true"].astype(np.int64),
        "nodes_hitrates": cat["hitrate"],
        f"{e.weights_prefix}_treeids": np.concatenate(w_tree),
        f"{e.weights_prefix}_nodeids": np.concatenate(w_node),
        f"{e.weights_prefix}_ids": np.concatenate(w_id),
        f"{e.weights_prefix}_weights": weights,
        **({} if e.base_values is None else {"base_values": e.base_values}),
    }
    defaults = {
        "nodes_hitrates": bool((cat["hitrate"] == 1).all()),
        "nodes_missing_value_tracks_true": not cat["missing_true"].any(),
    }
    present = {a.name for a in old.attribute}
    attributes = []
    for a in old.attribute:
        name = a.name.removesuffix("_as_tensor")
        if name not in new:
            attributes.append(a)
            continue
        if defaults.get(name):
            continue
        value = new[name]
        if a.name.endswith("_as_tensor"):
            source_dtype = numpy_helper.to_array(a.t).dtype
            attributes.append(helper.make_attribute(a.name, numpy_helper.from_array(value.astype(source_dtype))))
        elif name in ("nodes_values", "nodes_hitrates", "base_values", f"{e.weights_prefix}_weights"):
            attributes.append(helper.make_attribute(a.name, [float(v) for v in value]))
        elif name == "nodes_modes":
            attributes.append(helper.make_attribute(a.name, value))
        else:
            attributes.append(helper.make_attribute(a.name, [int(v) for v in value]))
    missing = {"nodes_treeids", "nodes_nodeids", "nodes_modes"} - present
    if missing:
        raise ValueError(f"the tree node lacks {sorted(missing)}")
    del old.attribute[:]
    old.attribute.extend(attributes)
    onnx.checker.check_model(out)
    return out


# --------------------------------------------------------------------------- data


def tree_input(model: onnx.ModelProto, samples: Any, limit: int) -> np.ndarray:
    """What the tree node reads for the first ``limit`` samples, [N, n_features] float32.

    Usually that is the graph's input itself; when nodes run before the trees (a scaler,
    an imputer, a Cast in a converted pipeline), onnxruntime computes the node's input.
    """
    node = model.graph.node[find_node(model)]
    rows = samples.features[:limit]
    if not rows:
        raise ValueError("the method's data has no samples")
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in initializers]
    feed = {name: np.stack([np.asarray(r[name]) for r in rows]) for name in graph_inputs}
    if node.input[0] in feed:
        x = feed[node.input[0]]
    else:
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.append(helper.make_empty_tensor_value_info(node.input[0]))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i.type for i in session.get_inputs()}
        x = session.run([node.input[0]], {k: v.astype(_ORT_TYPES.get(inputs[k], v.dtype)) for k, v in feed.items()})[0]
    return np.asarray(x, dtype=np.float32).reshape(len(rows), -1)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}
