"""The CompressedModel API: the single source of truth for the spec and status.

Everything reads these types: the CRD in ``crds/`` is generated from them
(``modelpress crd``), ``modelpress validate`` checks files against them, the operator
parses custom resources with them and the compression job reads its recipe through
them. The module is deliberately torch-free (pydantic only) so the operator image
never pulls in the ML stack.

Cross-field rules are written twice on purpose: once as pydantic validators (so the
CLI, the operator and the job reject bad input with a field path), and once as CEL
``x-kubernetes-validations`` attached to the same model (so the API server rejects it
at ``kubectl apply`` time). ``tests/test_cel.py`` runs both against the same cases so
they cannot drift apart.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "modelpress.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CompressedModel"
PLURAL = "compressedmodels"
SINGULAR = "compressedmodel"
SHORT_NAMES = ["cmodel"]
CATEGORIES = ["modelpress"]

# KServe's storage initializer understands these schemes; we accept exactly those. A pvc://
# URI starts with the claim's name, which the operator mounts into the Job (a DNS-1123 name).
_PVC_URI = r"pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?"
STORAGE_URI_PATTERN = rf"^((s3|gs|https?|file)://.+|{_PVC_URI})$"
# Artifacts are written with fsspec; nothing writes to an https:// URL.
OUTPUT_URI_PATTERN = rf"^((s3|gs|file)://.+|{_PVC_URI})$"
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_CANARY_STEPS = 10
MAX_NAME_LENGTH = 54
# The extended resource NVIDIA's device plugin advertises; the Job and the InferenceService ask for it.
GPU_RESOURCE = "nvidia.com/gpu"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``fieldPath`` points kubectl at the culprit."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class Spec(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields are errors.

    ``cel_rules`` holds the CEL twins of the model's cross-field validators; the CRD
    generator copies them into the schema node of the model.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )
    cel_rules: ClassVar[list[dict[str, str]]] = []


def exactly_one(model: BaseModel, *names: str) -> None:
    """Raise when not exactly one of the (python) field names is set."""
    present = [n for n in names if getattr(model, n) is not None]
    if len(present) != 1:
        wire = [type(model).model_fields[n].alias or n for n in names]
        raise ValueError(f"set exactly one of {', '.join(wire)} (got {len(present)})")


def one_of_rule(*wire_names: str) -> str:
    """CEL: exactly one of the optional fields is present."""
    return " + ".join(f"(has(self.{n}) ? 1 : 0)" for n in wire_names) + " == 1"


# --------------------------------------------------------------------------- enums


class ModelFormat(str, Enum):
    onnx = "onnx"
    pytorch_export = "pytorch-export"
    hf_transformers = "hf-transformers"
    sklearn = "sklearn"
    xgboost = "xgboost"
    lightgbm = "lightgbm"


class Task(str, Enum):
    classification = "classification"
    regression = "regression"
    embedding = "embedding"


class Metric(str, Enum):
    accuracy = "accuracy"
    top5 = "top5"
    f1 = "f1"
    mse = "mse"
    cosine = "cosine"


# Which metrics make sense for which task; checked by pydantic and CEL alike.
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    Task.classification.value: ("accuracy", "top5", "f1"),
    Task.regression.value: ("mse",),
    Task.embedding.value: ("cosine", "mse"),
}


class DatasetFormat(str, Enum):
    npz = "npz"
    jsonl = "jsonl"
    parquet = "parquet"
    csv = "csv"


# Tables of one sample per row: the formats featureColumns and labelColumn apply to.
TABULAR_FORMATS = (DatasetFormat.parquet.value, DatasetFormat.csv.value)


class Phase(str, Enum):
    Pending = "Pending"
    Queued = "Queued"
    Compressing = "Compressing"
    Rejected = "Rejected"
    Failed = "Failed"
    RollingOut = "RollingOut"
    Serving = "Serving"
    RolledBack = "RolledBack"
    Validated = "Validated"


# --------------------------------------------------------------------------- source


class Source(Spec):
    """The model to compress."""

    storage_uri: str = Field(
        pattern=STORAGE_URI_PATTERN,
        description="Where the model lives: s3://, gs://, pvc://, https:// or file:// "
        "(KServe's storage schemes). A file for onnx/pytorch-export and the tree formats, a directory "
        "for hf-transformers.",
    )
    format: ModelFormat = Field(
        description="onnx (.onnx), pytorch-export (torch.export .pt2), "
        "hf-transformers (a directory with config.json and safetensors weights), or a tree ensemble: "
        "sklearn (a scikit-learn forest, gradient boosting or decision tree saved with skops.io.dump; "
        "never a pickle), xgboost (Booster.save_model as .json or .ubj) or lightgbm (Booster.save_model "
        "text). Tree models are converted to ONNX when loaded and served by the same ONNX runtime."
    )
    task: Task = Field(description="What the model's output means; picks the metrics.")


# --------------------------------------------------------------------------- methods


class QuantizeMode(str, Enum):
    dynamic = "dynamic"
    static = "static"
    fp16 = "fp16"
    int4_weight_only = "int4-weight-only"


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Quantize(Spec):
    """Post-training quantization with ONNX Runtime's quantization tools."""

    mode: QuantizeMode = Field(
        default=QuantizeMode.dynamic,
        description="dynamic int8 (weights int8, activations at run time), static int8 "
        "(QDQ, calibrated), fp16, or int4-weight-only (MatMulNBits).",
    )
    per_channel: bool = Field(default=False, description="Per-channel weight scales.")
    exclude_nodes: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        max_length=512,
        description="ONNX node names kept in float (e.g. the most sensitive layers).",
    )
    calibration_method: CalibrationMethod = Field(default=CalibrationMethod.minmax, description="Static mode only.")
    block_size: Literal[16, 32, 64, 128, 256] = Field(
        default=32, description="int4-weight-only: weights per quantization block."
    )
    smoothing: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="SmoothQuant alpha: move activation outliers into the weights before int8 "
        "quantization (exact in float; one Mul per smoothed activation). 0.5-0.85 is typical; higher "
        "moves more. dynamic/static only; needs validation.calibration.",
    )
    cel_rules: ClassVar = [
        cel(
            "!has(self.smoothing) || !has(self.mode) || self.mode in ['dynamic', 'static']",
            "smoothing works with mode dynamic or static (int8) only",
            ".smoothing",
        )
    ]

    @model_validator(mode="after")
    def _smoothing_mode(self) -> Quantize:
        if self.smoothing is not None and self.mode not in ("dynamic", "static"):
            raise ValueError(f"smoothing works with mode dynamic or static (int8) only, not {self.mode}")
        return self


class PruneStructure(str, Enum):
    unstructured = "unstructured"
    neurons = "neurons"
    channels = "channels"


class Prune(Spec):
    """Magnitude pruning; structured variants physically shrink layers."""

    structure: PruneStructure = Field(
        default=PruneStructure.unstructured,
        description="unstructured zeroes weights (smaller when compressed, not faster); "
        "neurons/channels remove whole units of Linear/Conv layers (faster).",
    )
    sparsity: float = Field(ge=0.0, le=0.95, description="Fraction of weights (or units) removed.")
    fine_tune_epochs: int = Field(default=0, ge=0, le=100, description="Epochs of fine-tuning after pruning.")
    learning_rate: float = Field(
        default=1e-3, gt=0, le=1.0, description="Adam learning rate of fine-tuning; unused when fineTuneEpochs is 0."
    )


class TreeStudentKind(str, Enum):
    gradient_boosting = "gradientBoosting"
    random_forest = "randomForest"


class TreeStudent(Spec):
    """A tree ensemble fitted on the teacher's outputs (a tabular teacher: one 2-D float input)."""

    kind: TreeStudentKind = Field(
        default=TreeStudentKind.gradient_boosting,
        description="gradientBoosting: boosted trees, one per class each round; randomForest: one forest "
        "predicting every class at once.",
    )
    trees: int = Field(
        default=100, ge=1, le=2000, description="Boosting rounds (gradientBoosting) or trees (randomForest)."
    )
    max_depth: int = Field(default=6, ge=1, le=16, description="Depth limit of every tree.")
    learning_rate: float = Field(
        default=0.1, gt=0.0, le=1.0, description="Shrinkage of each boosting round (gradientBoosting only)."
    )


