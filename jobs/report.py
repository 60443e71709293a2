"""report.json (everything the job measured) and report.html (the same, for people).

The HTML is one self-contained file: no scripts, no external CSS or fonts, so it opens
from an object store or a laptop alike. Its charts are inline SVG written here, two
scatter plots (score vs size, score vs p50 latency) of every trial with the baseline
marked and the accuracy budget drawn as a line: a plotting library would add a heavy
dependency to the job image for two plots, and SVG text is easy to test. Sizes and
latencies are plotted from 0; recipes read as steps ("prune neurons 60% → quantize
dynamic int8"), their JSON one click away; when the chosen trial is not the fastest
row, a note says why.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from modelpress.api import CompressedModelSpec
from modelpress.jobs.gate import HIGHER_IS_BETTER
from modelpress.summary import JobSummary, finite

JSON_NAME = "report.json"
HTML_NAME = "report.html"
REPORT_VERSION = 1
W, H, PAD = 460, 320, 52
BOUNDED_BY_ONE = {"accuracy", "top5", "f1", "cosine"}  # scores that cannot exceed 1


def build(
    spec: CompressedModelSpec,
    rhash: str,
    summary: JobSummary,
    trials: list[dict[str, Any]],
    chosen: int | None,
    seconds: float,
    sensitivity: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The report document (strict JSON: NaN and infinities become null)."""
    results = summary.results
    return finite(
        {
            "version": REPORT_VERSION,
            "recipeHash": rhash,
            "outcome": summary.outcome,
            "reason": summary.reason,
            "metric": str(spec.validation.metric),
            "objective": str(spec.compression.search.objective),
            "search": spec.compression.search.enabled,
            "spec": spec.model_dump(by_alias=True, mode="json", include={"source", "compression", "validation"}),
            "baseline": None
            if results is None or results.baseline is None
            else results.baseline.model_dump(by_alias=True, exclude_none=True),
            "trials": trials,
            "chosenTrial": chosen,
            "artifact": None if summary.artifact is None else summary.artifact.model_dump(by_alias=True),
            "hardware": None if results is None else results.hardware,
            # node -> relative output MSE with only that node quantized (search's excludeNodes ranking)
            "quantizationSensitivity": dict(sorted((sensitivity or {}).items(), key=lambda kv: -kv[1])),
            "seconds": round(seconds, 2),
        }
    )


