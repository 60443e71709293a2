"""Tree compression methods on real scikit-learn ensembles converted with skl2onnx.

Every model is trained here on scikit-learn's bundled data and converted as the tree
loaders do (zipmap off); outputs are compared through onnxruntime, the serving runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.model_selection import train_test_split

from modelpress.api import PruneEnsemble, PruneTrees, Step
from modelpress.jobs import measure
from modelpress.jobs.dataset import Samples
from modelpress.jobs.errors import JobInputError, StepInputError
from modelpress.jobs.methods import MethodData, ModelHandle, SearchContext, get_method
from modelpress.jobs.pipeline import Runner, candidates
from modelpress.jobs.trees import compress
from modelpress.jobs.trees.ensemble import LEAF, MODES, Tree, compact, copy_tree, make_leaf, read, write


def split(loader):
    x, y = loader(return_X_y=True)
    return train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0)


def handle(model, x: np.ndarray) -> ModelHandle:
    options = {"zipmap": False} if hasattr(model, "classes_") else None
    proto = to_onnx(model, x[:1], options=options)
    return ModelHandle([proto.graph.input[0].name], [o.name for o in proto.graph.output], onnx_model=proto)


def data(h: ModelHandle, x: np.ndarray, y: np.ndarray, task: str = "classification") -> MethodData:
    samples = Samples([{h.input_names[0]: row} for row in x], y if task == "classification" else y.astype(np.float32))
    return MethodData(task=task, train=samples, calibration=samples)


def run(h: ModelHandle, x: np.ndarray) -> np.ndarray:
    """The last output: probabilities for classifiers (after the label), values for regressors."""
    session = ort.InferenceSession(h.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {h.input_names[0]: x})[-1]


@pytest.fixture(scope="module")
def cancer():
    return split(load_breast_cancer)


@pytest.fixture(scope="module")
def forest(cancer):
    x, _, y, _ = cancer
    return RandomForestClassifier(n_estimators=40, random_state=0).fit(x, y)


@pytest.fixture(scope="module")
def wine_gbdt():
    x, xt, y, yt = split(load_wine)
    return GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0).fit(x, y), (x, xt, y, yt)


@pytest.mark.parametrize("kind", ["forest", "gbdt", "hgb", "forest-regressor"])
def test_read_then_write_unchanged_gives_identical_outputs(kind, cancer, forest, wine_gbdt):
    x, xt, y, _ = cancer
    if kind == "forest":
        model = forest
    elif kind == "gbdt":
        model, (x, xt, y, _) = wine_gbdt
    elif kind == "hgb":
        model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
    else:
        x, xt, y, _ = split(load_diabetes)
        model = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0).fit(x, y)
    h = handle(model, x)
    ensemble = read(h.proto)
    again = h.with_model(onnx_model=write(h.proto, ensemble))
    session = ort.InferenceSession(h.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    session2 = ort.InferenceSession(again.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for a, b in zip(session.run(None, {"X": xt}), session2.run(None, {"X": xt}), strict=True):
        np.testing.assert_array_equal(a, b)
    # The numpy evaluation the methods select with agrees with onnxruntime's.
    if kind == "forest-regressor":
        np.testing.assert_allclose(ensemble.raw_scores(xt)[:, 0], run(h, xt)[:, 0], rtol=1e-5)


def test_keeping_k_boosting_rounds_equals_sklearn_staged_predict(wine_gbdt):
    model, (x, xt, y, _) = wine_gbdt
    h = handle(model, x)
    result = get_method("pruneEnsemble").apply(h, PruneEnsemble(trees=12, ensemble="boosted"), data(h, x, y))
    changes = result.changes
    # Three classes: one tree per class per round; a prefix keeps whole rounds.
    assert changes["treesPerRound"] == 3 and changes["treesBefore"] == 90
    rounds = changes["treesAfter"] // 3
    assert 1 <= rounds <= 12 and changes["nodesAfter"] < changes["nodesBefore"]
    staged = list(model.staged_predict_proba(xt))[rounds - 1]
    np.testing.assert_allclose(run(result.model, xt), staged, atol=1e-5)
    assert len(read(result.model.proto).trees) == changes["treesAfter"]


def test_keeping_all_trees_is_the_identity(forest, cancer):
    x, xt, y, _ = cancer
    h = handle(forest, x)
    result = get_method("pruneEnsemble").apply(h, PruneEnsemble(fraction=1.0), data(h, x, y))
    assert result.changes["treesAfter"] == result.changes["treesBefore"] == 40
    np.testing.assert_allclose(run(result.model, xt), run(h, xt), atol=1e-6)


def test_forest_ordered_aggregation_keeps_accuracy_with_a_quarter_of_the_trees(forest, cancer):
    x, xt, y, yt = cancer
    h = handle(forest, x)
    result = get_method("pruneEnsemble").apply(h, PruneEnsemble(fraction=0.25), data(h, x, y))
    assert result.changes["ensemble"] == "forest"
    assert result.changes["treesAfter"] == 10 and result.changes["nodesAfter"] < result.changes["nodesBefore"] / 3
    probabilities = run(result.model, xt)
    # The kept trees are rescaled: still an average, probabilities sum to 1.
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    before = np.mean(run(h, xt).argmax(axis=1) == yt)
    assert np.mean(probabilities.argmax(axis=1) == yt) >= before - 0.03
    # The chosen subset equals averaging those sklearn trees by hand.
    kept = compress.ordered_aggregation(read(h.proto), read(h.proto).contributions(x), y, 10)[0]
    by_hand = np.mean([forest.estimators_[i].predict_proba(xt) for i in kept], axis=0)
    np.testing.assert_allclose(probabilities[:, 1], by_hand[:, 1], atol=1e-5)


def test_max_depth_collapses_to_the_coverage_weighted_mean_of_the_training_data():
    """Without bootstrap a tree's internal node value is the mean target of the training
    samples reaching it: exactly the coverage-weighted mean of its leaves on that data."""
    x, xt, y, _ = split(load_diabetes)
    model = RandomForestRegressor(n_estimators=5, bootstrap=False, max_features=0.5, random_state=0).fit(x, y)
    h = handle(model, x)
    result = get_method("pruneTrees").apply(h, PruneTrees(max_depth=3), data(h, x, y, task="regression"))
    assert result.changes["maxDepthAfter"] == 3 and result.changes["nodesAfter"] < result.changes["nodesBefore"] / 10

    def truncated(tree, rows):
        node = np.zeros(len(rows), dtype=np.int64)
        t = tree.tree_
        for _ in range(3):
            split_here = t.children_left[node] >= 0
            left = rows[np.arange(len(rows)), np.maximum(t.feature[node], 0)] <= t.threshold[node]
            node = np.where(split_here, np.where(left, t.children_left[node], t.children_right[node]), node)
        return t.value[node, 0, 0]

    expected = np.mean([truncated(tree, xt) for tree in model.estimators_], axis=0)
    np.testing.assert_allclose(run(result.model, xt)[:, 0], expected, rtol=1e-4)


def test_min_samples_leaf_removes_branches_the_data_barely_reaches(forest, cancer):
    x, xt, y, yt = cancer
    h = handle(forest, x)
    result = get_method("pruneTrees").apply(h, PruneTrees(min_samples_leaf=10), data(h, x, y))
    assert result.changes["nodesAfter"] < result.changes["nodesBefore"] / 2
    # Every node left is reached by at least 10 of the method's samples.
    for tree in read(result.model.proto).trees:
        assert tree.visits(x).min() >= 10
    before = np.mean(run(h, xt).argmax(axis=1) == yt)
    assert np.mean(run(result.model, xt).argmax(axis=1) == yt) >= before - 0.03


def test_leaf_tolerance_bounds_the_change_of_each_tree():
    x, xt, y, _ = split(load_diabetes)
    model = RandomForestRegressor(n_estimators=8, max_depth=8, random_state=0).fit(x, y)
    h = handle(model, x)
    tolerance = 0.1
    result = get_method("pruneTrees").apply(h, PruneTrees(leaf_tolerance=tolerance), data(h, x, y, "regression"))
    assert result.changes["nodesAfter"] < result.changes["nodesBefore"]
    bound = 8 * tolerance * compress.leaf_range(read(h.proto))  # each tree moves by at most its tolerance
    assert np.abs(run(result.model, xt) - run(h, xt)).max() <= bound * (1 + 1e-5)


def test_pruned_nodes_are_physically_removed_and_renumbered(forest, cancer):
    x, _, y, _ = cancer
    h = handle(forest, x)
    result = get_method("pruneTrees").apply(h, PruneTrees(max_depth=2), data(h, x, y))
    node = next(n for n in result.model.proto.graph.node if n.op_type == "TreeEnsembleClassifier")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert len(attrs["nodes_nodeids"]) == result.changes["nodesAfter"] <= 40 * 7
    assert sorted(set(attrs["nodes_treeids"])) == list(range(40))
    per_tree = [
        [n for t, n in zip(attrs["nodes_treeids"], attrs["nodes_nodeids"], strict=True) if t == k] for k in (0, 39)
    ]
    assert all(ids == list(range(len(ids))) for ids in per_tree)
    assert {m.decode() for m in attrs["nodes_modes"]} <= set(MODES)


def test_hist_gradient_boosting_keeps_accuracy_on_held_out_data(cancer):
    x, xt, y, yt = cancer
    model = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x, y)
    h = handle(model, x)
    step = get_method("pruneEnsemble").apply(h, PruneEnsemble(fraction=0.5), data(h, x, y))
    both = get_method("pruneTrees").apply(step.model, PruneTrees(max_depth=4), data(h, x, y))
    assert both.changes["nodesAfter"] < step.changes["nodesBefore"] / 2
    before = np.mean(run(h, xt).argmax(axis=1) == yt)
    assert np.mean(run(both.model, xt).argmax(axis=1) == yt) >= before - 0.03


def test_the_ladders_offer_milder_settings():
    method = get_method("pruneEnsemble")
    fractions = [v.config.fraction for v in method.ladder(PruneEnsemble(fraction=0.3), SearchContext())]
    assert fractions == [0.45, 0.6]
    assert [v.config.trees for v in method.ladder(PruneEnsemble(trees=100), SearchContext())] == [150, 200]
    # All trees would change nothing: fractions stop short of 1.
    assert [v.config.fraction for v in method.ladder(PruneEnsemble(fraction=0.6), SearchContext())] == [0.9]
    trees = get_method("pruneTrees").ladder(
        PruneTrees(max_depth=3, min_samples_leaf=8, leaf_tolerance=0.2), SearchContext()
    )
    assert [(v.config.max_depth, v.config.min_samples_leaf, v.config.leaf_tolerance, v.level) for v in trees] == [
        (4, 4, 0.1, 1),
        (5, 2, 0.05, 2),
    ]


def test_the_search_tries_the_milder_variants(forest, cancer):
    x, xt, y, _ = cancer
    h = handle(forest, x)
    step = Step.model_validate({"pruneEnsemble": {"fraction": 0.25}})
    runner = Runner(h, data(h, x, y), measure.collate_sample(data(h, x, y).train, 4))
    sizes = [runner.apply(c)[1][0]["pruneEnsemble"]["treesAfter"] for c in candidates([step], True, 8)]
    assert sizes == [10, 15, 20]


def mlp_graph() -> ModelHandle:
    """A non-tree ONNX model (one MatMul)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], np.ones(8, np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        [weight],
    )
    return ModelHandle(["input"], ["logits"], onnx_model=helper.make_model(graph))


