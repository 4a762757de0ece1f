"""History files and frames for `predict`: reading them, and parsing their timestamps as ingest does."""

from __future__ import annotations

import csv
import datetime
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.library.errors import DataError, shown


def numbers_as_times(col: pd.Series, where: str) -> None:
    """Refuse a numeric time column: pandas would read 0, 1, 2 as nanoseconds after 1970 and the
    series as one of nanosecond steps, whose every later error would blame something else."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col) and col.notna().any():
        first = col[col.notna()].iloc[0]
        raise DataError(
            f"{where}: the time column holds numbers (first {shown(repr(first.item()))}), not timestamps; "
            "write dates or times (e.g. 2024-01-01 or 2024-01-01 13:30)"
        )


DATE_ORDERS = ("day_first", "month_first")

# a date written in numbers only, day and month in either order, the year last: 02/01/2024, 2.1.2024, 02-01-24
_NUMERIC_DATE = r"^\s*(\d{1,2})([/.\-])(\d{1,2})\2(\d{4}|\d{2})(?!\d)"


def numeric_dates(
    col: pd.Series, where: str, order: str = "auto", fallback: str | None = None
) -> tuple[pd.Series, str | None]:
    """(the column with its dates written in numbers only rewritten year first, the order they were read in).

    pandas reads 02/01/2024 as 1 February and 13/01/2024 as 13 January, row by row: a day-first column comes out
    half in the wrong month, as gaps and disorder that `data.missing` would fill. The order is one per column:
    `order` where given (`data.date_order`: `day_first` or `month_first`), else the dates' own: day first where some
    first number is above 12, month first where some second one is, else `fallback` (the order a model was trained
    on). None where the column's first timestamp is no such date (ISO dates, named months). A column showing both
    orders, or the other one than `order`, or neither with nothing to go by, is one line naming a row."""
    if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_numeric_dtype(col):
        return col, None
    present = col.notna().to_numpy()
    if not present.any() or not re.match(_NUMERIC_DATE, str(col.iloc[int(np.argmax(present))])):
        return col, None  # most data (ISO dates): nothing more read or copied
    text = pd.Series(col.to_numpy(dtype=object)).dropna().astype(str)  # indexed by position
    parts = text.str.extract(_NUMERIC_DATE + r"(.*)$", flags=re.DOTALL).dropna(subset=[0])
    first, second = parts[0].astype(int), parts[2].astype(int)
    day_first, month_first = first > 12, second > 12

    def row(flags: pd.Series) -> str:  # the first flagged date's row (all of them: the column's first date)
        k = int(flags.idxmax())
        return f"row {k + 1}: {shown(repr(text[k]))}"

    if day_first.any() and month_first.any():
        raise DataError(
            f"{where}: dates written day first ({row(day_first)}) and month first ({row(month_first)}) in one time "
            "column; write them one way (ISO: 2024-01-02)"
        )
    seen = "day_first" if day_first.any() else "month_first" if month_first.any() else None
    if seen is not None and order in DATE_ORDERS and seen != order:
        raise DataError(
            f"{where}: {row(day_first | month_first)} is no date written {order.replace('_', ' ')} (data.date_order)"
        )
    order = order if order in DATE_ORDERS else seen or fallback
    if order is None:
        raise DataError(
            f"{where}: {row(first >= 0)} reads as day first or as month first, and no date of the column tells which "
            "(each number is 12 or less); set data.date_order (day_first or month_first) or write ISO dates "
            "(2024-01-02)"
        )
    day, month = (first, second) if order == "day_first" else (second, first)
    if not ((day >= 1) & (day <= 31) & (month >= 1) & (month <= 12)).all():
        return col, order  # no date in that order: pandas' parse names the row
    year = parts[3].where(parts[3].str.len() == 4, _century(parts[3]))
    iso = year + "-" + month.astype(str).str.zfill(2) + "-" + day.astype(str).str.zfill(2) + parts[4]
    out = col.to_numpy(dtype=object).copy()
    out[iso.index.to_numpy()] = iso.to_numpy()
    return pd.Series(out, index=col.index, name=col.name), order


def _century(years: pd.Series) -> pd.Series:
    """Two-digit years as C's and Python's `%y` read them: 69-99 in the 1900s, 00-68 in the 2000s."""
    return years.map(lambda y: ("19" if int(y) >= 69 else "20") + y if len(y) == 2 else y)


# a written time of day followed by a zone or a UTC offset (a date's own "-01" is no offset)
_OFFSET = r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s*(?:Z|[+-]\d\d(?::?\d\d)?)$"


def instants_in_utc(col: pd.Series) -> pd.Series | None:
    """Timestamps written with different UTC offsets (local time across a daylight-saving change) as the instants
    they name, in UTC; None where some carry no offset (naive and aware together are ambiguous)."""
    text = col.dropna().astype(str).str.strip()
    if not text.str.contains(_OFFSET).all():
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 2 warns that mixed offsets will need utc=True: it has it
        return pd.to_datetime(col, errors="coerce", format="mixed", utc=True)


def zone_name(tz: object) -> str | None:
    """A time zone as the text that names it back (`UTC`, `UTC+10:00`, `Europe/Berlin`); None for no zone."""
    if tz is None:
        return None
    stamp = pd.Timestamp("2000-01-01", tz=tz)
    if type(stamp.tz).__name__ == "_FixedOffset":  # pandas 2 with pytz reads Arrow's "+09:00" so: not a zone name
        return str(datetime.timezone(stamp.utcoffset()))
    return str(stamp.tz)


def parsed_column(col: pd.Series) -> pd.Series | None:
    """A whole time column parsed in one go (a typed one as it is), or None where pandas cannot: timestamps with
    different UTC offsets (pandas 3 refuses them, pandas 2 keeps objects) or text that is no timestamp."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return col
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas 2 warns about different offsets (kept as objects)
            parsed = pd.to_datetime(col, errors="coerce", format="mixed")
    except (ValueError, TypeError, OverflowError):
        return None
    return parsed if pd.api.types.is_datetime64_any_dtype(parsed) else None


