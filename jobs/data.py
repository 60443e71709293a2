"""Loading validation / calibration data into :class:`~modelpress.jobs.dataset.Samples`.

* npz: array ``x`` (one model input) or one array per model input name, plus an
  optional ``y`` of labels/targets. Read with ``allow_pickle=False``: object arrays
  are refused, never unpickled. Before any array is read, every member's declared
  size (zip header) and shape and dtype (.npy header) are checked against
  ``spec.limits``, so a few hundred bytes claiming 10^9 rows, or a deflate bomb,
  costs nothing.
* jsonl: ``{"text": ..., "label"?: ...}`` rows, tokenized by
  :func:`modelpress.jobs.text.load_jsonl` with the model's tokenizer.
* parquet, csv: a table of one sample per row, read by
  :func:`modelpress.jobs.tabular.load_table` into the model's single input.

Only the file format is checked here; whether the data fits the model (shapes,
dtypes, label range) is checked by the pipeline against the loaded model.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelpress.api import TABULAR_FORMATS, Dataset, Limits
from modelpress.jobs.dataset import Samples
from modelpress.jobs.errors import JobInputError, first_line

log = logging.getLogger(__name__)

# Arrays in one npz: a model's inputs plus y. zipfile holds every central-directory entry
# in memory, so a file of millions of tiny entries is refused before it is opened.
MAX_NPZ_MEMBERS = 1024
NUMERIC_KINDS = "biuf"  # bool, integers, floats: what any model input or label can be
STRING_KINDS = "US"  # string tensors, which only an ONNX source can take


def load_dataset(
    path: Path,
    fmt: str,
    input_names: list[str],
    tokenizer_dir: Path | None = None,
    field: str = "validation.dataset",
    limits: Limits | None = None,
    strings: bool = False,
    dataset: Dataset | None = None,
    task: str | None = None,
    slice_columns: dict[str, str] | None = None,
) -> Samples:
    """Read a dataset file; raise :class:`JobInputError` naming ``field`` when it is unusable.

    ``limits`` bound what the file may make the job hold (default: the API's defaults);
    ``strings``: string arrays are allowed as model inputs (ONNX sources only: torch
    models take tensors of numbers). ``dataset`` (its featureColumns and labelColumn)
    and ``task`` (the labels' dtype) are read for parquet and csv only, and so are
    ``slice_columns`` (column -> the spec field naming it) into :attr:`Samples.groups`.
    """
    limits = limits or Limits()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        if len(files) != 1:
            raise JobInputError(f"{field}.storageUri", f"expected one {fmt} file, found {len(files)}")
        path = files[0]
    if fmt == "npz":
        samples = _load_npz(path, input_names, field, limits, strings)
    elif fmt == "jsonl":
        if tokenizer_dir is None:
            raise JobInputError(f"{field}.format", "jsonl (text) data needs a hf-transformers source with a tokenizer")
        from modelpress.jobs.text import load_jsonl

        try:
            samples = load_jsonl(
                path, tokenizer_dir, field=f"{field}.storageUri", input_names=input_names, limits=limits
            )
        except JobInputError:
            raise
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            raise JobInputError(f"{field}.storageUri", f"{path.name} is not usable jsonl: {e}") from e
    elif fmt in TABULAR_FORMATS:
        from modelpress.jobs.tabular import load_table

        samples = load_table(path, fmt, input_names, field, limits, dataset, task, slice_columns)
    else:
        raise JobInputError(f"{field}.format", f"unknown format {fmt!r}; use npz, jsonl, parquet or csv")
    if len(samples) == 0:
        raise JobInputError(f"{field}.storageUri", f"{path.name} holds no samples; provide at least one")
    log.info("loaded %d samples from %s (%s)", len(samples), path.name, field)
    return samples


@dataclass(frozen=True)
class _Member:
    """One array of an npz as its headers declare it, before anything is read."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0


def _load_npz(path: Path, input_names: list[str], field: str, limits: Limits, strings: bool) -> Samples:
    uri_field = f"{field}.storageUri"
    if not zipfile.is_zipfile(path):
        raise JobInputError(uri_field, f"{path.name} is not an .npz file (write it with numpy.savez)")
    try:
        if _member_count(path) > MAX_NPZ_MEMBERS:
            raise JobInputError(uri_field, f"{path.name} holds more than {MAX_NPZ_MEMBERS} arrays, the limit")
        with zipfile.ZipFile(path) as zf:
            members = _members(zf, path.name, uri_field, limits)
            wanted = _pick(members, input_names, path.name, uri_field)
            arrays: dict[str, np.ndarray] = {}
            for key, name in wanted.items():
                _check_member(members[name], name, key == "y", strings, path.name, uri_field, limits)
                with zf.open(members[name].info) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
                _check_finite(arrays[key], name, path.name, uri_field)
    except JobInputError:
        raise
    except Exception as e:  # a corrupt zip or .npy: zipfile and numpy raise many types
        raise JobInputError(uri_field, f"cannot read {path.name}: {first_line(e)}") from e
    labels = arrays.pop("y", None)
    inputs = arrays
    lengths = {n: len(a) if a.ndim else 0 for n, a in inputs.items()}
    if labels is not None:
        lengths["y"] = len(labels) if labels.ndim else 0
    if len(set(lengths.values())) != 1:
        raise JobInputError(uri_field, f"arrays in {path.name} disagree on the number of samples: {lengths}")
    n = next(iter(lengths.values()))
    features = [{name: a[i] for name, a in inputs.items()} for i in range(n)]
    return Samples(features, labels)


def _member_count(path: Path) -> int:
    """Entries in the zip's central directory, read from its end record alone.

    zipfile has no public call for this; ``_EndRecData`` (unchanged since Python 2.6)
    finds and parses the end record, zip64 included, without reading the entries.
    """
    with path.open("rb") as f:
        end = zipfile._EndRecData(f)  # type: ignore[attr-defined]
    return int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else 0  # type: ignore[attr-defined]


def _members(zf: zipfile.ZipFile, name: str, field: str, limits: Limits) -> dict[str, _Member]:
    """Every array's declared shape and dtype, checked against its declared decompressed size.

    zipfile never decompresses more than an entry's declared ``file_size`` (it stops
    there and checks the CRC), so once an array's shape fits in that size and the sizes
    fit ``limits.maxDatasetBytes``, reading it allocates at most that much.
    """
    out: dict[str, _Member] = {}
    total = 0
    for info in zf.infolist():
        if not info.filename.endswith(".npy") or info.is_dir():
            raise JobInputError(
                field, f"{name}: entry {info.filename!r} is not a .npy array; write it with numpy.savez"
            )
        array = info.filename.removesuffix(".npy")
        if array in out:  # two entries of one name: which one a reader takes is up to the reader
            raise JobInputError(field, f"{name} holds two entries named {info.filename!r}")
        total += info.file_size
        if total > limits.max_dataset_bytes:
            raise JobInputError(
                field,
                f"{name} decompresses to more than {limits.max_dataset_bytes} bytes, the limit (limits.maxDatasetBytes)",
            )
        with zf.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:  # 3.0 exists only for structured dtypes with non-latin-1 field names
                raise JobInputError(
                    field, f"{name}: array {array!r} is in .npy format {version}; write it with numpy.savez"
                )
            data_bytes = info.file_size - member.tell()
        if dtype.hasobject:
            raise JobInputError(
                field, f"{name} holds object arrays, which would need unpickling; store plain numeric arrays"
            )
        declared = math.prod(shape) * dtype.itemsize
        if min(shape, default=0) < 0 or declared > data_bytes:
            raise JobInputError(
                field,
                f"{name}: array {array!r} declares shape {shape} of {dtype} ({declared} bytes) "
                f"but holds {data_bytes} bytes",
            )
        out[array] = _Member(info, tuple(shape), dtype)
    return out


def _pick(members: dict[str, _Member], input_names: list[str], name: str, field: str) -> dict[str, str]:
    """Model input name (and ``y``) -> the array that feeds it."""
    arrays = set(members) - {"y"}
    if set(input_names) <= arrays:
        wanted = {n: n for n in input_names}
    elif "x" in arrays and len(input_names) == 1:
        wanted = {input_names[0]: "x"}
    else:
        want = "x" if len(input_names) == 1 else ", ".join(input_names)
        raise JobInputError(
            field, f"{name} has arrays {sorted(arrays) or 'none'}; the model needs {want} (and optionally y for labels)"
        )
    if "y" in members:
        wanted["y"] = "y"
    return wanted


def _check_member(
    member: _Member, array: str, labels: bool, strings: bool, name: str, field: str, limits: Limits
) -> None:
    kind = member.dtype.kind
    if labels and kind not in NUMERIC_KINDS:
        raise JobInputError(field, f"{name}: y has dtype {member.dtype}; labels and targets are numbers")
    if not labels and kind not in NUMERIC_KINDS and not (strings and kind in STRING_KINDS):
        takes = "numbers, booleans or strings" if strings else "numbers or booleans (a torch source has no strings)"
        raise JobInputError(field, f"{name}: array {array!r} has dtype {member.dtype}; the model takes {takes}")
    if member.dtype.itemsize == 0:
        raise JobInputError(field, f"{name}: array {array!r} has the zero-width dtype {member.dtype}")
    if member.rows > limits.max_samples:
        raise JobInputError(
            field,
            f"{name}: array {array!r} has {member.rows} samples, more than the limit of {limits.max_samples} "
            "(limits.maxSamples)",
        )


def _check_finite(array: np.ndarray, name: str, file: str, field: str) -> None:
    """NaN or infinity in the data would make every score NaN, and blame the model for it."""
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return
    bad = int((~np.isfinite(array.reshape(len(array), -1))).any(axis=1).sum()) if array.ndim else 1
    raise JobInputError(field, f"{file}: array {name!r} holds NaN or infinity in {bad} sample(s); clean the data")
