"""Ingest through the real loaders (Hugging Face `datasets`): formats, cleaning, errors, splits, caching."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Config, DataConfig
from pipeline.library.artifacts import read_meta
from pipeline.library.errors import DataError
from pipeline.library.series import SeriesSet, prepare_series
from pipeline.library.sources import load_table, resolve_files
from pipeline.library.splits import split_and_scale, split_sizes
from pipeline.library.store import read_values
from pipeline.stages import ingest

T0 = pd.Timestamp("2022-01-01 00:00")


def _long_frame() -> pd.DataFrame:
    """Two hourly series: 'a' (30 points from T0) and 'b' (20 points from T0 + 5h)."""
    a = np.round(20 + 10 * np.sin(np.arange(30) / 3), 3)
    b = np.round(-5 + 0.25 * np.arange(20) ** 1.5, 3)
    return pd.concat(
        [
            pd.DataFrame({"time": pd.date_range(T0, periods=30, freq="h"), "id": "a", "y": a}),
            pd.DataFrame({"time": pd.date_range(T0 + pd.Timedelta("5h"), periods=20, freq="h"), "id": "b", "y": b}),
        ],
        ignore_index=True,
    )


def _single(values, freq="h") -> pd.DataFrame:
    values = np.asarray(values, dtype=float)
    return pd.DataFrame({"time": pd.date_range(T0, periods=len(values), freq=freq), "y": values})


def _cfg(source="mem.csv", **kw) -> DataConfig:
    kw.setdefault("target_column", "y")
    kw.setdefault("transform", "none")  # `auto` is the ingest stage's choice (tests/test_transform_choice.py)
    return DataConfig(source=str(source), **kw)


def _load(source, **kw) -> SeriesSet:
    cfg = _cfg(source, **kw)
    return prepare_series(load_table(cfg), cfg)


def _assert_same(a: SeriesSet, b: SeriesSet) -> None:
    assert a.ids == b.ids
    assert a.freq == b.freq
    assert [pd.Timestamp(s) for s in a.starts] == [pd.Timestamp(s) for s in b.starts]
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.values, b.values)


def _error(frame: pd.DataFrame, **kw) -> str:
    with pytest.raises(DataError) as info:
        prepare_series(frame, _cfg(**kw))
    return str(info.value)


# ---------------------------------------------------------------- the builtin data set


@pytest.mark.parametrize("freq", [None, "30min"])
def test_builtin_vic_elec(freq):
    cfg = DataConfig(source="builtin:vic_elec", freq=freq)
    table = load_table(cfg)
    assert list(table.columns[:2]) == ["time", "demand"]
    s = prepare_series(table, cfg)
    assert s.ids == ["series"]
    np.testing.assert_array_equal(s.lengths, [17520])
    assert len(s.values) == 17520
    assert s.freq == "30min"
    assert pd.Timestamp(s.starts[0]) == pd.Timestamp("2014-01-01 00:00")
    assert s.values[0] == pytest.approx(3.91464713, abs=1e-12)
    assert s.values[1] == pytest.approx(3.67254961, abs=1e-12)
    assert np.isfinite(s.values).all()


def test_unknown_builtin_lists_available():
    with pytest.raises(DataError, match=r"unknown builtin dataset 'nope'.*vic_elec"):
        resolve_files("builtin:nope")


# ---------------------------------------------------------------- file formats


@pytest.fixture
def expected_long() -> SeriesSet:
    frame = _long_frame()
    return prepare_series(frame, _cfg(id_column="id"))


def test_long_format_with_id_column(expected_long):
    s = expected_long
    frame = _long_frame()
    assert s.ids == ["a", "b"]
    np.testing.assert_array_equal(s.lengths, [30, 20])
    np.testing.assert_array_equal(s.offsets, [0, 30])
    assert [pd.Timestamp(t) for t in s.starts] == [T0, T0 + pd.Timedelta("5h")]
    assert s.freq == "h"
    np.testing.assert_array_equal(s.values[:30], frame.loc[frame.id == "a", "y"].to_numpy())
    np.testing.assert_array_equal(s.values[30:], frame.loc[frame.id == "b", "y"].to_numpy())


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "json", "jsonl", "glob"])
def test_file_formats_load_the_same(tmp_path, kind, expected_long):
    frame = _long_frame()
    as_text = frame.assign(time=frame["time"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    if kind == "csv":
        source = tmp_path / "d.csv"
        frame.to_csv(source, index=False)
    elif kind == "tsv":
        source = tmp_path / "d.tsv"
        frame.to_csv(source, index=False, sep="\t")
    elif kind == "parquet":
        source = tmp_path / "d.parquet"
        frame.to_parquet(source, index=False)
    elif kind == "json":
        source = tmp_path / "d.json"
        as_text.to_json(source, orient="records", double_precision=15)
    elif kind == "jsonl":
        source = tmp_path / "d.jsonl"
        as_text.to_json(source, orient="records", lines=True, double_precision=15)
    else:
        # three files whose name order is not the time order: the rows come back unsorted
        parts = tmp_path / "parts"
        parts.mkdir()
        shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
        for name, chunk in zip(["p2", "p0", "p1"], np.array_split(np.arange(len(shuffled)), 3)):
            shuffled.iloc[chunk].to_csv(parts / f"{name}.csv", index=False)
        (parts / "notes.txt").write_text("not data")
        source = parts / "p*.csv"
    _assert_same(_load(source, id_column="id"), expected_long)


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_ids_that_look_like_numbers_keep_their_leading_zeros(tmp_path, kind):
    # read as numbers, "007" and "7" were one series (a duplicate timestamp) and "010" came out as "10"
    frame = pd.concat(
        [
            pd.DataFrame({"id": sid, "time": pd.date_range(T0, periods=n, freq="h").astype(str), "y": np.arange(n) + k})
            for k, (sid, n) in enumerate([("007", 6), ("7", 5), ("010", 4)])
        ],
        ignore_index=True,
    )
    source = tmp_path / f"d.{kind}"
    if kind == "jsonl":
        frame.to_json(source, orient="records", lines=True)
    else:
        frame.to_csv(source, index=False, sep="\t" if kind == "tsv" else ",")
    s = _load(source, id_column="id")
    assert s.ids == ["007", "010", "7"]
    np.testing.assert_array_equal(s.lengths, [6, 4, 5])
    np.testing.assert_array_equal(s.values, [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 1, 2, 3, 4, 5])


def test_an_empty_or_na_id_in_a_csv_is_still_a_missing_series_id(tmp_path):
    for cell, row in (("", 2), ("NA", 2)):
        (tmp_path / "d.csv").write_text(f"id,time,y\n007,2022-01-01 00:00,1\n{cell},2022-01-01 01:00,2\n")
        missing = r"missing series id in column 'id' \(data.id_column; empty, or text read as missing: NA, N/A, null"
        with pytest.raises(DataError, match=f"row {row}: {missing}"):
            _load(tmp_path / "d.csv", id_column="id")


def test_directory_source_reads_its_data_files(tmp_path, expected_long):
    frame = _long_frame()
    frame[frame.id == "a"].to_csv(tmp_path / "a.csv", index=False)
    frame[frame.id == "b"].to_csv(tmp_path / "b.csv", index=False)
    assert resolve_files(str(tmp_path)) == [tmp_path / "a.csv", tmp_path / "b.csv"]
    _assert_same(_load(tmp_path, id_column="id"), expected_long)


def test_wide_format_gives_a_series_per_column(tmp_path):
    times = pd.date_range("2023-05-01", periods=12, freq="D")
    wide = pd.DataFrame({"time": times, "north": np.arange(12.0), "south": np.arange(12.0) * -2.5 + 1})
    wide.to_csv(tmp_path / "w.csv", index=False)
    s = _load(tmp_path / "w.csv", format="wide")
    assert s.ids == ["north", "south"]
    np.testing.assert_array_equal(s.lengths, [12, 12])
    assert s.freq == "D"
    assert [pd.Timestamp(t) for t in s.starts] == [times[0], times[0]]
    np.testing.assert_array_equal(s.values, np.concatenate([np.arange(12.0), np.arange(12.0) * -2.5 + 1]))


def test_wide_series_of_different_spans_keep_their_own_start_and_end(tmp_path):
    # a column's empty cells before its first value and after its last are outside the series; they used to be
    # missing values: refused under data.missing=error, and filled with copies of the end values otherwise
    times = pd.date_range("2023-05-01", periods=10, freq="D")
    late = [np.nan, np.nan, np.nan, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    early = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, np.nan, np.nan, np.nan, np.nan]
    wide = pd.DataFrame({"time": times, "early": early, "full": np.arange(10.0), "late": late, "temp": np.arange(10.0)})
    wide.sample(frac=1.0, random_state=2).to_csv(tmp_path / "w.csv", index=False)  # the span is by time, not row
    s = _load(tmp_path / "w.csv", format="wide", past_covariates=["temp"])
    assert s.ids == ["early", "full", "late"]
    np.testing.assert_array_equal(s.lengths, [6, 10, 7])
    assert [pd.Timestamp(t) for t in s.starts] == [times[0], times[0], times[3]]
    np.testing.assert_array_equal(s.values, [*early[:6], *range(10), *late[3:]])
    np.testing.assert_array_equal(s.covariates[:, 0], [*range(6), *range(10), *range(3, 10)])  # each one's span
    wide.loc[5, "late"] = np.nan  # inside the span: a missing value, as in long format
    wide.to_csv(tmp_path / "w.csv", index=False)
    with pytest.raises(
        DataError, match=r"series 'late': missing or non-finite target at 2023-05-06 00:00:00 \(row 6\)"
    ):
        _load(tmp_path / "w.csv", format="wide", past_covariates=["temp"])
    filled = _load(tmp_path / "w.csv", format="wide", past_covariates=["temp"], missing="interpolate")
    np.testing.assert_array_equal(filled.values[-7:], late[3:])


def test_mixed_file_formats_rejected(tmp_path):
    _single(range(5)).to_csv(tmp_path / "a.csv", index=False)
    _single(range(5)).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError, match="mixed file formats"):
        load_table(_cfg(tmp_path / "*"))


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_table(_cfg(tmp_path / "absent.csv"))
    with pytest.raises(DataError, match="no file matches"):
        load_table(_cfg(tmp_path / "*.csv"))


# ---------------------------------------------------------------- ordering and duplicates


def test_unsorted_input_gets_sorted(expected_long):
    shuffled = _long_frame().sample(frac=1.0, random_state=0).reset_index(drop=True)
    _assert_same(prepare_series(shuffled, _cfg(id_column="id")), expected_long)


def test_reversed_single_series_gets_sorted():
    frame = _single([1.0, 2.0, 3.0, 4.0])
    s = prepare_series(frame.iloc[::-1].reset_index(drop=True), _cfg())
    np.testing.assert_array_equal(s.values, [1.0, 2.0, 3.0, 4.0])
    assert pd.Timestamp(s.starts[0]) == T0


def test_duplicate_timestamp_names_series_and_time():
    frame = _long_frame()
    frame = pd.concat([frame, frame.iloc[[35]]], ignore_index=True)  # series b at T0 + 10h
    msg = _error(frame, id_column="id")
    assert "series 'b'" in msg
    assert "duplicate timestamp 2022-01-01 10:00:00" in msg
    assert "row 51" in msg


# ---------------------------------------------------------------- missing values


def test_nan_target_under_error_names_series(tmp_path):
    frame = _long_frame()
    frame.loc[12, "y"] = np.nan  # series a at T0 + 12h, data row 13
    frame.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(DataError) as info:
        _load(tmp_path / "nan.csv", id_column="id")
    msg = str(info.value)
    assert "series 'a'" in msg
    assert "2022-01-01 12:00:00" in msg
    assert "row 13" in msg
    assert "data.missing" in msg


def test_inf_target_is_missing_too():
    msg = _error(_single([1.0, np.inf, 3.0, 4.0]))
    assert "series 'series'" in msg and "non-finite" in msg


def test_interpolate_fills_linearly():
    s = prepare_series(_single([0.0, 10.0, np.nan, np.nan, 40.0, 50.0]), _cfg(missing="interpolate"))
    np.testing.assert_allclose(s.values, [0.0, 10.0, 20.0, 30.0, 40.0, 50.0], rtol=0, atol=1e-12)


def test_interpolate_fills_a_missing_timestamp():
    frame = _single([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).drop(index=[3, 4])  # 03:00 and 04:00 absent
    s = prepare_series(frame, _cfg(missing="interpolate", freq="h"))
    np.testing.assert_array_equal(s.lengths, [7])
    np.testing.assert_allclose(s.values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], rtol=0, atol=1e-12)


def test_interpolate_edges_take_the_nearest_value():
    s = prepare_series(_single([np.nan, 2.0, 4.0, np.nan]), _cfg(missing="interpolate"))
    np.testing.assert_array_equal(s.values, [2.0, 2.0, 4.0, 4.0])


def test_ffill_carries_forward():
    s = prepare_series(_single([0.0, 10.0, np.nan, np.nan, 40.0]), _cfg(missing="ffill"))
    np.testing.assert_array_equal(s.values, [0.0, 10.0, 10.0, 10.0, 40.0])
    frame = _single([1.0, 2.0, 3.0, 4.0, 5.0]).drop(index=[2])
    s = prepare_series(frame, _cfg(missing="ffill", freq="h"))
    np.testing.assert_array_equal(s.values, [1.0, 2.0, 2.0, 4.0, 5.0])


def test_ffill_leading_nan_takes_first_value():
    s = prepare_series(_single([np.nan, 3.0, 5.0]), _cfg(missing="ffill"))
    np.testing.assert_array_equal(s.values, [3.0, 3.0, 5.0])


def test_drop_drops_the_series_with_missing_values():
    frame = _long_frame()
    frame.loc[40, "y"] = np.nan  # in series b
    s = prepare_series(frame, _cfg(id_column="id", missing="drop"))
    assert s.ids == ["a"]
    np.testing.assert_array_equal(s.lengths, [30])
    np.testing.assert_array_equal(s.values, frame.loc[frame.id == "a", "y"].to_numpy())


def test_drop_drops_a_series_with_a_gap():
    frame = _long_frame().drop(index=[3])  # a gap in series a
    s = prepare_series(frame, _cfg(id_column="id", missing="drop", freq="h"))
    assert s.ids == ["b"]


def test_drop_of_every_series_is_an_error():
    assert "no series left" in _error(_single([1.0, np.nan, 3.0]), missing="drop")


def test_gap_under_error_names_the_timestamp():
    frame = _long_frame().drop(index=[33, 34])  # series b at T0 + 8h and 9h
    msg = _error(frame, id_column="id", freq="h")
    assert "series 'b'" in msg
    assert "2 missing timestamp(s)" in msg
    assert "first 2022-01-01 08:00:00" in msg


def test_gap_with_inferred_frequency_names_the_timestamp():
    frame = _single(np.arange(10.0)).drop(index=[6])
    msg = _error(frame)
    assert "missing timestamp(s), first 2022-01-01 06:00:00" in msg


@pytest.mark.parametrize(
    ("freq", "inferred"),
    [("MS", "MS"), ("ME", "ME"), ("B", "B"), ("QS-FEB", "QS-FEB"), ("D", ("D", "24h")), ("W-MON", ("7D", "168h"))],
)  # a fixed step of days: pandas 2 names it in days, pandas 3 in hours
def test_a_calendar_step_is_inferred_across_a_gap(freq, inferred):
    # pandas infers nothing across a gap; the most common difference was taken instead: 31 days for monthly data
    # (refused: the next month is off its grid) and 1 day for business days (interpolate filled every weekend)
    times = pd.date_range("2021-02-01", periods=30, freq=freq)
    frame = pd.DataFrame({"time": times, "y": np.arange(30.0) * 2}).drop(index=[4])
    s = prepare_series(frame, _cfg(missing="interpolate"))
    assert s.freq in ((inferred,) if isinstance(inferred, str) else inferred)
    np.testing.assert_array_equal(s.values, np.arange(30.0) * 2)  # the one missing step, filled linearly


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamps_in_any_unit_lie_on_the_grid(unit):
    """Parquet, JSON and pandas 3 give seconds or microseconds; pandas 2 builds the grid in nanoseconds, and a
    grid compared in another unit than the times looked gapped with nothing missing (an IndexError)."""
    frame = _single(np.arange(8.0))
    frame["time"] = frame["time"].astype(f"datetime64[{unit}]")
    np.testing.assert_array_equal(prepare_series(frame, _cfg()).values, np.arange(8.0))
    assert "1 missing timestamp(s), first 2022-01-01 05:00:00" in _error(frame.drop(index=[5]), freq="h")


@pytest.mark.parametrize(("freq", "start", "inferred"), [("QS-JAN", "1956-01-01", "QS-JAN"),
    ("QS-JAN", "1981-10-01", "QS-JAN"), ("QS-FEB", "2000-05-01", "QS-FEB"), ("QE-DEC", "2000-03-31", "QE-DEC"),
    ("MS", "2000-01-01", "MS")])  # fmt: skip
def test_a_quarterly_step_is_named_the_same_under_pandas_2_and_3(freq, start, inferred):
    from pipeline.library.series import freq_of

    times = pd.Series(pd.date_range(start, periods=12, freq=freq))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas 3.1 deprecates infer_freq's string (a warning per call unless asked)
        assert freq_of(times, "data.csv").freqstr == inferred  # pandas 2 infers QS-OCT for QS-JAN's dates


def test_off_grid_timestamp_names_row():
    frame = _single(np.arange(6.0))
    frame.loc[3, "time"] = frame.loc[3, "time"] + pd.Timedelta("20min")
    msg = _error(frame, freq="h")
    assert "2022-01-01 03:20:00" in msg and "row 4" in msg and "off the" in msg


def test_a_day_whose_midnight_the_zone_skips_is_read_as_that_date(tmp_path):
    """8 September 2024 in Santiago starts at 01:00 (summer time skips its midnight), where a daily series' time
    is written: both readers, typed and as text with data.zone, hold it as that date; 01:00 on another day is still
    off the grid, named as the wall clock shows it."""
    from pipeline.library.series_stream import stream_series
    from pipeline.library.sources import parquet_batches

    days = pd.date_range("2024-08-01", periods=60, freq="D").tz_localize(
        "America/Santiago", nonexistent="shift_forward"
    )
    assert days[38] == pd.Timestamp("2024-09-08 01:00", tz="America/Santiago")
    pd.DataFrame({"time": days, "y": np.arange(60.0)}).to_parquet(tmp_path / "typed.parquet")
    pd.DataFrame({"time": [t.isoformat() for t in days], "y": np.arange(60.0)}).to_csv(tmp_path / "text.csv")
    cfg = _cfg(tmp_path / "typed.parquet")
    streamed = stream_series(parquet_batches(cfg), cfg)
    for series in (streamed, _load(tmp_path / "typed.parquet"), _load(tmp_path / "text.csv", zone="America/Santiago")):
        assert (series.freq, series.zone, series.wall_clock, series.lengths.tolist()) == (
            "D", "America/Santiago", True, [60]
        )  # fmt: skip
        assert pd.Timestamp(series.starts[0]) == pd.Timestamp("2024-08-01")
        np.testing.assert_array_equal(series.values, np.arange(60.0))

    late = days.where(np.arange(60) != 10, days[10] + pd.Timedelta("1h"))
    pd.DataFrame({"time": late, "y": np.arange(60.0)}).to_parquet(tmp_path / "late.parquet")
    words = r"timestamp 2024-08-11 01:00:00 \(row 11\) is off the (D|24h) grid \(irregular spacing"
    cfg = _cfg(tmp_path / "late.parquet")
    with pytest.raises(DataError, match=words):
        stream_series(parquet_batches(cfg), cfg)
    with pytest.raises(DataError, match=words):
        _load(tmp_path / "late.parquet")


def test_dates_written_in_numbers_only_are_read_in_the_order_the_column_shows(tmp_path):
    """02/01/2024 is 2 January in a day-first export: pandas read it as 1 February and 13/01/2024 as 13 January,
    row by row, so the series came out as gaps and disorder that data.missing would fill. The column decides the
    order once (a first number above 12: day first; a second: month first); one that cannot tell, or tells both,
    or contradicts data.date_order, is one line naming a row."""
    hours = pd.date_range("2024-01-01", "2024-01-20 23:00", freq="h")
    for fmt, order in (
        ("%d/%m/%Y %H:%M", "day_first"),
        ("%d.%m.%Y %H:%M", "day_first"),
        ("%d/%m/%y %H:%M", "day_first"),  # a two-digit year: 24 is 2024 (pandas read 02/01/24 as 1 February too)
        ("%m/%d/%Y %H:%M", "month_first"),
    ):
        frame = pd.DataFrame({"time": hours.strftime(fmt), "y": np.arange(len(hours), dtype=float)})
        frame.to_csv(tmp_path / "dates.csv", index=False)
        series = _load(tmp_path / "dates.csv")
        assert (series.freq, series.lengths.tolist(), series.date_order) == ("h", [len(hours)], order), fmt
        assert pd.Timestamp(series.starts[0]) == hours[0]
        np.testing.assert_array_equal(series.values, np.arange(len(hours), dtype=float))

    early = pd.DataFrame({"time": hours[:240].strftime("%d/%m/%Y %H:%M"), "y": np.arange(240.0)})  # 1-10 January
    early.to_csv(tmp_path / "early.csv", index=False)
    with pytest.raises(DataError) as info:
        _load(tmp_path / "early.csv")
    assert str(info.value) == (
        f"{tmp_path / 'early.csv'}: row 1: '01/01/2024 00:00' reads as day first or as month first, and no date of "
        "the column tells which (each number is 12 or less); set data.date_order (day_first or month_first) or write "
        "ISO dates (2024-01-02)"
    )
    series = _load(tmp_path / "early.csv", date_order="day_first")
    assert pd.Timestamp(series.starts[0]) + 239 * pd.Timedelta("1h") == hours[239] and series.lengths.tolist() == [240]
    with pytest.raises(
        DataError, match=r"row 289: '01/13/2024 00:00' is no date written day first \(data.date_order\)"
    ):
        _load(tmp_path / "dates.csv", date_order="day_first")  # the loop's last file: month first
    both = pd.DataFrame({"time": ["13/01/2024", "14/01/2024", "01/15/2024"], "y": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"day first \(row 1: '13/01/2024'\) and month first \(row 3: '01/15/2024'\)"):
        prepare_series(both, _cfg())
    iso = pd.DataFrame({"time": hours.strftime("%Y-%m-%d %H:%M"), "y": np.arange(len(hours), dtype=float)})
    assert prepare_series(iso, _cfg()).date_order is None


def test_errors_name_times_in_the_zone_the_data_was_written_in(tmp_path):
    """Zoned data is held in UTC, yet an error names each time as the file has it: in the data's zone with its
    offset (10:00 Berlin summer time, not the 08:00 UTC it is held as), naive local times read with data.zone and
    typed zoned parquet alike, through both readers; naive data without a zone stays as written."""
    from pipeline.library.series_stream import stream_series
    from pipeline.library.sources import parquet_batches

    instants = pd.date_range("2024-07-01", periods=48, freq="h", tz="Europe/Berlin")
    naive = pd.DataFrame({"time": instants.tz_localize(None), "y": np.arange(48.0)})
    naive.drop(index=10).to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(DataError, match=r"1 missing timestamp\(s\), first 2024-07-01 10:00:00\+02:00; "):
        _load(tmp_path / "gap.csv", zone="Europe/Berlin")
    with pytest.raises(DataError, match=r"1 missing timestamp\(s\), first 2024-07-01 10:00:00; "):
        _load(tmp_path / "gap.csv")

    twice = pd.DataFrame({"time": instants.insert(11, instants[10]), "y": np.arange(49.0)})
    twice.to_parquet(tmp_path / "twice.parquet")
    off = pd.DataFrame({"time": instants.insert(11, instants[10] + pd.Timedelta("30min")), "y": np.arange(49.0)})
    off.to_parquet(tmp_path / "off.parquet")
    for name, words in (
        ("twice", r"duplicate timestamp 2024-07-01 10:00:00\+02:00 \(row 12\)"),
        ("off", r"timestamp 2024-07-01 10:30:00\+02:00 \(row 12\) is off the h grid"),
    ):
        cfg = _cfg(tmp_path / f"{name}.parquet")
        with pytest.raises(DataError, match=words):
            stream_series(parquet_batches(cfg), cfg)
        with pytest.raises(DataError, match=words):
            _load(tmp_path / f"{name}.parquet")


# ---------------------------------------------------------------- bad input


def test_non_numeric_target_names_the_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("time,y\n2022-01-01 00:00,1.5\n2022-01-01 01:00,2.5\n2022-01-01 02:00,n/a?\n2022-01-01 03:00,4\n")
    with pytest.raises(DataError) as info:
        _load(path)
    msg = str(info.value)
    assert "row 3" in msg and "'n/a?'" in msg and "column 'y'" in msg
    assert str(path) in msg


def test_unparseable_timestamp_names_the_row():
    frame = pd.DataFrame({"time": ["2022-01-01 00:00", "2022-01-01 01:00", "yesterday"], "y": [1.0, 2.0, 3.0]})
    msg = _error(frame)
    assert "row 3" in msg and "'yesterday'" in msg


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"target_column": "value"}, "target column 'value' (data.target_column) not found"),
        ({"time_column": "ts"}, "time column 'ts' (data.time_column) not found"),
        ({"id_column": "store"}, "id column 'store' (data.id_column) not found"),
    ],
)
def test_missing_columns_name_the_columns_found(tmp_path, kw, needle):
    path = tmp_path / "cols.csv"
    _long_frame().to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        _load(path, **kw)
    msg = str(info.value)
    assert needle in msg
    assert "columns: time, id, y" in msg


# ---------------------------------------------------------------- splits and scaling


def test_split_sizes():
    assert split_sizes(100, 0.1, 0.2) == (70, 80)
    assert split_sizes(100, 5, 10) == (85, 90)
    assert split_sizes(7, 0.01, 0.01) == (5, 6)  # fractions round to at least one step
    assert split_sizes(50, 0.1, 3) == (42, 47)
    assert split_sizes(25, 0.1, 0.1) == (21, 23)  # 2.5 steps round to the even 2 (docs/config.md says so)
    assert split_sizes(35, 0.1, 0.1) == (27, 31)  # 3.5 to the even 4


def _two_series(values_a, values_b) -> SeriesSet:
    values_a, values_b = np.asarray(values_a, float), np.asarray(values_b, float)
    return SeriesSet(
        ids=["a", "b"],
        starts=[T0, T0 + pd.Timedelta("1h")],
        lengths=np.array([len(values_a), len(values_b)]),
        values=np.concatenate([values_a, values_b]),
        freq="h",
    )


def test_scaling_statistics_come_from_the_train_part_only():
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 2, 50), rng.normal(-3, 0.5, 40)
    cfg = _cfg(val_size=0.1, test_size=0.2)
    meta = split_and_scale(_two_series(a, b), cfg).to_json()
    ra, rb = meta["series"]
    assert (ra["train_end"], ra["val_end"], ra["length"]) == (35, 40, 50)
    assert (rb["train_end"], rb["val_end"], rb["length"]) == (28, 32, 40)
    assert ra["mean"] == pytest.approx(np.mean(a[:35]), rel=1e-12)
    assert ra["scale"] == pytest.approx(np.std(a[:35]), rel=1e-12)
    assert rb["mean"] == pytest.approx(np.mean(b[:28]), rel=1e-12)
    assert rb["scale"] == pytest.approx(np.std(b[:28]), rel=1e-12)
    assert ra["mean"] != pytest.approx(np.mean(a))  # the whole series would give another mean

    # changing the validation and test parts leaves the statistics unchanged
    a2, b2 = a.copy(), b.copy()
    a2[35:] *= 1000
    b2[28:] = 1e6
    meta2 = split_and_scale(_two_series(a2, b2), cfg).to_json()
    for r1, r2 in zip(meta["series"], meta2["series"]):
        assert (r2["mean"], r2["scale"]) == (r1["mean"], r1["scale"])
        assert (r2["train_end"], r2["val_end"]) == (r1["train_end"], r1["val_end"])
    assert meta2["fingerprint"] != meta["fingerprint"]  # the content changed, though
    # the same data split differently is another fingerprint: downstream stages must not be reused
    from dataclasses import replace

    resplit = split_and_scale(_two_series(a, b), replace(cfg, val_size=0.2)).to_json()
    assert resplit["fingerprint"] != meta["fingerprint"]

    # changing one train value does move them
    a3 = a.copy()
    a3[0] += 10
    assert split_and_scale(_two_series(a3, b), cfg).to_json()["series"][0]["mean"] != ra["mean"]


def test_meta_layout():
    meta = split_and_scale(_two_series(np.arange(20.0), np.arange(10.0) ** 2), _cfg(val_size=2, test_size=3)).to_json()
    assert meta["freq"] == "h" and meta["n_series"] == 2 and meta["n_points"] == 30
    assert [r["id"] for r in meta["series"]] == ["a", "b"]
    assert [r["start"] for r in meta["series"]] == ["2022-01-01T00:00:00", "2022-01-01T01:00:00"]
    assert [(r["train_end"], r["val_end"]) for r in meta["series"]] == [(15, 17), (5, 7)]
    assert meta["series"][0]["mean"] == 7.0
    assert meta["series"][1]["mean"] == pytest.approx(np.mean(np.arange(5.0) ** 2))


def test_scaling_none_keeps_units():
    meta = split_and_scale(_two_series(np.arange(20.0), np.arange(10.0)), _cfg(scaling="none")).to_json()
    assert all((r["mean"], r["scale"]) == (0.0, 1.0) for r in meta["series"])


def test_constant_train_part_is_an_error():
    values = np.r_[np.full(16, 3.0), np.arange(4.0)]
    with pytest.raises(DataError, match=r"series 'a' is constant on its train part"):
        split_and_scale(_two_series(values, np.arange(10.0)), _cfg(val_size=2, test_size=2))


def test_series_too_short_for_the_split():
    with pytest.raises(DataError, match=r"series 'b' has 5 points"):
        split_and_scale(_two_series(np.arange(20.0), np.arange(5.0)), _cfg(val_size=2, test_size=2))


# ---------------------------------------------------------------- the stage


def _stage_config(tmp_path, source, **data) -> Config:
    data.setdefault("target_column", "y")
    data.setdefault("id_column", "id")
    return Config(
        name="ingest-test",
        output_dir=str(tmp_path / "runs" / "{name}"),
        data=DataConfig(source=str(source), val_size=0.1, test_size=0.2, **data),
    )


def test_stage_writes_values_and_meta_and_caches(tmp_path):
    frame = _long_frame()
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    cfg = _stage_config(tmp_path, path)

    out = ingest.run(cfg)
    assert out == tmp_path / "runs" / "ingest-test" / "ingest"
    assert (out / "values.arrow").is_file() and (out / "meta.json").is_file()
    meta = read_meta(out)
    assert meta["stage"] == "ingest" and meta["source"] == str(path)
    assert meta["n_series"] == 2 and meta["n_points"] == 50 and meta["freq"] == "h"
    a, b = meta["series"]
    assert (a["id"], a["length"], a["train_end"], a["val_end"]) == ("a", 30, 21, 24)
    assert (b["id"], b["length"], b["train_end"], b["val_end"]) == ("b", 20, 14, 16)
    assert b["start"] == "2022-01-01T05:00:00"
    ya = frame.loc[frame.id == "a", "y"].to_numpy()
    assert a["mean"] == pytest.approx(ya[:21].mean(), rel=1e-12)
    assert a["scale"] == pytest.approx(ya[:21].std(), rel=1e-12)
    values = read_values(out)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, np.concatenate([ya, frame.loc[frame.id == "b", "y"]]).astype(np.float32))

    # unchanged inputs: skipped, nothing rewritten
    meta_text = (out / "meta.json").read_text()
    stamps = {f: os.stat(out / f).st_mtime_ns for f in ("meta.json", "values.arrow")}
    assert ingest.run(cfg) == out
    assert (out / "meta.json").read_text() == meta_text
    assert {f: os.stat(out / f).st_mtime_ns for f in stamps} == stamps

    # new file content: re-run, new values and fingerprint
    frame.loc[0, "y"] = 123.5
    frame.to_csv(path, index=False)
    ingest.run(cfg)
    meta2 = read_meta(out)
    assert meta2["fingerprint"] != meta["fingerprint"] and meta2["key"] != meta["key"]
    assert read_values(out)[0] == np.float32(123.5)
    assert meta2["series"][0]["mean"] != a["mean"]

    # a changed data section re-runs it too
    cfg3 = _stage_config(tmp_path, path, scaling="none")
    ingest.run(cfg3)
    assert read_meta(out)["series"][0]["scale"] == 1.0


def test_stage_rereads_a_file_replaced_with_the_same_mtime(tmp_path):
    """Content changes are seen even when the file keeps its mtime (cp -p, tar, rsync -a)."""
    frame = _single(np.arange(40.0) % 7)
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    cfg = _stage_config(tmp_path, path, id_column=None)
    out = ingest.run(cfg)
    before = os.stat(path)
    frame.loc[0, "y"] = 6.0  # same length of text, same size
    frame.to_csv(path, index=False)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    ingest.run(cfg)
    assert read_values(out)[0] == np.float32(6.0)


def test_stage_force_reruns(tmp_path):
    path = tmp_path / "data.csv"
    _single(np.arange(30.0) % 5).to_csv(path, index=False)
    cfg = _stage_config(tmp_path, path, id_column=None)
    out = ingest.run(cfg)
    stamp = os.stat(out / "meta.json").st_mtime_ns
    ingest.run(cfg, force=True)
    assert os.stat(out / "meta.json").st_mtime_ns != stamp


def test_stage_failure_keeps_previous_output(tmp_path):
    path = tmp_path / "data.csv"
    _single(np.arange(30.0) % 5).to_csv(path, index=False)
    cfg = _stage_config(tmp_path, path, id_column=None)
    out = ingest.run(cfg)
    meta_text = (out / "meta.json").read_text()
    path.write_text("time,y\n2022-01-01 00:00,1\n2022-01-01 00:00,2\n2022-01-01 01:00,3\n")
    with pytest.raises(DataError, match="duplicate timestamp"):
        ingest.run(cfg)
    assert (out / "meta.json").read_text() == meta_text
    assert not (out.parent / ".ingest.tmp").exists()


def test_a_hub_dataset_is_ingested_again_when_its_rows_change(tmp_path, monkeypatch):
    # a Hub source had no content in its cache key: once ingested, a branch that moved (new rows) was
    # "up to date" on every later run, and a nightly job trained on the first day's data for ever
    from pipeline.library import sources

    frame = _long_frame()
    loads = []

    def hub(dataset_id, split, revision=None, subset=None):  # no network here: the rows a Hub dataset would give
        loads.append((dataset_id, split, revision, subset))
        return frame.copy()

    monkeypatch.setattr(sources, "_load_hub", hub)
    cfg = _stage_config(tmp_path, "someone/sales", transform="none")
    out = ingest.run(cfg)
    first = read_meta(out)
    stamp = os.stat(out / "values.arrow").st_mtime_ns
    assert loads == [("someone/sales", "train", None, None)]
    assert ingest.run(cfg) == out and os.stat(out / "values.arrow").st_mtime_ns == stamp  # same rows: skipped

    frame.loc[len(frame)] = {"time": T0 + pd.Timedelta("30h"), "id": "a", "y": 99.0}  # the Hub rows moved on
    ingest.run(cfg)
    second = read_meta(out)
    assert [s["length"] for s in second["series"]] == [31, 20] and second["fingerprint"] != first["fingerprint"]
    assert read_values(out)[30] == np.float32(99.0)


def test_a_dataset_saved_by_datasets_is_read_as_its_rows(tmp_path, expected_long):
    # a save_to_disk directory was read as a directory of JSON data files (its state.json and dataset_info.json):
    # "cannot read as json: Couldn't cast"
    import datasets

    frame = _long_frame()
    datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(tmp_path / "one"))
    _assert_same(_load(tmp_path / "one", id_column="id"), expected_long)
    both = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame, preserve_index=False)})
    both["other"] = datasets.Dataset.from_pandas(frame.assign(y=frame["y"] * 2), preserve_index=False)
    both.save_to_disk(str(tmp_path / "dict"))
    _assert_same(_load(tmp_path / "dict", id_column="id"), expected_long)  # data.split: train
    np.testing.assert_array_equal(
        _load(tmp_path / "dict", id_column="id", split="other").values, expected_long.values * 2
    )
    with pytest.raises(DataError, match=r"dict: no split 'test' \(data.split\); splits: train, other"):
        _load(tmp_path / "dict", id_column="id", split="test")


def test_a_class_label_id_column_gives_the_series_their_names(tmp_path, expected_long):
    """Hub datasets often keep the series id as a ClassLabel; `to_pandas` gives its codes (0, 1), names of no
    series the user knows."""
    import datasets

    frame = _long_frame()
    features = datasets.Features(
        {
            "time": datasets.Value("timestamp[ns]"),
            "id": datasets.ClassLabel(names=["a", "b"]),
            "y": datasets.Value("float64"),
        }
    )
    labelled = frame.assign(id=frame["id"].map({"a": 0, "b": 1}))
    datasets.Dataset.from_pandas(labelled, features=features, preserve_index=False).save_to_disk(str(tmp_path / "cl"))
    _assert_same(_load(tmp_path / "cl", id_column="id"), expected_long)


def test_days_in_a_zone_with_summer_time_are_counted_on_its_wall_clock(tmp_path):
    """Daily data at local midnight in Berlin is 23:00 UTC in winter and 22:00 in summer: on no UTC grid (it was
    refused: "write the dates without a zone"), yet one day apart on Berlin's clock. Steps of a day or longer are
    held on the zone's wall clock, through both parquet readers; hours stay instants in UTC."""
    from pipeline.library.series_stream import stream_series
    from pipeline.library.sources import parquet_batches

    def read_both(source, streams: bool = True, **kw) -> SeriesSet:
        """The streamed reader (fixed steps; months and weeks go to the pandas path) and the pandas path agree."""
        cfg = _cfg(source, **kw)
        streamed, pandas_path = stream_series(parquet_batches(cfg), cfg), _load(source, **kw)
        assert (streamed is not None) == streams
        if streamed is not None:
            _assert_same(streamed, pandas_path)
            assert (streamed.zone, streamed.wall_clock) == (pandas_path.zone, pandas_path.wall_clock)
        return pandas_path

    for freq, periods, name in (("D", 120, "D"), ("W-MON", 40, "W-MON"), ("MS", 30, "MS")):
        times = pd.date_range("2024-01-01", periods=periods, freq=freq, tz="Europe/Berlin")
        pd.DataFrame({"time": times, "y": np.arange(float(periods))}).to_parquet(tmp_path / f"{name}.parquet")
        series = read_both(tmp_path / f"{name}.parquet", streams=name == "D")
        assert (series.freq, series.zone, series.wall_clock, series.lengths.tolist()) == (
            name, "Europe/Berlin", True, [periods]
        )  # fmt: skip
        assert pd.Timestamp(series.starts[0]) == pd.Timestamp("2024-01-01")  # local midnight, not 23:00 UTC
        np.testing.assert_array_equal(series.values, np.arange(float(periods)))
    days = pd.date_range("2024-01-01", periods=120, freq="D", tz="Europe/Berlin")
    pd.DataFrame({"time": days.tz_convert("UTC"), "y": np.arange(120.0)}).to_parquet(tmp_path / "utc.parquet")
    series = read_both(tmp_path / "utc.parquet", zone="Europe/Berlin")  # typed in UTC, named by data.zone
    assert (series.freq, series.zone, series.wall_clock, series.lengths.tolist()) == ("D", "Europe/Berlin", True, [120])
    tokyo = pd.date_range("2024-01-01", periods=50, freq="D", tz="+09:00")
    pd.DataFrame({"time": tokyo, "y": np.arange(50.0)}).to_parquet(tmp_path / "offset.parquet")
    series = read_both(tmp_path / "offset.parquet")  # a fixed offset: Arrow's "+09:00"
    assert (series.zone, series.wall_clock, pd.Timestamp(series.starts[0])) == (
        "UTC+09:00",
        True,
        days[0].tz_localize(None),
    )

    hourly = pd.date_range("2024-03-30", periods=72, freq="h", tz="Europe/Berlin")
    pd.DataFrame({"time": hourly, "y": np.arange(72.0)}).to_parquet(tmp_path / "hourly.parquet")
    series = read_both(tmp_path / "hourly.parquet")
    assert (series.freq, series.zone, series.wall_clock) == ("h", "Europe/Berlin", False)
    assert pd.Timestamp(series.starts[0]) == pd.Timestamp("2024-03-29 23:00")  # UTC: 71 hours, not 72 on the clock

    days = pd.date_range("2024-01-01", periods=120, freq="D", tz="Europe/Berlin")
    text = pd.DataFrame({"time": [t.isoformat() for t in days], "y": np.arange(120.0)})
    text.to_csv(tmp_path / "daily.csv", index=False)  # offsets +01:00, then +02:00: instants, no zone named
    with pytest.raises(DataError) as info:
        _load(tmp_path / "daily.csv")
    step = "D" if "off the D grid" in str(info.value) else "24h"  # pandas 3 names a fixed day step in hours
    assert str(info.value) == (
        f"{tmp_path / 'daily.csv'}: series 'series': timestamp 2024-03-31 22:00:00+00:00 (row 92) is off the {step} "
        "grid by an hour: a daylight-saving change moves local midnights by an hour in UTC, the clock these timestamps "
        "are read on; set data.zone to theirs (e.g. Europe/Berlin) to count days on its clock, or write the dates "
        "without a zone"
    )
    series = _load(tmp_path / "daily.csv", zone="Europe/Berlin")
    assert (series.freq, series.zone, series.wall_clock, series.lengths.tolist()) == ("D", "Europe/Berlin", True, [120])
    assert pd.Timestamp(series.starts[0]) == pd.Timestamp("2024-01-01")
    dates = pd.DataFrame({"time": days.tz_localize(None), "y": np.arange(120.0)})
    dates.to_parquet(tmp_path / "dates.parquet")
    series = _load(tmp_path / "dates.parquet")
    assert (series.lengths.tolist(), series.zone, series.wall_clock) == ([120], None, False)
    irregular = pd.date_range("2024-01-01", periods=30, freq="h").delete(5).insert(5, pd.Timestamp("2024-01-01 05:30"))
    pd.DataFrame({"time": irregular, "y": np.arange(30.0)}).to_parquet(tmp_path / "irregular.parquet")
    with pytest.raises(DataError, match=r"is off the h grid \(irregular spacing"):
        _load(tmp_path / "irregular.parquet", freq="h")