class MlpStudent(Spec):
    """A small ReLU network trained on the teacher's outputs (a tabular teacher: one 2-D float input)."""

    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [64, 32], min_length=1, max_length=8, description="Width of each hidden layer."
    )


# Students that need a torch copy of the teacher (its layers are shrunk, or it runs next to
# the student in training); trees and mlp students only need the teacher's outputs.
TORCH_STUDENTS = ("widthMultiplier", "storageUri")
TABULAR_STUDENTS = ("trees", "mlp")


class StudentSpec(Spec):
    """Shrink the teacher, bring your own student, or fit a tree ensemble or a small MLP on its outputs."""

    width_multiplier: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Student = teacher with layers this wide (torch sources)."
    )
    storage_uri: str | None = Field(
        default=None, pattern=STORAGE_URI_PATTERN, description="A pytorch-export student (torch sources)."
    )
    trees: TreeStudent | None = Field(
        default=None,
        description="A tree ensemble fitted on the teacher's soft outputs; any tabular source, neural or trees.",
    )
    mlp: MlpStudent | None = Field(
        default=None, description="A small MLP trained on the teacher's soft outputs; any tabular source."
    )
    cel_rules: ClassVar = [
        cel(
            one_of_rule(*TORCH_STUDENTS, *TABULAR_STUDENTS),
            f"set exactly one of {', '.join((*TORCH_STUDENTS, *TABULAR_STUDENTS))}",
        )
    ]

    @model_validator(mode="after")
    def _one(self) -> StudentSpec:
        exactly_one(self, "width_multiplier", "storage_uri", "trees", "mlp")
        return self

    @property
    def needs_torch(self) -> bool:
        """The student is made or trained from a torch copy of the teacher."""
        return self.width_multiplier is not None or self.storage_uri is not None


class Distill(Spec):
    """Knowledge distillation: the source model is the teacher."""

    student: StudentSpec = Field(description="The smaller model trained to imitate the source.")
    # Defaults measured on the digits MLP against labels-only training of the same student from the
    # same init (tests/methods/test_distill.py): T=1, alpha=0.5 matches or beats it; T=4 lost ~1 point.
    temperature: float = Field(
        default=1.0, gt=0.0, le=100.0, description="Softens classification logits (other tasks match outputs)."
    )
    alpha: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Weight of the soft (teacher) loss against the labels' loss."
    )
    epochs: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Passes over the training data: validation.calibration, else a split of validation.dataset.",
    )
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0, description="Adam learning rate of the student.")


class LowRank(Spec):
    """SVD factorization of Linear/Gemm weights into two thinner layers."""

    energy: float | None = Field(default=None, gt=0.0, le=1.0, description="Keep singular values up to this energy.")
    rank_ratio: float | None = Field(default=None, gt=0.0, le=1.0, description="Rank as a fraction of min(in, out).")
    cel_rules: ClassVar = [cel(one_of_rule("energy", "rankRatio"), "set exactly one of energy, rankRatio")]

    @model_validator(mode="after")
    def _one(self) -> LowRank:
        exactly_one(self, "energy", "rank_ratio")
        return self


class EnsembleKind(str, Enum):
    auto = "auto"
    boosted = "boosted"
    forest = "forest"


class PruneEnsemble(Spec):
    """Keep fewer trees of a tree ensemble (trees chosen on the method's data, never the held-out split)."""

    trees: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Keep at most this many trees. A multi-class boosted model grows one tree per class each "
        "round; there this counts rounds (the model's n_estimators).",
    )
    fraction: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Keep this fraction of the trees (rounded, at least one)."
    )
    ensemble: EnsembleKind = Field(
        default=EnsembleKind.auto,
        description="boosted: keep the prefix of the boosting order (at most the trees asked) that scores best; "
        "forest: ordered aggregation, adding one tree at a time, the one that makes the kept trees most accurate, "
        "then rescaling them so they still average. auto: forest for aggregate AVERAGE, boosted for a model with "
        "a base score or a link function; otherwise (e.g. scikit-learn forests, LightGBM regressors) whichever "
        "reading lets the first half of the trees reproduce the whole on the method's data. Set forest for a "
        "forest with a base score (e.g. XGBoost random forests).",
    )
    cel_rules: ClassVar = [cel(one_of_rule("trees", "fraction"), "set exactly one of trees, fraction")]

    @model_validator(mode="after")
    def _one(self) -> PruneEnsemble:
        exactly_one(self, "trees", "fraction")
        return self


class PruneTrees(Spec):
    """Turn splits of every tree into leaves; removed nodes are gone from the model.

    A collapsed subtree becomes one leaf holding the mean of its leaves weighted by how many
    of the method's samples reach each (uniform where none does).
    """

    max_depth: int | None = Field(default=None, ge=1, le=512, description="Splits below this depth become leaves.")
    min_samples_leaf: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="A branch reached by fewer of the method's samples (the first 5000 of validation.calibration, "
        "else of its half of validation.dataset) is removed: its sibling takes the split's place, or both become "
        "one leaf.",
    )
    leaf_tolerance: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="A subtree whose leaf values all lie within this fraction of the widest leaf-value range of "
        "any tree becomes one leaf.",
    )
    cost_complexity: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Minimal cost-complexity (weakest-link) pruning, scikit-learn's ccp_alpha, applied to each tree "
        "after the other options: a subtree becomes one leaf while the squared change of the tree's output it "
        "causes on the method's samples, per leaf removed, is at most this alpha (the change is divided by the "
        "number of samples and by the square of the widest leaf-value range of any tree). 0 prunes nothing; "
        "useful values are small (1e-4 to 1e-2).",
    )
    cel_rules: ClassVar = [
        cel(
            "has(self.maxDepth) || has(self.minSamplesLeaf) || has(self.leafTolerance) || has(self.costComplexity)",
            "set at least one of maxDepth, minSamplesLeaf, leafTolerance, costComplexity",
        )
    ]

    @model_validator(mode="after")
    def _some(self) -> PruneTrees:
        options = (self.max_depth, self.min_samples_leaf, self.leaf_tolerance, self.cost_complexity)
        if all(o is None for o in options):
            raise ValueError("set at least one of maxDepth, minSamplesLeaf, leafTolerance, costComplexity")
        return self


# Step key -> config type. The compression job registers one implementation per key.
METHODS: dict[str, type[Spec]] = {
    "quantize": Quantize,
    "prune": Prune,
    "distill": Distill,
    "lowRank": LowRank,
    "pruneEnsemble": PruneEnsemble,
    "pruneTrees": PruneTrees,
}

# Which source formats a method can work on. Torch-level methods (training,
# structural surgery) need a torch model; ONNX-level ones need only the graph.
# Kept here, torch-free, so `modelpress validate` and the operator can reject an
# unsupported combination before any Job starts.
ALL_FORMATS = tuple(f.value for f in ModelFormat)
TORCH_FORMATS = (ModelFormat.pytorch_export.value, ModelFormat.hf_transformers.value)
# Tree ensembles: converted to an ONNX TreeEnsemble graph on load; the neural methods
# (weights, channels, ranks, training) have nothing to work on there.
TREE_FORMATS = (ModelFormat.sklearn.value, ModelFormat.xgboost.value, ModelFormat.lightgbm.value)
NEURAL_FORMATS = tuple(f for f in ALL_FORMATS if f not in TREE_FORMATS)
# The tasks a tree source can have (its ONNX graph outputs class probabilities or values).
TREE_TASKS = (Task.classification.value, Task.regression.value)
METHOD_FORMATS: dict[str, tuple[str, ...]] = {
    "quantize": NEURAL_FORMATS,
    "lowRank": NEURAL_FORMATS,
    "prune": NEURAL_FORMATS,  # structured pruning of ONNX is rejected below
    # Every format: trees and mlp students need only the teacher's outputs; the torch students
    # (widthMultiplier, storageUri) need a torch source, checked per student (DISTILL_STUDENT_MESSAGE).
    "distill": ALL_FORMATS,
    # onnx too: an ONNX TreeEnsemble graph (the job refuses one without a tree ensemble).
    "pruneEnsemble": ("onnx", *TREE_FORMATS),
    "pruneTrees": ("onnx", *TREE_FORMATS),
}


