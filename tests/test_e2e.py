"""End to end through the CLI on small synthetic data: every stage, artifacts, predict, caching."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pytest
import torch

from pipeline.config import SyntheticConfig, load_config
from pipeline.library.errors import DataError
from pipeline.library.forecaster import Forecaster
from pipeline.library.model import build_model
from pipeline.library.synthetic import generate_synthetic
from pipeline.stages.export import model_card

from .conftest import cli, cli_in_process, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    config = write_config(tmp)
    result = cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run", config, result


def test_run_writes_every_artifact(finished_run):
    run, _, _ = finished_run
    for path in [
        "config.yaml",
        "ingest/meta.json",
        "ingest/values.arrow",
        "window/train.npy",
        "window/test.npy",
        "train/best/model.safetensors",
        "train/model.safetensors",
        "train/checkpoints/step_20/train_state.json",
        "train/checkpoints/step_40/model.safetensors",
        "evaluate/per_series.csv",
        "evaluate/report.md",
        "export/model.onnx",
        "export/README.md",
        "export/config.yaml",
    ]:
        assert (run / path).is_file(), path
    for png in ("forecasts.png", "error_by_horizon.png"):
        assert (run / "evaluate" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "train/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # tracking: none, the curve is there
    report = (run / "evaluate/report.md").read_text()
    assert all(f"]({p})" in report for p in ("forecasts.png", "error_by_horizon.png", "../train/loss.png"))
    rows = [json.loads(line) for line in (run / "train/metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(5, 41, 5))
    assert all(np.isfinite(r["loss"]) and r["windows_per_s"] > 0 for r in train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 10, 20, 30, 40]  # 0: the untrained model
    # nothing temporary is left behind
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_metrics_match_an_independent_computation(finished_run):
    """Recompute the baselines' metrics from the raw synthetic data with plain loops."""
    run, _, _ = finished_run
    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    assert set(metrics["baselines"]) == {"naive", "seasonal_naive"}
    for block in [metrics["model"], *metrics["baselines"].values()]:
        assert set(block) == {"mae", "rmse", "smape", "mase"}
        assert all(np.isfinite(v) and v >= 0 for v in block.values())

    data = generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))
    lookback, horizon, season = 48, 12, 24
    abs_err, sq_err, scaled, count = 0.0, 0.0, 0.0, 0
    for _, part in data.groupby("series", observed=True):
        y = part["value"].to_numpy(dtype=np.float32).astype(np.float64)
        n = len(y)
        test = max(1, round(n * 0.15))
        val = max(1, round(n * 0.15))
        train_end, val_end = n - val - test, n - test
        mase_scale = np.mean([abs(y[t] - y[t - season]) for t in range(season, train_end)])
        origin = max(val_end, lookback)
        while origin + horizon <= n:
            for h in range(horizon):
                forecast = y[origin + h - season * (1 + h // season)]
                e = y[origin + h] - forecast
                abs_err += abs(e)
                sq_err += e * e
                scaled += abs(e) / mase_scale
                count += 1
            origin += horizon
    sn = metrics["baselines"]["seasonal_naive"]
    assert metrics["n_windows"] * horizon == count
    assert sn["mae"] == pytest.approx(abs_err / count, rel=1e-9)
    assert sn["rmse"] == pytest.approx(np.sqrt(sq_err / count), rel=1e-9)
    assert sn["mase"] == pytest.approx(scaled / count, rel=1e-9)
    per_series = pd.read_csv(run / "evaluate/per_series.csv")
    assert len(per_series) == 4
    assert per_series["n_windows"].sum() == metrics["n_windows"]


def test_export_is_self_contained_and_onnx_matches(finished_run, tmp_path):
    run, _, _ = finished_run
    export = run / "export"
    manifest = json.loads((export / "manifest.json").read_text())["files"]
    assert {"model.safetensors", "model.onnx", "forecaster.json", "config.yaml", "README.md"} <= set(manifest)
    meta = json.loads((export / "meta.json").read_text())
    assert meta["onnx_parity"] <= 1e-4

    forecaster = Forecaster.load(export)
    # hourly data with train parts of about 280 steps: the week does not fit twice, the day is kept (auto calendar)
    assert forecaster.spec.model.calendar == ("day",)
    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    # the documented input: lookback + horizon steps, the target then sin/cos of the day
    x = np.random.default_rng(0).normal(size=(7, 48 + 12, 1 + 2)).astype(np.float32)  # batch 7: dynamic axis
    with torch.no_grad():
        expected = forecaster.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, atol=1e-4)


def test_an_onnx_parity_beyond_the_tolerance_is_one_line_and_keeps_the_export(finished_run):
    run, config, _ = finished_run
    before = {p.name: p.read_bytes() for p in (run / "export").iterdir() if p.is_file()}
    tight = cli_in_process("export", "--config", str(config), "export.parity_atol=1e-12")
    assert tight.returncode == 2, tight.stderr[-2000:]
    (line,) = [x for x in tight.stderr.splitlines() if x.startswith("error:")]
    assert "export.parity_atol (1e-12): the ONNX model's forecasts differ from PyTorch's by up to" in line
    assert "Traceback" not in tight.stderr
    assert {p.name: p.read_bytes() for p in (run / "export").iterdir() if p.is_file()} == before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # the staged export is gone too


def test_a_history_ending_too_near_2262_is_one_line(finished_run):
    """datetime64[ns] ends at 2262-04-11 23:47: a forecast after 2262-04-11 23:00 would wrap around to 1677 (found
    by tests/test_fuzz.py as an AssertionError inside pandas)."""
    run, _, _ = finished_run
    forecaster = Forecaster.load(run / "export")
    for last in ("2262-04-11 23:00", "2262-04-11 12:00"):
        times = pd.Timestamp(last) - pd.to_timedelta(np.arange(47, -1, -1), "h")  # date_range fails this near 2262
        history = pd.DataFrame({"series": "s0000", "time": times, "value": np.arange(48.0)})
        with pytest.raises(DataError) as info:
            forecaster.predict(history)
        assert str(info.value) == (
            f"history: series 's0000': timestamp {pd.Timestamp(last)} lies too near the end of the range of "
            "timestamps (1677-09-21 to 2262-04-11) to forecast 12 steps of h after it"
        )
    times = pd.Timestamp("2262-04-11 11:00") - pd.to_timedelta(np.arange(47, -1, -1), "h")  # ends at 23:00: fits
    forecast = forecaster.predict(pd.DataFrame({"series": "s0000", "time": times, "value": np.arange(48.0)}))
    assert forecast["time"].iloc[-1] == pd.Timestamp("2262-04-11 23:00")


def test_predict_cli_forecasts_the_next_horizon(finished_run, tmp_path):
    run, _, _ = finished_run
    data = generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))
    history = data[data["time"] <= data["time"].max() - pd.Timedelta(hours=30)]
    history_file = tmp_path / "history.csv"
    history.to_csv(history_file, index=False)
    out = tmp_path / "forecast.csv"
    result = cli("predict", "--model", str(run / "export"), "--input", str(history_file), "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    forecast = pd.read_csv(out, parse_dates=["time"])
    assert list(forecast.columns) == ["series", "time", "forecast"]
    assert len(forecast) == 4 * 12
    last = history.groupby("series", observed=True)["time"].max()
    for sid, part in forecast.groupby("series"):
        expected_times = pd.date_range(last[sid] + pd.Timedelta(hours=1), periods=12, freq="h")
        assert (pd.DatetimeIndex(part["time"]) == expected_times).all()
    # the python API gives the same numbers, and they are in the data's units
    api = Forecaster.load(run / "export").predict(history)
    np.testing.assert_allclose(api["forecast"].to_numpy(), forecast["forecast"].to_numpy(), rtol=1e-6)
    actual = data.set_index(["series", "time"])["value"]
    truth = np.array([actual[(s, t)] for s, t in zip(forecast["series"], forecast["time"])])
    assert np.mean(np.abs(forecast["forecast"] - truth)) < np.mean(np.abs(truth)) * 0.5


def test_predict_writes_the_format_its_output_suffix_names(finished_run, tmp_path):
    """`--output f.parquet` was CSV text under that name; each suffix `--input` reads is now written as such, with
    the same numbers, and any other is refused before any work, the file of that name kept."""
    run, _, _ = finished_run
    generate_synthetic(SyntheticConfig(n_series=2, length=300, freq="h", seed=1)).to_csv(
        tmp_path / "history.csv", index=False
    )

    def predict(name: str):
        return cli_in_process("predict", "--model", str(run / "export"), "--input", str(tmp_path / "history.csv"),
                              "--output", str(tmp_path / name))  # fmt: skip

    assert predict("f.csv").returncode == 0
    csv = pd.read_csv(tmp_path / "f.csv", parse_dates=["time"], float_precision="round_trip")
    readers = {
        "f.parquet": pd.read_parquet,
        "f.tsv": partial(pd.read_csv, sep="\t", float_precision="round_trip"),
        "f.json": partial(pd.read_json, precise_float=True),
        "f.jsonl": partial(pd.read_json, lines=True, precise_float=True),
    }
    for name, read in readers.items():
        assert predict(name).returncode == 0, name
        frame = read(tmp_path / name)
        assert list(frame.columns) == list(csv.columns) and len(frame) == 2 * 12, name
        np.testing.assert_array_equal(frame["forecast"], csv["forecast"], err_msg=name)
        assert list(pd.to_datetime(frame["time"])) == list(csv["time"]), name
    (tmp_path / "f.xlsx").write_text("kept")
    done = predict("f.xlsx")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'f.xlsx'}: unknown forecast file format '.xlsx' (--output; use .csv, .tsv, .parquet, "
        ".json or .jsonl)"
    )
    assert (tmp_path / "f.xlsx").read_text() == "kept"


