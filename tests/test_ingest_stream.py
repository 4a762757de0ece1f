"""The streaming parquet ingest against the pandas path: same outputs, same errors, memory that scales.

`read_series` streams typed parquet (pipeline/library/series_stream.py); `prepare_series(load_table())`
is the pandas path every other source takes. On the same data both must give byte-identical
`values.arrow` and `meta.json`, and the same one-line errors.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import Config, DataConfig
from pipeline.library import sources
from pipeline.library.errors import DataError
from pipeline.library.series import prepare_series
from pipeline.library.series_stream import stream_series
from pipeline.library.sources import load_table, parquet_batches
from pipeline.library.splits import split_and_scale
from pipeline.stages import ingest
from pipeline.stages.ingest import read_series

from .conftest import REPO

T0 = pd.Timestamp("2023-03-01 00:00")


def frame(seed: int = 0, n_series: int = 5, shuffle: bool = True) -> pd.DataFrame:
    """Hourly series of different lengths and starts, float32 values, rows in random order."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(n_series):
        n = int(rng.integers(60, 120))
        times = pd.date_range(T0 + pd.Timedelta(hours=int(rng.integers(0, 30))), periods=n, freq="h")
        values = (10 * (k + 1) + rng.normal(0, 3, n)).astype(np.float32)
        parts.append(pd.DataFrame({"id": f"s{k}", "time": times, "y": values}))
    out = pd.concat(parts, ignore_index=True)
    return out.sample(frac=1.0, random_state=seed).reset_index(drop=True) if shuffle else out


def write_parquet(df: pd.DataFrame, path, row_group_size: int = 64) -> str:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size)
    return str(path)


def cfg_for(source, **kw) -> DataConfig:
    kw.setdefault("id_column", "id")
    kw.setdefault("target_column", "y")
    kw.setdefault("transform", "none")  # `auto` is the ingest stage's choice (tests/test_transform_choice.py)
    return DataConfig(source=str(source), val_size=0.1, test_size=0.2, **kw)


def both(source, **kw):
    """(streamed, pandas) SeriesSet of the same parquet source."""
    cfg = cfg_for(source, **kw)
    streamed = stream_series(parquet_batches(cfg), cfg)
    assert streamed is not None, "this source should stream"
    return streamed, prepare_series(load_table(cfg), cfg)


def assert_identical(streamed, pandas_path, cfg: DataConfig) -> None:
    assert streamed.values.dtype == np.float32
    assert streamed.ids == pandas_path.ids and streamed.freq == pandas_path.freq
    assert [s.isoformat() for s in streamed.starts] == [pd.Timestamp(s).isoformat() for s in pandas_path.starts]
    np.testing.assert_array_equal(streamed.lengths, pandas_path.lengths)
    assert streamed.values.tobytes() == pandas_path.values.astype(np.float32).tobytes()
    assert streamed.zone == pandas_path.zone
    assert (streamed.filled is None) == (pandas_path.filled is None)
    if streamed.filled is not None:
        np.testing.assert_array_equal(streamed.filled, pandas_path.filled)
    a, b = split_and_scale(streamed, cfg).to_json(), split_and_scale(pandas_path, cfg).to_json()
    if cfg.missing != "interpolate":
        assert a == b  # statistics and fingerprint, exactly
        return
    # interpolated points are not float32 values: the pandas path takes its statistics from the
    # float64 ones, the streaming path from the stored float32 ones (see pipeline/library/series_stream.py)
    assert a["fingerprint"] == b["fingerprint"]
    for ra, rb in zip(a["series"], b["series"], strict=True):
        assert ra == {**rb, "mean": pytest.approx(rb["mean"], rel=1e-6), "scale": pytest.approx(rb["scale"], rel=1e-6)}


@pytest.fixture(params=[3, 64, 100_000], ids=["batches-of-3", "batches-of-64", "one-batch"])
def batch_rows(request, monkeypatch):
    """Tiny batches put duplicates, ordering and row numbers across batch boundaries."""
    monkeypatch.setattr(sources, "BATCH_ROWS", request.param)
    return request.param