class Step(Spec):
    """One compression step; exactly one key."""

    quantize: Quantize | None = Field(default=None, description="Post-training quantization; must be the last step.")
    prune: Prune | None = Field(default=None, description="Magnitude pruning, unstructured or of whole units.")
    distill: Distill | None = Field(
        default=None, description="Train a smaller student (trees and mlp students from any source, others torch)."
    )
    low_rank: LowRank | None = Field(default=None, description="Replace weight matrices by two thinner SVD factors.")
    prune_ensemble: PruneEnsemble | None = Field(
        default=None, description="Keep fewer trees of a tree ensemble (onnx and tree sources)."
    )
    prune_trees: PruneTrees | None = Field(
        default=None, description="Remove splits of every tree of a tree ensemble (onnx and tree sources)."
    )
    # Derived from METHODS: a new method adds its config type, its field here and its METHODS /
    # METHOD_FORMATS entries, and the rules follow.
    cel_rules: ClassVar = [cel(one_of_rule(*METHODS), f"each step has exactly one of {', '.join(METHODS)}")]

    @model_validator(mode="after")
    def _one(self) -> Step:
        exactly_one(self, *(Step.python_name(key) for key in METHODS))
        return self

    @property
    def method(self) -> str:
        """The step key, e.g. ``"lowRank"``."""
        for key in METHODS:
            if getattr(self, Step.python_name(key)) is not None:
                return key
        raise AssertionError("validated Step has one method")

    @property
    def config(self) -> Spec:
        return getattr(self, Step.python_name(self.method))

    @staticmethod
    def python_name(key: str) -> str:
        return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


class SearchObjective(str, Enum):
    latency = "latency"
    size = "size"


class Search(Spec):
    """Accuracy-aware search around the recipe: keep the best candidate that passes."""

    enabled: bool = Field(
        default=False,
        description="false: run the recipe as written. true: also try milder variants of each step (lower "
        "sparsity, higher rank, sensitive nodes kept in float) and keep the best one within the budget.",
    )
    max_trials: int = Field(
        default=8, ge=1, le=64, description="Most candidates compressed and measured, the written recipe included."
    )
    objective: SearchObjective = Field(
        default=SearchObjective.latency,
        description="How passing candidates are ranked: latency (lowest p50) or size (fewest bytes).",
    )


class Compression(Spec):
    """The compression recipe and whether to search around it."""

    steps: list[Step] = Field(
        min_length=1, max_length=16, description="Applied in order to the source model; quantize, if any, comes last."
    )
    search: Search = Field(default_factory=Search, description="Accuracy-aware search around steps; off by default.")


# --------------------------------------------------------------------------- validation


class Dataset(Spec):
    """Held-out data the source and every candidate are scored and timed on."""

    storage_uri: str = Field(
        pattern=STORAGE_URI_PATTERN,
        description="Where the data file lives: s3://, gs://, pvc://, https:// or file://.",
    )
    format: DatasetFormat = Field(
        description="npz with arrays x (inputs) and y (labels/targets, optional); "
        "jsonl with {text[, label]} per line; parquet or csv (with a header row): a table of one sample per "
        "row whose numeric feature columns become the model's single input, float32 [N, features] "
        "(see featureColumns, labelColumn)."
    )
    feature_columns: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        default=None,
        min_length=1,
        max_length=10_000,
        description="parquet/csv only: the columns that form the model's input, in this order (the order the "
        "model was trained with); unset: every column but the label column, in the file's order. Features "
        "must be numbers or booleans: string and categorical columns are refused, so encode them before, "
        "exactly as the model was trained. Nulls, NaN and infinity are refused. Models with more than one "
        "input need npz.",
    )
    label_column: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="parquet/csv only: the column of labels (classification: class indices 0..classes-1, "
        "read as int64) or targets (regression: read as float32). Unset: the column named label if the "
        "file has one, else the data has no labels.",
    )
    cel_rules: ClassVar = [
        cel(
            f"!has(self.featureColumns) || self.format in {list(TABULAR_FORMATS)}",
            "featureColumns applies to parquet and csv data only",
            ".featureColumns",
        ),
        cel(
            f"!has(self.labelColumn) || self.format in {list(TABULAR_FORMATS)}",
            "labelColumn applies to parquet and csv data only",
            ".labelColumn",
        ),
    ]

    @model_validator(mode="after")
    def _tabular_columns(self) -> Dataset:
        for name in ("feature_columns", "label_column"):
            if getattr(self, name) is not None and self.format not in TABULAR_FORMATS:
                wire = type(self).model_fields[name].alias
                raise ValueError(f"{wire} applies to parquet and csv data only, not {self.format}")
        return self


class Calibration(Dataset):
    """Data the methods learn from (quantization ranges, smoothing, fine-tuning, distillation), kept apart
    from the scored dataset; without it the methods use a split of validation.dataset."""

    samples: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="How many samples (the first ones) static quantization and smoothing calibrate on; "
        "fine-tuning and distillation train on the whole file.",
    )


class AccuracyDrop(Spec):
    """The accuracy budget: how much worse the compressed model may score."""

    absolute: float | None = Field(default=None, ge=0.0, description="In metric units.")
    relative: float | None = Field(default=None, ge=0.0, le=1.0, description="Fraction of the baseline score.")
    cel_rules: ClassVar = [cel(one_of_rule("absolute", "relative"), "set exactly one of absolute, relative")]

    @model_validator(mode="after")
    def _one(self) -> AccuracyDrop:
        exactly_one(self, "absolute", "relative")
        return self


class SliceBy(str, Enum):
    label = "label"
    column = "column"


# Metrics that are a mean over samples, so they can be scored on a slice of the samples
# (macro f1 of one class's samples is not that class's f1; mse and cosine have no classes).
SLICE_METRICS = ("accuracy", "top5")
# Bounds on a slice column's values: each value is a slice judged (and, with confidence,
# bootstrapped) on its own, and its name lands in the report and the status messages.
MAX_SLICE_VALUES = 1000
MAX_SLICE_VALUE_CHARS = 256


SLICE_COLUMN_MESSAGE = "a slice by column needs column: the dataset column whose values cut the slices"
SLICE_LABEL_MESSAGE = "column applies to slices by column only"
SLICE_FORMAT_MESSAGE = f"slices by column need a table: set validation.dataset.format to {' or '.join(TABULAR_FORMATS)}"


class Slice(Spec):
    """A part of the validation data judged on its own, so an average cannot hide a class the
    compressed model breaks."""

    by: SliceBy = Field(
        description="label: one slice per class of the dataset's labels (y); column: one slice per value of "
        "the dataset column named by column (parquet and csv data). Each slice is judged on validation.metric."
    )
    column: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="by column only: the dataset column whose values cut the slices, e.g. region (a slice "
        "region=emea per value). Read beside the features, never as one unless featureColumns lists it; "
        "strings, integers, booleans or floats (csv: the text as written); nulls are refused, and so are "
        f"more than {MAX_SLICE_VALUES} distinct values or a value longer than {MAX_SLICE_VALUE_CHARS} characters.",
    )
    max_accuracy_drop: float = Field(
        ge=0.0, le=1.0, description="Most drop of the metric on any one slice, absolute (in metric units)."
    )
    cel_rules: ClassVar = [
        cel("self.by != 'column' || has(self.column)", SLICE_COLUMN_MESSAGE, ".column"),
        cel("self.by == 'column' || !has(self.column)", SLICE_LABEL_MESSAGE, ".column"),
    ]

    @model_validator(mode="after")
    def _column(self) -> Slice:
        if self.by == SliceBy.column and self.column is None:
            raise ValueError(SLICE_COLUMN_MESSAGE)
        if self.by != SliceBy.column and self.column is not None:
            raise ValueError(SLICE_LABEL_MESSAGE)
        return self


def _slice_problems(spec: CompressedModelSpec) -> list[tuple[str, str]]:
    """Slices by a column need a dataset with columns (a spec rule: its CEL twin is in slice_cel_rules)."""
    validation = spec.validation
    if validation.dataset.format in TABULAR_FORMATS:
        return []
    return [
        (f"validation.slices[{i}].column", SLICE_FORMAT_MESSAGE)
        for i, s in enumerate(validation.slices or [])
        if s.by == SliceBy.column
    ]


