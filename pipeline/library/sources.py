"""Reading a data source into a table, through Hugging Face `datasets` for every file kind.

Files (csv/tsv, parquet, json/jsonl; paths or globs), `builtin:<name>` (files shipped in the
package) and Hub dataset ids all go through `datasets.load_dataset`; `synthetic` is generated.
Local parquet files can also be read as a stream of Arrow record batches (`ParquetBatches`,
with pyarrow: see there why), so that ingest never holds more than one batch of raw rows.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.library.artifacts import sha256_file
from pipeline.library.errors import DataError, listed, shown
from pipeline.library.history import check_header, csv_header, text_ids

log = logging.getLogger("pipeline")

BUILTIN_DIR = Path(__file__).parent.parent / "builtin"


class DataLayout(Protocol):
    """Where the series come from and how a table holds them: what the data path reads of the config.

    `pipeline.config.DataConfig` is one (its docstrings say what each field means); the library
    takes any object with these attributes, never the experiment config itself.
    """

    source: str
    format: str
    id_column: str | None
    time_column: str
    target_column: str
    freq: str | None
    zone: str
    date_order: str
    missing: str
    transform: str
    scaling: str
    val_size: int | float
    test_size: int | float
    past_covariates: list[str]
    future_covariates: list[str]
    static_covariates: list[str]
    split: str
    revision: str | None
    subset: str | None
    synthetic: Any

    @property
    def covariates(self) -> list[str]: ...


_BUILDERS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.csv"))


def resolve_files(source: str) -> list[Path] | None:
    """The local files a source names, or None when it is not a local source (Hub id, synthetic)."""
    if source == "synthetic":
        return None
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        path = BUILTIN_DIR / f"{name}.csv"
        if not path.is_file():
            raise DataError(f"data.source: unknown builtin dataset '{name}' (available: {', '.join(builtin_names())})")
        return [path]
    if any(ch in source for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
        if not matches:
            raise DataError(f"data.source: no file matches '{source}'")
        return matches
    path = Path(source)
    if path.suffix.lower() in _BUILDERS or path.exists() or "/" not in source or source.startswith((".", "/")):
        if not path.exists():
            raise DataError(f"data.source: file not found: {source}")
        if saved_dataset(source) is not None:  # every file of it: its content's identity
            return sorted(p for p in path.rglob("*") if p.is_file())
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in _BUILDERS)
            if not files:
                raise DataError(f"data.source: no csv/parquet/json file in directory {source}")
            return files
        return [path]
    return None  # `owner/name`: a Hub dataset id


def saved_dataset(source: str) -> Path | None:
    """The directory when `source` is one written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict whose
    split `data.split` names), else None: its JSON files describe the data, they are not rows."""
    path = Path(source)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        return path
    return None


def source_fingerprint(data: DataLayout) -> str | None:
    """Cheap identity of the source content, known before loading: file hashes, or the config; None for a Hub
    dataset, whose rows are known only once loaded (a branch, or a tag, moves): see `table_fingerprint`."""
    files = resolve_files(data.source)
    digest = hashlib.sha256(data.source.encode())
    if files is None:
        return digest.hexdigest()[:16] if data.source == "synthetic" else None
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}".encode())
    return digest.hexdigest()[:16]


def table_fingerprint(table: pd.DataFrame) -> str:
    """Identity of a loaded table's content: its column names and types, and every row (a Hub dataset's)."""
    digest = hashlib.sha256(repr([(str(c), str(t)) for c, t in table.dtypes.items()]).encode())
    for name in table.columns:
        column = table[name]
        try:
            hashed = pd.util.hash_pandas_object(column, index=False)
        except TypeError:  # cells pandas cannot hash (lists, dicts: a Hub dataset's nested features)
            hashed = pd.util.hash_pandas_object(column.astype(str), index=False)
        digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()[:16]


def load_table(data: DataLayout) -> pd.DataFrame:
    """The raw table with the user's own columns (synthetic: series, time, value)."""
    if data.source == "synthetic":
        from pipeline.library.synthetic import generate_synthetic

        return generate_synthetic(data.synthetic)
    files = resolve_files(data.source)
    if files is None:
        return _load_hub(data.source, data.split, data.revision, data.subset)
    saved = saved_dataset(data.source)
    if saved is not None:
        return _load_saved(saved, data.split)
    builder, label, kwargs = _checked_files(data, files)
    return _load_files(builder, [str(p) for p in files], label, **kwargs)


def _checked_files(data: DataLayout, files: list[Path]) -> tuple[str, str, dict]:
    """(datasets builder, label for messages, builder options) of a list of local files."""
    kinds = {p.suffix.lower() for p in files}
    unknown = kinds - set(_BUILDERS)
    if unknown:
        raise DataError(
            f"data.source: unknown file format '{sorted(unknown)[0] or '(no extension)'}' in {files[0]} "
            f"(use .csv, .tsv, .parquet, .json or .jsonl)"
        )
    builders = {_BUILDERS[k] for k in kinds}
    if len(builders) > 1:
        raise DataError(f"data.source: mixed file formats in {data.source}: {', '.join(sorted(kinds))}")
    for path in files:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty")
    kwargs = {"sep": "\t"} if kinds == {".tsv"} else {}
    if builders == {"csv"}:
        _check_headers(files, kwargs.get("sep", ","))
        kwargs.update(text_ids(data.id_column if data.format == "long" else None))
    if builders == {"csv"} and int(pd.__version__.split(".")[0]) < 3:
        # pandas 2's default parser missed the nearest float by a unit in the last place on a third of the values
        # (2 M float32 values printed exactly); pandas 3 parses them exactly and deprecates the option
        kwargs["float_precision"] = "round_trip"
    label = str(files[0]) if len(files) == 1 else f"{data.source} ({len(files)} files)"
    return builders.pop(), label, kwargs


