"""report.json (everything the job measured) and report.html (the same, for people).

The HTML is one self-contained file: no scripts, no external CSS or fonts, so it opens
from an object store or a laptop alike. Its charts are inline SVG written here, two
scatter plots (score vs size, score vs p50 latency) of every trial with the baseline
marked: a plotting library would add a heavy dependency to the job image for two
plots, and SVG text is easy to test.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from modelpress.api import CompressedModelSpec
from modelpress.summary import JobSummary, finite

JSON_NAME = "report.json"
HTML_NAME = "report.html"
REPORT_VERSION = 1
W, H, PAD = 420, 300, 48


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
    rows = "\n".join(_trial_row(t, report.get("chosenTrial")) for t in report["trials"])
    charts = _chart(report, "sizeBytes", "size (MB)", 1e-6) + _chart(report, "latencyP50Ms", "p50 latency (ms)", 1.0)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ModelPress report {e(report["recipeHash"])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} .pass{{color:#1a7f37}}
.fail{{color:#c62828}} .chosen{{background:#eef6ee}} svg{{margin-right:1em;border:1px solid #eee}}
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
<div>{charts}</div>
<p>&#9670; baseline, <span class="pass">&#9679; passed</span>, <span class="fail">&#9679; failed</span>, ringed: chosen.</p>
<table><tr><th>#</th><th>recipe</th><th>{e(metric)}</th><th>drop</th><th>p50 ms</th><th>p95 ms</th><th>size MB</th>
<th>speedup</th><th>result</th></tr>
{rows}
</table>
{_sensitivity_table(report.get("quantizationSensitivity") or {})}
</body></html>
"""


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


def _trial_row(t: dict[str, Any], chosen: int | None) -> str:
    e = html.escape
    m = t.get("metrics") or {}
    cls = ' class="chosen"' if t["index"] == chosen else ""
    verdict = f'<span class="{"pass" if t["passed"] else "fail"}">{e(t["reason"] or "")}</span>'
    return (
        f"<tr{cls}><td>{t['index']}</td><td><code>{e(json.dumps(t['recipe']))}</code></td>"
        f"<td>{_num(m.get('score'))}</td><td>{_num(t.get('accuracyDrop'))}</td><td>{_num(m.get('latencyP50Ms'))}</td>"
        f"<td>{_num(m.get('latencyP95Ms'))}</td><td>{_num((m.get('sizeBytes') or 0) / 1e6)}</td>"
        f"<td>{_num(t.get('speedup'))}</td><td>{verdict}</td></tr>"
    )


def _chart(report: dict[str, Any], key: str, label: str, scale: float) -> str:
    """One SVG scatter: x = ``key`` (scaled), y = score; baseline as a diamond."""
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
    x0, x1 = _span(xs)
    y0, y1 = _span(ys)

    def sx(v: float) -> float:
        return PAD + (v - x0) / (x1 - x0) * (W - 2 * PAD)

    def sy(v: float) -> float:
        return H - PAD - (v - y0) / (y1 - y0) * (H - 2 * PAD)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" aria-label="{label}">',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle" font-size="12">{html.escape(label)}</text>',
        f'<text x="12" y="{H / 2}" font-size="12" transform="rotate(-90 12 {H / 2})" text-anchor="middle">'
        f"{html.escape(report['metric'])}</text>",
        f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">{_num(x0)}</text>',
        f'<text x="{W - PAD}" y="{H - PAD + 14}" font-size="10" text-anchor="end">{_num(x1)}</text>',
        f'<text x="{PAD - 4}" y="{H - PAD}" font-size="10" text-anchor="end">{_num(y0)}</text>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" font-size="10" text-anchor="end">{_num(y1)}</text>',
    ]
    if base.get(key) is not None and base.get("score") is not None:
        cx, cy = sx(base[key] * scale), sy(base["score"])
        parts.append(
            f'<polygon class="baseline" points="{cx},{cy - 7} {cx + 7},{cy} {cx},{cy + 7} {cx - 7},{cy}" '
            f'fill="#1565c0"><title>baseline</title></polygon>'
        )
    for index, x, y, passed in points:
        if x is None or y is None:
            continue
        cx, cy = sx(x * scale), sy(y)
        color = "#1a7f37" if passed else "#c62828"
        ring = ' stroke="#000" stroke-width="2"' if index == report.get("chosenTrial") else ""
        parts.append(
            f'<circle class="trial" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}"{ring}>'
            f"<title>trial {index}</title></circle>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