def slice_cel_rules() -> list[dict[str, str]]:
    """CEL twin of :func:`_slice_problems`, on the spec."""
    return [
        cel(
            "!has(self.validation.slices) || !self.validation.slices.exists(s, s.by == 'column') "
            f"|| self.validation.dataset.format in {list(TABULAR_FORMATS)}",
            SLICE_FORMAT_MESSAGE,
            ".validation.slices",
        )
    ]


class Validation(Spec):
    """The gate: data, metric and thresholds a compressed model must meet to be served."""

    dataset: Dataset = Field(description="Held-out data both models are scored and timed on.")
    calibration: Calibration | None = Field(
        default=None, description="Needed by quantize mode static and smoothing; separate from dataset."
    )
    metric: Metric = Field(
        description="Score compared against the baseline: accuracy, top5 or f1 (classification), mse "
        "(regression, embedding) or cosine (embedding, similarity to the source's outputs)."
    )
    max_accuracy_drop: AccuracyDrop = Field(description="How much worse than the source the score may get.")
    min_speedup: float | None = Field(
        default=None,
        gt=0.0,
        description="Least source p50 / compressed p50 latency ratio, e.g. 1.5; unset: no minimum.",
    )
    max_latency_ms: float | None = Field(
        default=None, gt=0.0, description="Most p95 latency in milliseconds per batch of batchSize; unset: no limit."
    )
    max_size_mb: float | None = Field(
        default=None,
        gt=0.0,
        alias="maxSizeMB",
        description="Most artifact size in decimal megabytes (1 MB = 1,000,000 bytes); unset: no limit.",
    )
    batch_size: int = Field(default=1, ge=1, le=4096, description="Samples per inference call when timing and scoring.")
    confidence: float | None = Field(
        default=None,
        ge=0.5,
        le=0.999,
        description="When set, e.g. 0.95: the drop must stay within maxAccuracyDrop at its one-sided upper "
        "confidence bound (paired bootstrap over the validation samples, seeded), not only as a point "
        "estimate; unset: the point estimate is judged.",
    )
    slices: list[Slice] | None = Field(
        default=None,
        max_length=8,
        description="Parts of the data with their own drop budget (accuracy and top5 only); the worst failing "
        "slice is named.",
    )
    cel_rules: ClassVar = [
        cel(
            f"!has(self.slices) || size(self.slices) == 0 || self.metric in {list(SLICE_METRICS)}",
            f"validation.slices needs a per-sample metric: set metric to {' or '.join(SLICE_METRICS)}",
            ".slices",
        )
    ]

    @model_validator(mode="after")
    def _slice_metric(self) -> Validation:
        if self.slices and self.metric not in SLICE_METRICS:
            raise ValueError(
                f"validation.slices needs a per-sample metric: set metric to {' or '.join(SLICE_METRICS)} "
                f"(got {self.metric})"
            )
        return self


# --------------------------------------------------------------------------- job


# A non-negative Kubernetes quantity (apimachinery's resource.Quantity grammar, as
# controller-gen writes it for CRDs, without the sign a request or limit cannot have).
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# Label keys and values (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set):
# an optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=QUANTITY_PATTERN)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]
DnsSubdomain = Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, max_length=253)]  # names of Kubernetes objects


def label_key_problems(field: str, keys: Any) -> list[str]:
    """Map keys the API server would refuse (a CRD schema cannot constrain map keys)."""
    return [
        f"{field} key {k!r} is not a Kubernetes label key (letters, digits, '-', '_', '.', at most 63, "
        "optionally after a DNS-subdomain prefix and '/')"
        for k in keys
        if len(k) > 316 or not re.match(LABEL_KEY_PATTERN, k)
    ]


class Resources(Spec):
    """Kubernetes ResourceRequirements: requests and limits as quantities (500m, 2, 16Gi)."""

    # The API server also refuses a request above its limit; the operator reports that from
    # the Job it refuses (quantity arithmetic has no CEL twin that cel-python can check here).

    requests: dict[str, Quantity] = Field(default_factory=dict, description="What the pod is scheduled with.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="What the pod may use at most.")

    @model_validator(mode="after")
    def _resource_names(self) -> Resources:
        problems = label_key_problems("requests", self.requests) + label_key_problems("limits", self.limits)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Toleration(Spec):
    """A Kubernetes toleration of the compression pod for a node taint."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty matches every key (Exists).")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Equal (default) or Exists.")
    value: str | None = Field(default=None, description="Taint value for Equal; empty for Exists.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated before eviction."
    )
    # The API server's rules for tolerations (ValidateTolerations), so kubectl apply refuses them.
    cel_rules: ClassVar = [
        cel(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists",
            ".value",
        ),
        cel(
            "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            "operator must be Exists when key is empty (it then tolerates every taint)",
            ".operator",
        ),
        cel(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds needs effect NoExecute",
            ".tolerationSeconds",
        ),
        cel(
            f"!has(self.key) || self.key == '' || self.key.matches('{LABEL_KEY_PATTERN}')",
            "key must be a Kubernetes label key",
            ".key",
        ),
    ]

    @model_validator(mode="after")
    def _server_rules(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if not self.key and self.operator != "Exists":
            raise ValueError("operator must be Exists when key is empty (it then tolerates every taint)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        if self.key and not re.match(LABEL_KEY_PATTERN, self.key):
            raise ValueError("key must be a Kubernetes label key")
        return self


class JobSpec(Spec):
    """How the compression Job runs. Unset fields take the operator's defaults."""

    image: str | None = Field(
        default=None, min_length=1, description="Compression image; unset: the operator's --job-image."
    )
    gpu: int | None = Field(
        default=None, ge=0, le=16, description="nvidia.com/gpu per pod; 0 = CPU only; unset: the operator's default."
    )
    resources: Resources | None = Field(
        default=None, description="Requests and limits of the compression container; unset: the operator's defaults."
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None, description="Node labels the compression pod must run on (keys and values are label syntax)."
    )
    # Bounded so the per-item CEL rules stay within the API server's cost budget.
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Taints the compression pod tolerates (e.g. of a GPU node pool)."
    )
    priority_class_name: DnsSubdomain | None = Field(
        default=None, description="PriorityClass of the compression pod; unset: the cluster's default priority."
    )
    queue_name: str | None = Field(
        default=None, pattern=LABEL_VALUE_PATTERN, max_length=63, description="Kueue LocalQueue name."
    )
    service_account_name: DnsSubdomain | None = Field(
        default=None, description="Identity used to read and write storage."
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Wall-clock seconds before the Job is stopped as Failed; unset: operator default.",
    )
    backoff_limit: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="Retries after a pod failure (bad input and broken thresholds are never retried); "
        "unset: the operator's default.",
    )

    @model_validator(mode="after")
    def _node_selector_keys(self) -> JobSpec:
        problems = label_key_problems("nodeSelector", self.node_selector or {})
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Limits(Spec):
    """Bounds on what the untrusted model and data may make the job spend; more is refused, naming the limit."""

    max_samples: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="Most samples (npz rows, jsonl lines, table rows) validation.dataset or validation.calibration "
        "may hold.",
    )
    max_dataset_bytes: int = Field(
        default=2**30,
        ge=1024,
        le=256 * 2**30,
        description="Most bytes one dataset may take once decompressed (the arrays of an npz, a jsonl file, "
        "a csv file and its decoded columns, the uncompressed column chunks of a parquet file and their decoded "
        "values); the job holds the data in memory.",
    )
    max_columns: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Most columns a parquet or csv dataset may have: bounds the schema and metadata parsed "
        "before any data is read.",
    )
    max_jsonl_line_bytes: int = Field(
        default=2**20,
        ge=1024,
        le=16 * 2**20,
        description="Longest jsonl line in bytes: bounds the text handed to the tokenizer at once.",
    )
    trial_timeout_seconds: int = Field(
        default=1800,
        ge=1,
        le=86_400,
        description="Wall-clock limit for measuring the source model, and for each trial (build, "
        "sensitivity ranking, scoring, timing); a trial over it fails, the baseline over it fails the job.",
    )
    max_tree_model_bytes: int = Field(
        default=2**30,
        ge=1024,
        le=16 * 2**30,
        description="Largest tree model file (source.format sklearn, xgboost or lightgbm) in bytes, checked "
        "before it is parsed; a skops file's members count as unpacked.",
    )
    max_tree_nodes: int = Field(
        default=5_000_000,
        ge=1,
        le=20_000_000,
        description="Most nodes, over all trees, a tree model may hold (checked after parsing, before the "
        "conversion to ONNX, whose time and memory grow with it; an ONNX graph holds about 20 million at most).",
    )