def test_forecaster_predict_takes_an_arrow_table_and_refuses_an_array_in_one_line(finished_run):
    """An Arrow table was read as columns it could not find, the error quoting its arrays whole."""
    run, _, _ = finished_run
    history = generate_synthetic(SyntheticConfig(n_series=2, length=300, freq="h", seed=1))
    forecaster = Forecaster.load(run / "export")
    np.testing.assert_array_equal(
        forecaster.predict(pa.Table.from_pandas(history))["forecast"], forecaster.predict(history)["forecast"]
    )
    with pytest.raises(DataError, match=r"^history: expected a pandas DataFrame \(or an Arrow table\), got ndarray$"):
        forecaster.predict(history.to_numpy())


def test_the_model_card_says_what_predict_does_with_a_series_it_never_saw(finished_run):
    run, config, _ = finished_run
    card = (run / "export" / "README.md").read_text()
    assert "other series are forecast too, scaled by the statistics of their own history" in card
    assert "refused:" not in card
    forecaster = Forecaster.load(run / "export")
    data = generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))
    new = data.assign(series="new_" + data["series"].astype(str))  # no series the model was trained on
    forecast = forecaster.predict(new)
    assert len(forecast) == 4 * 12 and np.isfinite(forecast["forecast"]).all()
    # a model with a vector per training series refuses them, and its card says so
    model = dataclasses.replace(forecaster.spec.model, series_embedding=3, n_series=4)
    spec = dataclasses.replace(forecaster.spec, model=model)
    card = model_card(load_config(config), spec, None, None)
    assert "other series are refused: the model learnt a vector per training series (model.series_embedding=3)" in card
    with pytest.raises(DataError, match="series 'new_s0000' was not in the training data"):
        Forecaster(spec, build_model(model).eval()).predict(new)