def _check_headers(files: list[Path], sep: str) -> None:
    """Every CSV's columns distinct and, over a glob, the first file's: the reader would rename a repeated
    name (`a`, `a.1`) into a series of its own, and files that differ fail deep in `datasets` naming none."""
    first: tuple[Path, list[str]] | None = None
    for path in files:
        with path.open("rb") as f:
            names = csv_header(f.readline(), sep)
        check_header(names, str(path))
        if first is None:
            first = (path, names)
        elif names != first[1]:
            have, want = set(names), set(first[1])
            missing, extra = [n for n in first[1] if n not in have], [n for n in names if n not in want]
            parts = []
            if missing:
                parts.append(f"missing {listed(missing)}")
            if extra:
                parts.append(f"extra {listed(extra)}")
            raise DataError(
                f"{path}: its columns differ from those of {first[0]} ({'; '.join(parts) or 'in another order'}); "
                "the files of a glob need one header"
            )


BATCH_ROWS = 250_000
"""Rows per record batch of a streamed parquet source (a few MB of raw columns, and of temporaries)."""


@dataclass
class ParquetBatches:
    """Local parquet files as a re-iterable stream of Arrow record batches of at most `BATCH_ROWS` rows.

    Read with pyarrow itself rather than `datasets` streaming, measured on 100 M rows (1 GB):
    `datasets` wraps pyarrow's fragment scanner, whose threads read ahead while the consumer
    works (+350 MB at ingest's pace; its default pre-buffering keeps every column chunk read,
    about the file size), and building its IterableDataset imports torch (+240 MB, 1.5 s).
    `ParquetFile.iter_batches` without pre-buffering holds about one row group. Each iteration
    reads the files again (ingest makes two passes).
    """

    files: list[Path]
    label: str
    schemas: list[pa.Schema]

    def iter(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        for path in self.files:
            with _reading(str(path), "parquet"), pq.ParquetFile(path, pre_buffer=False) as reader:
                yield from reader.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def parquet_batches(data: DataLayout) -> ParquetBatches | None:
    """The source as `ParquetBatches` when it is local parquet files; None for any other source."""
    import pyarrow.parquet as pq

    files = resolve_files(data.source)
    if files is None or any(p.suffix.lower() != ".parquet" for p in files):
        return None
    _, label, _ = _checked_files(data, files)
    schemas = []
    for path in files:
        with _reading(str(path), "parquet"):
            schemas.append(pq.read_schema(path))
    return ParquetBatches(files, label, schemas)


@contextlib.contextmanager
def _reading(label: str, builder: str) -> Iterator[None]:
    """A reader's failure as one DataError naming the file (datasets wraps parser errors in many types)."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{label}: cannot read as {builder}: {_first_line(exc)}") from None


def _load_files(builder: str, files: list[str], label: str, **kwargs) -> pd.DataFrame:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parser errors come back as one DataError
    # A cache of its own, deleted once the rows are in pandas: the shared datasets cache would keep
    # an Arrow copy of every version of a file that a nightly job appends to (keyed by path and
    # mtime, it could also serve stale rows for a file replaced with the same mtime: cp -p, rsync -a).
    with tempfile.TemporaryDirectory(prefix="lstm-pipeline-datasets-") as cache:
        try:
            ds = datasets.load_dataset(
                builder, data_files=files, split="train", cache_dir=cache, keep_in_memory=True, **kwargs
            )
        except Exception as exc:  # datasets wraps parser errors in several exception types
            if "corresponds to no data" in str(exc):  # a header and no row
                raise DataError(f"{label}: no rows") from None
            raise DataError(f"{label}: cannot read as {builder}: {_first_line(exc)}") from None
        table = rows_of(ds)
        del ds
    if table.empty:
        raise DataError(f"{label}: no rows")
    return table


def _load_saved(path: Path, split: str) -> pd.DataFrame:
    """A dataset saved with `save_to_disk`: a Dataset, or the `split` of a DatasetDict."""
    import datasets

    with _reading(str(path), "a dataset saved by datasets (save_to_disk)"):
        ds = datasets.load_from_disk(str(path), keep_in_memory=True)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split '{shown(split)}' (data.split); splits: {listed(list(ds))}")
        ds = ds[split]
    table = rows_of(ds)
    if table.empty:
        raise DataError(f"{path}: no rows")
    return table


def _load_hub(dataset_id: str, split: str, revision: str | None = None, subset: str | None = None) -> pd.DataFrame:
    """A Hub dataset through the shared datasets cache, which keeps one copy per revision (pin one with
    `data.revision` for a nightly job: a moving branch adds a copy whenever it moves)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parser errors come back as one DataError
    try:
        ds = datasets.load_dataset(dataset_id, subset, split=split, revision=revision)
    except Exception as exc:
        at = f" at revision {revision}" if revision else ""
        raise DataError(
            f"data.source: cannot load Hub dataset '{dataset_id}'{at} (split {split}): {_first_line(exc)}"
        ) from None
    return rows_of(ds)


def rows_of(ds) -> pd.DataFrame:
    """A `datasets.Dataset`'s rows, its ClassLabel columns as their names: Hub datasets often keep the series id
    as a ClassLabel, whose integer codes `to_pandas` gives, and a code names no series a user knows (and a
    forecast history written with the names would not match them)."""
    import datasets

    table = ds.to_pandas()
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel) and name in table.columns:
            names = np.asarray(feature.names, dtype=object)
            codes = table[name].to_numpy()
            table[name] = np.where(codes >= 0, names[np.clip(codes, 0, None)], None)  # -1: a missing label
    return table


def _first_line(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None:  # the innermost error names the real problem
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return (text[0] if text else type(cause).__name__)[:300]