# ---------------------------------------------------------------- same outputs


@pytest.mark.parametrize(
    "kw",
    [{}, {"freq": "h"}, {"missing": "interpolate"}, {"missing": "ffill"}, {"missing": "drop"}],
    ids=["inferred-freq", "given-freq", "interpolate", "ffill", "drop"],
)
def test_same_series_as_the_pandas_path(tmp_path, batch_rows, kw):
    df = frame()
    if "missing" in kw:  # gaps (rows removed) and NaN/inf targets in two series
        df = df.drop(index=df.index[(df.id == "s1")][5:8]).reset_index(drop=True)
        df.loc[df.index[df.id == "s3"][[2, 9]], "y"] = [np.nan, np.inf]
    source = write_parquet(df, tmp_path / "d.parquet")
    cfg = cfg_for(source, **kw)
    streamed, pandas_path = both(source, **kw)
    assert_identical(streamed, pandas_path, cfg)
    if kw.get("missing") == "drop":
        assert streamed.ids == ["s0", "s2", "s4"]
    if kw.get("missing") in ("interpolate", "ffill"):  # the three gap points of s1 and the NaN and inf of s3
        offsets = np.concatenate([[0], np.cumsum(streamed.lengths)])
        for i, sid in enumerate(streamed.ids):
            rows = df[df.id == sid]
            seen = (rows.time[np.isfinite(rows.y)] - rows.time.min()) // pd.Timedelta(hours=1)
            expected = sorted(set(range(int(streamed.lengths[i]))) - set(seen))
            assert np.flatnonzero(streamed.filled[offsets[i] : offsets[i + 1]]).tolist() == expected
            assert len(expected) == {"s1": 3, "s3": 2}.get(sid, 0)
    else:
        assert streamed.filled is None


def test_unsorted_input_gives_the_values_of_sorted_input(tmp_path, batch_rows, caplog):
    sorted_rows = frame(shuffle=False)
    sorted_cfg = cfg_for(write_parquet(sorted_rows, tmp_path / "sorted.parquet"))
    shuffled_cfg = cfg_for(write_parquet(sorted_rows.sample(frac=1.0, random_state=4), tmp_path / "shuffled.parquet"))
    with caplog.at_level(logging.INFO, logger="pipeline"):
        a = read_series(sorted_cfg)
        assert "not sorted" not in caplog.text
        b = read_series(shuffled_cfg)
        assert "input was not sorted by time; sorted it" in caplog.text
    assert a.ids == b.ids and a.values.tobytes() == b.values.tobytes()
    np.testing.assert_array_equal(a.lengths, b.lengths)
    # series one after another, each in time order, but not in id order: sorted as it is
    caplog.clear()
    by_id_descending = pd.concat([sorted_rows[sorted_rows.id == sid] for sid in sorted(set(sorted_rows.id))[::-1]])
    with caplog.at_level(logging.INFO, logger="pipeline"):
        c = read_series(cfg_for(write_parquet(by_id_descending, tmp_path / "by_id.parquet")))
    assert "not sorted" not in caplog.text and c.values.tobytes() == a.values.tobytes()


def test_ids_times_and_types(tmp_path):
    """Integer ids, aware timestamps (kept as UTC), microsecond units, integer and bool targets, no id column."""
    df = frame(shuffle=False)
    df["id"] = df["id"].str[1:].astype(np.int64) * 7
    df["time"] = df["time"].dt.tz_localize("Europe/Paris").astype("datetime64[us, Europe/Paris]")
    df["y"] = np.round(df["y"] * 10).astype(np.int32)
    source = write_parquet(df, tmp_path / "typed.parquet")
    streamed, pandas_path = both(source)
    assert_identical(streamed, pandas_path, cfg_for(source))
    assert streamed.ids[:2] == ["0", "14"] and streamed.zone == "Europe/Paris"

    one = frame(n_series=1, shuffle=False).drop(columns="id").assign(y=lambda f: f.y > 10)
    source = write_parquet(one, tmp_path / "single.parquet")
    streamed, pandas_path = both(source, id_column=None)
    assert streamed.ids == ["series"]
    assert_identical(streamed, pandas_path, cfg_for(source, id_column=None))