def test_predict_checks_the_history_in_array_ops_and_agrees_with_the_per_series_checks(finished_run):
    """The whole-history fast path gives what the per-series path gives, in any row order; any
    problem falls back to the per-series checks, which name it."""
    run, _, _ = finished_run
    forecaster = Forecaster.load(run / "export")
    data = generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))
    shuffled = data.sample(frac=1.0, random_state=3).reset_index(drop=True)
    fast = forecaster._split_history_fast(shuffled, "history")
    assert fast is not None
    per_series = forecaster._split_history_per_series(shuffled, "history")
    ids, last, windows, whole = fast
    assert ids == list(per_series) and list(whole) == ids
    for k, sid in enumerate(ids):
        assert pd.Timestamp(last[k]) == per_series[sid][0]
        np.testing.assert_array_equal(windows[k], per_series[sid][1])
        np.testing.assert_array_equal(whole[sid], per_series[sid][2])  # the whole history, in time order
    pd.testing.assert_frame_equal(forecaster.predict(shuffled), forecaster.predict(data))
    gap = data.drop(index=data.index[data["series"] == "s0002"][-5])  # a hole in one series' last window
    assert forecaster._split_history_fast(gap, "training") is None
    with pytest.raises(DataError, match="series 's0002': the last 48 steps are not a regular h sequence"):
        forecaster.predict(gap)


def test_unchanged_rerun_skips_every_stage_and_force_redoes(finished_run):
    run, config, _ = finished_run
    before = (run / "train/model.safetensors").stat().st_mtime_ns
    again = cli_in_process("run", "--config", str(config))
    assert again.returncode == 0, again.stderr[-2000:]
    for stage in ("ingest", "window", "train", "evaluate", "export"):
        assert f"{stage}: up to date" in again.stderr
    assert (run / "train/model.safetensors").stat().st_mtime_ns == before
    forced = cli_in_process("evaluate", "--config", str(config), "--force")
    assert forced.returncode == 0 and "evaluate: up to date" not in forced.stderr


