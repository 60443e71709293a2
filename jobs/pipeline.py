"""The compression job: recipe (or accuracy-aware search) -> measure -> gate -> artifact.

``run(spec, workdir)`` is the whole job, shared by the Kubernetes entrypoint and
``modelpress run``:

1. download source and data (KServe's storage library), load them, check they fit;
2. baseline: the source as ONNX (torch sources go through ``jobs/export.py``), measured;
3. candidates: the recipe, or with ``search.enabled`` milder variants around it;
   each candidate's steps run in order (torch-stage steps on the torch module, the
   model is exported to ONNX before the first ONNX-only step), then it is measured
   by the same code as the baseline and gated;
4. the best passing candidate (by ``search.objective``) becomes the artifact under
   ``<output.storageUri>/<recipeHash>/`` with report.json/report.html beside it;
5. a :class:`~modelpress.summary.JobSummary` says Validated / Rejected / Failed.

Search composes methods through the registry without knowing their insides: each
method declares its own search space (``Method.ladder``) and, if it has them, which
nodes the search may rank by measured sensitivity and leave untouched
(``Method.rankable_nodes`` / ``Method.leave_out``, e.g. quantize's ``excludeNodes``).
Among passing candidates within the timing noise of the best on the objective, the
choice is stable: smaller, then simpler recipe, then earlier trial (:func:`_decide`).

hf-transformers sources of an architecture ORT fuses (BERT family), whose first step
works on ONNX, are exported with ORT's transformer fusions (``jobs/hf.to_fused_onnx``:
one Attention kernel per layer, which dynamic int8 turns into QAttention); a module
changed by torch-stage steps first is exported by ``jobs/export.to_onnx`` (the fusions
assume the original architecture), as are other architectures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx

from modelpress.api import Artifact, CompressedModelSpec, ModelMetrics, Results, Spec, Step, recipe_hash
from modelpress.jobs import artifact, blame, gate, measure, report, storage
from modelpress.jobs.data import load_dataset
from modelpress.jobs.dataset import Samples
from modelpress.jobs.errors import JobInputError, StepInputError, first_line, shorten
from modelpress.jobs.limits import out_of_memory
from modelpress.jobs.methods import (
    Method,
    MethodData,
    ModelHandle,
    SearchContext,
    Stage,
    Variant,
    get_method,
    seed_everything,
)
from modelpress.jobs.models import load_source
from modelpress.jobs.workdir import ARTIFACT_DIR, INPUT_DIRS, INPUTS_FILE, SUMMARY_FILE, Inputs
from modelpress.summary import JobSummary, Outcome

log = logging.getLogger(__name__)

# progress(task, done, total): local runs draw bars from it; the Job only logs.
Progress = Callable[[str, int, int], None]
EXPORT_SAMPLES = 8
SENSITIVITY_PROBE = 64  # method-side samples used to rank nodes for excludeNodes
SENSITIVITY_MAX_NODES = 16  # rank at most the first N rankable nodes (each costs one run of the step)
# Latency ties: passing candidates within this relative distance of the fastest are
# treated as equally fast. Measured as the spread of the baseline's repeated timings
# (it is the same model each time, so its spread is the timing noise), never below
# MIN_LATENCY_NOISE (a few timings underestimate the spread, and a smaller latency
# difference is not worth a different artifact); UNKNOWN_LATENCY_NOISE with fewer than
# NOISE_MIN_TIMINGS timings.
MIN_LATENCY_NOISE = 0.05
UNKNOWN_LATENCY_NOISE = 0.10
NOISE_MIN_TIMINGS = 3
LABEL_METRICS = ("accuracy", "top5", "f1")


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    variants: tuple[Variant, ...]

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(v.level for v in self.variants)

    def milder_than(self, other: Candidate) -> bool:
        """Every step at the same or a milder setting, one strictly milder.

        Such a candidate compresses less, so it is assumed not to beat ``other`` on size
        or latency; the search skips it once ``other`` passes.
        """
        pairs = list(zip(self.levels, other.levels, strict=True))
        return all(a >= b for a, b in pairs) and any(a > b for a, b in pairs)

    @property
    def simplicity(self) -> tuple[int, int]:
        """(steps not as asked, rungs away from the recipe in all): lower is simpler, the
        tie-break after size between candidates equally good on the objective."""
        rungs = [v.rung for v in self.variants]
        return sum(r > 0 for r in rungs), sum(rungs)


class StepLike(Protocol):
    """What the search reads of a step: ``modelpress.api.Step``, or any pair of a
    registered method key and its config (how tests add a method without an API field)."""

    @property
    def method(self) -> str: ...

    @property
    def config(self) -> Spec: ...


def ladder(step: StepLike, calibrated: bool = False) -> list[Variant]:
    """The step as asked, then the settings its method offers (``Method.ladder``).

    ``calibrated``: the spec has ``validation.calibration``, so settings that need
    calibration data (e.g. quantize smoothing) are allowed.
    """
    method = get_method(step.method)
    milder = method.ladder(step.config, SearchContext(calibrated=calibrated))
    return [Variant(step.method, step.config), *(replace(v, rung=i) for i, v in enumerate(milder, start=1))]


def candidates(steps: Sequence[StepLike], search: bool, max_trials: int, calibrated: bool = False) -> list[Candidate]:
    """The recipe first; with search, one step relaxed at a time, rung by rung, then all.

    ``calibrated``: the spec has ``validation.calibration``, so settings that need it are
    allowed (a chosen recipe must be a valid spec on its own).
    """
    ladders = [ladder(s, calibrated) for s in steps]
    first = Candidate(tuple(lad[0] for lad in ladders))
    if not search:
        return [first]
    out = [first]
    for rung in range(1, max(len(lad) for lad in ladders)):
        for i, lad in enumerate(ladders):
            if rung < len(lad):
                out.append(Candidate(tuple(lad[rung] if j == i else lad2[0] for j, lad2 in enumerate(ladders))))
    if len(steps) > 1:
        out.append(Candidate(tuple(lad[-1] for lad in ladders)))
    unique: dict[str, Candidate] = {}
    for c in out:
        unique.setdefault(json.dumps([(v.describe(), v.exclude_top) for v in c.variants], sort_keys=True), c)
    return list(unique.values())[:max_trials]


# --------------------------------------------------------------------------- trials


@dataclass
class Trial:
    index: int
    recipe: list[dict[str, Any]]
    metrics: ModelMetrics | None = None
    baseline_metrics: ModelMetrics | None = None  # the baseline, timed side by side with this trial
    passed: bool = False
    failed: list[str] = field(default_factory=list)
    reason: str = ""
    changes: list[dict[str, Any]] = field(default_factory=list)
    accuracy_drop: float | None = None
    accuracy_drop_bound: float | None = None  # upper confidence bound, with validation.confidence
    slice_drops: dict[str, float] = field(default_factory=dict)  # validation.slices: "label=3" -> drop
    speedup: float | None = None
    size_ratio: float | None = None
    seconds: float = 0.0
    model: onnx.ModelProto | None = field(default=None, repr=False)
    simplicity: tuple[int, int] = (0, 0)  # Candidate.simplicity: a tie-break in _decide

    def to_report(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "recipe": self.recipe,
            "metrics": None if self.metrics is None else self.metrics.model_dump(by_alias=True, exclude_none=True),
            "baselineMetrics": None
            if self.baseline_metrics is None
            else self.baseline_metrics.model_dump(by_alias=True, exclude_none=True),
            "passed": self.passed,
            "failedThresholds": self.failed,
            "reason": self.reason,
            "changes": self.changes,
            "accuracyDrop": self.accuracy_drop,
            **({} if self.accuracy_drop_bound is None else {"accuracyDropBound": self.accuracy_drop_bound}),
            **({"sliceDrops": self.slice_drops} if self.slice_drops else {}),
            "speedup": self.speedup,
            "sizeRatio": self.size_ratio,
            "seconds": round(self.seconds, 3),
        }


Exporter = Callable[[ModelHandle, dict[str, np.ndarray]], ModelHandle]


@dataclass(frozen=True)
class AppliedStep:
    """One step as it ran: what makes its output differ from another step's."""

    method: str
    config: str  # canonical JSON of the config as applied (ranked excludeNodes filled in)
    stage: Stage  # the stage it ran on: the same step on a torch module or on its export differs