def written_zone(col: pd.Series, differing: str = "UTC") -> str | None:
    """The zone forecasts of this time column are written in: its own (a named zone, or its one UTC offset),
    `differing` where its timestamps carry different offsets, None where they carry none (times stay naive, as
    given)."""
    return zone_of(parsed_column(col), differing)


def zone_of(parsed: pd.Series | None, differing: str = "UTC") -> str | None:
    """`written_zone` of a column `parsed_column` has parsed (None: it could not, as with different offsets)."""
    return differing if parsed is None else zone_name(parsed.dt.tz)


def localised(times: pd.Series, zone: str, where: str, rows: np.ndarray | None = None) -> pd.Series:
    """Naive local times of one series, in the order written, as the instants they name on `zone`'s clock.

    The hour summer time repeats is told apart by that order (the first time is summer time, the second winter
    time, as the clock runs); a time the clock skips names no instant. Either one that cannot be read is one line
    naming the timestamp and its row (`rows`: the 1-based rows of `times`, else their positions)."""
    try:
        return times.dt.tz_localize(zone, ambiguous="infer", nonexistent="raise")
    except Exception:  # pytz's and pandas' own errors, by pandas version
        pass
    everywhere = np.ones(len(times), dtype=bool)
    skipped = times.dt.tz_localize(zone, ambiguous=everywhere, nonexistent="NaT").isna().to_numpy()
    repeated = times.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").isna().to_numpy() & ~skipped
    k = int(np.flatnonzero(skipped if skipped.any() else repeated)[0])
    row = int(rows[k]) if rows is not None else k + 1
    at = f"{where}: timestamp {times.iloc[k]} (row {row})"
    if skipped.any():
        raise DataError(f"{at} does not exist on the clock of {zone}: summer time skips it; fix or drop that row")
    raise DataError(
        f"{at} occurs twice on the clock of {zone} (summer time ends) and the order of the rows does not tell which; "
        "write the timestamps with their UTC offsets (e.g. 2024-10-27T02:00+02:00, then +01:00)"
    )