def test_stages_one_by_one_and_in_the_wrong_order(tmp_path):
    config = write_config(tmp_path, {"train.max_steps": 10, "train.checkpoint_every": 0, "export.onnx": False})
    early = cli_in_process("evaluate", "--config", str(config))
    assert early.returncode == 2
    assert early.stderr.strip().count("\n") == 0
    assert "train" in early.stderr and "run 'lstm-pipeline train'" in early.stderr
    for stage in ("ingest", "window", "train", "evaluate", "export"):
        result = cli_in_process(stage, "--config", str(config))
        assert result.returncode == 0, (stage, result.stderr[-2000:])
    assert (tmp_path / "run/export/model.safetensors").is_file()
    changed = cli_in_process("train", "--config", str(config), "train.lr=0.005")
    assert changed.returncode == 0 and "train: up to date" not in changed.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--config", "nope.yaml"], "config file not found: nope.yaml"),
        (["run", "--config", "configs/default.yaml", "train.lrr=0.1"], "did you mean 'train.lr'"),
        (["run", "--config", "configs/default.yaml", "window.lookback=0"], "window.lookback must be positive"),
        (["run", "--config", "configs/default.yaml", "train.batch_size=abc"], "train.batch_size must be an integer"),
        (["frobnicate", "--config", "configs/default.yaml"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, words, tmp_path):
    result = cli(*args)
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_step_zero_validation_scores_the_seasonal_base(finished_run):
    """Before any step the residual model is its base: here the profile of the last 2 seasons of 24, at
    the level of the last 12 steps with the profile taken out (`model.base_level: half_season`),
    carrying on half the slope between the two seasons' means (the base chosen on the windows).

    Recomputed with plain loops on the scaled data: the mean squared error (the SMALL config's
    loss) of every validation window, against the step-0 row of metrics.jsonl.
    """
    run, _, _ = finished_run
    rows = [json.loads(line) for line in (run / "train/metrics.jsonl").read_text().splitlines()]
    step0 = next(r for r in rows if r["step"] == 0 and "val_loss" in r)
    train = json.loads((run / "train/meta.json").read_text())
    spec = train["model"]
    assert train["base"]["chosen"] == "level-adjusted profile 24 x 2 with half its trend"
    assert (spec["residual_season"], spec["season_average"], spec["trend"]) == (24, 2, 0.5)
    data = generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))
    lookback, horizon, season = 48, 12, 24
    total, count = 0.0, 0
    for _, part in data.groupby("series", observed=True):
        y = part["value"].to_numpy(dtype=np.float32).astype(np.float64)
        n = len(y)
        train_end, val_end = n - 2 * round(n * 0.15), n - round(n * 0.15)
        z = (y - y[:train_end].mean()) / y[:train_end].std()
        for origin in range(max(train_end, lookback), val_end - horizon + 1):  # targets inside val
            raw = z[origin - 2 * season : origin]
            slope = (raw[season:].mean() - raw[:season].mean()) / season
            window = raw - slope * (np.arange(2 * season) - (2 * season - 1))  # the slope taken out, from the end
            last = window[season:].mean()
            shape = [(window[p] - window[:season].mean() + window[season + p] - last) / 2 for p in range(season)]
            level = np.mean([window[season + p] - shape[p] for p in range(season // 2, season)])  # half_season
            for h in range(horizon):
                forecast = level + shape[h % season] + 0.5 * slope * (h + 1)
                total += (z[origin + h] - forecast) ** 2
                count += 1
    assert step0["val_loss"] == pytest.approx(total / count, rel=1e-4)


def test_points_filled_by_data_missing_are_never_scored(tmp_path):
    """A 5-hour gap in the test part and a NaN in the train part, interpolated: no score counts them.

    The model and the baselines still read the filled values as inputs (they are what the series holds); the
    actuals they are scored against, and the MASE scale, are the observed values only.
    """
    n, season, horizon = 400, 24, 12
    t = np.arange(n)
    y = 50 + 10 * np.sin(2 * np.pi * t / season) + 0.05 * t + np.random.default_rng(5).normal(0, 1, n)
    times = pd.date_range("2024-01-01", periods=n, freq="h")
    frame = pd.DataFrame({"time": times, "y": y})
    frame.loc[100, "y"] = np.nan
    gap = np.arange(380, 385)  # test part [340, 400): window 376-387, targets 4-8; no seasonal-naive source
    frame.drop(index=gap).to_csv(tmp_path / "gappy.csv", index=False)
    config = write_config(
        tmp_path,
        {
            "data": {
                "source": str(tmp_path / "gappy.csv"), "target_column": "y", "missing": "interpolate",
                "transform": "none", "calendar": "none", "val_size": 0.15, "test_size": 0.15,
            },
            "train.max_steps": 4,
            "train.checkpoint_every": 0,
            "export.onnx": False,
        },
    )  # fmt: skip
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ingest: 6 points filled by data.missing=interpolate" in done.stderr
    run = tmp_path / "run"
    table = pa.ipc.open_file(pa.memory_map(str(run / "ingest/values.arrow"))).read_all()
    assert np.flatnonzero(table.column("filled").to_numpy()).tolist() == [100, *gap]
    assert json.loads((run / "ingest/meta.json").read_text())["filled_points"] == 6

    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    assert metrics["n_windows"] == 5 and metrics["filled_points"] == 5
    assert "5 points of the test windows were filled by data.missing" in (run / "evaluate/report.md").read_text()
    y32 = y.astype(np.float32).astype(np.float64)
    observed = y32.copy()
    observed[[100, *gap]] = np.nan
    train_end = 280
    pairs = [abs(observed[i] - observed[i - season]) for i in range(season, train_end)]
    scale = np.nanmean(pairs)  # the pairs (76, 100) and (100, 124) left out
    assert np.isnan(pairs).sum() == 2
    errors = []
    for origin in range(340, n, horizon):
        for h in range(horizon):
            if origin + h not in gap:
                errors.append(y32[origin + h] - y32[origin + h - season])
    errors = np.abs(errors)
    assert len(errors) == 55
    sn = metrics["baselines"]["seasonal_naive"]
    assert sn["mae"] == pytest.approx(errors.mean(), rel=1e-9)
    assert sn["mase"] == pytest.approx(errors.mean() / scale, rel=1e-9)

    rows = pd.read_csv(run / "evaluate/forecasts.csv", parse_dates=["time"])
    unobserved = rows[rows["actual"].isna()]
    assert list(unobserved["time"]) == list(times[gap])
    scored = rows.dropna(subset=["actual"])
    assert metrics["model"]["mae"] == pytest.approx((scored["forecast"] - scored["actual"]).abs().mean(), rel=1e-5)


def test_times_are_written_back_in_the_zone_of_the_data(tmp_path):
    """Hourly data written in +10:00 is held in UTC; forecasts.csv and predict write their times in +10:00 again, the
    same instants. A history whose offsets differ (here +10:00 and Z, the same instants) is forecast in the data's
    zone, +10:00 (the model's `zone`)."""
    n = 300
    instants = pd.date_range("2024-01-01", periods=n, freq="h")  # UTC
    y = 20 + 5 * np.sin(2 * np.pi * np.arange(n) / 24) + np.random.default_rng(2).normal(0, 0.5, n)
    local = [t.tz_localize("UTC").tz_convert("+10:00").isoformat() for t in instants]
    pd.DataFrame({"time": local, "y": y}).to_csv(tmp_path / "sydney.csv", index=False)
    config = write_config(
        tmp_path,
        {
            "data": {"source": str(tmp_path / "sydney.csv"), "target_column": "y", "val_size": 0.15, "test_size": 0.15},
            "train.max_steps": 4,
            "train.checkpoint_every": 0,
            "export.onnx": False,
        },
    )
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "ingest/meta.json").read_text())["zone"] == "UTC+10:00"
    rows = pd.read_csv(run / "evaluate/forecasts.csv")
    assert rows["time"].str.endswith("+10:00").all() and rows["origin"].str.endswith("+10:00").all()
    # the test part's first forecast: 45 test steps of 300, windows every 12 from the end of the validation part
    assert rows["time"].iloc[0] == instants[255].tz_localize("UTC").tz_convert("+10:00").isoformat(sep=" ")

    history = pd.read_csv(tmp_path / "sydney.csv")
    forecast = Forecaster.load(run / "export").predict(history)
    first = instants[-1] + pd.Timedelta(hours=1)
    assert str(forecast["time"].dt.tz) == "UTC+10:00"
    assert forecast["time"].iloc[0] == first.tz_localize("UTC") and len(forecast) == 12
    out = tmp_path / "forecast.csv"
    cli_in_process("predict", "--model", str(run / "export"), "--input", str(tmp_path / "sydney.csv"), "--output",
                   str(out))  # fmt: skip
    assert pd.read_csv(out)["time"].iloc[0] == first.tz_localize("UTC").tz_convert("+10:00").isoformat(sep=" ")

    mixed = history.assign(time=[t if i % 2 else instants[i].isoformat() + "Z" for i, t in enumerate(history.time)])
    in_data_zone = Forecaster.load(run / "export").predict(mixed)
    assert str(in_data_zone["time"].dt.tz) == "UTC+10:00" and in_data_zone["time"].iloc[0] == first.tz_localize("UTC")
    np.testing.assert_array_equal(in_data_zone["forecast"], forecast["forecast"])  # the same instants and forecast


def test_data_zone_reads_local_time_written_with_offsets_on_its_clock(tmp_path):
    """Berlin local time written as text with its offsets (+01:00, then +02:00 from 31 March): read as UTC instants,
    whose zone alone is UTC. `data.zone: Europe/Berlin` keeps the instants and puts them on Berlin's clock: the
    calendar follows it across the change, forecasts.csv and predict write their times in it. Naive timestamps with
    a time the clock skips are one line, exit 2, and the previous ingest stays."""
    local = pd.date_range("2024-03-20", periods=400, freq="h", tz="Europe/Berlin")
    y = 20 + 5 * np.sin(2 * np.pi * local.hour / 24) + np.random.default_rng(4).normal(0, 0.3, len(local))
    pd.DataFrame({"time": [t.isoformat() for t in local], "y": y}).to_csv(tmp_path / "berlin.csv", index=False)
    overrides = {
        "data": {"source": str(tmp_path / "berlin.csv"), "target_column": "y", "calendar": ["day", "week"]},
        "train.max_steps": 4,
        "train.checkpoint_every": 0,
        "export.onnx": False,
        "evaluate.plot_series": 0,
    }
    config = write_config(tmp_path, overrides)
    done = cli_in_process("ingest", "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run/ingest/meta.json").read_text())["zone"] == "UTC"  # offsets differ
    done = cli_in_process("run", "--config", str(config), "data.zone=Europe/Berlin")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "ingest/meta.json").read_text())["zone"] == "Europe/Berlin"
    exported = json.loads((run / "export/forecaster.json").read_text())
    assert exported["zone"] == exported["model"]["calendar_zone"] == "Europe/Berlin"
    rows = pd.read_csv(run / "evaluate/forecasts.csv")
    assert rows["time"].str.endswith("+02:00").all()  # the test part lies after the change
    assert set(rows["time"]) <= {str(t) for t in local[340:]}  # the test part's instants, on Berlin's clock
    forecast = Forecaster.load(run / "export").predict(pd.read_csv(tmp_path / "berlin.csv"))
    assert str(forecast["time"].dt.tz) == "Europe/Berlin" and forecast["time"].iloc[0] == local[-1] + pd.Timedelta("1h")

    naive = pd.DataFrame({"time": local.tz_localize(None), "y": y})  # Berlin's clock: no 02:00 on 31 March
    naive.loc[266, "time"] = pd.Timestamp("2024-03-31 02:00")  # was 03:00: a time the clock skips
    naive.to_csv(tmp_path / "naive.csv", index=False)
    done = cli_in_process("ingest", "--config", str(config), f"data.source={tmp_path / 'naive.csv'}",
                          "data.zone=Europe/Berlin")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'naive.csv'}: series 'series': timestamp 2024-03-31 02:00:00 (row 267) does not exist on "
        "the clock of Europe/Berlin: summer time skips it; fix or drop that row"
    )
    assert json.loads((run / "ingest/meta.json").read_text())["zone"] == "Europe/Berlin"  # kept as it was


