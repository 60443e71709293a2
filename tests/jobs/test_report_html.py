"""report.html for people: axes that start at 0 for sizes and latencies (never negative),
the accuracy budget drawn as a line, recipes as readable steps, and a note when the
chosen trial is not the fastest row."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from xml.etree import ElementTree

import pytest

from modelpress.api import CompressedModelSpec, ModelMetrics
from modelpress.jobs import report
from modelpress.summary import JobSummary, Outcome

from .conftest import make_spec

SVG = "{http://www.w3.org/2000/svg}"
PRUNE = {"prune": {"structure": "neurons", "sparsity": 0.6, "fineTuneEpochs": 3, "learningRate": 0.001}}
QUANTIZE = {"quantize": {"mode": "dynamic", "perChannel": True, "excludeNodes": [], "smoothing": None}}
BASELINE = ModelMetrics(score=0.98, latency_p50_ms=0.5, latency_p95_ms=0.9, size_bytes=4_500_000, parameters=1_126_410)


def trial(index: int, recipe: list[dict[str, Any]], score: float, p50: float, size: int, base_p50: float) -> dict:
    """A measured, passing trial as pipeline.Trial.to_report writes it."""
    metrics = ModelMetrics(score=score, latency_p50_ms=p50, latency_p95_ms=p50 * 1.2, size_bytes=size)
    base = BASELINE.model_copy(update={"latency_p50_ms": base_p50})
    return {
        "index": index,
        "recipe": recipe,
        "metrics": metrics.model_dump(by_alias=True, exclude_none=True),
        "baselineMetrics": base.model_dump(by_alias=True, exclude_none=True),
        "passed": True,
        "failedThresholds": [],
        "reason": "passed",
        "changes": [],
        "accuracyDrop": BASELINE.score - score,
        "speedup": base_p50 / p50,
        "sizeRatio": size / BASELINE.size_bytes,
        "seconds": 1.0,
    }


def render(
    trials: list[dict], chosen: int, reason: str, metric: str = "accuracy", objective: str = "latency", **drop: float
) -> str:
    budget = drop or {"absolute": 0.01}
    doc = make_spec("file:///m.onnx", "file:///v.npz", "file:///out/", metric=metric, maxAccuracyDrop=budget)
    doc["spec"]["compression"]["search"] = {"enabled": True, "objective": objective}
    doc["spec"]["source"]["task"] = "regression" if metric == "mse" else "classification"
    spec = CompressedModelSpec.model_validate(doc["spec"])
    summary = JobSummary(outcome=Outcome.validated, reason=reason)
    data = report.build(spec, "abc123", summary, trials, chosen, 3.0)
    data["baseline"] = BASELINE.model_dump(by_alias=True, exclude_none=True)
    return report.render_html(data)


def charts(html: str) -> list[ElementTree.Element]:
    return [ElementTree.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S)]


def ticks(svg: ElementTree.Element, axis: str) -> list[tuple[float, float]]:
    """(value, pixel) of each tick label on ``axis`` (x or y)."""
    return [
        (float(t.text or ""), float(t.get(axis) or 0))
        for t in svg.iter(f"{SVG}text")
        if t.get("class") == f"{axis}tick"
    ]


class Steps(HTMLParser):
    """The text of every recipe cell's <summary class="steps">."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[str] = []
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in = tag == "summary" and ("class", "steps") in attrs
        if self._in:
            self.steps.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = self._in and tag != "summary"

    def handle_data(self, data: str) -> None:
        if self._in:
            self.steps[-1] += data


TRIALS = [
    trial(0, [PRUNE, QUANTIZE], 0.975, p50=0.050, size=213_604, base_p50=0.58),
    trial(2, [PRUNE, {"quantize": {"mode": "dynamic"}}], 0.976, p50=0.052, size=205_028, base_p50=0.32),
]


def test_sizes_and_latencies_start_at_zero_and_no_axis_goes_negative() -> None:
    # A 1 kB trial next to a 4.5 MB baseline: padding the span around the values used to put -0.36 MB on the axis.
    tiny = trial(3, [PRUNE], 0.0, p50=0.001, size=1_000, base_p50=0.5)
    html = render([*TRIALS, tiny], chosen=0, reason="trial 0 met every threshold")
    size_chart, latency_chart = charts(html)
    for chart in (size_chart, latency_chart):
        xs, ys = ticks(chart, "x"), ticks(chart, "y")
        assert xs[0][0] == 0.0 and all(v >= 0 for v, _ in xs + ys)
        assert ys[0][0] == 0.0  # a score of 0 is on the chart: the axis stops there, not below
        assert ys[-1][0] <= 1.0  # accuracy cannot exceed 1
    assert ticks(size_chart, "x")[-1][0] >= 4.5  # the baseline's 4.5 MB fits


