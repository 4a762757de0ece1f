"""Covariates: through ingest, into the model's inputs without leakage, and served by predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from pipeline.config import DataConfig, load_config
from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import ConfigError, DataError
from pipeline.library.forecaster import Forecaster
from pipeline.library.model import ModelSpec, build_model
from pipeline.library.series import prepare_series
from pipeline.library.splits import split_and_scale
from pipeline.library.store import read_values
from tests.conftest import cli_in_process, series_table, write_config

LENGTH = 300


def _frame(n_series: int = 3, length: int = LENGTH, seed: int = 0) -> pd.DataFrame:
    """Hourly series whose level follows a flag known ahead and a temperature known after the fact."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(n_series):
        time = pd.date_range("2024-01-01", periods=length, freq="h")
        flag = ((time.dayofweek < 5) & (time.hour >= 8) & (time.hour < 18)).astype(float)
        temp = 15 + 8 * np.sin(2 * np.pi * np.arange(length) / 24 + k) + rng.normal(0, 0.5, length)
        y = 10 * (k + 1) + 5 * flag + 0.3 * temp + rng.normal(0, 0.2, length)
        parts.append(pd.DataFrame({"id": f"s{k}", "time": time, "y": y, "temp": temp, "flag": flag, "size": k + 1.0}))
    return pd.concat(parts, ignore_index=True)


def _data_cfg(**kw) -> DataConfig:
    base = {
        "source": "mem.csv",
        "id_column": "id",
        "target_column": "y",
        "past_covariates": ["temp"],
        "future_covariates": ["flag"],
        "static_covariates": ["size"],
        "val_size": 0.15,
        "test_size": 0.15,
        "transform": "none",
    }
    return DataConfig(**{**base, **kw})


def test_ingest_keeps_covariates_on_the_grid_with_train_part_statistics():
    frame = _frame()
    cfg = _data_cfg()
    series = prepare_series(frame.sample(frac=1.0, random_state=0), cfg)  # order of rows must not matter
    assert series.covariates.shape == (3 * LENGTH, 2)
    np.testing.assert_array_equal(series.covariates[:LENGTH, 0], frame["temp"].to_numpy()[:LENGTH])
    np.testing.assert_array_equal(series.covariates[LENGTH:, 1], frame["flag"].to_numpy()[LENGTH:])
    meta = split_and_scale(series, cfg).to_json()
    rec = meta["series"][1]
    train = frame[frame["id"] == "s1"].iloc[: rec["train_end"]]
    np.testing.assert_allclose(rec["covariate_mean"], [train["temp"].mean(), train["flag"].mean()])
    np.testing.assert_allclose(rec["covariate_scale"], [train["temp"].std(ddof=0), train["flag"].std(ddof=0)])
    # static covariates are standardised across series: sizes 1, 2, 3
    np.testing.assert_allclose([r["static"][0] for r in meta["series"]], [-1.2247449, 0.0, 1.2247449], atol=1e-6)
    assert meta["covariates"] == {"past": ["temp"], "future": ["flag"]}
    # the fingerprint follows the covariates' values
    changed = frame.copy()
    changed.loc[5, "temp"] += 1.0
    assert split_and_scale(prepare_series(changed, cfg), cfg).fingerprint != meta["fingerprint"]


def test_a_covariate_constant_on_the_train_part_keeps_scale_one():
    frame = _frame(n_series=1)
    frame["flag"] = 0.0
    cfg = _data_cfg(static_covariates=[])
    rec = split_and_scale(prepare_series(frame, cfg), cfg).to_json()["series"][0]
    assert rec["covariate_scale"][1] == 1.0 and rec["covariate_mean"][1] == 0.0