def shown_time(time: object, zone: str | None = None) -> pd.Timestamp:
    """A time as held (naive, in UTC where `zone` is given) as its data wrote it: in `zone`, with the offset it had
    there, so that an error names the time a user finds in their file (`2024-10-27 02:30:00+01:00`, not the UTC
    01:30 it is held as); as held where `zone` is None (naive data, or days held on the zone's wall clock)."""
    stamp = pd.Timestamp(time)
    if zone is None:
        return stamp
    try:
        return stamp.tz_localize("UTC").tz_convert(zone)
    except (OverflowError, ValueError):  # at the ends of the datetime64 range: as held, marked as UTC
        return stamp.tz_localize("UTC")


def in_zone(times: np.ndarray | pd.DatetimeIndex, zone: str | None, wall_clock: bool = False) -> pd.DatetimeIndex:
    """Naive UTC times (as ingest and predict hold them) in `zone`; unchanged (naive) for None.

    `wall_clock`: the times are held on the zone's wall clock (steps of a day or longer). A wall-clock time the zone
    skips (a midnight where summer time starts at midnight) is written at the next one there is, one it repeats at
    its first instant."""
    index = pd.DatetimeIndex(np.asarray(times).ravel())
    if zone is None:
        return index
    if wall_clock:
        return index.tz_localize(zone, ambiguous=np.ones(len(index), dtype=bool), nonexistent="shift_forward")
    return index.tz_localize("UTC").tz_convert(zone)


def parse_times(
    col: pd.Series, sid: str, source: str, clock: str | None = None, local: str | None = None, rows=None
) -> pd.Series:
    """Timestamps as naive datetimes (aware ones in UTC, as ingest stores them, or on the wall clock of `clock`, a
    model's zone where it counts days on it); NaT where unparseable. `local`: naive ones are local times on that
    zone's clock (`localised`, in the order given; `rows` numbers them for its errors)."""
    zones = (
        f"{source}: series '{shown(sid)}': timestamps with and without a zone in the time column; give all or none one"
    )
    numbers_as_times(col, f"{source}: series '{shown(sid)}'")
    try:
        times = pd.to_datetime(col, errors="coerce", format="mixed")
    except (ValueError, TypeError, OverflowError) as exc:
        if "zone" not in str(exc).lower() and "offset" not in str(exc).lower():
            where = f"{source}: series '{shown(sid)}'"
            raise DataError(f"{where}: cannot parse the time column: {shown(exc, 200)}") from None
        times = instants_in_utc(col)  # pandas 3 refuses different offsets
        if times is None:
            raise DataError(zones) from None
    if not pd.api.types.is_datetime64_any_dtype(times):  # pandas 2 keeps different offsets as objects
        times = instants_in_utc(col)
        if times is None:
            raise DataError(zones)
    if local is not None and times.dt.tz is None and not times.isna().any():
        times = localised(times, local, f"{source}: series '{shown(sid)}'", rows)
    return held(times, clock)


def held(times: pd.Series, clock: str | None = None) -> pd.Series:
    """Parsed timestamps as a model holds them: naive, aware ones in UTC or on the wall clock of `clock`."""
    if times.dt.tz is None:
        return times
    if clock is None:
        return times.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.Series(on_the_wall_clock(times, clock), index=times.index, name=times.name)


def on_the_wall_clock(times: pd.Series, zone: str) -> np.ndarray:
    """Aware timestamps as naive datetime64[ns] on `zone`'s wall clock, where days are counted (`on_wall_clock`)."""
    instants = times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
    local = times.dt.tz_convert(zone).dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return skipped_midnights(local, instants, zone).view("datetime64[ns]")


DAY = pd.Timedelta("1D").value


def skipped_midnights(local: np.ndarray, instants: np.ndarray, zone: str) -> np.ndarray:
    """`local` (int64 ns on `zone`'s wall clock) with each day that starts after a skipped midnight put back at it.

    Where summer time starts at midnight (Santiago, Havana, Cairo; Sao Paulo until 2019) that day has no 00:00: it
    starts at 01:00, and pandas, databases and exports write a daily series' time there. On the wall clock it is
    still that day, so it counts as its midnight; a 01:00 on any other day stays off the grid. `instants`: the same
    times as int64 ns in UTC. Writing back (`in_zone`) puts such a midnight at 01:00 again."""
    odd = np.flatnonzero(local % DAY != 0)
    if not len(odd):
        return local
    midnights = local[odd] - local[odd] % DAY
    meant = pd.DatetimeIndex(midnights.view("datetime64[ns]"))
    every = np.ones(len(odd), dtype=bool)
    try:
        skipped = meant.tz_localize(zone, ambiguous=every, nonexistent="NaT").isna()
        start = meant.tz_localize(zone, ambiguous=every, nonexistent="shift_forward").tz_convert("UTC")
    except Exception:  # a zone pandas cannot name (Arrow's text for an offset), or the ends of the range: no change
        return local
    at_start = skipped & (start.tz_localize(None).as_unit("ns").asi8 == instants[odd])
    if not at_start.any():
        return local
    out = local.copy()
    out[odd[at_start]] = midnights[at_start]
    return out


