"""JSON-lines text datasets -> tokenized :class:`Samples`.

One row per line: ``{"text": "...", "label": 3}`` (label optional, but all or none).
Each text is tokenized on its own without padding, so batches are padded only to their
longest sentence when collated: latency is measured on sequences as users send them,
not on a fixed 256-token block. Bad rows are reported by line number with the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modelpress.jobs.dataset import Samples
from modelpress.jobs.errors import JobInputError
from modelpress.jobs.hf import load_tokenizer, model_input_names

DATASET_FIELD = "validation.dataset.storageUri"
# Tokenizers without a configured limit report this sentinel (int(1e30)) as their maximum.
UNSET_MAX_LENGTH = 10**12


def load_jsonl(
    path: Path, tokenizer_dir: Path, field: str = DATASET_FIELD, input_names: list[str] | None = None
) -> Samples:
    """Read ``path`` and tokenize every row with the tokenizer in ``tokenizer_dir`` (offline).

    ``input_names`` are the loaded model's inputs (the pipeline passes them, so data and
    model can never disagree); without a model at hand they follow the same rule the
    model loader uses. ``field`` is the spec field named in error messages.
    """
    texts, labels = read_rows(Path(path), field)
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    names = list(input_names) if input_names is not None else model_input_names(tokenizer_dir, tokenizer)
    encoded = tokenizer(texts, truncation=True, max_length=max_length(tokenizer, tokenizer_dir), padding=False)
    missing = [name for name in names if name not in encoded]
    if missing:
        raise JobInputError(
            field,
            f"the model takes {missing} but the tokenizer in {tokenizer_dir} produces {sorted(encoded)}; "
            "give text data to a model whose inputs its tokenizer makes, or use npz with those arrays",
        )
    features = [{name: np.asarray(encoded[name][i], dtype=np.int64) for name in names} for i in range(len(texts))]
    pad_values: dict[str, int | float] = {name: 0 for name in names}
    pad_values["input_ids"] = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return Samples(features, labels, pad_values)


def read_rows(path: Path, field: str = DATASET_FIELD) -> tuple[list[str], np.ndarray | None]:
    """Texts and (all or no) labels; int labels -> int64, any float label -> float32."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise JobInputError(field, f"{path} is not UTF-8 text ({err}); save the JSON lines as UTF-8") from err
    texts: list[str] = []
    labels: list[int | float | None] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text, label = parse_row(line, f"{path}:{number}", field)
        texts.append(text)
        labels.append(label)
    if not texts:
        raise JobInputError(field, f'{path} has no rows; expected one JSON object per line like {{"text": ...}}')
    return texts, label_array(labels, f"{path}", lines, field)


def parse_row(line: str, where: str, field: str = DATASET_FIELD) -> tuple[str, int | float | None]:
    """One ``{"text": str, "label"?: number}`` row; ``where`` is ``file:line`` for messages."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise JobInputError(field, f"{where}: not valid JSON ({err.msg}); write one JSON object per line") from err
    if not isinstance(row, dict):
        raise JobInputError(field, f'{where}: expected an object like {{"text": ...}}, got {type(row).__name__}')
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise JobInputError(field, f'{where}: missing or empty "text" (a non-empty string)')
    label = row.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, float))):
        raise JobInputError(field, f'{where}: "label" must be a number (class index or target), got {label!r}')
    return text, label


def label_array(
    labels: list[int | float | None], path: str, lines: list[str], field: str = DATASET_FIELD
) -> np.ndarray | None:
    """All labels or none: a dataset with a few missing labels would silently shrink the metric."""
    present = [label is not None for label in labels]
    if not any(present):
        return None
    if not all(present):
        missing = present.index(False)
        line = first_line_of_row(lines, missing)
        raise JobInputError(
            field,
            f'{path}:{line}: row has no "label" but others do; label every row or none',
        )
    if all(isinstance(label, int) for label in labels):
        return np.asarray(labels, dtype=np.int64)
    return np.asarray(labels, dtype=np.float32)


def first_line_of_row(lines: list[str], row_index: int) -> int:
    """The 1-based file line of the ``row_index``-th non-blank row."""
    seen = -1
    for number, line in enumerate(lines, start=1):
        if line.strip():
            seen += 1
            if seen == row_index:
                return number
    return len(lines)


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