def write(out_dir: Path, report: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_NAME).write_text(json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n")
    (out_dir / HTML_NAME).write_text(render_html(report))


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    metric = report["metric"]
    baseline = report.get("baseline") or {}
    budget = budget_score(report)
    confidence = ((report.get("spec") or {}).get("validation") or {}).get("confidence")
    rows = "\n".join(_trial_row(t, report.get("chosenTrial"), confidence) for t in report["trials"])
    charts = _chart(report, "sizeBytes", "size (MB)", 1e-6, budget) + _chart(
        report, "latencyP50Ms", "p50 latency (ms)", 1.0, budget
    )
    budget_text = "" if budget is None else f"; the dashed red line is the accuracy budget ({e(budget_label(report))})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ModelPress report {e(report["recipeHash"])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}}
table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} td.n{{text-align:right}}
.pass{{color:#1a7f37}} .fail{{color:#c62828}} .chosen{{background:#eef6ee}} .why{{background:#fff8e1;padding:8px 12px}}
svg{{margin-right:1em;border:1px solid #eee}} details code{{font-size:12px}} summary{{cursor:pointer}}
</style></head><body>
<h1>ModelPress: <span class="{"pass" if report["outcome"] == "Validated" else "fail"}">{e(str(report["outcome"]))}</span></h1>
<p>{e(report["reason"])}</p>
<p>Recipe hash <code>{e(report["recipeHash"])}</code>; metric <b>{e(metric)}</b>; objective {e(report["objective"])};
search {"on" if report["search"] else "off"}; {len(report["trials"])} trial(s) in {report["seconds"]} s.</p>
<p>Hardware: {e(str(report.get("hardware")))}</p>
<h2>Baseline</h2>
<p>{e(metric)} {_num(baseline.get("score"))}; p50 {_num(baseline.get("latencyP50Ms"))} ms; p95 {_num(baseline.get("latencyP95Ms"))} ms;
{_num((baseline.get("sizeBytes") or 0) / 1e6)} MB; {baseline.get("parameters")} parameters</p>
<h2>Trials</h2>
{_choice_note(report)}
<div>{charts}</div>
<p>&#9670; baseline, <span class="pass">&#9679; passed</span>, <span class="fail">&#9679; failed</span>, ringed: chosen{budget_text}.</p>
<table><tr><th>#</th><th>recipe</th><th>{e(metric)}</th><th>drop</th><th>p50 ms</th>
<th title="the baseline timed right before this trial: the speedup divides this by the trial's p50">baseline p50 ms<br>(same run)</th>
<th>speedup</th><th>p95 ms</th><th>size MB</th><th>result</th></tr>
{rows}
</table>
{_sensitivity_table(report.get("quantizationSensitivity") or {})}
</body></html>
"""


def budget_score(report: dict[str, Any]) -> float | None:
    """The worst score the gate accepts (baseline score minus the allowed drop, plus for
    metrics where lower is better), or None when the report has no baseline score."""
    base = (report.get("baseline") or {}).get("score")
    drop = ((report.get("spec") or {}).get("validation") or {}).get("maxAccuracyDrop") or {}
    if base is None:
        return None
    if drop.get("absolute") is not None:
        allowed = float(drop["absolute"])
    elif drop.get("relative") is not None:
        allowed = float(drop["relative"]) * abs(base)
    else:
        return None
    return base - allowed if HIGHER_IS_BETTER.get(report["metric"], True) else base + allowed


def budget_label(report: dict[str, Any]) -> str:
    drop = report["spec"]["validation"]["maxAccuracyDrop"]
    allowed = f"{drop['absolute']:g}" if drop.get("absolute") is not None else f"{drop['relative']:.0%}"
    sign, cmp = ("−", "≥") if HIGHER_IS_BETTER.get(report["metric"], True) else ("+", "≤")
    return f"{report['metric']} {cmp} {_num(budget_score(report))}: baseline {sign} {allowed}"


def describe_recipe(recipe: list[dict[str, Any]]) -> str:
    """The steps as words, e.g. ``prune neurons 60%, fine-tune 3 epochs → quantize dynamic int8 per-channel``."""
    return " → ".join(_describe_step(name, config or {}) for step in recipe for name, config in step.items())


def _describe_step(name: str, c: dict[str, Any]) -> str:
    if name == "prune":
        words = f"prune {c.get('structure', 'unstructured')} {_pct(c.get('sparsity'))}"
        epochs = c.get("fineTuneEpochs") or 0
        if epochs:
            words += f", fine-tune {epochs} epoch{'s' if epochs != 1 else ''}"
            if c.get("learningRate") not in (None, 1e-3):
                words += f" at lr {c['learningRate']:g}"
        return words
    if name == "quantize":
        mode = c.get("mode", "dynamic")
        words = {
            "dynamic": "quantize dynamic int8",
            "static": f"quantize static int8 ({c.get('calibrationMethod', 'minmax')} calibration)",
            "fp16": "quantize fp16",
            "int4-weight-only": f"quantize int4 weight-only (blocks of {c.get('blockSize', 32)})",
        }.get(mode, f"quantize {mode}")
        if c.get("perChannel"):
            words += " per-channel"
        if c.get("smoothing") is not None:
            words += f", SmoothQuant α {c['smoothing']:g}"
        if c.get("excludeNodes"):
            n = len(c["excludeNodes"])
            words += f", {n} node{'s' if n != 1 else ''} kept in float"
        return words
    if name == "distill":
        student = c.get("student") or {}
        soft = f"T {c.get('temperature', 1.0):g}, α {c.get('alpha', 0.5):g}"
        if (trees := student.get("trees")) is not None:
            kind = "random forest" if trees.get("kind") == "randomForest" else "gradient boosting"
            return (
                f"distill into a {kind} of {trees.get('trees', 100)} trees, depth {trees.get('maxDepth', 6)} ({soft})"
            )
        if (mlp := student.get("mlp")) is not None:
            hidden = "-".join(str(h) for h in mlp.get("hidden", [64, 32]))
            return f"distill into an MLP {hidden}, {c.get('epochs', 10)} epochs ({soft})"
        into = (
            f"a student {_pct(student['widthMultiplier'])} as wide"
            if student.get("widthMultiplier") is not None
            else "the given student"
        )
        return f"distill into {into}, {c.get('epochs', 10)} epochs ({soft})"
    if name == "pruneEnsemble":
        kept = f"{c['trees']} trees" if c.get("trees") is not None else f"{_pct(c.get('fraction'))} of the trees"
        how = {"boosted": ", best boosting prefix", "forest": ", ordered aggregation"}.get(
            c.get("ensemble", "auto"), ""
        )
        return f"keep {kept}{how}"
    if name == "pruneTrees":
        parts = [
            f"depth ≤ {c['maxDepth']}" if c.get("maxDepth") is not None else "",
            f"≥ {c['minSamplesLeaf']} samples a leaf" if c.get("minSamplesLeaf") is not None else "",
            f"leaves within {_pct(c['leafTolerance'])} merged" if c.get("leafTolerance") is not None else "",
            f"cost-complexity α {c['costComplexity']:g}" if c.get("costComplexity") is not None else "",
        ]
        return "prune trees: " + ", ".join(p for p in parts if p)
    if name == "lowRank":
        if c.get("energy") is not None:
            return f"low-rank (SVD) keeping {_pct(c['energy'])} of the energy"
        return f"low-rank (SVD) at {_pct(c.get('rankRatio'))} rank"
    # A method this module does not know yet: its set options, as they are written in the spec.
    options = ", ".join(f"{k} {json.dumps(v)}" for k, v in c.items() if v not in (None, [], {}, False))
    return f"{name} {options}".strip()


def _pct(v: Any) -> str:
    return "?" if v is None else f"{float(v):.0%}" if float(v) * 100 == round(float(v) * 100) else f"{float(v):.1%}"


def _choice_note(report: dict[str, Any]) -> str:
    """Why the chosen trial is not the fastest row, when it is not; empty otherwise."""
    chosen = next((t for t in report["trials"] if t["index"] == report.get("chosenTrial")), None)
    if chosen is None or not chosen["passed"] or not (chosen.get("metrics") or {}).get("latencyP50Ms"):
        return ""
    timed = [t for t in report["trials"] if t["passed"] and (t.get("metrics") or {}).get("latencyP50Ms")]
    fastest = min(timed, key=lambda t: t["metrics"]["latencyP50Ms"])
    best_speedup = max(timed, key=lambda t: t.get("speedup") or 0.0)
    notes = []
    p50, fast = chosen["metrics"]["latencyP50Ms"], fastest["metrics"]["latencyP50Ms"]
    if fastest is not chosen:
        if report["objective"] == "size":
            why = "the objective is size: the smallest passing model is chosen, whatever its latency"
        elif "noise" in report["reason"]:
            why = (
                "their p50s are within the timing noise, and among candidates that close the smaller, "
                "then the simpler recipe, then the earlier trial wins"
            )
        else:
            why = "see the reason above"
        notes.append(
            f"Trial {chosen['index']} was chosen although trial {fastest['index']} has the lowest p50 "
            f"({_num(fast)} ms against {_num(p50)} ms, {(p50 - fast) / fast:.0%} apart): {why}."
        )
    if best_speedup is not fastest:  # the two columns disagree on the best row
        notes.append(
            "The speedup column ranks the rows differently from the p50 column: a row's speedup is the p50 "
            "of the baseline timed right before that trial (the “same run” column) over the trial's p50, so each "
            "row's p50 and its speedup were measured at different times from the other rows' and compare "
            "only within their row."
        )
    if not notes:
        return ""
    return '<p class="why">' + " ".join(html.escape(n) for n in notes) + "</p>"


def _sensitivity_table(sensitivity: dict[str, float]) -> str:
    if not sensitivity:
        return ""
    rows = "".join(f"<tr><td><code>{html.escape(n)}</code></td><td>{_num(e)}</td></tr>" for n, e in sensitivity.items())
    return (
        "<h2>Quantization sensitivity</h2><p>Error with only this node quantized (1 - mean cosine for "
        "embedding models ranked by cosine, relative output MSE otherwise); "
        "the search keeps the most sensitive ones in float.</p>"
        f"<table><tr><th>node</th><th>error</th></tr>{rows}</table>"
    )


def _trial_row(t: dict[str, Any], chosen: int | None, confidence: float | None = None) -> str:
    e = html.escape
    m = t.get("metrics") or {}
    b = t.get("baselineMetrics") or {}
    cls = ' class="chosen"' if t["index"] == chosen else ""
    verdict = f'<span class="{"pass" if t["passed"] else "fail"}">{e(t["reason"] or "")}</span>'
    recipe = (
        f'<details><summary class="steps">{e(describe_recipe(t["recipe"]))}</summary>'
        f"<code>{e(json.dumps(t['recipe']))}</code></details>"
    )
    size = None if m.get("sizeBytes") is None else m["sizeBytes"] / 1e6
    cells = [m.get("score"), drop_text(t, confidence), m.get("latencyP50Ms"), b.get("latencyP50Ms")]
    cells += [t.get("speedup"), m.get("latencyP95Ms"), size]
    numbers = "".join(f'<td class="n">{e(_num(v))}</td>' for v in cells)
    return f"<tr{cls}><td>{t['index']}</td><td>{recipe}</td>{numbers}<td>{verdict}</td></tr>"


def _chart(report: dict[str, Any], key: str, label: str, scale: float, budget: float | None) -> str:
    """One SVG scatter: x = ``key`` (scaled; a size or a latency, so the axis starts at 0),
    y = score (zoomed on the values and the budget, never below 0 for non-negative scores);
    baseline as a diamond, the accuracy budget as a dashed line."""
    points = [
        (t["index"], (t["metrics"] or {}).get(key), (t["metrics"] or {}).get("score"), t["passed"])
        for t in report["trials"]
        if t.get("metrics")
    ]
    base = report.get("baseline") or {}
    xs = [p[1] * scale for p in points if p[1] is not None] + ([base[key] * scale] if base.get(key) is not None else [])
    ys = [p[2] for p in points if p[2] is not None] + ([base["score"]] if base.get("score") is not None else [])
    if not xs or not ys:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}"><text x="10" y="20">no data</text></svg>'
        )
    x_ticks = nice_ticks(0.0, max(max(xs), 0.0))
    y_ticks = _score_ticks(ys + ([budget] if budget is not None else []), report["metric"])
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(v: float) -> float:
        return PAD + (v - x0) / (x1 - x0) * (W - 2 * PAD)

    def sy(v: float) -> float:
        return H - PAD - (v - y0) / (y1 - y0) * (H - 2 * PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" aria-label="{label}">']
    for v in x_ticks:
        parts.append(f'<line x1="{sx(v):.1f}" y1="{PAD}" x2="{sx(v):.1f}" y2="{H - PAD}" stroke="#f0f0f0"/>')
        parts.append(
            f'<text class="xtick" x="{sx(v):.1f}" y="{H - PAD + 14}" font-size="10" text-anchor="middle">'
            f"{_tick(v)}</text>"
        )
    for v in y_ticks:
        parts.append(f'<line x1="{PAD}" y1="{sy(v):.1f}" x2="{W - PAD}" y2="{sy(v):.1f}" stroke="#f0f0f0"/>')
        parts.append(
            f'<text class="ytick" x="{PAD - 4}" y="{sy(v):.1f}" font-size="10" text-anchor="end" '
            f'dominant-baseline="middle">{_tick(v)}</text>'
        )
    parts += [
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle" font-size="12">{html.escape(label)}</text>',
        f'<text x="12" y="{H / 2}" font-size="12" transform="rotate(-90 12 {H / 2})" text-anchor="middle">'
        f"{html.escape(report['metric'])}</text>",
    ]
    if budget is not None:
        parts.append(
            f'<line class="budget" x1="{PAD}" y1="{sy(budget):.1f}" x2="{W - PAD}" y2="{sy(budget):.1f}" '
            f'stroke="#c62828" stroke-dasharray="6 4" stroke-width="1.5"><title>accuracy budget: '
            f"{html.escape(budget_label(report))}</title></line>",
        )
        parts.append(
            f'<text x="{W - PAD - 2}" y="{sy(budget) - 4:.1f}" font-size="10" fill="#c62828" text-anchor="end">'
            f"budget {_num(budget)}</text>"
        )
    if base.get(key) is not None and base.get("score") is not None:
        cx, cy = sx(base[key] * scale), sy(base["score"])
        parts.append(
            f'<polygon class="baseline" points="{cx:.1f},{cy - 7:.1f} {cx + 7:.1f},{cy:.1f} {cx:.1f},{cy + 7:.1f} '
            f'{cx - 7:.1f},{cy:.1f}" fill="#1565c0"><title>baseline</title></polygon>'
        )
    for index, x, y, passed in points:
        if x is None or y is None:
            continue
        cx, cy = sx(x * scale), sy(y)
        color = "#1a7f37" if passed else "#c62828"
        ring = ' stroke="#000" stroke-width="2"' if index == report.get("chosenTrial") else ""
        parts.append(
            f'<circle class="trial" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}" fill-opacity="0.8"{ring}>'
            f"<title>trial {index}</title></circle>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) from at or below ``lo``
    to at or above ``hi``: the axis spans exactly its first to its last tick."""
    if hi - lo < 1e-12:
        hi = lo + (abs(lo) or 1.0) * 0.1
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _score_ticks(values: list[float], metric: str) -> list[float]:
    """Score axis: zoomed on the values (a 0.5-point drop matters), but never below 0 for
    scores that cannot be negative, nor above 1 for the ones bounded by 1."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.01 or 0.01
    lo, hi = lo - pad, hi + pad
    if min(values) >= 0:
        lo = max(lo, 0.0)
    if metric in BOUNDED_BY_ONE and max(values) <= 1:
        hi = min(hi, 1.0)
    ticks = nice_ticks(lo, hi)
    if min(values) >= 0 and ticks[0] < 0:
        ticks = [t for t in ticks if t >= 0]
    if metric in BOUNDED_BY_ONE and max(values) <= 1 and ticks[-1] > 1:
        ticks = [t for t in ticks if t <= 1]
    return ticks


def _tick(v: float) -> str:
    return f"{v:.6g}"


def drop_text(trial: dict[str, Any], confidence: float | None) -> str:
    """The trial's drop, with its upper confidence bound where the gate judged one: ``0.004 [95% upper 0.009]``."""
    text = _num(trial.get("accuracyDrop"))
    if trial.get("accuracyDropBound") is not None:
        level = "" if confidence is None else f"{confidence * 100:.4g}% "
        text += f" [{level}upper {_num(trial['accuracyDropBound'])}]"
    return text


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