@pytest.mark.parametrize(
    ("metric", "drop", "budget", "label"),
    [
        ("accuracy", {"absolute": 0.01}, 0.97, "accuracy ≥ 0.97: baseline − 0.01"),
        ("mse", {"relative": 0.5}, 1.47, "mse ≤ 1.47: baseline + 50%"),  # lower is better: the budget is above
    ],
)
def test_the_accuracy_budget_is_a_line_at_its_score(metric: str, drop: dict, budget: float, label: str) -> None:
    html = render(TRIALS, chosen=0, reason="trial 0 met every threshold", metric=metric, **drop)
    for chart in charts(html):
        (line,) = [el for el in chart.iter(f"{SVG}line") if el.get("class") == "budget"]
        assert line.get("stroke-dasharray") and line.get("y1") == line.get("y2")
        assert label in (line.findtext(f"{SVG}title") or "")
        # Where the axis' own ticks say that score is.
        (v0, p0), (v1, p1) = ticks(chart, "y")[0], ticks(chart, "y")[-1]
        ys = [v for v, _ in ticks(chart, "y")]
        assert ys[0] <= budget <= ys[-1]
        assert float(line.get("y1") or 0) == pytest.approx(p0 + (budget - v0) / (v1 - v0) * (p1 - p0), abs=0.2)
    assert label in html  # the legend says what the line is


def test_recipes_read_as_steps_with_their_json_one_click_away() -> None:
    html = render(TRIALS, chosen=0, reason="trial 0 met every threshold")
    parser = Steps()
    parser.feed(html)
    assert parser.steps == [
        "prune neurons 60%, fine-tune 3 epochs → quantize dynamic int8 per-channel",
        "prune neurons 60%, fine-tune 3 epochs → quantize dynamic int8",
    ]
    assert "<details>" in html and "&quot;fineTuneEpochs&quot;: 3" in html  # the exact recipe is still there


def test_every_method_reads_as_words() -> None:
    recipe = [
        {"quantize": {"mode": "static", "calibrationMethod": "entropy", "smoothing": 0.75, "excludeNodes": ["a", "b"]}},
        {"quantize": {"mode": "int4-weight-only", "blockSize": 64}},
        {"distill": {"student": {"widthMultiplier": 0.5}, "epochs": 10, "temperature": 1.0, "alpha": 0.5}},
        {"lowRank": {"energy": 0.95, "rankRatio": None}},
        {"prune": {"structure": "unstructured", "sparsity": 0.125, "fineTuneEpochs": 0}},
        {"distill": {"student": {"trees": {"kind": "randomForest", "trees": 50, "maxDepth": 8}}, "alpha": 0.7}},
        {"distill": {"student": {"mlp": {"hidden": [64, 32]}}, "epochs": 20}},
        {"pruneEnsemble": {"fraction": 0.2, "ensemble": "forest"}},
        {"pruneTrees": {"maxDepth": 5, "leafTolerance": 0.1, "costComplexity": 0.002}},
        {"sharpen": {"amount": 2, "nodes": [], "extra": None}},  # a method this module has never heard of
    ]
    assert report.describe_recipe(recipe) == (
        "quantize static int8 (entropy calibration), SmoothQuant α 0.75, 2 nodes kept in float"
        " → quantize int4 weight-only (blocks of 64)"
        " → distill into a student 50% as wide, 10 epochs (T 1, α 0.5)"
        " → low-rank (SVD) keeping 95% of the energy"
        " → prune unstructured 12.5%"
        " → distill into a random forest of 50 trees, depth 8 (T 1, α 0.7)"
        " → distill into an MLP 64-32, 20 epochs (T 1, α 0.5)"
        " → keep 20% of the trees, ordered aggregation"
        " → prune trees: depth ≤ 5, leaves within 10% merged, cost-complexity α 0.002"
        " → sharpen amount 2"
    )


def test_a_chosen_trial_that_is_not_the_fastest_row_is_explained() -> None:
    reason = (
        "trial 2 met every threshold; trials 0, 2 were within the timing noise (12%, the spread of the baseline's "
        "2 timings) of the fastest, so the smallest, then the simplest recipe, then the earliest was chosen"
    )
    html = render(TRIALS, chosen=2, reason=reason)
    (why,) = re.findall(r'<p class="why">(.*?)</p>', html, flags=re.S)
    assert "Trial 2 was chosen although trial 0 has the lowest p50 (0.05 ms against 0.052 ms, 4% apart)" in why
    assert "within the timing noise" in why
    # Trial 0 has the best p50 and the best speedup; trial 2's speedup was against a faster baseline run.
    assert "measured at different times" not in why


def test_speedup_and_p50_ranking_differently_is_explained() -> None:
    # Trial 2 is the fastest, but trial 0's baseline happened to be timed slower: its speedup looks better.
    trials = [
        trial(0, [PRUNE], 0.975, p50=0.060, size=300_000, base_p50=0.9),
        trial(2, [PRUNE, QUANTIZE], 0.975, p50=0.050, size=200_000, base_p50=0.4),
    ]
    (why,) = re.findall(r'<p class="why">(.*?)</p>', render(trials, chosen=2, reason="trial 2 met every threshold"))
    assert "p50 and its speedup were measured at different times" in why


def test_by_size_the_note_says_the_objective_and_the_fastest_chosen_needs_no_note() -> None:
    html = render(TRIALS, chosen=2, reason="trial 2 met every threshold", objective="size")
    assert "the objective is size" in html
    assert 'class="why"' not in render(TRIALS, chosen=0, reason="trial 0 met every threshold")