@dataclass(frozen=True)
class CacheKey:
    """A model in :class:`Runner`'s cache: the source after ``steps``, then optionally
    exported to ONNX (``derived="export"``) or prepared for ``method`` (``"prepare"``)."""

    steps: tuple[AppliedStep, ...] = ()
    derived: Literal["", "export", "prepare"] = ""
    method: str = ""

    def then(self, step: AppliedStep) -> CacheKey:
        return CacheKey((*self.steps, step))

    def exported(self) -> CacheKey:
        return CacheKey(self.steps, "export")

    def prepared(self, method: str) -> CacheKey:
        return CacheKey(self.steps, "prepare", method)


class Runner:
    """Applies candidates to one source model, reusing results of shared step prefixes.

    ``metric``: the validation metric; with ``cosine`` nodes are ranked for a method's
    ``leave_out`` by the cosine they cost (what the gate judges), otherwise by relative
    output MSE (label metrics cannot be scored on unlabelled calibration data).
    ``source_exporter``: how the *unmodified* source becomes ONNX (the fused export for
    hf-transformers); anything a torch-stage step changed goes through ``jobs/export.to_onnx``.
    """

    def __init__(
        self,
        source: ModelHandle,
        data: MethodData,
        export_sample: dict[str, np.ndarray],
        metric: str | None = None,
        source_exporter: Exporter | None = None,
    ) -> None:
        self.source = source
        self.data = data
        self.export_sample = export_sample
        self.metric = metric
        self.source_exporter = source_exporter
        self._cache: dict[CacheKey, tuple[ModelHandle, dict[str, Any]]] = {}
        self._sensitivity: dict[CacheKey, list[str]] = {}  # prepared input -> rankable nodes, most sensitive first
        self.node_errors: dict[str, float] = {}  # node -> output error when changed alone (for the report)

    def to_onnx(self, handle: ModelHandle, key: CacheKey | None) -> ModelHandle:
        """``handle`` as ONNX; exported once per ``key`` (None: a one-off model, not cached)."""
        if handle.stage == "onnx":
            return handle
        from modelpress.jobs.export import to_onnx

        if key is None:
            return to_onnx(handle, self.export_sample)
        cache_key = key.exported()
        if cache_key not in self._cache:
            export: Exporter = to_onnx if key.steps or self.source_exporter is None else self.source_exporter
            log.info("exporting torch model to ONNX%s", "" if export is to_onnx else " (fused transformer export)")
            self._cache[cache_key] = (export(handle, self.export_sample), {})
        return self._cache[cache_key][0]

    def apply(self, candidate: Candidate) -> tuple[ModelHandle, list[dict[str, Any]], list[dict[str, Any]]]:
        """(onnx handle, per-step changes, the recipe as actually applied)."""
        handle, changes, recipe, key = self.source, [], [], CacheKey()
        for i, variant in enumerate(candidate.variants):
            method = get_method(variant.key)
            if handle.stage not in method.stages:
                if handle.stage == "onnx":
                    raise JobInputError(
                        f"compression.steps[{i}].{variant.key}",
                        "needs a torch model but runs after the model became ONNX; reorder the steps",
                    )
                handle = self.to_onnx(handle, key)
            handle = self._prepared(method, handle, key)
            config = self._resolve(method, variant, handle, key)
            recipe.append({variant.key: config.model_dump(by_alias=True, mode="json")})
            key = key.then(AppliedStep(variant.key, json.dumps(recipe[-1][variant.key], sort_keys=True), handle.stage))
            if key not in self._cache:
                log.info("step %d: %s %s", i, variant.key, recipe[-1][variant.key])
                seed_everything(self.data.seed)
                try:
                    result = method.apply(handle, config, self.data)
                except StepInputError as e:
                    raise JobInputError(f"compression.steps[{i}].{variant.key}", str(e)) from e
                self._cache[key] = (result.model, result.changes)
            handle, step_changes = self._cache[key]
            changes.append({variant.key: step_changes})
        return self.to_onnx(handle, key), changes, recipe

    def _prepared(self, method: Method, handle: ModelHandle, key: CacheKey) -> ModelHandle:
        """``method.prepare(handle)``, once per input: shared by every variant of the step and its node ranking."""
        cache_key = key.prepared(method.key)
        if cache_key not in self._cache:
            self._cache[cache_key] = (method.prepare(handle), {})
        return self._cache[cache_key][0]

    def _resolve(self, method: Method, variant: Variant, handle: ModelHandle, key: CacheKey) -> Spec:
        """The variant's config with its ``exclude_top`` most sensitive nodes left out."""
        if not variant.exclude_top:
            return variant.config
        ranked = self._ranked(method, variant, handle, key)
        if not ranked:
            raise ValueError(f"no node could be ranked for {variant.key} sensitivity; see the job log")
        return method.leave_out(variant.config, ranked[: variant.exclude_top], ranked)

    def _ranked(self, method: Method, variant: Variant, handle: ModelHandle, key: CacheKey) -> list[str]:
        """The method's rankable nodes, most sensitive first: apply the step to each alone,
        measure the output error.

        Measured on method-side data (calibration/train), never the validation split, with
        the variant's own settings (e.g. quantize smoothing), once per prepared input.
        """
        cache_key = key.prepared(method.key)
        if cache_key in self._sensitivity:
            return self._sensitivity[cache_key]
        rankable = method.rankable_nodes(handle, variant.config)
        probe = self.data.calibration if len(self.data.calibration) else self.data.train
        probe = probe.take(SENSITIVITY_PROBE)
        reference = measure.run_outputs(measure.session(self.to_onnx(handle, key).proto), probe)
        errors: dict[str, float] = {}
        for name in rankable[:SENSITIVITY_MAX_NODES]:
            try:
                alone = method.leave_out(variant.config, [n for n in rankable if n != name], rankable)
                seed_everything(self.data.seed)
                changed = self.to_onnx(method.apply(handle, alone, self.data).model, None)
            except ValueError as e:  # e.g. a node the quantizer's pre-processing fused away
                log.warning("cannot rank node %s for %s: %s", name, variant.key, first_line(e))
                continue
            out = measure.run_outputs(measure.session(changed.proto), probe)
            errors[name] = self._error(out, reference)
        ranked = sorted(errors, key=lambda n: -errors[n])
        log.info(
            "%s sensitivity (%s): %s",
            variant.key,
            "1 - mean cosine" if self.metric == "cosine" else "relative output MSE",
            ", ".join(f"{n}={errors[n]:.3g}" for n in ranked),
        )
        self._sensitivity[cache_key] = ranked
        self.node_errors.update(errors)
        return ranked

    def _error(self, out: np.ndarray, reference: np.ndarray) -> float:
        if self.metric == "cosine":
            error = 1.0 - measure.score_outputs("cosine", out, None, reference)
        else:
            error = float(np.mean((out - reference) ** 2) / max(float(np.mean(reference**2)), 1e-12))
        return error if np.isfinite(error) else float("inf")  # a node whose change gives NaN: the most sensitive