def test_wide_format_shares_the_covariate_columns_between_series():
    time = pd.date_range("2024-01-01", periods=100, freq="h")
    table = pd.DataFrame(
        {"time": time, "a": np.arange(100.0), "b": np.arange(100.0) * 2, "temp": np.sin(np.arange(100))}
    )
    cfg = DataConfig(source="mem.csv", format="wide", past_covariates=["temp"])
    series = prepare_series(table, cfg)
    assert series.ids == ["a", "b"]  # the covariate is not a series
    np.testing.assert_array_equal(series.covariates[:, 0], np.tile(table["temp"].to_numpy(), 2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="temp"), "covariate column 'temp' (data.past_covariates) not found"),
        (lambda f: f.assign(flag=f["flag"].astype(object).where(f.index != 7, "x")), "row 8: non-numeric"),
        (lambda f: f.assign(temp=f["temp"].where(f.index != 9)), "series 's0': missing or non-finite value of "),
        (
            lambda f: f.assign(temp=f["temp"].where(f.index != 9, -1e300)),
            "series 's0': covariate 'temp' value -1e+300 at 2024-01-01 09:00:00 is too large for float32 "
            "(|value| > 3.4e38) (row 10)",
        ),
        (lambda f: f.assign(size=f["size"].where(f.index != 310, 9.0)), "static covariate 'size' changes"),
        (lambda f: f.assign(size=f["size"].where(f.index != 3)), "missing or non-finite static covariate 'size'"),
    ],
)
def test_bad_covariates_are_one_line_errors_naming_the_place(change, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        prepare_series(change(_frame()), _data_cfg())
    assert "\n" not in str(info.value)


def test_missing_covariate_values_follow_data_missing():
    frame = _frame(n_series=1)
    frame.loc[10:12, "temp"] = np.nan
    cfg = _data_cfg(missing="interpolate", static_covariates=[])
    temp = prepare_series(frame, cfg).covariates[:, 0]
    np.testing.assert_allclose(temp[10:13], np.linspace(frame["temp"][9], frame["temp"][13], 5)[1:4])
    with pytest.raises(DataError, match="no series left"):
        prepare_series(frame, _data_cfg(missing="drop", static_covariates=[]))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"past_covariates": ["y"]}, "data.past_covariates: 'y' is already data.target_column"),
        ({"future_covariates": ["temp"]}, "data.future_covariates: 'temp' is also listed in data.past_covariates"),
        ({"format": "wide", "id_column": None}, "data.static_covariates needs long format"),
    ],
)
def test_covariate_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        _data_cfg(**kw)


def _buffer(frame: pd.DataFrame, spec: ModelSpec, lookback: int, horizon: int) -> tuple[WindowBuffer, dict]:
    cfg = _data_cfg()
    series = prepare_series(frame, cfg)
    record = split_and_scale(series, cfg)
    meta = record.to_json()
    buffer = WindowBuffer.from_ingest(
        series.values.astype(np.float32),
        record.series,
        lookback,
        horizon,
        covariates=series.covariates.astype(np.float32),
        spec=spec,
    )
    return buffer, meta


SPEC = ModelSpec(
    input_size=1 + 1 + 1 + 1,
    horizon=6,
    hidden_size=8,
    num_layers=1,
    past_covariates=("temp",),
    future_covariates=("flag",),
    static_covariates=("size",),
    series_embedding=3,
    n_series=3,
)


def test_inputs_lay_out_every_channel_and_never_the_horizons_past_only_values():
    frame = _frame()
    buffer, meta = _buffer(frame, SPEC, lookback=24, horizon=6)
    pair = torch.tensor([[1, 250]])  # series s1, inputs from step 250 (targets in the test part)
    x, y = buffer.gather(pair)
    assert x.shape == (1, 30, SPEC.channels) == (1, 30, 5)
    rec, s1 = meta["series"][1], frame[frame["id"] == "s1"].reset_index(drop=True)
    z = (s1["y"].to_numpy() - rec["mean"]) / rec["scale"]
    temp = (s1["temp"].to_numpy() - rec["covariate_mean"][0]) / rec["covariate_scale"][0]
    flag = (s1["flag"].to_numpy() - rec["covariate_mean"][1]) / rec["covariate_scale"][1]
    np.testing.assert_allclose(x[0, :24, 0], z[250:274], atol=1e-5)
    np.testing.assert_allclose(x[0, :24, 1], temp[250:274], atol=1e-5)
    np.testing.assert_allclose(x[0, :, 2], flag[250:280], atol=1e-5)  # known ahead: over the horizon too
    assert not x[0, 24:, :2].any()  # target and temperature: nothing of the horizon
    np.testing.assert_allclose(x[0, :, 3], rec["static"][0], atol=1e-6)
    assert (x[0, :, 4] == 1.0).all()  # the series' row in the embedding table
    np.testing.assert_allclose(y[0], z[274:280], atol=1e-5)

    # the horizon's target and temperature can change without changing the inputs; its flag cannot
    leaky = frame.copy()
    rows = leaky.index[(leaky["id"] == "s1")][274:280]
    leaky.loc[rows, ["y", "temp"]] = 1e3
    x2, _ = _buffer(leaky, SPEC, 24, 6)[0].gather(pair)
    assert torch.equal(x, x2)
    leaky.loc[rows, "flag"] = 1.0 - leaky.loc[rows, "flag"]
    x3, _ = _buffer(leaky, SPEC, 24, 6)[0].gather(pair)
    assert not torch.equal(x3[0, 24:, 2], x[0, 24:, 2])


