"""The series store: every series of an ingest back to back in one Arrow IPC file, values.arrow.

One float32 column `target` in original units, a float32 column `covariate:<name>` per
time-varying covariate and, where `data.missing` filled any point, a bool column `filled`
(true where the target was made up, not observed: training never learns from those points
and the evaluate stage never scores them), all in the order of the ingest's series table. Read memory-mapped, so a
stage touches only the pages it uses; the buffer's layout (offsets) comes from the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.library.errors import DataError

VALUES_FILE = "values.arrow"
TARGET = "target"
COVARIATE = "covariate:"  # prefix of a time-varying covariate's column
FILLED = "filled"


def write_values(
    path: Path,
    values: np.ndarray,
    names: list[str] = (),
    covs: np.ndarray | None = None,
    filled: np.ndarray | None = None,
) -> None:
    """The target (and time-varying covariates, one column each) as float32 Arrow columns; `filled` beside them."""
    columns = {TARGET: pa.array(np.asarray(values, dtype=np.float32))}  # float32 in: no copy
    for k, name in enumerate(names):
        columns[COVARIATE + name] = pa.array(np.ascontiguousarray(covs[:, k], dtype=np.float32))
    if filled is not None:
        columns[FILLED] = pa.array(np.asarray(filled, dtype=bool))
    write_table(path, pa.table(columns))


def write_table(path: Path, table: pa.Table) -> None:
    """An Arrow IPC file (values.arrow's format) holding `table`."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_table(ingest_dir: Path) -> pa.Table:
    """Every column of values.arrow, memory-mapped."""
    return pa.ipc.open_file(pa.memory_map(str(ingest_dir / VALUES_FILE), "r")).read_all()


def column_values(column: pa.ChunkedArray) -> np.ndarray:
    """A column as numpy: zero-copy while it is one Arrow chunk."""
    return column.to_numpy() if column.num_chunks == 1 else column.combine_chunks().to_numpy()


def read_values(ingest_dir: Path) -> np.ndarray:
    """The float32 target buffer, memory-mapped."""
    return column_values(read_table(ingest_dir).column(TARGET))


def read_observed(ingest_dir: Path) -> np.ndarray:
    """The target in float64 with NaN where `data.missing` filled it: what forecasts are scored against."""
    return observed_values(read_values(ingest_dir), read_filled(ingest_dir))


def observed_values(values: np.ndarray, filled: np.ndarray | None) -> np.ndarray:
    """`values` (`read_values`) in float64 with NaN where `filled` (`read_filled`) marks a point: for a stage that
    has read the values already."""
    observed = values.astype(np.float64)
    if filled is not None:
        observed[filled] = np.nan
    return observed


def read_filled(ingest_dir: Path) -> np.ndarray | None:
    """(n_points,) bool: where data.missing filled the target; None where it filled nothing."""
    table = read_table(ingest_dir)
    if FILLED not in table.column_names:
        return None
    return column_values(table.column(FILLED)).astype(bool, copy=False)


def read_covariates(ingest_dir: Path, names: list[str] | tuple[str, ...]) -> np.ndarray | None:
    """(n_points, K) float32 covariates in original units from values.arrow, or None for no names."""
    if not names:
        return None
    table = read_table(ingest_dir)
    missing = [n for n in names if COVARIATE + n not in table.column_names]
    if missing:
        raise DataError(f"{ingest_dir}: no covariate '{missing[0]}' in {VALUES_FILE}; run 'lstm-pipeline ingest'")
    columns = [column_values(table.column(COVARIATE + n)) for n in names]
    return np.stack(columns, axis=1).astype(np.float32, copy=False)


def cut_table(table: pa.Table, offsets: np.ndarray, series: np.ndarray, cutoffs: np.ndarray) -> pa.Table:
    """The rows of each listed series before its cutoff, every column, as one contiguous chunk."""
    parts = [table.slice(int(offsets[s]), int(c)) for s, c in zip(series, cutoffs, strict=True)]
    return pa.concat_tables(parts).combine_chunks()