# --------------------------------------------------------------------------- job


@dataclass
class JobResult:
    summary: JobSummary
    report: dict[str, Any]


# Upper bounds on what publish uploads from the (untrusted) compress step.
MAX_MODEL_BYTES = 64 * 2**30
MAX_SIDE_FILE_BYTES = 64 * 2**20  # config.pbtxt, report.json, report.html


def run(spec: CompressedModelSpec, workdir: Path, progress: Progress | None = None) -> JobResult:
    """The whole job for one spec in one process: download, compress, upload.

    Raises JobInputError for user-fixable problems. The Job's pod runs the same three
    steps in three containers instead (see ``jobs/entrypoint.py``).
    """
    progress = progress or (lambda task, done, total: None)
    inputs = fetch_inputs(spec, workdir, progress)
    result = compress(spec, workdir, inputs, progress)
    result.summary = publish(spec, workdir, result.summary)
    progress("upload", 1, 1)
    return result


def fetch_inputs(spec: CompressedModelSpec, workdir: Path, progress: Progress | None = None) -> Inputs:
    """Download source, datasets and distillation students into ``workdir``.

    Archives stay packed (the compress step unpacks them, bounded): this step holds the
    storage credentials and parses nothing it downloads.
    """
    progress = progress or (lambda task, done, total: None)
    for stale in (*INPUT_DIRS, ARTIFACT_DIR, INPUTS_FILE, SUMMARY_FILE):  # a reused workdir must not leak old files
        path = workdir / stale
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    students = sorted({uri for s in spec.compression.steps if (uri := _student_uri(s))})
    total = 2 + (spec.validation.calibration is not None) + len(students)

    def get(uri: str, rel: str, field_: str) -> str:
        return storage.fetch(uri, workdir / rel, field_, unpack=False).relative_to(workdir).as_posix()

    progress("download", 0, total)
    source = get(spec.source.storage_uri, "source", "source.storageUri")
    progress("download", 1, total)
    dataset = get(spec.validation.dataset.storage_uri, "dataset", "validation.dataset.storageUri")
    progress("download", 2, total)
    calibration = None
    if spec.validation.calibration:
        calibration = get(spec.validation.calibration.storage_uri, "calibration", "validation.calibration.storageUri")
    fetched = {}
    for i, uri in enumerate(students):
        fetched[uri] = get(uri, f"students/{i}", STUDENT_FIELD)
    progress("download", total, total)
    inputs = Inputs(source=source, dataset=dataset, calibration=calibration, students=fetched)
    inputs.save(workdir)
    return inputs