def test_only_past_covariates_keep_inputs_to_the_lookback():
    spec = ModelSpec(input_size=2, horizon=6, hidden_size=8, num_layers=1, past_covariates=("temp",))
    frame = _frame(n_series=1)
    cfg = _data_cfg(future_covariates=[], static_covariates=[])
    series = prepare_series(frame, cfg)
    record = split_and_scale(series, cfg)
    buffer = WindowBuffer.from_ingest(
        series.values.astype(np.float32), record.series, 24, 6, covariates=series.covariates, spec=spec
    )
    x, _ = buffer.gather(torch.tensor([[0, 10]]))
    assert x.shape == (1, 24, 2)
    assert build_model(spec, seed=0)(x).shape == (1, 6)


def test_model_reads_embedding_and_statics_and_starts_at_its_base():
    model = build_model(SPEC, seed=0)
    assert model.rnn.input_size == SPEC.input_size + 3
    buffer, _ = _buffer(_frame(), SPEC, 24, 6)
    x, _ = buffer.gather(torch.tensor([[0, 50], [2, 60]]))
    out = model(x)
    assert out.shape == (2, 6)
    # the embedding is read: a different series index changes the hidden state (the head is zero at init)
    model.head.weight.data.normal_()
    other = x.clone()
    other[..., -1] = 2.0 - other[..., -1]
    assert not torch.allclose(model(x), model(other))


def test_values_arrow_holds_the_covariate_columns(tmp_path):
    from pipeline.library.store import read_covariates, write_values

    covs = np.arange(12, dtype=np.float32).reshape(6, 2)
    write_values(tmp_path / "values.arrow", np.zeros(6), ["temp", "flag"], covs)
    names = pa.ipc.open_file(pa.memory_map(str(tmp_path / "values.arrow"))).read_all().column_names
    assert names == ["target", "covariate:temp", "covariate:flag"]
    np.testing.assert_array_equal(read_covariates(tmp_path, ["flag", "temp"]), covs[:, ::-1])
    with pytest.raises(DataError, match="no covariate 'wind'"):
        read_covariates(tmp_path, ["wind"])