class Output(Spec):
    """Where the validated artifact and its reports are written."""

    storage_uri: str = Field(
        pattern=OUTPUT_URI_PATTERN,
        description="Artifacts go under <storageUri>/<recipeHash>/.",
    )


# --------------------------------------------------------------------------- serving


class AutoscalingMetric(str, Enum):
    concurrency = "concurrency"
    rps = "rps"
    cpu = "cpu"
    memory = "memory"


class ScalingResource(str, Enum):
    cpu = "cpu"
    memory = "memory"


class ResourceScaling(Spec):
    """An HPA resource metric: scale on the pods' CPU or memory."""

    name: ScalingResource = Field(description="The pod resource scaled on: cpu or memory.")
    average_utilization: int | None = Field(
        default=None, ge=1, le=1000, description="Target percent of the pods' resource requests."
    )
    average_value: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$",
        description="Target quantity per pod, e.g. 2Gi.",
    )
    cel_rules: ClassVar = [
        cel(one_of_rule("averageUtilization", "averageValue"), "set exactly one of averageUtilization, averageValue")
    ]

    @model_validator(mode="after")
    def _one(self) -> ResourceScaling:
        exactly_one(self, "average_utilization", "average_value")
        return self


class ScalingTargetType(str, Enum):
    Value = "Value"
    AverageValue = "AverageValue"


class PrometheusScaling(Spec):
    """A KEDA external metric: scale on a PromQL query (KServe's prometheus backend)."""

    query: str = Field(min_length=1, description="PromQL returning one number, e.g. requests/s of this model.")
    server_address: str | None = Field(
        default=None,
        pattern=r"^https?://.+",
        description="Default: rollout.analysis.prometheusUrl, then the operator's Prometheus URL.",
    )
    target: float = Field(gt=0.0, description="Scale so the query stays at this value.")
    target_type: ScalingTargetType = Field(
        default=ScalingTargetType.AverageValue,
        description="AverageValue: the query's value per replica; Value: the query's value as is.",
    )


class ScalingMetric(Spec):
    """One entry of KServe's ``autoScaling.metrics`` (set exactly one kind)."""

    resource: ResourceScaling | None = None
    prometheus: PrometheusScaling | None = None
    cel_rules: ClassVar = [cel(one_of_rule("resource", "prometheus"), "set exactly one of resource, prometheus")]

    @model_validator(mode="after")
    def _one(self) -> ScalingMetric:
        exactly_one(self, "resource", "prometheus")
        return self


class Autoscaling(Spec):
    """Replica bounds and what the predictor scales on."""

    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest predictor replicas; 0 lets Knative or KEDA scale to zero."
    )
    max_replicas: int = Field(default=3, ge=1, le=1000, description="Most predictor replicas.")
    metric: AutoscalingMetric = Field(
        default=AutoscalingMetric.concurrency,
        description="KServe's scaleMetric: concurrency or rps (Knative), cpu or memory (HPA, utilization).",
    )
    target: int = Field(
        default=8,
        ge=1,
        description="KServe's scaleTarget per replica: in-flight requests, requests/s, or percent of the request.",
    )
    metrics: list[ScalingMetric] = Field(
        default_factory=list,
        max_length=8,
        description="HPA/KEDA metrics (KServe's autoScaling block, deploymentMode Standard). "
        "When set they replace metric and target; a prometheus entry makes KEDA the autoscaler.",
    )
    cel_rules: ClassVar = [
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas", ".minReplicas")
    ]

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be <= maxReplicas")
        return self


class PromQuery(Spec):
    """A custom canary check: a PromQL query and the range its value must stay in."""

    name: str = Field(
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        max_length=63,
        description="Names the value in status.rollout.lastAnalysis.values and in failure messages.",
    )
    query: str = Field(min_length=1, description="PromQL returning one number for the canary.")
    max: float | None = Field(default=None, description="The analysis fails when the value is above this.")
    min: float | None = Field(default=None, description="The analysis fails when the value is below this.")
    cel_rules: ClassVar = [cel("has(self.max) || has(self.min)", "set max, min or both")]

    @model_validator(mode="after")
    def _bound(self) -> PromQuery:
        if self.max is None and self.min is None:
            raise ValueError("set max, min or both")
        return self


class BusinessKind(str, Enum):
    rate = "rate"
    mean = "mean"


class Business(Spec):
    """Judge the canary on the outcomes users report back (the runtime's feedback endpoint): the
    canary's rate (binary outcomes, e.g. click-through) or mean (numeric, e.g. revenue per
    prediction) against the stable model's over the same window, each arm pinned by artifact_digest."""

    name: str = Field(
        default="business",
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        max_length=63,
        description="What the outcome is called in verdict messages, e.g. ctr or revenue.",
    )
    kind: BusinessKind = Field(
        description="rate: binary feedback (0/1), judged with a one-sided two-proportion z-test (a Wald test on "
        "Agresti-Caffo adjusted rates: exact enough at the sample sizes a rate needs, and defined at 0% and 100%). "
        "mean: numeric feedback, judged with Welch's one-sided t-test (the arms' variances differ; the runtime "
        "exports counts, sums and sums of squares, which is all Welch's t needs, whereas a bootstrap needs the "
        "individual outcomes)."
    )
    min_samples: int = Field(
        default=1000,
        ge=2,
        le=1_000_000_000,
        description="Feedback needed in each arm (canary and stable) before the outcome is judged; fewer holds the "
        "rollout (Inconclusive: waiting for feedback), never a pass and never a failure.",
    )
    max_relative_drop: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Most the canary's rate or mean may fall below the stable model's, relative to the stable "
        "model's (0.05: at most 5% below). The test's null hypothesis is canary >= (1 - maxRelativeDrop) x stable "
        "(for a negative stable mean: stable - maxRelativeDrop x |stable|); the analysis fails only when the data "
        "reject it at confidence.",
    )
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        le=0.9999,
        description="Confidence of the test: the analysis fails when the one-sided p-value is below 1 - confidence. "
        "A point estimate below the tolerated drop that is not significant holds the rollout for more feedback.",
    )


class Analysis(Spec):
    """Checks run on the canary's Prometheus metrics after every interval."""

    prometheus_url: str | None = Field(
        default=None, pattern=r"^https?://.+", description="Default: the operator's setting."
    )
    max_error_rate: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Most fraction of canary requests answered with an error."
    )
    max_latency_ratio: float = Field(
        default=1.2, gt=0.0, description="Most canary p95 / stable p95 latency over the interval (1.2 = 20% slower)."
    )
    min_requests: int = Field(
        default=50,
        ge=1,
        description="Fewer canary requests in an interval is no verdict; an error rate above maxErrorRate is "
        "also compared with the stable model's only when the stable model served at least this many.",
    )
    significance: float = Field(
        default=0.05,
        gt=0.0,
        le=0.5,
        description="An error rate above maxErrorRate fails only when a one-sided two-proportion z-test says "
        "the canary errs more than the stable model with a p-value below this; otherwise Inconclusive.",
    )
    queries: list[PromQuery] = Field(
        default_factory=list, max_length=16, description="Extra PromQL checks; every one must stay in range."
    )
    failure_limit: int = Field(
        default=2, ge=1, le=100, description="Failed analyses (not necessarily in a row) that roll the canary back."
    )
    business: Business | None = Field(
        default=None,
        description="Also judge the canary on business outcomes reported as feedback (click-through, revenue); "
        "unset: errors, latency and queries only.",
    )