STUDENT_FIELD = "distill.student.storageUri"


def _student_uri(step: Step) -> str | None:
    return step.distill.student.storage_uri if step.distill else None


def compress(spec: CompressedModelSpec, workdir: Path, inputs: Inputs, progress: Progress | None = None) -> JobResult:
    """Everything that parses the (hostile) inputs: unpack, load, baseline, trials, gate.

    Writes the artifact (when validated) and the report under ``workdir/artifact`` and
    returns the summary; uploads nothing (:func:`publish` does).
    """
    started = time.perf_counter()
    progress = progress or (lambda task, done, total: None)
    rhash = recipe_hash(spec)
    shutil.rmtree(workdir / ARTIFACT_DIR, ignore_errors=True)
    hardware = measure.hardware()
    log.info("recipe %s on %s", rhash, hardware)
    device = _device()

    def local(rel: str, field_: str) -> Path:
        path = storage.unpack_archive(inputs.path(workdir, rel), field_)
        return path.resolve() if path.is_file() else path  # a downloaded file:// or pvc:// file is a link

    src_path = local(inputs.source, "source.storageUri")
    val_path = local(inputs.dataset, "validation.dataset.storageUri")
    calib_path = local(inputs.calibration, "validation.calibration.storageUri") if inputs.calibration else None
    students = {uri: local(rel, STUDENT_FIELD) for uri, rel in inputs.students.items()}

    source = load_source(
        src_path, spec.source.format, spec.source.task, uri=spec.source.storage_uri, limits=spec.limits
    )
    tokenizer_dir = src_path if spec.source.format == "hf-transformers" else None
    val = load_dataset(
        val_path,
        spec.validation.dataset.format,
        source.input_names,
        tokenizer_dir,
        limits=spec.limits,
        strings=spec.source.format == "onnx",
        dataset=spec.validation.dataset,
        task=spec.source.task,
        slice_columns={
            s.column: f"validation.slices[{i}].column"
            for i, s in enumerate(spec.validation.slices or [])
            if s.column is not None
        },
    )
    method_data, val = _method_data(spec, source, val, calib_path, tokenizer_dir, device)
    method_data.students = students
    export_sample = measure.collate_sample(val, EXPORT_SAMPLES)

    runner = Runner(source, method_data, export_sample, spec.validation.metric, _source_exporter(spec, src_path))
    try:
        baseline_onnx = runner.to_onnx(source, CacheKey())
    except ValueError as e:  # the source itself does not export: its inputs do not fit the data
        raise JobInputError(
            "source",
            f"cannot export the model to ONNX with a batch of the validation "
            f"data ({e}); check that validation.dataset fits the model's inputs",
        ) from e
    check_fits(baseline_onnx.proto, val, "validation.dataset")
    if spec.validation.metric in LABEL_METRICS and val.labels is None:
        raise JobInputError(
            "validation.dataset", f"metric {spec.validation.metric} needs labels: add an array y of class indices"
        )
    progress("baseline", 0, 1)
    try:  # a model onnxruntime cannot even load is the model's fault, not the data's
        measure.session(baseline_onnx.proto)
    except Exception as e:
        raise JobInputError("source.storageUri", f"onnxruntime cannot load the model: {first_line(e)}") from e
    try:
        with measure.time_limit(spec.limits.trial_timeout_seconds, _over_time(spec, "measuring the source model")):
            baseline = measure.measure(baseline_onnx.proto, val, spec.validation.metric, spec.validation.batch_size)
    except measure.TimeLimitExceeded as e:
        raise JobInputError("source.storageUri", f"{e}; raise the limit if the model is only slow") from e
    except measure.NonFiniteResult as e:  # the model's fault (the loader refuses NaN in the data)
        raise JobInputError("source.storageUri", f"{e} of validation.dataset; it cannot be a baseline") from e
    except Exception as e:
        culprit = blame.data_independent_failure(baseline_onnx.proto, str(e))
        if culprit is not None:  # no input reaches the node: it fails on any data
            raise JobInputError(
                "source.storageUri",
                f"node {culprit[0]!r} ({culprit[1]}) fails whatever the input data: {first_line(e)}",
            ) from e
        raise JobInputError("validation.dataset", f"the model cannot run on this data: {first_line(e)}") from e
    check_labels(spec, baseline.outputs, val)
    baseline_metrics = baseline.metrics
    log.info("baseline: %s", baseline_metrics.model_dump(exclude_none=True))
    progress("baseline", 1, 1)

    todo = candidates(
        spec.compression.steps,
        spec.compression.search.enabled,
        spec.compression.search.max_trials,
        calibrated=spec.validation.calibration is not None,
    )
    trials: list[Trial] = []
    for i, cand in enumerate(todo):
        if any(t.passed and cand.milder_than(todo[t.index]) for t in trials):
            log.info("trial %d skipped: milder than a passing trial, cannot beat it", i)
            continue
        progress("trials", len(trials), len(todo))
        trials.append(_trial(i, cand, runner, spec, baseline, val))
    progress("trials", len(todo), len(todo))

    outcome, chosen, reason = _decide(trials, spec)
    return _finish(
        spec, rhash, workdir, outcome, chosen, reason, trials, baseline_metrics, hardware, started, runner.node_errors
    )


