"""The search owns no method knowledge: each method declares its search space, and the
choice among equally good candidates is the same on every run of a spec.

A method defined here (stochastic rounding of MatMul/Gemm weights, with a ladder and node
ranking) runs through ``candidates()`` and ``Runner`` without a line of pipeline code
knowing about it. Its config type is defined here too: the search reads a step only as
(method key, config). A spec can name it only once ``modelpress.api`` has its config type
(a field on ``Step`` and an entry in ``METHODS``), which is what a whole-job run would need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelpress.api import CompressedModel, CompressedModelSpec, ModelMetrics, Spec, Step
from modelpress.jobs import measure
from modelpress.jobs.data import load_dataset
from modelpress.jobs.entrypoint import load_spec
from modelpress.jobs.methods import (
    REGISTRY,
    Method,
    MethodData,
    ModelHandle,
    SearchContext,
    StepResult,
    Variant,
    register,
)
from modelpress.jobs.models import load_source
from modelpress.jobs.pipeline import CacheKey, Runner, Trial, _decide, candidates, latency_noise, run

from .conftest import make_spec, write_spec

# --------------------------------------------------------------------------- a method defined in a test


class RoundWeights(Spec):
    """Stochastic rounding of MatMul/Gemm weights to ``decimals`` decimal places."""

    decimals: int
    keep_nodes: list[str] = []


class RoundWeightsMethod(Method):
    key = "roundWeights"
    stages = frozenset({"onnx"})
    applied = 0  # how often apply ran (the Runner must reuse shared prefixes)

    def apply(self, model: ModelHandle, config: RoundWeights, data: MethodData) -> StepResult:
        type(self).applied += 1
        proto = onnx.ModelProto()
        proto.CopyFrom(model.onnx_model)
        inits = {t.name: t for t in proto.graph.initializer}
        rounded = []
        for node in proto.graph.node:
            if node.op_type not in ("MatMul", "Gemm") or node.name in config.keep_nodes:
                continue
            for name in node.input:
                if name in inits and len(inits[name].dims) == 2:
                    w = numpy_helper.to_array(inits[name])
                    scale = 10.0**config.decimals
                    # The legacy global generator on purpose: the search must seed it per step.
                    dither = np.random.random(w.shape)
                    rounded_w = (np.floor(w * scale + dither) / scale).astype(w.dtype)
                    inits[name].CopyFrom(numpy_helper.from_array(rounded_w, name))
                    rounded.append(name)
        return StepResult(model.with_model(onnx_model=proto), {"rounded": rounded})

    def ladder(self, config: RoundWeights, context: SearchContext) -> list[Variant]:
        return [
            self.variant(config.model_copy(update={"decimals": config.decimals + 1}), level=1),
            self.variant(config, level=2, exclude_top=1),
            self.variant(config, level=3, exclude_top=2),
        ]

    def rankable_nodes(self, model: ModelHandle, config: RoundWeights) -> list[str]:
        nodes = model.onnx_model.graph.node
        return [n.name for n in nodes if n.op_type in ("MatMul", "Gemm") and n.name not in config.keep_nodes]

    def leave_out(self, config: RoundWeights, nodes: Sequence[str], among: Sequence[str]) -> RoundWeights:
        if not set(among) - set(nodes):
            raise ValueError(f"keeping {len(nodes)} of {len(among)} nodes would round nothing")
        return config.model_copy(update={"keep_nodes": [*config.keep_nodes, *nodes]})


class PlainStep(NamedTuple):
    """A step as the search reads it; ``modelpress.api.Step`` is one too."""

    method: str
    config: Spec


@pytest.fixture
def round_weights() -> Iterator[type[RoundWeightsMethod]]:
    register(RoundWeightsMethod)
    RoundWeightsMethod.applied = 0
    yield RoundWeightsMethod
    REGISTRY.pop(RoundWeightsMethod.key)


@pytest.fixture
def digits(digits_dir: Path) -> tuple[ModelHandle, MethodData]:
    source = load_source(digits_dir / "model.onnx", "onnx", "classification")
    calib = load_dataset(digits_dir / "calib.npz", "npz", source.input_names)
    return source, MethodData(task="classification", train=calib, calibration=calib)


def runner_for(digits: tuple[ModelHandle, MethodData]) -> Runner:
    source, data = digits
    return Runner(source, data, measure.collate_sample(data.train, 8))


def test_a_method_defined_in_a_test_runs_through_the_search(round_weights, digits) -> None:
    step = PlainStep("roundWeights", RoundWeights(decimals=1))
    cands = candidates([step, Step.model_validate({"quantize": {"mode": "dynamic"}})], search=True, max_trials=64)
    # Rung by rung, one step relaxed at a time: the test method's ladder and quantize's.
    rounding = [(c.variants[0].config.decimals, c.variants[0].level, c.variants[0].exclude_top) for c in cands]
    assert rounding[:4] == [(1, 0, 0), (2, 1, 0), (1, 0, 0), (1, 2, 1)]
    assert [c.variants[1].exclude_top for c in cands[:4]] == [0, 0, 1, 0]

    runner = runner_for(digits)
    nodes = [n.name for n in digits[0].onnx_model.graph.node if n.op_type in ("MatMul", "Gemm")]
    alone = candidates([step], search=True, max_trials=8)
    assert [c.levels for c in alone] == [(0,), (1,), (2,), (3,)]
    handle, changes, _ = runner.apply(alone[0])
    rounded = changes[0]["roundWeights"]["rounded"]
    weights = [numpy_helper.to_array(i) for i in handle.onnx_model.graph.initializer if i.name in rounded]
    assert len(weights) == len(nodes) and all(np.allclose(w * 10, np.round(w * 10), atol=1e-4) for w in weights)

    # exclude_top: the method's nodes ranked by the output error of rounding each alone,
    # the most sensitive one kept as is, through the method's own leave_out.
    _, _, recipe = runner.apply(alone[2])
    assert set(runner.node_errors) == set(nodes) and all(e > 0 for e in runner.node_errors.values())
    most_sensitive = max(runner.node_errors, key=runner.node_errors.__getitem__)
    assert recipe == [{"roundWeights": {"decimals": 1, "keepNodes": [most_sensitive]}}]
    with pytest.raises(ValueError, match="keeping 2 of 2 nodes would round nothing"):
        runner.apply(alone[3])


def test_runner_cache_keys_are_typed_and_shared_prefixes_run_once(round_weights, digits) -> None:
    runner = runner_for(digits)
    step = PlainStep("roundWeights", RoundWeights(decimals=1))
    cands = candidates([step, step], search=True, max_trials=8)
    recipe, milder = cands[0], cands[2]  # rung 1 relaxes the first step, then the second
    assert milder.variants[0] == recipe.variants[0] and milder.variants[1] != recipe.variants[1]
    runner.apply(recipe)
    runner.apply(milder)
    assert round_weights.applied == 3  # the shared first step ran once
    assert runner._cache and all(isinstance(k, CacheKey) for k in runner._cache)
    lengths = sorted(len(k.steps) for k in runner._cache if not k.derived)
    assert lengths == [1, 2, 2]


def test_every_step_is_seeded_whatever_order_the_search_reuses_it_in(round_weights, digits) -> None:
    """The method draws from numpy's global generator; the result of a candidate must not
    depend on which other candidates ran before it in the same job."""
    step = PlainStep("roundWeights", RoundWeights(decimals=1))
    cands = candidates([step], search=True, max_trials=2)
    forwards, backwards = runner_for(digits), runner_for(digits)
    first = [forwards.apply(c)[0].onnx_model.SerializeToString() for c in cands]
    np.random.random(100)  # disturb the global state between the runs
    second = [backwards.apply(c)[0].onnx_model.SerializeToString() for c in reversed(cands)][::-1]
    assert first == second


# --------------------------------------------------------------------------- the choice


def trial(index: int, p50: float, size: int, base_p50: float = 2.0, simplicity=(0, 0)) -> Trial:
    return Trial(
        index=index,
        recipe=[],
        metrics=ModelMetrics(score=0.9, latency_p50_ms=p50, size_bytes=size),
        baseline_metrics=ModelMetrics(score=0.9, latency_p50_ms=base_p50, size_bytes=4000),
        passed=True,
        simplicity=simplicity,
    )


def spec(objective: str = "latency") -> CompressedModelSpec:
    doc = make_spec("file:///m.onnx", "file:///v.npz", "file:///out", search={"enabled": True, "objective": objective})
    return CompressedModel.model_validate(doc).spec


def test_latency_noise_is_the_baseline_spread_with_a_floor_or_assumed() -> None:
    assert latency_noise([trial(0, 1, 1, 2.0), trial(1, 1, 1, 2.4)])[0] == 0.10  # too few timings: assumed
    noise, how = latency_noise([trial(0, 1, 1, 2.0), trial(1, 1, 1, 2.4), trial(2, 1, 1, 2.2)])
    assert noise == pytest.approx(0.4 / 2.2) and "spread of the baseline's 3 timings" in how
    assert latency_noise([trial(i, 1, 1, 2.0 + i / 1000) for i in range(3)])[0] == 0.05  # the floor


def test_within_the_noise_the_smaller_then_simpler_then_earlier_trial_wins() -> None:
    timings = {"base_p50": 2.0}
    trials = [
        trial(0, 1.00, 900, **timings, simplicity=(1, 1)),
        trial(1, 1.03, 800, **timings, simplicity=(1, 2)),  # within 5% of the fastest, smaller
        trial(2, 1.04, 800, **timings, simplicity=(1, 1)),  # as small, simpler
        trial(3, 1.04, 800, **timings, simplicity=(1, 1)),  # as small and simple, later
        trial(4, 1.20, 700, **timings),  # smallest, too slow
    ]
    outcome, chosen, reason = _decide(trials, spec())
    assert outcome == "Validated" and chosen is trials[2]
    assert reason.startswith("trial 2 met every threshold; trials 0, 1, 2, 3 were within the timing noise (5%")
    assert "the smallest, then the simplest recipe, then the earliest" in reason

    fast = trial(5, 0.5, 990, **timings)  # clearly faster: no tie, the fastest wins
    assert _decide([*trials, fast], spec())[1:] == (fast, "trial 5 met every threshold")
    # Sizes are exact: the size objective ties only equal sizes.
    assert _decide(trials, spec("size"))[1] is trials[4]
    same = [trial(0, 1.0, 800, simplicity=(1, 1)), trial(1, 1.0, 800, simplicity=(0, 0))]
    assert _decide(same, spec("size"))[1] is same[1]


# --------------------------------------------------------------------------- same spec, same artifact


def test_the_same_spec_twice_gives_the_same_recipe_and_artifact(tmp_path: Path, digits_dir: Path, monkeypatch) -> None:
    """The demo picked smoothing 0.75 on one run and 0.5 on the next: equally fast within the
    noise. Timings here get a seeded jitter of +-2% (a different seed per run); the rule must
    pick the same trial anyway, and with every step seeded the artifact is byte-identical."""
    real = measure.side_by_side

    def jittered(baseline, candidate, samples, batch_size):
        base, cand = real(baseline, candidate, samples, batch_size)
        b, c = 1 + jitter.uniform(-0.02, 0.02, 2)
        return base.model_copy(update={"latency_p50_ms": float(2 * b)}), cand.model_copy(
            update={"latency_p50_ms": float(c)}
        )

    monkeypatch.setattr(measure, "side_by_side", jittered)
    doc = make_spec(
        (digits_dir / "model.pt2").as_uri(),
        (digits_dir / "val.npz").as_uri(),
        (tmp_path / "out").as_uri(),
        fmt="pytorch-export",
        calibration_uri=(digits_dir / "calib.npz").as_uri(),
        steps=[
            {"prune": {"structure": "neurons", "sparsity": 0.25, "fineTuneEpochs": 1}},
            {"quantize": {"mode": "dynamic"}},
        ],
        search={"enabled": True, "maxTrials": 6},
        maxAccuracyDrop={"absolute": 0.2},
    )
    spec_path = write_spec(tmp_path / "cm.yaml", doc)
    results = []
    for seed in (1, 2):
        jitter = np.random.default_rng(seed)
        results.append(run(load_spec(spec_path), tmp_path / f"work{seed}"))
    first, second = (r.summary for r in results)
    assert first.outcome == second.outcome == "Validated", (first.reason, second.reason)
    assert first.results.chosen_recipe == second.results.chosen_recipe
    assert first.artifact.sha256 == second.artifact.sha256
    # The jitter alone would have made "the fastest trial" differ between the runs.
    fastest = [min(r.report["trials"], key=lambda t: t["metrics"]["latencyP50Ms"])["index"] for r in results]
    assert fastest[0] != fastest[1]
    assert "within the timing noise" in first.reason