@pytest.mark.parametrize("step", [{"pruneEnsemble": {"fraction": 0.5}}, {"pruneTrees": {"maxDepth": 3}}])
def test_a_model_without_trees_is_refused_naming_the_step(step):
    h = mlp_graph()
    x = np.ones((4, 4), np.float32)
    method_data = data(h, x, np.zeros(4, np.int64))
    key = next(iter(step))
    with pytest.raises(StepInputError, match="holds no tree ensemble"):
        get_method(key).apply(h, Step.model_validate(step).config, method_data)
    runner = Runner(h, method_data, measure.collate_sample(method_data.train, 2))
    low_rank_first = Step.model_validate({"lowRank": {"energy": 0.9}})
    with pytest.raises(JobInputError) as e:
        runner.apply(candidates([low_rank_first, Step.model_validate(step)], False, 1)[0])
    assert e.value.field == f"compression.steps[1].{key}"
    assert "\n" not in e.value.message


def test_a_malformed_tree_node_is_refused_in_one_line(forest, cancer):
    x, _, y, _ = cancer
    h = handle(forest, x)
    node = next(n for n in h.proto.graph.node if n.op_type == "TreeEnsembleClassifier")
    for a in node.attribute:
        if a.name == "nodes_truenodeids":
            a.ints[0] = 10**9  # a child that does not exist
    with pytest.raises(StepInputError, match="child id that is not a node"):
        get_method("pruneTrees").apply(h, PruneTrees(max_depth=2), data(h, x, y))
    for a in node.attribute:
        if a.name == "nodes_truenodeids":
            a.ints[0] = 0  # the root as its own child: a cycle
    with pytest.raises(StepInputError, match="not a tree|does not reach"):
        get_method("pruneTrees").apply(h, PruneTrees(max_depth=2), data(h, x, y))