def test_local_times_across_a_daylight_saving_change_are_read_as_the_instants_they_name(tmp_path):
    """Hourly data written in local time with its UTC offset, which summer time changes (+01:00, then +02:00): the
    instants lie an hour apart throughout, so they are read in UTC on a regular grid, and the zone recorded for
    writing forecasts back is UTC. One offset throughout is recorded as itself; a mix with naive times is refused."""
    from pipeline.library.history import in_zone, instants_in_utc, written_zone

    local = pd.date_range("2024-03-30", periods=72, freq="h", tz="Europe/Berlin")  # 31 March: the clocks go forward
    text = pd.Series([t.isoformat() for t in local])
    assert text[0].endswith("+01:00") and text[71].endswith("+02:00")
    pd.DataFrame({"time": text, "y": np.arange(72.0)}).to_csv(tmp_path / "local.csv", index=False)
    series = _load(tmp_path / "local.csv")
    assert series.lengths.tolist() == [72] and series.zone == "UTC" and series.freq == "h"
    assert pd.Timestamp(series.starts[0]) == pd.Timestamp("2024-03-29 23:00")
    np.testing.assert_array_equal(series.values, np.arange(72.0))
    assert written_zone(text) == "UTC"

    sydney = pd.Series([f"2024-01-01T{h:02d}:00:00+10:00" for h in range(24)])
    pd.DataFrame({"time": sydney, "y": np.arange(24.0)}).to_csv(tmp_path / "sydney.csv", index=False)
    series = _load(tmp_path / "sydney.csv")
    assert series.zone == "UTC+10:00" and pd.Timestamp(series.starts[0]) == pd.Timestamp("2023-12-31 14:00")
    assert written_zone(sydney) == "UTC+10:00" and written_zone(pd.Series(["2024-01-01 00:00"])) is None
    assert written_zone(pd.Series(["2024-01-01", "2024-01-02", "2024-02-03"])) is None  # a date's "-01" is no offset
    assert written_zone(pd.Series(["2024-01-01T00:00:00.000+0100"])) == "UTC+01:00"
    assert instants_in_utc(pd.Series(["2024-01-01", "2024-01-02T00:00+01:00"])) is None  # naive and aware
    assert [str(t) for t in in_zone(np.array(["2023-12-31T14:00"], dtype="datetime64[ns]"), series.zone)] == [
        "2024-01-01 00:00:00+10:00"
    ]
    naive = pd.Series(["2024-01-01 00:00", *sydney[1:]])
    pd.DataFrame({"time": naive, "y": np.arange(24.0)}).to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(DataError) as info:
        _load(tmp_path / "mixed.csv")
    assert str(info.value) == (
        f"{tmp_path / 'mixed.csv'}: timestamps with and without a zone in the time column (row 1: no zone, row 2: "
        "UTC+10:00); give all of them a zone (or a UTC offset) or none"
    )


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_span_wider_than_nanosecond_time_differences_is_the_wide_span_error(tmp_path, suffix):
    """One 2022 timestamp among 1677 ones (found by tests/test_fuzz.py): the span is 344 years, more than a
    nanosecond difference holds (292 years), and counting its steps raised OutOfBoundsDatetime (exit 1)."""
    from pipeline.stages.ingest import read_series

    rows = [("a", "2022-01-01 00:00"), *[(s, f"1677-09-22 {h:02d}:00") for s in "ab" for h in range(1, 18)]]
    frame = pd.DataFrame(rows, columns=["id", "time"]).assign(y=0.0)
    source = tmp_path / f"t.{suffix}"
    if suffix == "csv":
        frame.to_csv(source, index=False)
    else:
        frame.assign(time=pd.to_datetime(frame["time"])).to_parquet(source)
    with pytest.raises(DataError) as info:
        read_series(_cfg(source, id_column="id", freq="h"))
    assert str(info.value) == (
        f"{source}: series 'a': its timestamps span 3017856 steps of h for 18 rows (largest gap from 1677-09-22 "
        "17:00:00 (row 18) to 2022-01-01 00:00:00 (row 1)); check those timestamps or data.freq"
    )