@pytest.mark.slow
def test_covariate_run_end_to_end_and_predict_with_and_without_future(tmp_path):
    data = tmp_path / "shop.csv"
    _frame().to_csv(data, index=False)
    config = write_config(
        tmp_path,
        {
            "data": {
                "source": str(data),
                "id_column": "id",
                "target_column": "y",
                "freq": "h",
                "val_size": 0.15,
                "test_size": 0.15,
                "calendar": "none",
                "past_covariates": ["temp"],
                "future_covariates": ["flag"],
                "static_covariates": ["size"],
            },
            "model.series_embedding": 3,
            "window.lookback": 24,
            "window.horizon": 6,
            "train.max_steps": 30,
            "train.checkpoint_every": 0,
            "evaluate.plot_series": 0,
        },
    )
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "run"
    spec = json.loads((run / "export" / "forecaster.json").read_text())
    m = spec["model"]
    assert (m["past_covariates"], m["future_covariates"], m["static_covariates"]) == (["temp"], ["flag"], ["size"])
    assert m["series_embedding"] == 3 and m["n_series"] == 3 and spec["series"]["s2"]["index"] == 2
    assert json.loads((run / "export" / "meta.json").read_text())["onnx_parity"] < 1e-4
    card = (run / "export" / "README.md").read_text()
    assert "(batch, 24 + 6, 5): the scaled values; past covariates temp; future covariates flag" in card

    frame = _frame()
    history = frame.groupby("id").head(200)
    future = frame.groupby("id").nth(list(range(200, 206)))[["id", "time", "flag"]]
    history.to_csv(tmp_path / "history.csv", index=False)
    future.to_csv(tmp_path / "future.csv", index=False)
    out = tmp_path / "forecast.csv"
    base = ["predict", "--model", str(run / "export"), "--input", str(tmp_path / "history.csv"), "--output", str(out)]
    missing = cli_in_process(*base)
    assert missing.returncode == 2 and "--future" in missing.stderr and not out.exists()
    short = tmp_path / "short.csv"
    future.drop(index=future.index[-1]).to_csv(short, index=False)
    bad = cli_in_process(*base, "--future", str(short))
    assert bad.returncode == 2 and "series 's2': no row at 2024-01-09 13:00:00" in bad.stderr
    zoned = tmp_path / "zoned.csv"
    future.assign(time=pd.to_datetime(future["time"]).dt.tz_localize("UTC")).to_csv(zoned, index=False)
    other_zone = cli_in_process(*base, "--future", str(zoned))  # UTC instants against naive history times
    assert other_zone.returncode == 2 and not out.exists()
    assert other_zone.stderr.strip().splitlines()[-1] == (
        f"error: {zoned}: its times carry a zone where the history's carry none; give both a zone (or a UTC offset) "
        "or neither"
    )
    ok = cli_in_process(*base, "--future", str(tmp_path / "future.csv"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    got = pd.read_csv(out)
    assert len(got) == 18 and list(got.columns) == ["id", "time", "forecast"]

    # predict's inputs = the training buffer's window ending at the same step
    forecaster = Forecaster.load(run / "export")
    meta = json.loads((run / "ingest" / "meta.json").read_text())
    buffer = WindowBuffer.for_model(
        forecaster.model.spec,
        run / "ingest",
        read_values(run / "ingest"),
        series_table(meta["series"]),
        "h",
        24,
        "none",
    )
    x_train, _ = buffer.gather(torch.tensor([[1, 200 - 24]]))
    ids, last, windows, _ = forecaster._split_history(history, "history")
    ahead = forecaster._future_values(future, ids, last, "future")
    rec = spec["series"]["s1"]
    z = (windows[1:2, :, 0] - rec["mean"]) / rec["scale"]
    stats = forecaster.spec.series.stats.take(forecaster.spec.series.positions(ids[1:2]))
    x_pred = forecaster._inputs(z, windows[1:2, :, 1:], ahead[1:2], stats, last[1:2])
    torch.testing.assert_close(x_pred, x_train, rtol=0, atol=1e-5)
    expected = forecaster.model(x_train)[0].detach().double().numpy() * rec["scale"] + rec["mean"]
    np.testing.assert_allclose(got.loc[got["id"] == "s1", "forecast"], expected, rtol=1e-5)


def test_the_covariates_config_loads():
    cfg = load_config("configs/vic_elec_covariates.yaml")
    assert cfg.data.past_covariates == ["temperature"] and cfg.data.future_covariates == ["workday"]
    quantile = load_config("configs/vic_elec_quantiles.yaml")
    assert quantile.model.quantiles == [0.1, 0.5, 0.9] and quantile.data.covariates == cfg.data.covariates


def test_typed_parquet_with_covariates_is_read_whole(tmp_path):
    from pipeline.stages.ingest import read_series

    frame = _frame()
    frame.to_parquet(tmp_path / "data.parquet")
    series = read_series(_data_cfg(source=str(tmp_path / "data.parquet")))
    assert series.covariates.shape == (3 * LENGTH, 2) and series.static.ravel().tolist() == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_two_processes_train_the_same_covariate_model_as_one(tmp_path):
    """World-size invariance holds with every input kind (covariates, statics, the embedding) and a quantile
    head with instance norm; a 2-process evaluation (test and backtest) scores as one process does."""
    from tests.conftest import torchrun
    from tests.test_distributed import ATOL, assert_same_weights, one_process

    data = tmp_path / "shop.csv"
    _frame().to_csv(data, index=False)
    overrides = {
        "data": {
            "source": str(data),
            "id_column": "id",
            "target_column": "y",
            "val_size": 0.15,
            "test_size": 0.15,
            "past_covariates": ["temp"],
            "future_covariates": ["flag"],
            "static_covariates": ["size"],
        },
        "model.series_embedding": 2,
        "model.quantiles": [0.1, 0.5, 0.9],
        "model.instance_norm": True,
        "evaluate.backtest.folds": 2,
        "window.lookback": 24,
        "window.horizon": 6,
        "train.max_steps": 20,
        "train.checkpoint_every": 0,
        "train.num_threads": 1,
    }
    runs = {}
    for n in (1, 2):
        config = write_config(tmp_path / str(n), overrides)
        for stage in ("ingest", "window"):
            assert cli_in_process(stage, "--config", str(config)).returncode == 0
        args = ("train", "--config", str(config))
        done = one_process(*args) if n == 1 else torchrun(n, *args)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[n] = tmp_path / str(n) / "run/train/model.safetensors"
    assert_same_weights(runs[1], runs[2], ATOL)
    scores = []
    for n in (1, 2):
        args = ("evaluate", "--config", str(tmp_path / "2" / "config.yaml"), "--force")
        done = one_process(*args) if n == 1 else torchrun(n, *args)
        assert done.returncode == 0, done.stderr[-3000:]
        scores.append(json.loads((tmp_path / "2" / "run/evaluate/metrics.json").read_text()))
    single, double = scores
    assert double["quantiles"]["pinball"] == pytest.approx(single["quantiles"]["pinball"], rel=1e-6)
    assert double["quantiles"]["coverage"] == single["quantiles"]["coverage"]
    agg = [s["backtest"]["aggregate"] for s in scores]
    assert agg[1]["model"]["mase"] == pytest.approx(agg[0]["model"]["mase"], rel=1e-6)
    assert double["n_windows"] == single["n_windows"]


@pytest.mark.parametrize("name", ["target", "row", "series"])
def test_a_covariate_named_like_the_readers_own_columns_keeps_target_and_rows(name):
    """Ingest's long frame has columns series, time, target and row: a covariate of one of those names
    (a sales `target`, say) once replaced that column, and the model trained on the covariate as its target."""
    frame = _frame().rename(columns={"temp": name})
    series = prepare_series(frame, _data_cfg(past_covariates=[name]))
    assert series.ids == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(series.values[:LENGTH], frame["y"].to_numpy()[:LENGTH])
    np.testing.assert_array_equal(series.covariates[:LENGTH, 0], frame[name].to_numpy()[:LENGTH])
    broken = frame.assign(flag=frame["flag"].where(frame.index != 9))
    with pytest.raises(DataError, match=r"covariate 'flag' at 2024-01-01 09:00:00 \(row 10\)"):
        prepare_series(broken, _data_cfg(past_covariates=[name]))


def test_a_covariate_named_time_beside_another_time_column_is_read_as_a_covariate():
    frame = _frame().rename(columns={"time": "date", "temp": "time"})
    series = prepare_series(frame, _data_cfg(time_column="date", past_covariates=["time"]))
    np.testing.assert_array_equal(series.covariates[:LENGTH, 0], frame["time"].to_numpy()[:LENGTH])
    assert series.starts[0] == pd.Timestamp("2024-01-01")


def test_a_static_covariate_named_row_keeps_the_row_numbers_of_errors():
    frame = _frame().rename(columns={"size": "row"})
    series = prepare_series(frame, _data_cfg(static_covariates=["row"]))
    np.testing.assert_array_equal(series.static[:, 0], [1.0, 2.0, 3.0])
    changed = frame.assign(row=frame["row"].where(frame.index != 310, 9.0))
    message = r"static covariate 'row' changes within the series \(2 in row 301, 9 in row 311\)"
    with pytest.raises(DataError, match=message):
        prepare_series(changed, _data_cfg(static_covariates=["row"]))


def _run_and_predict(tmp_path, frame: pd.DataFrame, names: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(evaluate/forecasts.csv, predict's forecast of the trained series and a new one) of a small covariate run
    on `frame` with its columns renamed by `names`."""
    col = {c: names.get(c, c) for c in ["id", "time", "y", "temp", "flag", "size"]}
    frame = frame.rename(columns=col)
    tmp_path.mkdir()
    data = tmp_path / "shop.csv"
    frame.to_csv(data, index=False)
    config = write_config(
        tmp_path,
        {
            "data": {
                "source": str(data),
                "id_column": col["id"],
                "time_column": col["time"],
                "target_column": "y",
                "freq": "h",
                "val_size": 0.15,
                "test_size": 0.15,
                "past_covariates": [col["temp"]],
                "future_covariates": [col["flag"]],
                "static_covariates": [col["size"]],
            },
            "window.lookback": 24,
            "window.horizon": 6,
            "train.max_steps": 10,
            "train.checkpoint_every": 0,
            "evaluate.plot_series": 0,
            "export.onnx": False,
        },
    )
    done = cli_in_process("run", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    new = frame[frame[col["id"]] == "s1"].assign(**{col["id"]: "new", "y": lambda f: f["y"] + 3.0})
    both = pd.concat([frame, new]).groupby(col["id"])
    history, future = both.head(200), both.nth(list(range(200, 206)))[[col["id"], col["time"], col["flag"]]]
    forecast = Forecaster.load(tmp_path / "run" / "export").predict(history, future=future)
    return pd.read_csv(tmp_path / "run" / "evaluate" / "forecasts.csv"), forecast


@pytest.mark.slow
def test_covariates_named_like_internal_columns_train_and_forecast_as_under_other_names(tmp_path):
    """A past covariate `target`, a future one `time` (beside a time column `date`) and a static one `row`: once
    the first became the target, the second a traceback; the run and predict must not depend on the names."""
    frame = _frame()
    plain_eval, plain = _run_and_predict(tmp_path / "plain", frame, {})
    names = {"id": "store", "time": "date", "temp": "target", "flag": "time", "size": "row"}
    odd_eval, odd = _run_and_predict(tmp_path / "odd", frame, names)
    pd.testing.assert_frame_equal(odd_eval, plain_eval)
    assert sorted(odd["store"].unique()) == ["new", "s0", "s1", "s2"]
    np.testing.assert_array_equal(odd["forecast"].to_numpy(), plain["forecast"].to_numpy())


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"format": "long", "id_column": "store"}, "future: duplicate row for series 'a' at 2024-01-11 00:00:00"),
        (
            {"format": "wide", "id_column": None},
            "future: duplicate row at 2024-01-11 00:00:00: the future covariates are one row per time, shared by "
            "every series of this wide model",
        ),
        (
            {"format": "long", "id_column": None},
            "future: duplicate row at 2024-01-11 00:00:00: the future covariates are one row per time, of the one "
            "series",
        ),
    ],
)
def test_duplicate_future_rows_are_named_as_the_model_reads_them(layout, message):
    """Without an id column (wide data, or a single series), the future covariates are one row per time; a long
    file with a row per series given to a wide model was refused as a duplicate of a series called 'series'."""
    import dataclasses

    from tests.test_serve import COMPAT

    forecaster = Forecaster.load(COMPAT / "run" / "export")
    forecaster.spec = dataclasses.replace(forecaster.spec, **layout)
    future = pd.read_csv(COMPAT / "future.csv")  # stores a, b and c over the same 12 hours
    keyed = layout["id_column"] is not None  # keyed: store a's first hour twice; else every hour three times
    future = pd.concat([future, future.iloc[:1]]) if keyed else future.drop(columns="store")
    last = np.array(["2024-01-10T23:00"] * 3, dtype="datetime64[ns]")
    with pytest.raises(DataError) as info:
        forecaster._future_values(future, ["a", "b", "c"], last, "future")
    assert str(info.value) == message