def within_its_span(times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The rows of one wide column from its first to its last value in time (ingest and `predict` alike): series of
    a wide table start and end at different times, and the empty cells before and after a series are not missing
    values of it."""
    present = ~np.isnan(values)
    if present.all() or not present.any():  # a column without any value is left whole: data.missing says it
        return np.ones(len(values), dtype=bool)
    return (times >= times[present].min()) & (times <= times[present].max())


def row_of(frame: pd.DataFrame, position: int) -> object:
    """The 1-based data row of the history file (the frame keeps the file's row index)."""
    label = frame.index[position]
    return label + 1 if isinstance(label, (int, np.integer)) else position + 1


def check_header(names: list[str], source: str) -> None:
    """Refuse a CSV header naming a column twice: pandas would rename the second (`a.1`), read as a series or
    a column of its own, and does so in time quadratic in their number (a junk header of 60,000 names: minutes)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(
                f"{source}: column '{shown(name)}' appears twice in the header (columns {seen[name] + 1} and {i + 1})"
            )
        seen[name] = i


def csv_header(first_line: bytes, sep: str = ",") -> list[str]:
    """The column names of a CSV's first line ([] where it is not UTF-8 or the csv module cannot split it: the
    reader reports that)."""
    try:
        text = first_line.decode("utf-8-sig").rstrip("\r\n")
        return next(csv.reader([text], delimiter=sep), [])
    except (UnicodeDecodeError, csv.Error):
        return []


MISSING_ID = "empty, or text read as missing: NA, N/A, null, None, nan"
"""Why a series id is missing, for its error: a series named NA (Namibia) reads as no id at all."""

CSV_MISSING = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA"}
    | {"NULL", "NaN", "None", "n/a", "nan", "null"}
)
"""The cells pandas reads as missing by default (`read_csv`'s `na_values`), which a converter bypasses."""


def id_as_text(cell: str) -> str | None:
    """A CSV cell of the series id column as written, or None where pandas would read it as missing.

    Read as numbers, ids "007" and "7" would merge into one series and "010" would come out as "10";
    ingest (through `datasets`) and `predict` read the column with this converter, so both see "007".
    """
    return None if cell in CSV_MISSING else cell


def text_ids(id_column: str | None) -> dict:
    """`read_csv` options that keep the id column's cells as text (`id_as_text`); none without an id column."""
    return {"converters": {id_column: id_as_text}} if id_column else {}


CSV_SUFFIXES = ("", ".csv", ".txt")
"""Read as CSV: the service's body is a file named `history` (no suffix), and .txt is what many exports write."""


def read_history(path: str | Path, what: str = "history", id_column: str | None = None) -> pd.DataFrame:
    """A file for `predict` (csv, parquet or json), with a clear error when unreadable.

    The series ids in `id_column` are read as ingest reads them: a CSV's cells as text, a JSON's values as
    written (pandas would turn the strings "007" and "010" into the numbers 7 and 10, ids the model never saw).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".json", ".jsonl", ".tsv", *CSV_SUFFIXES):
        raise DataError(
            f"{path}: unknown {what} file format '{shown(suffix)}' (use .csv, .tsv, .parquet, .json or .jsonl)"
        )
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".json", ".jsonl"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype={id_column: object} if id_column else True)
        sep = "\t" if suffix == ".tsv" else ","
        with path.open("rb") as f:
            check_header(csv_header(f.readline(), sep), str(path))
        return pd.read_csv(path, sep=sep, **text_ids(id_column))
    except DataError:
        raise
    except Exception as exc:  # pandas raises many kinds for malformed files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read {what}: {first[:200]}") from None