def test_a_pipeline_with_a_scaler_before_the_trees_is_pruned_on_what_the_trees_read(cancer):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, xt, y, _ = cancer
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0))
    h = handle(model.fit(x, y), x)
    assert any(n.op_type == "Scaler" for n in h.proto.graph.node)
    result = get_method("pruneEnsemble").apply(h, PruneEnsemble(fraction=1.0), data(h, x, y))
    np.testing.assert_allclose(run(result.model, xt), run(h, xt), atol=1e-6)
    onnx.checker.check_model(result.model.proto)


def test_the_rewrite_leaves_out_zero_weights_and_default_attributes(forest, cancer):
    x, xt, _, _ = cancer
    h = handle(forest, x)
    again = write(h.proto, read(h.proto))
    assert len(again.SerializeToString()) < 0.8 * len(h.proto.SerializeToString())
    node = next(n for n in again.graph.node if n.op_type == "TreeEnsembleClassifier")
    names = {a.name for a in node.attribute}
    assert "nodes_hitrates" not in names and "nodes_missing_value_tracks_true" not in names
    np.testing.assert_array_equal(run(h.with_model(onnx_model=again), xt), run(h, xt))


def test_single_leaf_trees_are_folded_into_the_base_score(cancer):
    x, xt, y, _ = cancer
    model = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x, y)
    h = handle(model, x)
    ensemble = read(h.proto)
    for tree in ensemble.trees[5:15]:  # collapse ten trees to their root by hand...
        make_leaf(tree, 0, np.array([0.05]), np.array([True]))
    unfolded = h.with_model(onnx_model=write(h.proto, ensemble))
    folded = compress.fold_constant_trees(ensemble)
    assert folded.n_trees == 10 and folded.base_values[0] == pytest.approx(ensemble.base_values[0] + 0.5)
    # ... and the model without them computes the same.
    np.testing.assert_allclose(run(h.with_model(onnx_model=write(h.proto, folded)), xt), run(unfolded, xt), atol=1e-6)