def publish(spec: CompressedModelSpec, workdir: Path, summary: JobSummary) -> JobSummary:
    """Upload what the compress step wrote (the report, and the model when validated).

    The compress step is untrusted: only the expected files are uploaded, each a
    regular file within its size bound, and the artifact fields of the summary are
    recomputed here from the bytes uploaded. A Failed summary uploads nothing.
    """
    if summary.outcome == Outcome.failed.value:
        return summary
    rhash = recipe_hash(spec)
    target = spec.output.storage_uri.rstrip("/") + "/" + rhash
    out_dir = workdir / ARTIFACT_DIR
    validated = summary.outcome == Outcome.validated.value
    allowed = {report.JSON_NAME: MAX_SIDE_FILE_BYTES, report.HTML_NAME: MAX_SIDE_FILE_BYTES}
    if validated:
        allowed |= {artifact.MODEL_RELPATH: MAX_MODEL_BYTES, artifact.CONFIG_RELPATH: MAX_SIDE_FILE_BYTES}
    try:
        files = storage.checked_outputs(out_dir, allowed)
        if set(files) != set(allowed):
            raise storage.UnexpectedOutput(f"missing {', '.join(sorted(set(allowed) - set(files)))}")
        art = None
        if validated:
            digest, size = _digest(out_dir / artifact.MODEL_RELPATH)
            art = Artifact(storage_uri=target, sha256=digest, size_bytes=size)
            if summary.artifact and (summary.artifact.sha256, summary.artifact.size_bytes) != (digest, size):
                raise storage.UnexpectedOutput("the model file is not the one the summary describes")
    except storage.UnexpectedOutput as e:
        log.error("refusing the compress step's output: %s", e)
        return JobSummary(
            outcome=Outcome.failed,
            reason=f"the compression step left unexpected output ({e}); nothing was uploaded",
            recipe_hash=rhash,
        )
    storage.upload(out_dir, target, files=files)
    log.info("%s: %s", summary.outcome, summary.reason)
    return summary.model_copy(update={"recipe_hash": rhash, "artifact": art})


