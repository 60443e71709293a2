"""Parquet and CSV datasets: a table of one sample per row, read with pyarrow.

The feature columns (``featureColumns`` in that order, else every column but the label in
the file's order) become the model's single input, float32 ``[N, features]``; the label
column becomes ``y``: int64 class indices for classification, float32 targets otherwise.
Features must already be numbers or booleans: a string or categorical column is refused,
because only the user knows how the model was trained to encode it (one-hot, ordinal,
target encoding...), and guessing wrong would score a different model than the one served.

Everything a hostile file can make us spend is checked before the data is read:

* parquet: the footer's length (from the file's last 8 bytes) before pyarrow parses it;
  then from the metadata alone the number of columns, the rows, the declared uncompressed
  size of the column chunks read and the size of their decoded values. Only the columns
  needed are read, so an unused string column (an id) costs nothing.
* csv: the file's size before reading (the file is read as it is: a compressed csv is
  refused); then the columns of the header, and while the rows stream in, the rows and the
  bytes of the decoded columns. pyarrow refuses ragged rows and rows longer than the read block.

Nulls, NaN and infinity are refused naming the column and the first row where they occur:
a NaN feature makes every score NaN and would blame the model for it.

The columns of ``validation.slices`` by column are read beside the features (never as one,
unless featureColumns lists them) into :attr:`Samples.groups`: strings, integers, booleans or
floats (csv: the text as written), with a bound on their distinct values. A parquet string
column is read dictionary-encoded, so a few long values repeated over many rows cost their
dictionary, not their repetition.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from modelpress.api import MAX_SLICE_VALUE_CHARS, MAX_SLICE_VALUES, Dataset, Limits, Task
from modelpress.jobs.dataset import Samples
from modelpress.jobs.errors import JobInputError, first_line

log = logging.getLogger(__name__)

DEFAULT_LABEL = "label"
PARQUET_MAGIC = b"PAR1"
# The footer (schema + per-chunk metadata) is parsed whole by pyarrow before any check of
# ours can run; 64 MiB holds the metadata of ~10^5 column chunks, far beyond a real
# validation set, and bounds what parsing a hostile footer allocates.
MAX_PARQUET_FOOTER_BYTES = 64 * 2**20
# pyarrow parses a csv in blocks and refuses a row that does not fit one, so this also
# bounds the longest row (a 10,000-column row of 20-character numbers is 200 KB).
CSV_BLOCK_BYTES = 4 * 2**20
# A csv is read as it is, so its size bounds the text parsed; compressed ones are refused by
# their magic bytes (the codecs pyarrow would otherwise apply, judging by the file's name).
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4"}


@dataclass(frozen=True)
class _Columns:
    """Which columns of the file feed the model, decided from its header or schema alone."""

    features: list[str]
    label: str | None
    slices: tuple[str, ...] = ()  # validation.slices columns not read as a feature or the label

    @property
    def read(self) -> list[str]:
        """Every column read from the file, each once."""
        return [*self.features, *([self.label] if self.label is not None else []), *self.slices]


def load_table(
    path: Path,
    fmt: str,
    input_names: list[str],
    field: str,
    limits: Limits,
    dataset: Dataset | None = None,
    task: str | None = None,
    slice_columns: dict[str, str] | None = None,
) -> Samples:
    """Read a parquet or csv file into :class:`Samples` feeding the model's one input.

    ``dataset`` carries featureColumns/labelColumn (default: all but ``label``); ``task``
    picks the labels' dtype (unset: int64 for integer columns, float32 for the others).
    ``slice_columns``: column -> the spec field naming it (``validation.slices[0].column``),
    read into :attr:`Samples.groups`.
    """
    if len(input_names) != 1:
        raise JobInputError(
            f"{field}.format",
            f"{fmt} data feeds one model input (the feature columns form one float32 [N, features] tensor) "
            f"but the model takes {len(input_names)}: {', '.join(input_names)}; use npz with one array per input",
        )
    feature_columns = dataset.feature_columns if dataset else None
    label_column = dataset.label_column if dataset else None
    slice_columns = slice_columns or {}
    if fmt == "parquet":
        table, cols, schema = _read_parquet(path, field, limits, feature_columns, label_column, slice_columns)
    elif fmt == "csv":
        table, cols, schema = _read_csv(path, field, limits, feature_columns, label_column, slice_columns)
    else:
        raise JobInputError(f"{field}.format", f"{fmt!r} is not a table format; use parquet or csv")
    uri_field = f"{field}.storageUri"
    x = _feature_matrix(table, cols.features, path.name, uri_field)
    y = None
    if cols.label is not None:
        declared = schema.field(cols.label).type
        y = _labels(table.column(cols.label), cols.label, declared, task, path.name, uri_field)
    groups = {
        c: _slice_values(table.column(c), c, path.name, uri_field, spec_field)
        for c, spec_field in slice_columns.items()
    }
    log.info("%s: %d rows, %d feature columns, label %s", path.name, len(x), x.shape[1], cols.label or "none")
    name = input_names[0]
    return Samples([{name: row} for row in x], y, groups=groups)


# --------------------------------------------------------------------------- choosing columns


def _choose(
    header: list[str],
    feature_columns: list[str] | None,
    label_column: str | None,
    file: str,
    field: str,
    slice_columns: dict[str, str],
    names: list[str] | None = None,
) -> _Columns:
    """The feature, label and slice columns, checked against the file's header.

    ``names``: every column of the file, when ``header`` (the candidates for default
    features) leaves some out; a slice column may be any of them.
    """
    names = header if names is None else names
    if label_column is not None and label_column not in header:
        raise JobInputError(f"{field}.labelColumn", f"{file} has no column {label_column!r}; {_some(header)}")
    for c, spec_field in slice_columns.items():
        if c not in names:
            raise JobInputError(spec_field, f"{file} has no column {c!r}; {_some(names)}")
    label = label_column if label_column is not None else (DEFAULT_LABEL if DEFAULT_LABEL in header else None)
    if feature_columns is None:  # a slice column is not a feature unless featureColumns lists it
        features = [c for c in header if c != label and c not in slice_columns]
        # pandas' default to_csv() writes the row numbers as a first column with no name: as a
        # feature it would silently shift every input of the model by one.
        unnamed = next((i for i, c in enumerate(features) if not c.strip()), None)
        if unnamed is not None:
            raise JobInputError(
                f"{field}.storageUri",
                f"{file}: column {header.index(features[unnamed]) + 1} has no name (the row numbers pandas' to_csv "
                "writes by default?); write the file with index=False, or list featureColumns",
            )
    else:
        features = list(feature_columns)
        seen: set[str] = set()
        for c in features:
            if c in seen:
                raise JobInputError(f"{field}.featureColumns", f"lists column {c!r} twice")
            seen.add(c)
            if c not in header:
                raise JobInputError(f"{field}.featureColumns", f"{file} has no column {c!r}; {_some(header)}")
        if label is not None and label in seen:
            raise JobInputError(
                f"{field}.featureColumns", f"lists the label column {label!r}; the label is not a model input"
            )
    if not features:
        raise JobInputError(f"{field}.storageUri", f"{file} has no feature columns besides the label {label!r}")
    counts = Counter(names)
    for c in [*features, *([label] if label is not None else []), *slice_columns]:
        if counts[c] > 1:
            raise JobInputError(f"{field}.storageUri", f"{file} has two columns named {c!r}; rename one")
    read = {*features, label}
    return _Columns(features, label, tuple(c for c in slice_columns if c not in read))


def _some(header: list[str], shown: int = 20) -> str:
    more = f" and {len(header) - shown} more" if len(header) > shown else ""
    return f"its columns are {', '.join(repr(c) for c in header[:shown])}{more}"


def _check_types(schema: pa.Schema, cols: _Columns, file: str, field: str) -> None:
    """Refuse non-numeric features and labels from the schema, before reading them."""
    for name in cols.features:
        kind = _non_numeric(schema.field(name).type)
        if kind:
            raise JobInputError(
                f"{field}.storageUri",
                f"{file}: feature column {name!r} is {kind}; the model takes numeric features: encode the column "
                "before, exactly as the model was trained (or leave it out with featureColumns)",
            )
    if cols.label is not None:
        kind = _non_numeric(schema.field(cols.label).type)
        if kind:
            raise JobInputError(
                f"{field}.storageUri",
                f"{file}: label column {cols.label!r} is {kind}; labels are class indices 0..classes-1 "
                "in the order of the model's outputs, or numeric targets",
            )


def _check_slice_types(schema: pa.Schema, slice_columns: dict[str, str], file: str) -> None:
    """Refuse a parquet slice column whose values cannot name a slice (lists, structs, dates...)."""
    for name, spec_field in slice_columns.items():
        t = schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (_fixed_width(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise JobInputError(
                spec_field,
                f"{file}: column {name!r} is of type {t}; slice columns hold strings, integers, booleans or floats",
            )


def _non_numeric(t: pa.DataType) -> str:
    """What a column type is when it is not a number or boolean ('' when it is)."""
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return ""
    if pa.types.is_dictionary(t):
        return f"categorical ({t})"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text (categorical or string values)"
    return f"of type {t}, not numbers"


# --------------------------------------------------------------------------- parquet


def _read_parquet(
    path: Path,
    field: str,
    limits: Limits,
    feature_columns: list[str] | None,
    label_column: str | None,
    slice_columns: dict[str, str],
) -> tuple[pa.Table, _Columns, pa.Schema]:
    uri_field = f"{field}.storageUri"
    _check_parquet_footer(path, uri_field)
    try:
        with closing(pq.ParquetFile(path)) as pf:
            meta = pf.metadata
            if meta.num_columns > limits.max_columns:
                raise JobInputError(
                    uri_field,
                    f"{path.name} has {meta.num_columns} columns, more than the limit of {limits.max_columns} "
                    "(limits.maxColumns)",
                )
            schema = pf.schema_arrow
            header = schema.names
            if feature_columns is None:  # "every column but the label": not the index pandas stored as columns
                index = _pandas_index(schema)
                header = [c for c in header if c not in index]
            cols = _choose(header, feature_columns, label_column, path.name, field, slice_columns, schema.names)
            _check_types(schema, cols, path.name, field)
            _check_slice_types(schema, {c: slice_columns[c] for c in cols.slices}, path.name)
            rows = _parquet_rows(meta, path.name, uri_field, limits)
            _check_parquet_bytes(meta, schema, cols.read, rows, path.name, uri_field, limits)
            # String slice columns stay dictionary-encoded: reopened, as the option is given at opening.
            strings = [c for c in cols.slices if pa.types.is_string(schema.field(c).type)]
            strings += [c for c in cols.slices if pa.types.is_large_string(schema.field(c).type)]
            if strings:
                with closing(pq.ParquetFile(path, read_dictionary=strings)) as dictionary_pf:
                    table = dictionary_pf.read(columns=cols.read)
            else:
                table = pf.read(columns=cols.read)
    except JobInputError:
        raise
    except Exception as e:  # a corrupt file: pyarrow raises ArrowInvalid, OSError and others
        raise JobInputError(uri_field, f"cannot read {path.name} as parquet: {first_line(e)}") from e
    if table.num_rows != rows:
        raise JobInputError(uri_field, f"{path.name} declares {rows} rows but holds {table.num_rows}")
    return table, cols, schema


def _pandas_index(schema: pa.Schema) -> set[str]:
    """The columns that hold a pandas index: ``DataFrame.to_parquet`` writes any index but
    a plain 0..N-1 range (e.g. after ``train_test_split`` or ``set_index``) as columns named
    in the file's pandas metadata, and ``pandas.read_parquet`` reads them back as the index,
    not as data. Unreadable metadata (a hostile file's) names none."""
    try:
        meta = schema.pandas_metadata
    except ValueError:  # not JSON
        return set()
    index = meta.get("index_columns") if isinstance(meta, dict) else None
    return {c for c in index if isinstance(c, str)} if isinstance(index, list) else set()


def _check_parquet_footer(path: Path, field: str) -> None:
    """A parquet file ends with its footer's length and ``PAR1``; check both before pyarrow parses it.

    pyarrow has no option to bound the footer it reads, hence these 8 bytes by hand.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(max(size - 8, 0))
        tail = f.read(8)
    if size < 12 or head != PARQUET_MAGIC or tail[4:] != PARQUET_MAGIC:
        encrypted = " (an encrypted one, which is not supported)" if tail[4:] == b"PARE" else ""
        raise JobInputError(field, f"{path.name} is not a parquet file{encrypted}; write it with pyarrow or pandas")
    (footer,) = struct.unpack("<I", tail[:4])
    if footer > min(size - 12, MAX_PARQUET_FOOTER_BYTES):
        raise JobInputError(
            field,
            f"{path.name}: its parquet footer declares {footer} bytes; the file has {size} and the limit is "
            f"{MAX_PARQUET_FOOTER_BYTES}",
        )


def _parquet_rows(meta: pq.FileMetaData, file: str, field: str, limits: Limits) -> int:
    """Rows as the file declares them; the reader decodes each row group's own count, so both are checked."""
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    rows = max(meta.num_rows, sum(groups))
    if rows > limits.max_samples or min(groups, default=0) < 0:
        raise JobInputError(
            field, f"{file} has {rows} rows, more than the limit of {limits.max_samples} (limits.maxSamples)"
        )
    return rows


def _check_parquet_bytes(
    meta: pq.FileMetaData,
    schema: pa.Schema,
    wanted: list[str],
    rows: int,
    file: str,
    field: str,
    limits: Limits,
) -> None:
    """Declared uncompressed chunk sizes, and the decoded values (run-length or dictionary encoding
    can hold many rows in few uncompressed bytes), must both fit ``limits.maxDatasetBytes``.

    A value counts at least the 4 bytes of the float32 it becomes. The columns read are flat
    numeric ones, whose chunks' path is their name, and slice columns: a string one is read
    dictionary-encoded, 4 bytes of index per row plus its values, which its chunks' declared
    uncompressed size bounds.
    """
    names = set(wanted)
    uncompressed = strings = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            if chunk.path_in_schema in names:
                size = max(chunk.total_uncompressed_size, 0)
                uncompressed += size
                if not _fixed_width(schema.field(chunk.path_in_schema).type):
                    strings += size
    widths = [max(schema.field(n).type.bit_width, 32) // 8 if _fixed_width(schema.field(n).type) else 4 for n in wanted]
    decoded = rows * sum(widths) + strings
    size = max(uncompressed, decoded)
    if size > limits.max_dataset_bytes:
        raise JobInputError(
            field,
            f"{file} decompresses to {size} bytes, more than the limit of {limits.max_dataset_bytes} "
            "(limits.maxDatasetBytes)",
        )


def _fixed_width(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


# --------------------------------------------------------------------------- csv


def _read_csv(
    path: Path,
    field: str,
    limits: Limits,
    feature_columns: list[str] | None,
    label_column: str | None,
    slice_columns: dict[str, str],
) -> tuple[pa.Table, _Columns, pa.Schema]:
    """The table, its columns, and the schema pyarrow inferred from the first block (the
    labels' declared type: the rows themselves are read with numbers as float64, slice
    columns as text)."""
    uri_field = f"{field}.storageUri"
    size = path.stat().st_size
    if size > limits.max_dataset_bytes:
        raise JobInputError(
            uri_field,
            f"{path.name} is {size} bytes, more than the limit of {limits.max_dataset_bytes} (limits.maxDatasetBytes)",
        )
    with path.open("rb") as f:
        head = f.read(4)
    packed = next((name for magic, name in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
    if packed:
        raise JobInputError(
            uri_field, f"{path.name} is {packed}-compressed; give a plain csv file, or parquet, which compresses"
        )
    read = pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    try:
        # First pass: the header and the types pyarrow infers from the first block only.
        with closing(pa_csv.open_csv(_plain(path), read_options=read)) as reader:
            schema = reader.schema
        if len(schema) > limits.max_columns:
            raise JobInputError(
                uri_field,
                f"{path.name} has {len(schema)} columns, more than the limit of {limits.max_columns} "
                "(limits.maxColumns)",
            )
        cols = _choose(schema.names, feature_columns, label_column, path.name, field, slice_columns)
        _check_types(schema, cols, path.name, field)
        numeric = [*cols.features, *([cols.label] if cols.label is not None else [])]
        # Numbers are read as float64 in every block: a column of integers in the first block
        # may hold a decimal further down, which pyarrow would refuse under the inferred int64.
        # Slice columns are read as their text (empty, NA, null... are nulls, as for numbers).
        convert = pa_csv.ConvertOptions(
            include_columns=cols.read,
            column_types={
                **{c: pa.float64() for c in numeric if not pa.types.is_boolean(schema.field(c).type)},
                **{c: pa.string() for c in cols.slices},
            },
            strings_can_be_null=True,
        )
        table = _stream_csv(path, read, convert, path.name, uri_field, limits)
    except JobInputError:
        raise
    except Exception as e:  # ragged rows, text in a numeric column, bad quoting: pyarrow's ArrowInvalid
        raise JobInputError(uri_field, f"cannot read {path.name} as csv: {first_line(e)}") from e
    return table, cols, schema


def _stream_csv(
    path: Path, read: pa_csv.ReadOptions, convert: pa_csv.ConvertOptions, file: str, field: str, limits: Limits
) -> pa.Table:
    """Read block by block, stopping as soon as the rows or decoded bytes pass their limits."""
    batches: list[pa.RecordBatch] = []
    rows = decoded = 0
    with closing(pa_csv.open_csv(_plain(path), read_options=read, convert_options=convert)) as reader:
        for batch in reader:
            rows += batch.num_rows
            decoded += batch.nbytes
            if rows > limits.max_samples:
                raise JobInputError(
                    field, f"{file} has more than {limits.max_samples} rows, the limit (limits.maxSamples)"
                )
            if decoded > limits.max_dataset_bytes:
                raise JobInputError(
                    field,
                    f"{file} decodes to more than {limits.max_dataset_bytes} bytes, the limit (limits.maxDatasetBytes)",
                )
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)


def _plain(path: Path) -> pa.NativeFile:
    """The file's bytes as they are: given a path, pyarrow would decompress a .gz/.bz2/.zst by its name."""
    return pa.input_stream(str(path), compression=None)


# --------------------------------------------------------------------------- to arrays


def _feature_matrix(table: pa.Table, features: list[str], file: str, field: str) -> np.ndarray:
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = table.column(name)
        _check_no_nulls(column, name, file, field)
        x[:, j] = column.to_numpy().astype(np.float32)
        _check_finite(x[:, j], name, file, field, "beyond float32 range")
    return x


def _labels(
    column: pa.ChunkedArray, name: str, declared: pa.DataType, task: str | None, file: str, field: str
) -> np.ndarray:
    """int64 class indices for classification, float32 targets for the other tasks.

    Without a task (direct callers) the file's own type decides: integers and booleans are classes.
    """
    _check_no_nulls(column, name, file, field)
    values = column.to_numpy()
    classes = task == Task.classification.value or (
        task is None and (pa.types.is_integer(declared) or pa.types.is_boolean(declared))
    )
    if not classes:
        y = values.astype(np.float32)
        _check_finite(y, name, file, field, "beyond float32 range")
        return y
    numbers = values.astype(np.float64)
    _check_finite(numbers, name, file, field, "")
    whole = numbers == np.round(numbers)
    if not whole.all():
        row = int(np.argmin(whole))
        raise JobInputError(
            field,
            f"{file}: label column {name!r} holds {numbers[row]:g} in {_row(row)}; "
            "classification labels are class indices 0..classes-1",
        )
    return numbers.astype(np.int64)


def _slice_values(column: pa.ChunkedArray, name: str, file: str, field: str, spec_field: str) -> np.ndarray:
    """Each row's value of a slice column, as Python objects (str, int, bool or float).

    Refused: nulls and NaN (a row in no slice), more than MAX_SLICE_VALUES distinct values,
    and a value longer than MAX_SLICE_VALUE_CHARS (its name goes into messages). An object
    array holds each distinct value once, whatever the rows.
    """
    _check_no_nulls(column, name, file, field)
    encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    combined = encoded.combine_chunks()  # one dictionary for all chunks
    used, rows = np.unique(combined.indices.to_numpy(zero_copy_only=False), return_inverse=True)
    if len(used) > MAX_SLICE_VALUES:
        raise JobInputError(
            spec_field,
            f"{file}: column {name!r} has {len(used)} distinct values, more than the limit of {MAX_SLICE_VALUES} "
            "slices; slice by a coarser column",
        )
    values = combined.dictionary.take(pa.array(used, type=pa.int64())).to_pylist()
    for i, value in enumerate(values):
        if isinstance(value, float) and np.isnan(value):
            raise JobInputError(
                field, f"{file}: column {name!r} holds NaN in {_row(int(np.argmax(rows == i)))}; clean the data"
            )
        if isinstance(value, str) and len(value) > MAX_SLICE_VALUE_CHARS:
            raise JobInputError(
                spec_field,
                f"{file}: column {name!r} holds a value of {len(value)} characters in {_row(int(np.argmax(rows == i)))}, "
                f"more than the limit of {MAX_SLICE_VALUE_CHARS} for a slice name",
            )
    keys = np.empty(len(values), dtype=object)
    keys[:] = values
    return keys[rows.reshape(-1)]


def _check_no_nulls(column: pa.ChunkedArray, name: str, file: str, field: str) -> None:
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise JobInputError(
            field, f"{file}: column {name!r} has a missing value (null, NA or NaN) in {_row(row)}; clean the data"
        )


def _check_finite(values: np.ndarray, name: str, file: str, field: str, beyond: str) -> None:
    ok = np.isfinite(values)
    if not ok.all():
        what = "NaN or infinity" + (f" (or a value {beyond})" if beyond else "")
        raise JobInputError(
            field, f"{file}: column {name!r} holds {what} in {_row(int(np.argmin(ok)))}; clean the data"
        )


def _row(index: int) -> str:
    return f"row {index} (the first such row, counting data rows from 0)"