def test_a_forest_with_a_base_score_can_be_named_a_forest(cancer):
    x, xt, y, _ = cancer
    model = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x, y)
    h = handle(model, x)
    result = get_method("pruneEnsemble").apply(h, PruneEnsemble(trees=10, ensemble="forest"), data(h, x, y))
    # Selected as a subset, rescaled by 20/10 around the base score: not a prefix.
    assert result.changes["ensemble"] == "forest" and result.changes["treesAfter"] == 10
    kept = read(result.model.proto)
    source = read(h.proto)
    assert kept.base_values == pytest.approx(source.base_values)
    totals = [t.value[t.is_leaf].sum() for t in kept.trees]
    assert any(np.isclose(2 * s.value[s.is_leaf].sum(), totals).any() for s in source.trees)


def test_auto_tells_boosting_without_a_base_score_from_a_forest_on_data():
    """Both write SUM, no base score, no link (LightGBM regressors look the same):
    the first half of the trees reproduces the whole only under the right reading."""
    x, xt, y, _ = split(load_diabetes)
    boosted = GradientBoostingRegressor(n_estimators=30, max_depth=2, init="zero", random_state=0).fit(x, y)
    h = handle(boosted, x)
    assert read(h.proto).could_average()
    result = get_method("pruneEnsemble").apply(h, PruneEnsemble(trees=10), data(h, x, y, "regression"))
    assert result.changes["ensemble"] == "boosted"
    staged = list(boosted.staged_predict(xt))[result.changes["treesAfter"] - 1]
    np.testing.assert_allclose(run(result.model, xt)[:, 0], staged, rtol=1e-4)
    forest = RandomForestRegressor(n_estimators=20, max_depth=4, random_state=0).fit(x, y)
    h = handle(forest, x)
    result = get_method("pruneEnsemble").apply(h, PruneEnsemble(trees=10), data(h, x, y, "regression"))
    assert result.changes["ensemble"] == "forest"