# Which shadow agreement checks fit which task: (python field name, default bound or None).
# Classification compares top-1 and the softmax distributions, embeddings their direction,
# regression the values; a regression model's tolerable error is the user's to say.
SHADOW_CHECKS_BY_TASK: dict[str, dict[str, float | None]] = {
    Task.classification.value: {"min_agreement": 0.99, "max_kl_divergence": None},
    Task.embedding.value: {"min_cosine": 0.99, "max_abs_error": None},
    Task.regression.value: {"max_abs_error": None, "max_relative_error": None},
}


class Shadow(Spec):
    """Shadow stage: before the first canary step (and, with duringCanary, at every step) the
    runtime serving the stable model also runs a sample of live requests through the candidate,
    off the request path, and compares the answers; users only ever get the stable answer."""

    sample_fraction: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="Fraction of the stable model's requests also run through the candidate.",
    )
    min_samples: int = Field(
        default=500,
        ge=1,
        le=10_000_000,
        description="Compared samples (rows) needed before agreement is judged; fewer is Inconclusive, never a pass.",
    )
    duration: str = Field(
        default="5m",
        pattern=DURATION_PATTERN,
        description="Least time in shadow before the first canary step, even once minSamples are in.",
    )
    min_agreement: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="classification: least share of samples whose top-1 class matches the stable model's (default "
        "0.99). Fails only when the one-sided Wilson upper bound at confidence is below it; a point estimate below "
        "it that is not significant holds the stage for more samples.",
    )
    max_kl_divergence: float | None = Field(
        default=None,
        ge=0.0,
        description="classification: most mean KL divergence (nats) of the candidate's class distribution from "
        "the stable model's (softmax of the outputs unless they already are probabilities).",
    )
    min_cosine: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="embedding: least mean cosine similarity of the candidate's output to the stable's (default 0.99).",
    )
    max_abs_error: float | None = Field(
        default=None, ge=0.0, description="regression, embedding: most mean absolute difference per output value."
    )
    max_relative_error: float | None = Field(
        default=None,
        ge=0.0,
        description="regression: most mean relative error, sum |candidate - stable| / sum |stable| per sample.",
    )
    confidence: float = Field(
        default=0.95, ge=0.5, le=0.999, description="Confidence of the agreement test (see minAgreement)."
    )
    during_canary: bool = Field(
        default=True,
        description="Keep shadowing while the canary takes traffic, so each step is also judged on agreement "
        "(in Knative mode the stable revision keeps shadowing either way).",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Sampled requests waiting for the candidate; more are dropped (and counted), never delayed.",
    )

    def checks(self, task: str) -> dict[str, float]:
        """The bounds judged for ``task``: those set, else the task's defaults (wire names)."""
        out: dict[str, float] = {}
        for name, default in SHADOW_CHECKS_BY_TASK[task].items():
            value = getattr(self, name)
            value = default if value is None and not self._any_set(task) else value
            if value is not None:
                out[type(self).model_fields[name].alias or name] = value
        return out

    def _any_set(self, task: str) -> bool:
        return any(getattr(self, name) is not None for name in SHADOW_CHECKS_BY_TASK[task])


def _steps_increasing_rule(n: int = MAX_CANARY_STEPS) -> str:
    # Portable CEL (no list-library functions): unrolled pairwise comparisons,
    # bounded by maxItems so the API server's cost estimate stays small.
    return " && ".join(f"(size(self.steps) < {i + 2} || self.steps[{i}] < self.steps[{i + 1}])" for i in range(n - 1))


class RolloutStrategy(str, Enum):
    canary = "canary"
    immediate = "immediate"


class Baseline(str, Enum):
    previous = "previous"
    source = "source"


class Rollout(Spec):
    """How a new artifact replaces what the InferenceService serves."""

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.canary,
        description="canary: shift traffic step by step behind analysis; immediate: serve 100% at once.",
    )
    baseline: Baseline = Field(
        default=Baseline.previous,
        description="previous: what the InferenceService serves now; source: serve the "
        "uncompressed model first and canary the compressed one against it.",
    )
    steps: list[Annotated[int, Field(ge=1, le=99)]] = Field(
        default_factory=lambda: [10, 25, 50],
        min_length=1,
        max_length=MAX_CANARY_STEPS,
        description="Canary traffic percentages, strictly increasing; promotion to 100% follows the last.",
    )
    interval: str = Field(
        default="5m",
        pattern=DURATION_PATTERN,
        description="How long each step runs before it is analysed, e.g. 30s, 5m, 1h30m.",
    )
    analysis: Analysis = Field(default_factory=Analysis, description="What a step must pass to advance.")
    shadow: Shadow | None = Field(
        default=None,
        description="Compare the candidate's answers with the stable model's on a sample of live traffic before "
        "(and while) it takes any; unset: no shadow stage.",
    )
    paused: bool = Field(default=False, description="true holds the canary at its current step until set false.")
    cel_rules: ClassVar = [
        cel(_steps_increasing_rule(), "steps must be strictly increasing percentages below 100", ".steps")
    ]

    @model_validator(mode="after")
    def _increasing(self) -> Rollout:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"steps must be strictly increasing, got {self.steps}")
        return self


class Runtime(str, Enum):
    modelpress_onnx = "modelpress-onnx"
    kserve_tritonserver = "kserve-tritonserver"


class DeploymentMode(str, Enum):
    Knative = "Knative"
    Standard = "Standard"


class Serving(Spec):
    """How the validated model is served with KServe; omit to stop at Validated."""

    enabled: bool = Field(default=True, description="false: compress and validate only; no InferenceService.")
    inference_service: str | None = Field(
        default=None, pattern=DNS1123_LABEL, max_length=63, description="Default: metadata.name."
    )
    runtime: Runtime = Field(
        default=Runtime.modelpress_onnx,
        description="KServe ServingRuntime: modelpress-onnx (installed by the chart) or kserve-tritonserver.",
    )
    deployment_mode: DeploymentMode = Field(
        default=DeploymentMode.Standard,
        description="Standard (Deployment + HPA/KEDA) or Knative (serverless, scales on requests).",
    )
    resources: Resources = Field(default_factory=Resources, description="Requests and limits of each predictor pod.")
    gpu: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu per predictor pod; 0 = CPU.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Replica bounds and scaling metric.")
    rollout: Rollout = Field(default_factory=Rollout, description="How a new artifact replaces the served one.")
    cel_rules: ClassVar = [
        cel(
            "!has(self.autoscaling) || !has(self.autoscaling.metrics) || size(self.autoscaling.metrics) == 0 "
            "|| !has(self.deploymentMode) || self.deploymentMode == 'Standard'",
            "autoscaling.metrics needs deploymentMode Standard (Knative scales on metric and target)",
            ".autoscaling",
        )
    ]

    @model_validator(mode="after")
    def _metrics_need_standard(self) -> Serving:
        if self.autoscaling.metrics and self.deployment_mode != DeploymentMode.Standard.value:
            raise ValueError("autoscaling.metrics needs deploymentMode Standard (Knative scales on metric and target)")
        return self


# --------------------------------------------------------------------------- spec


def _shadow_tasks(wire_name: str) -> list[str]:
    """The tasks whose shadow comparison has the check ``wire_name``."""
    name = next(n for n, f in Shadow.model_fields.items() if f.alias == wire_name)
    return [task for task, checks in SHADOW_CHECKS_BY_TASK.items() if name in checks]


SHADOW_THRESHOLDS = ("minAgreement", "maxKlDivergence", "minCosine", "maxAbsError", "maxRelativeError")


def _shadow_problems(spec: CompressedModelSpec) -> list[tuple[str, str]]:
    shadow = spec.serving.rollout.shadow if spec.serving else None
    if shadow is None:
        return []
    out: list[tuple[str, str]] = []
    task = spec.source.task
    for wire in SHADOW_THRESHOLDS:
        name = next(n for n, f in Shadow.model_fields.items() if f.alias == wire)
        if getattr(shadow, name) is not None and task not in _shadow_tasks(wire):
            fitting = [w for w in SHADOW_THRESHOLDS if task in _shadow_tasks(w)]
            out.append(
                (
                    f"serving.rollout.shadow.{wire}",
                    f"{wire} does not fit task {task!r}; its shadow checks are {', '.join(fitting)}",
                )
            )
    if not shadow.checks(task):
        out.append(
            (
                "serving.rollout.shadow",
                f"a {task} model has no default agreement bound: set maxAbsError or maxRelativeError",
            )
        )
    if spec.serving and spec.serving.runtime != Runtime.modelpress_onnx.value:
        # Only modelpress-onnx loads the candidate next to the stable model and compares.
        out.append(("serving.rollout.shadow", SHADOW_RUNTIME_MESSAGE))
    return out