def test_the_stage_writes_the_same_files_from_parquet_and_csv(tmp_path):
    """values.arrow and meta.json byte-identical whichever reader made them (float32 data)."""
    df = frame(seed=3)
    df = df.drop(index=df.index[df.id == "s2"][[4]]).reset_index(drop=True)  # a gap to fill
    parquet = write_parquet(df, tmp_path / "d.parquet")
    csv = tmp_path / "d.csv"
    df.assign(y=df.y.astype(np.float64)).to_csv(csv, index=False)  # float32 values, printed exactly
    outputs = []
    for name, source in (("parquet", parquet), ("csv", csv)):
        cfg = Config(name=name, output_dir=str(tmp_path / "{name}"), data=cfg_for(source, missing="ffill"))
        out = ingest.run(cfg)
        meta = json.loads((out / "meta.json").read_text())
        for key in ("key", "source", "config"):  # they name the source file
            meta.pop(key)
        outputs.append(((out / "values.arrow").read_bytes(), meta))
    assert outputs[0] == outputs[1]


def test_non_typed_parquet_and_other_sources_take_the_pandas_path(tmp_path):
    df = frame()
    text_times = write_parquet(df.assign(time=df.time.astype(str)), tmp_path / "text.parquet")
    assert stream_series(parquet_batches(cfg_for(text_times)), cfg_for(text_times)) is None
    monthly = pd.DataFrame({"id": "a", "time": pd.date_range("2020-01-01", periods=40, freq="MS"), "y": 1.0})
    monthly["y"] = np.arange(40.0)
    months = write_parquet(monthly, tmp_path / "monthly.parquet")
    assert stream_series(parquet_batches(cfg_for(months)), cfg_for(months)) is None  # not a fixed step
    assert read_series(cfg_for(months)).freq == "MS"
    csv = tmp_path / "d.csv"
    df.to_csv(csv, index=False)
    assert parquet_batches(cfg_for(csv)) is None


# ---------------------------------------------------------------- same errors


def _dup(df):  # row 41 of the file repeats row 12's (series, time)
    return pd.concat([df.iloc[:40], df.iloc[[11]], df.iloc[40:]], ignore_index=True)


def _gap(df):
    return df.drop(index=df.index[df.id == "s2"][[10, 11]]).reset_index(drop=True)


def _off_grid(df):
    df = df.copy()
    df.loc[17, "time"] += pd.Timedelta("20min")
    return df


def _cell(column, row, value):
    def change(df):
        df = df.copy()
        df[column] = df[column].astype(object) if value is None else df[column]
        df.loc[row - 1, column] = value
        return df

    return change


def _too_large(df):
    return _cell("y", 33, 1e39)(df.assign(y=df.y.astype(np.float64)))  # float32 cannot hold it at all


def _far_away(df):
    df = df.copy()
    df.loc[30, "time"] = pd.Timestamp("2262-01-01")
    return df


def _constant(df):
    return df.assign(y=df.y.where(df.id != "s4", np.float32(5.0)))