# --------------------------------------------------------------------------- cost-complexity pruning


@pytest.fixture(scope="module")
def cancer_hgb(cancer):
    x, _, y, _ = cancer
    return HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x, y)


def hand_tree() -> tuple[Tree, np.ndarray]:
    """A regression tree in pre-order and how many samples reach each node::

    0 (30) ─┬─ 1 (10) ─┬─ 2: 1.0 (5)
            │          └─ 3: 1.5 (5)
            └─ 4 (20) ─┬─ 5 (10) ─┬─ 6: 5.0 (5)
                       │          └─ 7: 5.6 (5)
                       └─ 8: 5.4 (10)
    """
    leaf, split = LEAF, MODES.index("BRANCH_LEQ")
    mode = np.array([split, split, leaf, leaf, split, split, leaf, leaf, leaf], np.int8)
    true_child = np.array([1, 2, -1, -1, 5, 6, -1, -1, -1])
    false_child = np.array([4, 3, -1, -1, 8, 7, -1, -1, -1])
    value = np.array([0, 0, 1.0, 1.5, 0, 0, 5.0, 5.6, 5.4])[:, None]
    tree = Tree(
        np.array([0, 1, 0, 0, 1, 2, 0, 0, 0]),
        np.full(9, 0.5, np.float32),
        mode,
        true_child,
        false_child,
        np.zeros(9, bool),
        np.ones(9, np.float32),
        value,
        mode[:, None] == leaf,
    )
    return tree, np.array([30, 10, 5, 5, 20, 10, 5, 5, 10])


def test_cost_complexity_collapses_the_weakest_link_a_hand_calculation_names():
    """g(t) = (R(t) - R(T_t)) / (leaves - 1), R the squared change of the output on t's samples:
    node 1: 5·0.25² + 5·0.25² = 0.625 over 1 leaf removed: g = 0.625;
    node 5: 5·0.3² + 5·0.3² = 0.9: g = 0.9;
    node 4: mean 5.35; 5·0.35² + 5·0.25² + 10·0.05² = 0.95 over 2 leaves: g = 0.475, the weakest
    link although it changes the output most and node 5 alone is dearer than node 1."""
    tree, visits = hand_tree()
    assert compress.cost_complexity_prune(tree, visits, 0.47).size == 9
    pruned = compress.cost_complexity_prune(tree, visits, 0.48)
    assert pruned.size == 5  # node 4 is one leaf; node 1 (g 0.625) stays
    assert pruned.value[pruned.is_leaf, 0].tolist() == pytest.approx([1.0, 1.5, 5.35])
    # Next: node 1 (0.625), then the root ((113.645... - 0.625 - 0.95) / 1).
    assert compress.cost_complexity_prune(tree, visits, 0.63).value[:, 0].tolist() == pytest.approx([0, 1.25, 5.35])
    assert compress.cost_complexity_prune(tree, visits, 112.0).size == 3
    root = compress.cost_complexity_prune(tree, visits, 112.1)
    assert root.size == 1 and root.value[0, 0] == pytest.approx((5 + 7.5 + 25 + 28 + 54) / 30)


def reach(tree: Tree, x: np.ndarray) -> np.ndarray:
    """Which rows reach each node [nodes, N] (skl2onnx writes only BRANCH_LEQ)."""
    assert set(tree.mode[~tree.is_leaf]) == {MODES.index("BRANCH_LEQ")}
    out = np.zeros((tree.size, len(x)), bool)
    out[0] = True
    for i in np.flatnonzero(~tree.is_leaf):  # pre-order: parents first
        go = x[:, tree.feature[i]] <= tree.threshold[i]
        out[tree.true_child[i]], out[tree.false_child[i]] = out[i] & go, out[i] & ~go
    return out


