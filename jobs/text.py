"""JSON-lines text datasets -> tokenized :class:`Samples`.

One row per line: ``{"text": "...", "label": 3}`` (label optional, but all or none).
Each text is tokenized on its own without padding, so batches are padded only to their
longest sentence when collated: latency is measured on sequences as users send them,
not on a fixed 256-token block. Bad rows are reported by line number with the fix.

The file is untrusted: its size, line length and row count are checked against
``spec.limits`` while it is read, nesting against :data:`MAX_JSON_DEPTH` before a line
is parsed, and texts reach the tokenizer in bounded batches.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from modelpress.api import Limits
from modelpress.jobs.dataset import Samples
from modelpress.jobs.errors import JobInputError, first_line

DATASET_FIELD = "validation.dataset.storageUri"
# Tokenizers without a configured limit report this sentinel (int(1e30)) as their maximum.
UNSET_MAX_LENGTH = 10**12
# A row is a flat object; deeper JSON is refused before parsing (Python's parser recurses
# per level and would end in RecursionError around 1000 levels).
MAX_JSON_DEPTH = 32
# Characters handed to the tokenizer per call: a fast tokenizer needs ~150 bytes of memory
# per input character (measured with all-MiniLM-L6-v2's), so this caps it near 300 MB.
TOKENIZE_BATCH_CHARS = 2 * 2**20
# A JSON string token (escapes included), written so the regex engine never backtracks.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


def load_jsonl(
    path: Path,
    tokenizer_dir: Path,
    field: str = DATASET_FIELD,
    input_names: list[str] | None = None,
    limits: Limits | None = None,
) -> Samples:
    """Read ``path`` and tokenize every row with the tokenizer in ``tokenizer_dir`` (offline).

    ``input_names`` are the loaded model's inputs (the pipeline passes them, so data and
    model can never disagree); without a model at hand they follow the same rule the
    model loader uses. ``field`` is the spec field named in error messages.
    """
    # Here, not at the top: jobs.hf loads models with torch and transformers, which the
    # reading and checking of rows below (and the serving image) never need.
    from modelpress.jobs.hf import load_tokenizer, model_input_names

    texts, labels = read_rows(Path(path), field, limits)
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    names = list(input_names) if input_names is not None else model_input_names(tokenizer_dir, tokenizer)
    truncate_at = max_length(tokenizer, tokenizer_dir)
    features: list[dict[str, np.ndarray]] = []
    for chunk in _chunks(texts, TOKENIZE_BATCH_CHARS):
        encoded = tokenizer(chunk, truncation=True, max_length=truncate_at, padding=False)
        missing = [name for name in names if name not in encoded]
        if missing:
            raise JobInputError(
                field,
                f"the model takes {missing} but the tokenizer in {tokenizer_dir} produces {sorted(encoded)}; "
                "give text data to a model whose inputs its tokenizer makes, or use npz with those arrays",
            )
        features += [{name: np.asarray(encoded[name][i], dtype=np.int64) for name in names} for i in range(len(chunk))]
    pad_values: dict[str, int | float] = {name: 0 for name in names}
    pad_values["input_ids"] = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return Samples(features, labels, pad_values)


def _chunks(texts: list[str], max_chars: int) -> list[list[str]]:
    """Consecutive runs of ``texts`` of at most ``max_chars`` characters (at least one text each)."""
    out: list[list[str]] = []
    size = max_chars
    for text in texts:
        if size + len(text) > max_chars:
            out.append([])
            size = 0
        out[-1].append(text)
        size += len(text)
    return out


def read_rows(
    path: Path, field: str = DATASET_FIELD, limits: Limits | None = None
) -> tuple[list[str], np.ndarray | None]:
    """Texts and (all or no) labels; int labels -> int64, any float label -> float32.

    Read line by line, so neither a huge file nor a huge line is ever held whole.
    """
    limits = limits or Limits()
    size = path.stat().st_size
    if size > limits.max_dataset_bytes:
        raise JobInputError(
            field,
            f"{path.name} has {size} bytes, more than the limit of {limits.max_dataset_bytes} (limits.maxDatasetBytes)",
        )
    texts: list[str] = []
    labels: list[int | float | None] = []
    numbers: list[int] = []
    with path.open("rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(limits.max_jsonl_line_bytes + 1), b""), start=1):
            if len(raw) > limits.max_jsonl_line_bytes and not raw.endswith(b"\n"):
                raise JobInputError(
                    field,
                    f"{path.name}:{number}: line longer than the limit of {limits.max_jsonl_line_bytes} bytes "
                    "(limits.maxJsonlLineBytes)",
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise JobInputError(
                    field, f"{path.name}:{number}: not UTF-8 text ({err}); save the JSON lines as UTF-8"
                ) from err
            if not line.strip():
                continue
            if len(texts) == limits.max_samples:
                raise JobInputError(
                    field, f"{path.name} has more than {limits.max_samples} rows, the limit (limits.maxSamples)"
                )
            text, label = parse_row(line, f"{path.name}:{number}", field)
            texts.append(text)
            labels.append(label)
            numbers.append(number)
    if not texts:
        raise JobInputError(field, f'{path.name} has no rows; expected one JSON object per line like {{"text": ...}}')
    return texts, label_array(labels, numbers, path.name, field)


def parse_row(line: str, where: str, field: str = DATASET_FIELD) -> tuple[str, int | float | None]:
    """One ``{"text": str, "label"?: number}`` row; ``where`` is ``file:line`` for messages."""
    too_deep = f'{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; a row is a flat object like {{"text": ...}}'
    if json_depth(line) > MAX_JSON_DEPTH:
        raise JobInputError(field, too_deep)
    try:
        row = json.loads(line)
    except RecursionError as err:  # only for invalid JSON that json_depth could not follow
        raise JobInputError(field, too_deep) from err
    except ValueError as err:  # JSONDecodeError, or an integer longer than Python converts
        reason = err.msg if isinstance(err, json.JSONDecodeError) else first_line(err)
        raise JobInputError(field, f"{where}: not valid JSON ({reason}); write one JSON object per line") from err
    if not isinstance(row, dict):
        raise JobInputError(field, f'{where}: expected an object like {{"text": ...}}, got {type(row).__name__}')
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise JobInputError(field, f'{where}: missing or empty "text" (a non-empty string)')
    label = row.get("label")
    if label is not None and (
        isinstance(label, bool)
        or not isinstance(label, (int, float))
        or (isinstance(label, float) and not math.isfinite(label))
    ):  # Python's json reads NaN and Infinity, which no metric can use
        raise JobInputError(field, f'{where}: "label" must be a number (a finite class index or target), got {label!r}')
    return text, label


def json_depth(line: str) -> int:
    """How deep ``[`` and ``{`` nest in a JSON text, outside strings.

    Exact for valid JSON (outside its strings, JSON has no quotes or backslashes);
    hand-written because the standard parser has no depth limit of its own, and
    vectorised because a line may be megabytes of brackets.
    """
    codes = np.frombuffer(_JSON_STRING.sub("", line).encode(), np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int64) - np.isin(codes, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def label_array(
    labels: list[int | float | None], numbers: list[int], name: str, field: str = DATASET_FIELD
) -> np.ndarray | None:
    """All labels or none: a dataset with a few missing labels would silently shrink the metric.

    ``numbers``: the file line of each row, for the message.
    """
    present = [label is not None for label in labels]
    if not any(present):
        return None
    if not all(present):
        line = numbers[present.index(False)]
        raise JobInputError(field, f'{name}:{line}: row has no "label" but others do; label every row or none')
    if all(isinstance(label, int) for label in labels):
        try:
            return np.asarray(labels, dtype=np.int64)
        except OverflowError as err:  # Python ints are unbounded; a class index is not
            raise JobInputError(field, f'{name}: a "label" does not fit in 64 bits; labels are class indices') from err
    return np.asarray(labels, dtype=np.float32)


def max_length(tokenizer, tokenizer_dir: Path) -> int:
    """Truncation length: sentence-transformers' max_seq_length when set, else the tokenizer's limit."""
    limits = []
    st_config = tokenizer_dir / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            limits.append(value)
    if tokenizer.model_max_length < UNSET_MAX_LENGTH:
        limits.append(int(tokenizer.model_max_length))
    return min(limits) if limits else 512