SHADOW_RUNTIME_MESSAGE = (
    "serving.rollout.shadow needs serving.runtime modelpress-onnx (it runs the candidate next to the stable model)"
)


TREE_TASK_MESSAGE = (
    f"a tree ensemble (source.format {', '.join(TREE_FORMATS)}) predicts classes or values: "
    f"set source.task to {' or '.join(TREE_TASKS)}"
)
DISTILL_STUDENT_MESSAGE = (
    "a widthMultiplier or storageUri student is trained next to a torch copy of the teacher: set source.format "
    f"to {' or '.join(TORCH_FORMATS)}, or use a trees or mlp student (tabular sources of any format)"
)


def method_format_problem(method: str, fmt: str) -> str:
    """Why ``method`` cannot work on a ``fmt`` source, and the fix (pydantic's message)."""
    if fmt in TREE_FORMATS:
        fitting = [m for m, formats in METHOD_FORMATS.items() if fmt in formats]
        fix = f"use {' or '.join(fitting)}" if fitting else "use onnx, pytorch-export or hf-transformers"
        return f"{method} works on neural networks, not on a {fmt} tree ensemble (source.format): {fix}"
    if METHOD_FORMATS[method] == TORCH_FORMATS:
        return f"{method} needs a trainable source: set source.format to one of {', '.join(TORCH_FORMATS)}"
    return f"{method} does not work on source.format {fmt}: use one of {', '.join(METHOD_FORMATS[method])}"


def method_format_cel_rules() -> list[dict[str, str]]:
    """CEL twins of the METHOD_FORMATS check in :func:`semantic_problems`, one per method
    that does not take every format (the CEL message is fixed, so it lists the formats)."""
    rules = []
    for method, formats in METHOD_FORMATS.items():
        if set(formats) == set(ALL_FORMATS):
            continue
        if formats == TORCH_FORMATS:
            message = f"{method} needs a trainable source: set source.format to {' or '.join(formats)}"
        else:
            message = f"{method} does not work on this source.format: set it to one of {', '.join(formats)}"
        rules.append(
            cel(
                f"!self.compression.steps.exists(s, has(s.{method})) || self.source.format in {list(formats)}",
                message,
                ".compression.steps",
            )
        )
    return rules


def shadow_cel_rules() -> list[dict[str, str]]:
    """CEL twins of :func:`_shadow_problems`, on the spec (they need source.task)."""
    has_shadow = "has(self.serving) && has(self.serving.rollout) && has(self.serving.rollout.shadow)"
    rules = []
    for wire in SHADOW_THRESHOLDS:
        tasks = _shadow_tasks(wire)
        rules.append(
            cel(
                f"!({has_shadow} && has(self.serving.rollout.shadow.{wire})) || self.source.task in {tasks}",
                f"serving.rollout.shadow.{wire} fits only task {' or '.join(tasks)}",
                ".serving.rollout.shadow",
            )
        )
    rules.append(
        cel(
            f"!({has_shadow}) || self.source.task != 'regression' || has(self.serving.rollout.shadow.maxAbsError) "
            "|| has(self.serving.rollout.shadow.maxRelativeError)",
            "a regression model has no default agreement bound: set serving.rollout.shadow.maxAbsError or "
            "maxRelativeError",
            ".serving.rollout.shadow",
        )
    )
    rules.append(
        cel(
            f"!({has_shadow}) || !has(self.serving.runtime) || self.serving.runtime == 'modelpress-onnx'",
            SHADOW_RUNTIME_MESSAGE,
            ".serving.rollout.shadow",
        )
    )
    return rules