def weakest_link_by_hand(tree: Tree, x: np.ndarray, alpha: float) -> Tree:
    """Breiman's loop, literally: collapse the subtree with the smallest g while g <= alpha."""
    target = tree.contribution(x)
    t = copy_tree(tree)
    while True:
        rows, now = reach(t, x), t.contribution(x)
        links = []
        for i in np.flatnonzero(~t.is_leaf):
            mean = target[rows[i]].mean(axis=0) if rows[i].any() else np.zeros(target.shape[1])
            cost = ((target[rows[i]] - mean) ** 2).sum() - ((target[rows[i]] - now[rows[i]]) ** 2).sum()
            leaves = compact(t, int(i)).is_leaf.sum()
            links.append((cost / (leaves - 1), int(i), mean))
        if not links or min(links, key=lambda g: g[0])[0] > alpha:
            return t
        _, i, mean = min(links, key=lambda g: g[0])
        make_leaf(t, i, mean, np.ones(target.shape[1], bool))
        t = compact(t)


def test_cost_complexity_equals_repeating_the_weakest_link():
    x, _, y, _ = split(load_diabetes)
    model = GradientBoostingRegressor(n_estimators=3, max_depth=5, random_state=0).fit(x, y)
    ensemble = read(handle(model, x).proto)
    scale = len(x) * compress.leaf_range(ensemble) ** 2
    for tree in ensemble.trees:
        for alpha in (1e-4, 1e-3, 1e-2):
            fast = compress.cost_complexity_prune(tree, tree.visits(x), alpha * scale)
            slow = weakest_link_by_hand(tree, x, alpha * scale)
            assert fast.size == slow.size < tree.size
            np.testing.assert_allclose(fast.contribution(x), slow.contribution(x), rtol=1e-9)
            # Each collapse costs at most alpha per leaf removed: so does the whole pruning.
            change = ((fast.contribution(x) - tree.contribution(x)) ** 2).sum()
            assert change <= alpha * scale * (tree.is_leaf.sum() - fast.is_leaf.sum()) * (1 + 1e-9)


def test_cost_complexity_zero_is_the_identity(cancer_hgb, cancer):
    x, xt, y, _ = cancer
    h = handle(cancer_hgb, x)
    result = get_method("pruneTrees").apply(h, PruneTrees(cost_complexity=0.0), data(h, x, y))
    assert result.changes["nodesAfter"] == result.changes["nodesBefore"]
    np.testing.assert_array_equal(run(result.model, xt), run(h, xt))


def test_a_larger_cost_complexity_removes_more(cancer_hgb, cancer):
    x, _, y, _ = cancer
    h = handle(cancer_hgb, x)
    method = get_method("pruneTrees")
    nodes = [
        method.apply(h, PruneTrees(cost_complexity=a), data(h, x, y)).changes["nodesAfter"]
        for a in (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    ]
    assert nodes == sorted(nodes, reverse=True) and nodes[0] > nodes[1] and nodes[-1] < nodes[0] / 20
    # The largest alpha leaves every tree a single leaf (one output: no subtree changes it by more).
    every = method.apply(h, PruneTrees(cost_complexity=1.0), data(h, x, y)).changes
    assert every["nodesAfter"] == every["treesAfter"] == every["leavesAfter"]


@pytest.mark.parametrize("kind", ["forest", "hgb"])
def test_a_moderate_cost_complexity_keeps_held_out_accuracy(kind, forest, cancer_hgb, cancer):
    x, xt, y, yt = cancer
    h = handle(forest if kind == "forest" else cancer_hgb, x)
    result = get_method("pruneTrees").apply(h, PruneTrees(cost_complexity=0.003), data(h, x, y))
    assert result.changes["nodesAfter"] < result.changes["nodesBefore"] * (0.7 if kind == "forest" else 0.35)
    before = np.mean(run(h, xt).argmax(axis=1) == yt)
    assert np.mean(run(result.model, xt).argmax(axis=1) == yt) >= before - 0.02


def test_cost_complexity_runs_after_the_other_options_and_has_a_milder_ladder(cancer_hgb, cancer):
    x, _, y, _ = cancer
    h = handle(cancer_hgb, x)
    method = get_method("pruneTrees")
    depth = method.apply(h, PruneTrees(max_depth=3), data(h, x, y)).changes
    both = method.apply(h, PruneTrees(max_depth=3, cost_complexity=1e-3), data(h, x, y)).changes
    assert both["maxDepthAfter"] <= 3 and both["nodesAfter"] < depth["nodesAfter"]
    ladder = method.ladder(PruneTrees(cost_complexity=0.004), SearchContext())
    assert [(v.config.cost_complexity, v.level) for v in ladder] == [(0.002, 1), (0.001, 2)]
    assert method.ladder(PruneTrees(cost_complexity=0.0), SearchContext()) == []