def test_naive_local_times_are_read_on_the_clock_data_zone_names(tmp_path):
    """Naive Berlin local time across 27 October (02:00 twice): read in the order written, an hour apart in UTC
    throughout; the streamed reader leaves such data to the pandas path. Naive dates with a zone stay dates."""
    from pipeline.library.series_stream import stream_series
    from pipeline.library.sources import parquet_batches
    from pipeline.stages.ingest import read_series

    instants = pd.date_range("2024-10-26 12:00", periods=30, freq="h", tz="Europe/Berlin")
    frame = pd.DataFrame({"time": instants.tz_localize(None), "y": np.arange(30.0)})
    assert frame["time"].duplicated().sum() == 1
    frame.to_parquet(tmp_path / "naive.parquet")
    cfg = _cfg(tmp_path / "naive.parquet", zone="Europe/Berlin")
    assert stream_series(parquet_batches(cfg), cfg) is None
    series = read_series(cfg)
    assert (series.freq, series.zone, series.local_times, series.wall_clock) == ("h", "Europe/Berlin", True, False)
    assert series.lengths.tolist() == [30] and pd.Timestamp(series.starts[0]) == pd.Timestamp("2024-10-26 10:00")
    np.testing.assert_array_equal(series.values, np.arange(30.0))
    with pytest.raises(DataError, match=r"duplicate timestamp 2024-10-27 02:00:00 \(row 16\)"):
        _load(tmp_path / "naive.parquet")  # without data.zone: naive times as they are

    days = pd.DataFrame({"time": pd.date_range("2024-03-01", periods=60, freq="D"), "y": np.arange(60.0)})
    days.to_parquet(tmp_path / "days.parquet")
    series = read_series(_cfg(tmp_path / "days.parquet", zone="Europe/Berlin"))
    assert (series.freq, series.zone, series.wall_clock, series.local_times) == ("D", "Europe/Berlin", True, True)
    assert pd.Timestamp(series.starts[0]) == pd.Timestamp("2024-03-01") and series.lengths.tolist() == [60]