def test_naive_local_times_with_data_zone_are_read_on_its_clock_across_both_changes(tmp_path):
    """Hourly Berlin data written as naive local time, as many exports do: 31 March has no 02:00, 27 October has it
    twice. With `data.zone` each series is read on Berlin's clock in the order its rows were written (the first
    02:00 is summer time), so the instants are one hour apart throughout: no gap, no duplicate. predict reads a naive
    history the same way and writes naive local times back; the same history with offsets gives the same forecast."""
    instants = pd.date_range("2024-03-25", "2024-11-04", freq="h", tz="Europe/Berlin")
    rng = np.random.default_rng(6)
    frames = []
    for shop, level in (("north", 20.0), ("south", 35.0)):
        y = level + 5 * np.sin(2 * np.pi * instants.hour / 24) + rng.normal(0, 0.3, len(instants))
        frames.append(pd.DataFrame({"shop": shop, "time": instants.tz_localize(None), "y": y}))
    naive = pd.concat(frames, ignore_index=True)
    assert naive.duplicated(["shop", "time"]).sum() == 2  # 02:00 on 27 October, twice in each shop
    naive.to_csv(tmp_path / "naive.csv", index=False)
    data = {"id_column": "shop", "target_column": "y", "zone": "Europe/Berlin", "calendar": ["day"], "test_size": 0.1}
    config = _short_run(tmp_path, {"source": str(tmp_path / "naive.csv"), **data}, lookback=48, horizon=24)
    run = tmp_path / "run"
    meta = json.loads((run / "ingest/meta.json").read_text())
    assert (meta["zone"], meta["local_times"], meta["freq"], meta.get("filled_points", 0)) == (
        "Europe/Berlin", True, "h", 0
    )  # fmt: skip
    assert [s["length"] for s in meta["series"]] == [len(instants)] * 2  # every hour once, none filled
    assert meta["series"][0]["start"] == "2024-03-24T23:00:00"  # in UTC
    rows = pd.read_csv(run / "evaluate/forecasts.csv")
    assert {"+01:00", "+02:00"} == set(rows["time"].str[-6:])  # the test part crosses 27 October
    assert set(rows["time"]) <= {str(t) for t in instants}

    history = naive.iloc[np.r_[0 : len(instants) - 100, len(instants) : 2 * len(instants) - 100]]
    forecast = Forecaster.load(run / "export").predict(history)
    ahead = instants[len(instants) - 100 : len(instants) - 76]
    assert forecast["time"].dt.tz is None and list(forecast["time"][:24]) == list(ahead.tz_localize(None))
    written = np.tile([t.isoformat() for t in instants], 2)[history.index]  # the same instants, with offsets
    with_offsets = Forecaster.load(run / "export").predict(history.assign(time=written))
    np.testing.assert_array_equal(with_offsets["forecast"], forecast["forecast"])
    assert list(with_offsets["time"][:24]) == list(ahead)
    spring = naive.iloc[np.r_[100:300, len(instants) + 100 : len(instants) + 300]]  # no hour repeated: the fast path
    april = Forecaster.load(run / "export").predict(spring)
    aware = Forecaster.load(run / "export").predict(spring.assign(time=np.tile(instants, 2)[spring.index]))
    np.testing.assert_array_equal(april["forecast"], aware["forecast"])
    assert list(april["time"][:24]) == list(instants[300:324].tz_localize(None))
    gap = len(instants) - 110  # north's last 48 hours lack 30 October 11:00 (winter time): named as written
    with pytest.raises(DataError, match=r"north.*not a regular h sequence \(missing 2024-10-30 11:00:00\+01:00\)"):
        Forecaster.load(run / "export").predict(history.drop(index=gap))
    assert str(naive["time"][gap]) == "2024-10-30 11:00:00"

    once = naive[~(naive["time"].eq(pd.Timestamp("2024-10-27 02:00")) & naive["time"].duplicated())]
    once.to_csv(tmp_path / "once.csv", index=False)  # 02:00 on 27 October once per shop: which one is it?
    done = cli_in_process("ingest", "--config", str(config), f"data.source={tmp_path / 'once.csv'}")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {tmp_path / 'once.csv'}: series 'north': timestamp 2024-10-27 02:00:00 (row ")
    )
    assert done.stderr.strip().endswith(
        "occurs twice on the clock of Europe/Berlin (summer time ends) and the order of the rows does not tell which; "
        "write the timestamps with their UTC offsets (e.g. 2024-10-27T02:00+02:00, then +01:00)"
    )