def _digest(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _trial(
    i: int, cand: Candidate, runner: Runner, spec: CompressedModelSpec, baseline: measure.Measured, val: Samples
) -> Trial:
    t0 = time.perf_counter()
    trial = Trial(index=i, recipe=[v.describe() for v in cand.variants], simplicity=cand.simplicity)
    try:
        # Model runs (sensitivity ranking, scoring, timing) stop at the limit; building
        # steps cannot be interrupted, but the first run after them stops the trial.
        with measure.time_limit(spec.limits.trial_timeout_seconds, _over_time(spec, "trial")):
            handle, trial.changes, trial.recipe = runner.apply(cand)
            measured = measure.measure(
                handle.proto,
                val,
                spec.validation.metric,
                spec.validation.batch_size,
                reference=baseline.outputs,
                timed=False,  # timed below, side by side with the baseline
            )
            # Speedup and latency limits are judged on timings taken side by side with the
            # baseline, not against a baseline timed minutes earlier under other load.
            base_now, cand_now = measure.side_by_side(baseline, measured, val, spec.validation.batch_size)
    except JobInputError:
        raise
    except Exception as e:  # one failing variant must not end the search; the report says why
        if out_of_memory(e):  # but running out of memory ends the job: the next variant would too
            raise
        # ValueError is how methods say "this config does not fit the model"; others get a traceback
        log.warning("trial %d could not be built: %s", i, first_line(e), exc_info=not isinstance(e, ValueError))
        trial.reason = f"error: {first_line(e)}"
        trial.seconds = time.perf_counter() - t0
        return trial
    paired = gate.Paired(baseline.per_sample, measured.per_sample, val.labels, val.groups)
    verdict = gate.evaluate(spec.validation, base_now, cand_now, paired)
    trial.metrics, trial.baseline_metrics, trial.model = cand_now, base_now, handle.onnx_model
    trial.passed, trial.failed = verdict.passed, verdict.failed
    trial.accuracy_drop, trial.speedup, trial.size_ratio = verdict.accuracy_drop, verdict.speedup, verdict.size_ratio
    trial.accuracy_drop_bound, trial.slice_drops = verdict.drop_bound, verdict.slice_drops
    trial.reason = "passed" if verdict.passed else "; ".join(verdict.failed)
    trial.seconds = time.perf_counter() - t0
    log.info("trial %d %s: %s (%s)", i, "PASSED" if trial.passed else "failed", trial.recipe, trial.reason)
    return trial


TIME_LIMIT_FIELD = "limits.trialTimeoutSeconds"


def _over_time(spec: CompressedModelSpec, what: str) -> str:
    return f"{what} exceeded its time limit of {spec.limits.trial_timeout_seconds} s ({TIME_LIMIT_FIELD})"


def _objective(trial: Trial, objective: str) -> float:
    m = trial.metrics
    assert m is not None
    return float(m.size_bytes or 0) if objective == "size" else float(m.latency_p50_ms or 0.0)


def latency_noise(trials: list[Trial]) -> tuple[float, str]:
    """(relative timing noise, how it was found) from the baseline's repeated timings.

    The baseline is timed again side by side with every measured trial, the way the
    trials themselves are timed: the same model each time, so the spread of its p50
    (max - min over the median) is what the machine's noise does to one latency. Never
    below ``MIN_LATENCY_NOISE``; ``UNKNOWN_LATENCY_NOISE`` with too few timings to tell.
    """
    timings = [t.baseline_metrics.latency_p50_ms or 0.0 for t in trials if t.baseline_metrics is not None]
    timings = [ms for ms in timings if ms > 0]
    if len(timings) < NOISE_MIN_TIMINGS:
        return UNKNOWN_LATENCY_NOISE, f"{UNKNOWN_LATENCY_NOISE:.0%}, assumed: too few baseline timings to measure it"
    spread = (max(timings) - min(timings)) / statistics.median(timings)
    how = f"spread of the baseline's {len(timings)} timings"
    if spread < MIN_LATENCY_NOISE:
        return MIN_LATENCY_NOISE, f"{MIN_LATENCY_NOISE:.0%}, the floor; {how}: {spread:.1%}"
    return spread, f"{spread:.0%}, the {how}"


def _choose(passing: list[Trial], objective: str, noise: float) -> tuple[Trial, list[Trial]]:
    """(the chosen trial, the trials tied with the best on the objective).

    Tied: within ``noise`` (relative) of the best; sizes are exact, so for the size
    objective only equal sizes tie. Among ties the rule is stable across runs of the
    same spec: smaller size, then simpler recipe (``Candidate.simplicity``), then the
    earlier trial.
    """
    best = min(_objective(t, objective) for t in passing)
    tolerance = 0.0 if objective == "size" else noise
    tied = [t for t in passing if _objective(t, objective) <= best * (1 + tolerance)]
    chosen = min(tied, key=lambda t: (_objective(t, "size"), t.simplicity, t.index))
    return chosen, tied


def _decide(trials: list[Trial], spec: CompressedModelSpec) -> tuple[Outcome, Trial | None, str]:
    """The outcome, the trial it is about, and why (the summary's reason)."""
    measured = [t for t in trials if t.metrics is not None]
    if not measured:
        errors = "; ".join(f"trial {t.index}: {t.reason}" for t in trials)
        return Outcome.failed, None, shorten(f"no candidate could be built ({errors})", 1000)
    passing = [t for t in measured if t.passed]
    if passing:
        objective = str(spec.compression.search.objective)
        noise, how = latency_noise(trials)
        best, tied = _choose(passing, objective, noise)
        reason = f"trial {best.index} met every threshold"
        if len(tied) > 1:
            within = "of the same size" if objective == "size" else f"within the timing noise ({how}) of the fastest"
            reason += (
                f"; trials {', '.join(str(t.index) for t in tied)} were {within}, so the smallest, "
                "then the simplest recipe, then the earliest was chosen"
            )
        return Outcome.validated, best, reason
    closest = min(measured, key=lambda t: (len(t.failed), t.accuracy_drop if t.accuracy_drop is not None else 0.0))
    tried = f"{len(trials)} trial{'s' if len(trials) != 1 else ''}"
    return Outcome.rejected, closest, f"no candidate met the thresholds ({tried}); closest: {'; '.join(closest.failed)}"


def _finish(
    spec: CompressedModelSpec,
    rhash: str,
    workdir: Path,
    outcome: Outcome,
    chosen: Trial | None,
    reason: str,
    trials: list[Trial],
    baseline: ModelMetrics,
    hardware: str,
    started: float,
    sensitivity: dict[str, float],
) -> JobResult:
    """Write model (when validated) + report under ``workdir/artifact``, build the summary."""
    out_dir = workdir / ARTIFACT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    target = spec.output.storage_uri.rstrip("/") + "/" + rhash
    art = None
    if outcome == Outcome.validated and chosen is not None and chosen.model is not None:
        digest, size = artifact.write_model(out_dir, chosen.model)
        art = Artifact(storage_uri=target, sha256=digest, size_bytes=size)
    results = Results(
        passed=outcome == Outcome.validated,
        metric=str(spec.validation.metric),
        # The chosen trial's side-by-side baseline, so baseline vs compressed latency and
        # the speedup shown next to them come from the same timing run.
        baseline=chosen.baseline_metrics if chosen and chosen.baseline_metrics else baseline,
        compressed=chosen.metrics if chosen else None,
        accuracy_drop=chosen.accuracy_drop if chosen else None,
        accuracy_drop_bound=chosen.accuracy_drop_bound if chosen else None,
        speedup=chosen.speedup if chosen else None,
        size_ratio=chosen.size_ratio if chosen else None,
        failed_thresholds=[] if outcome == Outcome.validated or chosen is None else chosen.failed,
        trials=len(trials),
        chosen_recipe=chosen.recipe if chosen and outcome == Outcome.validated else None,
        hardware=hardware,
    )
    if outcome == Outcome.rejected:
        reason += f" (report: {target}/{report.HTML_NAME})"
    summary = JobSummary(outcome=outcome, reason=reason, recipe_hash=rhash, artifact=art, results=results)
    data = report.build(
        spec,
        rhash,
        summary,
        [t.to_report() for t in trials],
        chosen.index if chosen else None,
        time.perf_counter() - started,
        sensitivity,
    )
    report.write(out_dir, data)
    return JobResult(summary=summary, report=data)


# --------------------------------------------------------------------------- inputs


def _method_data(
    spec: CompressedModelSpec,
    source: ModelHandle,
    val: Samples,
    calib_path: Path | None,
    tokenizer_dir: Path | None,
    device: str,
) -> tuple[MethodData, Samples]:
    """(data methods may read, data the gate measures on).

    Without a calibration dataset the validation set is split 50/50, so what methods
    train/calibrate on is never what the gate measures.
    """
    if calib_path is not None and spec.validation.calibration is not None:
        calib = load_dataset(
            calib_path,
            spec.validation.calibration.format,
            source.input_names,
            tokenizer_dir,
            field="validation.calibration",
            limits=spec.limits,
            strings=spec.source.format == "onnx",
            dataset=spec.validation.calibration,
            task=spec.source.task,
        )
        data = MethodData(
            task=spec.source.task,
            train=calib,
            calibration=calib.take(spec.validation.calibration.samples),
            device=device,
        )
        return data, val
    if len(val) < 2:
        raise JobInputError("validation.dataset", "needs at least 2 samples (or set validation.calibration)")
    train, heldout = val.split(0.5, seed=0)
    log.info(
        "no validation.calibration: methods use %d validation samples, the gate the other %d", len(train), len(heldout)
    )
    return MethodData(task=spec.source.task, train=train, calibration=train, device=device), heldout


def check_fits(model: onnx.ModelProto, samples: Samples, field: str) -> None:
    """Compare sample shapes with the model's declared inputs (batch axis excluded)."""
    initializers = {i.name for i in model.graph.initializer}
    first = samples.features[0]
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        if inp.name not in first:
            raise JobInputError(field, f"the model needs input {inp.name!r}; the data has {sorted(first)}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        shape = first[inp.name].shape
        want = tuple("?" if d is None else d for d in dims[1:])
        if len(shape) != len(dims) - 1 or any(d is not None and d != s for d, s in zip(dims[1:], shape, strict=False)):
            raise JobInputError(
                field,
                f"samples of {inp.name!r} have shape {tuple(shape)} but the model expects "
                f"{want} per sample (without the batch axis)",
            )


def check_labels(spec: CompressedModelSpec, outputs: np.ndarray, val: Samples) -> None:
    """Labels must exist for label metrics and match the model's output."""
    metric, labels = spec.validation.metric, val.labels
    field = "validation.dataset"
    if metric in LABEL_METRICS and labels is not None:
        classes = int(np.prod(outputs.shape[1:]))
        if not np.issubdtype(labels.dtype, np.number) or np.any(labels != np.round(labels)):
            raise JobInputError(field, f"labels must be class indices (integers); got dtype {labels.dtype}")
        if labels.ndim != 1 or labels.min() < 0 or labels.max() >= classes:
            raise JobInputError(
                field,
                f"labels must be class indices 0..{classes - 1} (the model has {classes} "
                f"outputs); found values {labels.min()}..{labels.max()}, shape {labels.shape}",
            )
    elif metric == "mse" and labels is not None and labels.size != outputs.size:
        raise JobInputError(
            field,
            f"targets y have {labels.size // max(len(labels), 1)} values per sample; "
            f"the model outputs {outputs.size // max(len(outputs), 1)}",
        )


def _source_exporter(spec: CompressedModelSpec, src_path: Path) -> Exporter | None:
    """The fused transformer export for hf-transformers sources ORT knows how to fuse."""
    if spec.source.format != "hf-transformers":
        return None
    from modelpress.jobs.hf import fused_exporter

    return fused_exporter(src_path)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