class CompressedModelSpec(Spec):
    """What to compress, how to validate it and how to serve it."""

    source: Source = Field(description="The model to compress.")
    compression: Compression = Field(description="The compression recipe and whether to search around it.")
    validation: Validation = Field(description="The gate a compressed model must pass to be served.")
    job: JobSpec = Field(default_factory=JobSpec, description="Scheduling of the compression Job.")
    output: Output = Field(description="Where the artifact is written.")
    serving: Serving | None = Field(default=None, description="KServe serving and rollout; omit to stop at Validated.")
    limits: Limits = Field(default_factory=Limits, description="Bounds on what the inputs may make the Job spend.")

    cel_rules: ClassVar = [
        cel(
            "!self.compression.steps.exists(s, has(s.quantize) && has(s.quantize.mode) "
            "&& s.quantize.mode == 'static') || has(self.validation.calibration)",
            "static quantization needs calibration data: set validation.calibration",
            ".validation",
        ),
        cel(
            "!self.compression.steps.exists(s, has(s.quantize) && has(s.quantize.smoothing)) "
            "|| has(self.validation.calibration)",
            "quantize.smoothing needs calibration data: set validation.calibration",
            ".validation",
        ),
        cel(
            " || ".join(
                f"(self.source.task == '{task}' && self.validation.metric in {list(metrics)})"
                for task, metrics in METRICS_BY_TASK.items()
            ),
            "validation.metric does not fit source.task: classification takes accuracy, "
            "top5 or f1; regression takes mse; embedding takes cosine or mse",
            ".validation.metric",
        ),
        *method_format_cel_rules(),
        cel(
            "!self.compression.steps.exists(s, has(s.distill) && "
            f"({' || '.join(f'has(s.distill.student.{k})' for k in TORCH_STUDENTS)})) "
            f"|| self.source.format in {list(TORCH_FORMATS)}",
            DISTILL_STUDENT_MESSAGE,
            ".compression.steps",
        ),
        cel(
            f"!(self.source.format in {list(TREE_FORMATS)}) || self.source.task in {list(TREE_TASKS)}",
            TREE_TASK_MESSAGE,
            ".source.task",
        ),
        cel(
            "!self.compression.steps.exists(s, has(s.prune) && has(s.prune.structure) "
            "&& s.prune.structure != 'unstructured') || self.source.format != 'onnx'",
            "structured pruning needs a torch source (pytorch-export or hf-transformers); "
            "for onnx use structure: unstructured",
            ".compression.steps",
        ),
        cel(
            "!self.compression.steps.exists(s, has(s.quantize)) || "
            "(has(self.compression.steps[size(self.compression.steps) - 1].quantize) && "
            "self.compression.steps.filter(s, has(s.quantize)).size() == 1)",
            "nothing can follow quantize: make quantize the last step, and use it once",
            ".compression.steps",
        ),
        *shadow_cel_rules(),
        *slice_cel_rules(),
    ]

    @model_validator(mode="after")
    def _cross_field(self) -> CompressedModelSpec:
        problems = [p for _, p in semantic_problems(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def semantic_problems(spec: CompressedModelSpec) -> list[tuple[str, str]]:
    """(field path, message) for every cross-field rule the spec breaks.

    Shared by the pydantic validator above and by the operator, which reports the
    same messages in the SpecValid condition.
    """
    out: list[tuple[str, str]] = []
    steps = spec.compression.steps
    fmt = spec.source.format
    if any(s.quantize and s.quantize.mode == "static" for s in steps) and not spec.validation.calibration:
        out.append(("validation.calibration", "static quantization needs calibration data: set validation.calibration"))
    if any(s.quantize and s.quantize.smoothing is not None for s in steps) and not spec.validation.calibration:
        out.append(("validation.calibration", "quantize.smoothing needs calibration data: set validation.calibration"))
    allowed = METRICS_BY_TASK[spec.source.task]
    if spec.validation.metric not in allowed:
        out.append(
            (
                "validation.metric",
                f"metric {spec.validation.metric!r} does not fit task {spec.source.task!r}; use one of {', '.join(allowed)}",
            )
        )
    if fmt in TREE_FORMATS and spec.source.task not in TREE_TASKS:
        out.append(("source.task", TREE_TASK_MESSAGE))
    for i, s in enumerate(steps):
        if fmt not in METHOD_FORMATS[s.method]:
            out.append((f"compression.steps[{i}].{s.method}", method_format_problem(s.method, fmt)))
        if s.distill and s.distill.student.needs_torch and fmt not in TORCH_FORMATS:
            out.append((f"compression.steps[{i}].distill.student", DISTILL_STUDENT_MESSAGE))
        if s.prune and s.prune.structure != "unstructured" and fmt == "onnx":
            out.append(
                (
                    f"compression.steps[{i}].prune.structure",
                    "structured pruning needs a torch source (pytorch-export or hf-transformers); "
                    "for onnx use structure: unstructured",
                )
            )
    out.extend(_shadow_problems(spec))
    out.extend(_slice_problems(spec))
    # Quantized graphs are ONNX-only: nothing torch-level can follow a quantize step.
    quantized_at = next((i for i, s in enumerate(steps) if s.quantize), None)
    if quantized_at is not None:
        for i, s in enumerate(steps[quantized_at + 1 :], start=quantized_at + 1):
            out.append((f"compression.steps[{i}]", f"{s.method} cannot follow quantize: put quantize last"))
    return out


# --------------------------------------------------------------------------- status


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(Spec):
    """A Kubernetes API convention condition."""

    type: str = Field(description="SpecValid, Compressed, Validated, RolledOut or Ready; one entry per type.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase, machine-readable.")
    message: str = Field(default="", description="Human-readable details of the last transition.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339, UTC); unchanged while status stays."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec this condition was computed from."
    )


class Artifact(Spec):
    """The validated model the Job wrote."""

    storage_uri: str = Field(default="", description="Directory holding the model and its reports, under output.")
    sha256: str = Field(
        default="", description="Hex SHA-256 of model.onnx; the canary analysis checks the served model against it."
    )
    size_bytes: int = Field(default=0, description="Size of model.onnx in bytes.")


class ModelMetrics(Spec):
    """Measurements of one model on the validation data (same code for every model)."""

    score: float | None = Field(default=None, description="validation.metric on validation.dataset.")
    latency_p50_ms: float | None = Field(default=None, description="Median latency of one batch, milliseconds.")
    latency_p95_ms: float | None = Field(
        default=None, description="95th-percentile latency of one batch, milliseconds."
    )
    throughput: float | None = Field(default=None, description="Samples per second.")
    size_bytes: int | None = Field(default=None, description="Size of the serialized ONNX model in bytes.")
    parameters: int | None = Field(default=None, description="Number of weights (initializer elements).")


class Results(Spec):
    """The gate's measurements of the chosen candidate against the source."""

    passed: bool | None = Field(default=None, description="Whether every validation threshold was met.")
    metric: str | None = Field(default=None, description="The validation.metric the scores are in.")
    baseline: ModelMetrics | None = Field(default=None, description="The source model, measured by the same code.")
    compressed: ModelMetrics | None = Field(default=None, description="The chosen compressed model.")
    accuracy_drop: float | None = Field(
        default=None, description="Baseline score minus compressed score in metric units; positive = worse."
    )
    accuracy_drop_bound: float | None = Field(
        default=None,
        description="One-sided upper confidence bound of accuracyDrop at validation.confidence (when set).",
    )
    speedup: float | None = Field(default=None, description="Baseline p50 / compressed p50 latency; above 1 = faster.")
    size_ratio: float | None = Field(default=None, description="compressed / baseline bytes")
    failed_thresholds: list[str] = Field(
        default_factory=list, description="One line per broken threshold (empty when passed)."
    )
    trials: int | None = Field(default=None, description="Candidates measured (1 without search).")
    chosen_recipe: list[dict[str, Any]] | None = Field(
        default=None, description="The steps of the chosen candidate, in spec.compression.steps form."
    )
    hardware: str | None = Field(default=None, description="CPU, GPU and runtime providers the numbers come from.")


class AnalysisResult(Spec):
    """One canary analysis verdict."""

    time: str | None = Field(default=None, description="When the analysis ran (ISO 8601).")
    verdict: Literal["Pass", "Fail", "Inconclusive"] | None = Field(
        default=None, description="Pass advances, Fail counts towards failureLimit, Inconclusive holds the step."
    )
    values: dict[str, float] = Field(
        default_factory=dict, description="Measured values by name (custom queries by their name)."
    )
    message: str = Field(default="", description="Why: the broken checks, or what was missing.")


class RolloutEvent(Spec):
    """One entry of the rollout history."""

    time: str = Field(description="When it happened (ISO 8601).")
    event: str = Field(description="Started, StepAdvanced, Promoted, RolledBack, ...")
    percent: int | None = Field(default=None, description="Canary traffic percent after the event.")
    message: str = Field(default="", description="Details, e.g. the analysis that decided it.")


class RolloutStage(str, Enum):
    Shadow = "Shadow"
    Canary = "Canary"


class RolloutStatus(Spec):
    """Where the rollout of the artifact stands."""

    inference_service: str | None = Field(default=None, description="Name of the InferenceService served.")
    stable_storage_uri: str | None = Field(default=None, description="Artifact serving the stable traffic.")
    canary_storage_uri: str | None = Field(default=None, description="Artifact on canary; unset when no canary runs.")
    stage: RolloutStage | None = Field(
        default=None,
        description="Shadow: the candidate answers a sample of the stable model's requests off the request path "
        "and serves no user; Canary: it serves canaryPercent. Unset when no rollout runs.",
    )
    canary_percent: int | None = Field(default=None, description="Percent of traffic sent to the canary now.")
    step: int | None = Field(
        default=None, description="Index into serving.rollout.steps; unset in shadow and when no canary runs."
    )
    failures: int = Field(default=0, description="Failed analyses of this canary so far (see failureLimit).")
    last_analysis: AnalysisResult | None = Field(default=None, description="The latest canary analysis.")
    history: list[RolloutEvent] = Field(
        default_factory=list, max_length=50, description="Rollout events, oldest first; the last 50 are kept."
    )


class CompressedModelStatus(Spec):
    """Written by the operator only."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec the operator last acted on."
    )
    phase: Phase | None = Field(
        default=None,
        description="Pending, Queued, Compressing, then Validated, Rejected or Failed; with serving, "
        "RollingOut, then Serving or RolledBack.",
    )
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes conditions, one per type.")
    recipe_hash: str | None = Field(
        default=None, description="Content hash of source, compression and validation; names the artifact directory."
    )
    job_name: str | None = Field(default=None, description="The compression Job of this recipe.")
    artifact: Artifact | None = Field(default=None, description="The validated model, once written.")
    results: Results | None = Field(default=None, description="Measurements of the last compression.")
    rollout: RolloutStatus | None = Field(default=None, description="Canary rollout state, when serving is enabled.")


class ObjectMeta(BaseModel):
    """The part of metadata we read; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow")
    # The Job is named <name>-<hash8> and Job names must fit a 63-character label.
    name: str = Field(pattern=DNS1123_LABEL, max_length=MAX_NAME_LENGTH)
    namespace: str | None = None


class CompressedModel(BaseModel):
    """A whole resource as written in YAML."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["modelpress.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["CompressedModel"]
    metadata: ObjectMeta
    spec: CompressedModelSpec
    status: CompressedModelStatus | None = None


def recipe_hash(spec: CompressedModelSpec) -> str:
    """Content address of what determines the artifact: source + compression + validation
    (+ limits set to other than their defaults).

    Defaults are filled in before hashing, so writing a default explicitly or leaving it
    out gives the same hash; ``job``, ``output`` and ``serving`` are left out, so moving
    the Job to another node pool or changing the rollout never recompresses. Unset
    optional fields (None) are left out too, so adding an optional field to the API does
    not recompress every existing model.
    """
    import hashlib
    import json

    # Changing what goes in here or how it is serialised changes every model's hash, so
    # every model in every cluster is recompressed on upgrade: tests/test_recipe_hash.py
    # pins the result to literals; a change there is a release note.
    material = spec.model_dump(
        by_alias=True, mode="json", include={"source", "compression", "validation"}, exclude_none=True
    )
    # Limits decide whether an input is accepted, so they are part of the recipe, but only
    # where they differ from the defaults: adding them did not recompress existing models.
    limits = spec.limits.model_dump(by_alias=True, mode="json", exclude_defaults=True)
    if limits:
        material["limits"] = limits
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