def test_daily_data_in_a_zone_with_summer_time_runs_on_its_wall_clock(tmp_path):
    """Daily Berlin data at local midnight (typed parquet, as pandas writes a zoned daily index): held on Berlin's
    clock, trained, forecasts.csv at local midnights with the offset of each date across the spring change, and
    predict reads the same days from a history written in any of the ways a user has them: the same forecast."""
    n = 480
    days = pd.date_range("2023-01-01", periods=n, freq="D", tz="Europe/Berlin")  # to 24 April 2024
    y = 100 + 30 * (days.dayofweek >= 5) + np.random.default_rng(5).normal(0, 2, n)
    pd.DataFrame({"time": days, "y": y}).to_parquet(tmp_path / "daily.parquet")
    data = {"source": str(tmp_path / "daily.parquet"), "target_column": "y", "calendar": ["week"]}
    _short_run(tmp_path, data, onnx=True, lookback=28, horizon=7)
    run = tmp_path / "run"
    meta = json.loads((run / "ingest/meta.json").read_text())
    assert (meta["zone"], meta["wall_clock"], meta["freq"]) == ("Europe/Berlin", True, "D")
    assert meta["series"][0]["start"] == "2023-01-01T00:00:00"  # the date, not 2022-12-31 23:00 UTC
    exported = json.loads((run / "export/forecaster.json").read_text())
    assert exported["wall_clock"] and exported["zone"] == "Europe/Berlin" and "calendar_zone" not in exported["model"]
    assert "sin and cos of week on the wall clock of Europe/Berlin" in (run / "export/README.md").read_text()
    rows = pd.read_csv(run / "evaluate/forecasts.csv")
    assert (rows["time"].str[11:19] == "00:00:00").all()
    assert set(rows["time"].str[-6:]) == {"+01:00", "+02:00"}  # the test part crosses 31 March
    assert set(rows["time"]) <= {str(t) for t in days}

    history = pd.DataFrame({"time": days[:455], "y": y[:455]})  # ends 30 March: the horizon crosses the change
    ways = {
        "typed.parquet": history,
        "utc.parquet": history.assign(time=history["time"].dt.tz_convert("UTC")),
        "offsets.csv": history.assign(time=[t.isoformat() for t in history["time"]]),
        "dates.csv": history.assign(time=history["time"].dt.strftime("%Y-%m-%d")),
    }
    forecasts = {}
    for name, frame in ways.items():
        (frame.to_parquet if name.endswith("parquet") else partial(frame.to_csv, index=False))(tmp_path / name)
        out = tmp_path / f"forecast_{name}.csv"
        done = cli_in_process("predict", "--model", str(run / "export"), "--input", str(tmp_path / name),
                              "--output", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        forecasts[name] = pd.read_csv(out)
    ahead = days[455:462]
    assert list(forecasts["typed.parquet"]["time"]) == [str(t) for t in ahead]  # +01:00, then +02:00 from 31 March
    assert list(forecasts["dates.csv"]["time"]) == [t.strftime("%Y-%m-%d") for t in ahead]
    for name, forecast in forecasts.items():
        np.testing.assert_array_equal(forecast["forecast"], forecasts["typed.parquet"]["forecast"], err_msg=name)
        assert name == "dates.csv" or list(forecast["time"]) == [str(t) for t in ahead]


def test_a_day_whose_midnight_summer_time_skips_is_that_days_midnight_on_the_wall_clock(tmp_path):
    """Santiago's summer time starts at midnight: 8 September 2024 has no 00:00 and starts at 01:00, where pandas and
    databases write that day of a daily series. It is that date on the wall clock (it was off the D grid): ingest,
    forecasts.csv and predict read it so and write it back at 01:00-03:00, as the data has it."""
    n = 420
    days = pd.date_range("2023-08-01", periods=n, freq="D").tz_localize("America/Santiago", nonexistent="shift_forward")
    skipped = pd.Timestamp("2024-09-08 01:00", tz="America/Santiago")
    assert skipped in days and days[-1] == pd.Timestamp("2024-09-23", tz="America/Santiago")
    y = 50 + 10 * (days.dayofweek >= 5) + np.random.default_rng(8).normal(0, 1, n)
    pd.DataFrame({"time": days, "y": y}).to_parquet(tmp_path / "daily.parquet")
    data = {"source": str(tmp_path / "daily.parquet"), "target_column": "y", "test_size": 0.1}
    _short_run(tmp_path, data, lookback=28, horizon=14)
    run = tmp_path / "run"
    meta = json.loads((run / "ingest/meta.json").read_text())
    assert (meta["zone"], meta["wall_clock"], meta["freq"]) == ("America/Santiago", True, "D")
    assert [s["length"] for s in meta["series"]] == [n]
    assert str(skipped) in set(pd.read_csv(run / "evaluate/forecasts.csv")["time"])

    model = Forecaster.load(run / "export")
    history = pd.DataFrame({"time": days, "y": y})
    before = model.predict(history.iloc[:400])  # ends 3 September: the horizon holds the 8th
    assert list(before["time"]) == list(days[400:414]) and before["time"].iloc[4] == skipped
    across = model.predict(history.assign(time=[t.isoformat() for t in days]).iloc[:-7])  # the 8th in its window
    assert [str(t) for t in across["time"]] == [str(t) for t in days[413:]] + [
        str(pd.Timestamp("2024-09-24", tz="America/Santiago") + pd.Timedelta(days=k)) for k in range(7)
    ]
    late = history.assign(time=history["time"].where(history.index != 100, days[100] + pd.Timedelta("1h")))
    with pytest.raises(DataError, match=r"not a regular D sequence"):  # 01:00 on an ordinary day is no midnight
        model.predict(late.iloc[:110])


def test_a_day_first_export_trains_and_predicts_in_its_order(tmp_path):
    """Hourly data from a day-first export (02/01/2024 13:00): ingest reads it in that order (no gap, none filled)
    and records it; predict reads a history of 1-10 March, whose dates cannot tell the order, by the model's, and
    gives the forecast the same rows with ISO dates give."""
    hours = pd.date_range("2024-01-01", "2024-03-10 23:00", freq="h")
    y = 10 + 3 * np.sin(2 * np.pi * hours.hour / 24) + np.random.default_rng(2).normal(0, 0.2, len(hours))
    frame = pd.DataFrame({"time": hours.strftime("%d/%m/%Y %H:%M"), "y": y})
    frame.to_csv(tmp_path / "export.csv", index=False)
    _short_run(tmp_path, {"source": str(tmp_path / "export.csv"), "target_column": "y"}, lookback=48, horizon=24)
    run = tmp_path / "run"
    meta = json.loads((run / "ingest/meta.json").read_text())
    assert (meta["date_order"], meta["series"][0]["length"], meta.get("filled_points", 0)) == ("day_first", len(y), 0)
    assert json.loads((run / "export/forecaster.json").read_text())["date_order"] == "day_first"

    model = Forecaster.load(run / "export")
    march = frame.iloc[-240:]  # 1-10 March: every number 12 or less
    forecast = model.predict(march)
    iso = model.predict(march.assign(time=hours[-240:].strftime("%Y-%m-%d %H:%M")))
    np.testing.assert_array_equal(forecast["forecast"], iso["forecast"])
    assert forecast["time"].iloc[0] == pd.Timestamp("2024-03-11 00:00")


def test_future_covariates_of_a_model_on_naive_local_times_are_read_on_its_clock(tmp_path):
    """The horizon after 27 October 00:00 in Berlin holds 02:00 twice: naive future covariates are read in the order
    written, as the history is, and give the forecast the same rows with offsets give."""
    instants = pd.date_range("2024-10-15", "2024-11-03", freq="h", tz="Europe/Berlin")
    promo = ((instants.hour >= 8) & (instants.hour < 18)).astype(float)
    y = 20 + 5 * promo + np.random.default_rng(7).normal(0, 0.3, len(instants))
    naive = pd.DataFrame({"time": instants.tz_localize(None), "y": y, "promo": promo})
    naive.to_csv(tmp_path / "naive.csv", index=False)
    data = {"target_column": "y", "zone": "Europe/Berlin", "future_covariates": ["promo"], "calendar": []}
    _short_run(tmp_path, {"source": str(tmp_path / "naive.csv"), **data}, lookback=48, horizon=24)
    end = int(np.flatnonzero(instants == pd.Timestamp("2024-10-27 00:00", tz="Europe/Berlin"))[0]) + 1
    history, future = naive.iloc[:end], naive.iloc[end : end + 24].drop(columns="y")
    assert future["time"].duplicated().sum() == 1  # 02:00 twice
    forecaster = Forecaster.load(tmp_path / "run/export")
    local = forecaster.predict(history, future=future)
    written = np.array([t.isoformat() for t in instants])
    aware = forecaster.predict(history.assign(time=written[:end]), future=future.assign(time=written[end : end + 24]))
    np.testing.assert_array_equal(local["forecast"], aware["forecast"])
    assert list(local["time"]) == list(instants[end : end + 24].tz_localize(None))
    assert list(aware["time"]) == list(instants[end : end + 24])


def _short_run(tmp_path, data: dict, onnx: bool = False, **window) -> Path:
    """`run` of four steps, without checkpoints or plots (and ONNX unless `onnx`: the model card describes its
    input), on `data` (the data section): for tests of what the data's clock does. The config's path."""
    config = write_config(
        tmp_path,
        {
            "data": data,
            "window": window,
            "train.max_steps": 4,
            "train.checkpoint_every": 0,
            "evaluate.plot_series": 0,
            "export.onnx": onnx,
        },
    )
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    return config
