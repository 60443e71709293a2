"""Loading validation / calibration data into :class:`~modelpress.jobs.dataset.Samples`.

* npz: array ``x`` (one model input) or one array per model input name, plus an
  optional ``y`` of labels/targets. Read with ``allow_pickle=False``: object arrays
  are refused, never unpickled.
* jsonl: ``{"text": ..., "label"?: ...}`` rows, tokenized by
  :func:`modelpress.jobs.text.load_jsonl` with the model's tokenizer.

Only the file format is checked here; whether the data fits the model (shapes,
dtypes, label range) is checked by the pipeline against the loaded model.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from modelpress.jobs.dataset import Samples
from modelpress.jobs.errors import JobInputError

log = logging.getLogger(__name__)


def load_dataset(
    path: Path,
    fmt: str,
    input_names: list[str],
    tokenizer_dir: Path | None = None,
    field: str = "validation.dataset",
) -> Samples:
    """Read a dataset file; raise :class:`JobInputError` naming ``field`` when it is unusable."""
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        if len(files) != 1:
            raise JobInputError(f"{field}.storageUri", f"expected one {fmt} file, found {len(files)}")
        path = files[0]
    if fmt == "npz":
        samples = _load_npz(path, input_names, field)
    elif fmt == "jsonl":
        if tokenizer_dir is None:
            raise JobInputError(f"{field}.format", "jsonl (text) data needs a hf-transformers source with a tokenizer")
        from modelpress.jobs.text import load_jsonl

        try:
            samples = load_jsonl(path, tokenizer_dir, field=f"{field}.storageUri", input_names=input_names)
        except JobInputError:
            raise
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            raise JobInputError(f"{field}.storageUri", f"{path.name} is not usable jsonl: {e}") from e
    else:
        raise JobInputError(f"{field}.format", f"unknown format {fmt!r}; use npz or jsonl")
    if len(samples) == 0:
        raise JobInputError(f"{field}.storageUri", f"{path.name} holds no samples; provide at least one")
    log.info("loaded %d samples from %s (%s)", len(samples), path.name, field)
    return samples


def _load_npz(path: Path, input_names: list[str], field: str) -> Samples:
    uri_field = f"{field}.storageUri"
    if not zipfile.is_zipfile(path):
        raise JobInputError(uri_field, f"{path.name} is not an .npz file (write it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:  # object arrays need pickle: refused
        raise JobInputError(
            uri_field, f"{path.name} holds object arrays, which would need unpickling; store plain numeric arrays"
        ) from e
    except Exception as e:
        raise JobInputError(uri_field, f"cannot read {path.name}: {e}") from e
    labels = arrays.pop("y", None)
    if set(input_names) <= set(arrays):
        inputs = {n: arrays[n] for n in input_names}
    elif "x" in arrays and len(input_names) == 1:
        inputs = {input_names[0]: arrays["x"]}
    else:
        want = "x" if len(input_names) == 1 else ", ".join(input_names)
        raise JobInputError(
            uri_field,
            f"{path.name} has arrays {sorted(arrays) or 'none'}; the model needs {want} (and optionally y for labels)",
        )
    lengths = {n: len(a) if a.ndim else 0 for n, a in inputs.items()}
    if labels is not None:
        lengths["y"] = len(labels) if labels.ndim else 0
    if len(set(lengths.values())) != 1:
        raise JobInputError(uri_field, f"arrays in {path.name} disagree on the number of samples: {lengths}")
    n = next(iter(lengths.values()))
    features = [{name: a[i] for name, a in inputs.items()} for i in range(n)]
    return Samples(features, labels)