ERRORS = {
    "duplicate": (_dup, {}, ("duplicate timestamp", "(row 41)")),
    "gap": (_gap, {"freq": "h"}, ("series 's2'", "2 missing timestamp(s)", "data.missing")),
    "off-grid": (_off_grid, {"freq": "h"}, ("row 18", "off the h grid")),
    "nan": (_cell("y", 25, np.nan), {}, ("row 25", "missing or non-finite target")),
    "too-large": (_too_large, {}, ("value 1e+39", "too large for float32")),
    "missing-id": (_cell("id", 50, None), {}, ("row 50", "missing series id in column 'id'")),
    "missing-time": (_cell("time", 70, pd.NaT), {}, ("row 70", "missing timestamp")),
    "span": (_far_away, {"freq": "h"}, ("largest gap", "row 31", "2262-01-01")),
    "constant": (_constant, {}, ("series 's4' is constant",)),
    "negative-under-log1p": (_cell("y", 60, np.float32(-3.0)), {"transform": "log1p"}, ("(row 60) is negative",)),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_same_error_line_as_the_pandas_path(tmp_path, batch_rows, case):
    change, kw, needles = ERRORS[case]
    df = change(frame())
    source = write_parquet(df, tmp_path / "bad.parquet")
    cfg = cfg_for(source, **kw)
    messages = []
    for read in (read_series, lambda c: prepare_series(load_table(c), c)):
        with pytest.raises(DataError) as info:
            split_and_scale(read(cfg), cfg)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    for needle in needles:
        assert needle in messages[0], messages[0]
    assert str(source) in messages[0] or "data.source" in messages[0]


def test_error_names_series_and_row_of_a_duplicate(tmp_path, batch_rows):
    df = frame(shuffle=False)
    dup_row = df.index[(df.id == "s3")][7]
    df = pd.concat([df, df.iloc[[dup_row]]], ignore_index=True)  # the last row of the file
    source = write_parquet(df, tmp_path / "dup.parquet")
    with pytest.raises(DataError) as info:
        read_series(cfg_for(source))
    t = df.loc[dup_row, "time"]
    assert str(info.value) == f"{source}: series 's3': duplicate timestamp {t} (row {len(df)})"


def test_several_files_are_numbered_on(tmp_path, batch_rows):
    """Files are read in name order and their rows numbered on, as the pandas path concatenates them."""
    df = frame(shuffle=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(df.iloc[:150], folder / "a.parquet")
    write_parquet(df.iloc[150:], folder / "c.parquet")
    streamed, pandas_path = both(folder)
    assert_identical(streamed, pandas_path, cfg_for(folder))
    # a file without rows changes nothing (datasets' non-streaming parquet reader fails on it)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).schema.empty_table(), folder / "b.parquet")
    assert read_series(cfg_for(folder)).values.tobytes() == streamed.values.tobytes()
    write_parquet(pd.concat([df.iloc[150:], df.iloc[[3]]]), folder / "c.parquet")  # row 4 again, at the end
    with pytest.raises(DataError, match=rf"duplicate timestamp .* \(row {len(df) + 1}\)"):
        read_series(cfg_for(folder))


def test_no_rows_and_a_missing_column(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pandas(frame(), preserve_index=False).schema.empty_table(), empty)
    with pytest.raises(DataError, match="no rows"):
        read_series(cfg_for(empty))
    source = write_parquet(frame(), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"target column 'load' \(data.target_column\) not found; columns: id, time, y"):
        read_series(cfg_for(source, target_column="load"))


# ---------------------------------------------------------------- memory

CHILD = """
import resource, sys
from pipeline.config import DataConfig
from pipeline.stages.ingest import read_series
from pipeline.library.splits import split_and_scale
cfg = DataConfig(source=sys.argv[1], id_column="series", target_column="value", freq="h", transform="none")
split_and_scale(read_series(cfg), cfg)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _peak_rss(path) -> int:
    """Peak RSS (bytes) of a fresh process that ingests `path`."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


@pytest.mark.slow
def test_peak_memory_grows_with_the_float32_size_of_the_data(tmp_path):
    """From 1 M to 5 M points, peak RSS grows by at most 2x the float32 size of the 4 M more.

    The output buffer takes 4 bytes a point and the slot bits 1/8; the rows are never all held
    (the pandas path took about 150 bytes a point).
    """
    sys.path.insert(0, str(REPO / "bench"))
    from memory import write_parquet as write_bench_parquet

    small, large = tmp_path / "small.parquet", tmp_path / "large.parquet"
    write_bench_parquet(small, n_series=500, length=2_000)  # row groups of 1 M rows in both files
    write_bench_parquet(large, n_series=2_500, length=2_000)
    extra = (2_500 - 500) * 2_000
    growth = _peak_rss(large) - _peak_rss(small)
    assert growth <= 2 * 4 * extra, f"peak RSS grew by {growth / 1e6:.0f} MB for {extra / 1e6:.1f} M more points"
