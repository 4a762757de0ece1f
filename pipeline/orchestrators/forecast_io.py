"""History in, forecast out: the one path `lstm-pipeline predict` and the forecast service share.

Both hand `Forecaster.predict` a history frame under the same source names, write its answer with
the same columns and number format, and word a bad input in the same one line, so a file given to
`predict` and the same rows posted to `serve` cannot come to different answers or different errors.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.library.errors import DataError
from pipeline.library.history import check_header, csv_header, text_ids

if TYPE_CHECKING:  # the CLI imports `one_line` for every command: no pandas or torch for that
    import pandas as pd

    from pipeline.library.forecaster import Forecaster

HISTORY = "history"
"""What a history that is not a file (a request body) is called in error messages: `predict --input history`
names a file of that name exactly so."""

FUTURE = "future"

FUTURE_BY_FILE = "pass them with --future FILE (columns {columns})"
"""How `predict` is told the future covariates of a model that needs them (`MissingFuture`)."""
FUTURE_IN_JSON = (
    'send them as the "future" records of a JSON body, {{"records": [...], "future": [...]}}, with the columns '
    "{columns} (a text/csv body cannot carry them)"
)
"""How the service is told them."""


def one_line(message: str) -> str:
    """The message on one terminal line: line breaks and other control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def forecast(
    forecaster: Forecaster,
    history: pd.DataFrame,
    source: str = HISTORY,
    future: pd.DataFrame | None = None,
    future_source: str = FUTURE,
    scale: str = "training",
    future_how: str = FUTURE_BY_FILE,
) -> pd.DataFrame:
    """The next horizon after each series of `history`; a bad input raises a `UserError` naming `source`.
    `scale`: where series' statistics come from (`Forecaster.predict`); `future_how`: how the caller passes
    future covariates, for a model that needs them and got none (`{columns}`: the columns they come in)."""
    from pipeline.library.forecaster import MissingFuture

    try:
        return forecaster.predict(history, source=source, future=future, future_source=future_source, scale=scale)
    except MissingFuture as exc:
        raise DataError(f"{exc.needs}: {future_how.format(columns=exc.columns)}") from None


def forecast_csv(forecast: pd.DataFrame) -> str:
    """The forecast as `predict` writes it (floats in their shortest exact form)."""
    return forecast.to_csv(index=False)


FORECAST_FORMATS = {
    "": "csv",
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "jsonl",
}
"""What `predict --output` writes, by the file's suffix (the suffixes `--input` reads)."""


def forecast_format(path: Path) -> str:
    """The format `predict --output` writes, by the file's suffix (as `--input` is read): a suffix of no format it
    writes is refused before any work, not written as CSV under a name that says otherwise."""
    kind = FORECAST_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown forecast file format '{path.suffix}' (--output; use .csv, .tsv, .parquet, .json or "
            ".jsonl)"
        )
    return kind


def forecast_bytes(forecast: pd.DataFrame, kind: str) -> bytes:
    """The forecast as a file of `kind` (`forecast_format`): CSV as `forecast_csv`, JSON as the service's records."""
    if kind == "parquet":
        out = io.BytesIO()
        forecast.to_parquet(out, index=False)
        return out.getvalue()
    if kind in ("json", "jsonl"):
        import json

        records = forecast_records(forecast)
        text = json.dumps(records) + "\n" if kind == "json" else "".join(json.dumps(r) + "\n" for r in records)
        return text.encode("utf-8")
    return (forecast_csv(forecast) if kind == "csv" else forecast.to_csv(index=False, sep="\t")).encode("utf-8")


def forecast_records(forecast: pd.DataFrame) -> list[dict]:
    """The forecast as JSON-ready rows: the same columns, times in ISO 8601, floats exact (None if not finite)."""
    import pandas as pd

    columns = {}
    for name in forecast.columns:
        values = forecast[name]
        if pd.api.types.is_datetime64_any_dtype(values):
            columns[name] = [t.isoformat() for t in pd.DatetimeIndex(values)]
        elif pd.api.types.is_float_dtype(values):
            columns[name] = [v if math.isfinite(v) else None for v in values.tolist()]
        else:
            columns[name] = values.tolist()
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*columns.values())]


def read_csv_text(
    data: bytes, source: str = HISTORY, what: str = "history", id_column: str | None = None
) -> pd.DataFrame:
    """A CSV history given as bytes (a request body), parsed as `read_history` parses a .csv file (the ids in
    `id_column` as text), its error worded the same way."""
    import pandas as pd

    check_header(csv_header(data[: data.find(b"\n") + 1 or len(data)]), source)
    try:
        return pd.read_csv(io.BytesIO(data), **text_ids(id_column))
    except Exception as exc:  # pandas raises many kinds for malformed files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{source}: cannot read {what}: {first[:200]}") from None
