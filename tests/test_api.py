"""The Python API: fit on a DataFrame is the CLI's run (same directory, cache keys and weights)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from safetensors.torch import load_file

from pipeline.config import SyntheticConfig
from pipeline.library.errors import ConfigError, DataError
from pipeline.library.forecaster import Forecaster
from pipeline.library.synthetic import generate_synthetic
from pipeline.orchestrators.api import Experiment, make_config

from .conftest import REPO, cli, cli_in_process, write_config

matplotlib.use("Agg")
DATA = {"id_column": "series", "time_column": "time", "target_column": "value", "freq": "h"}


def frame() -> pd.DataFrame:
    return generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    config = write_config(tmp, {f"data.{k}": v for k, v in DATA.items()})
    exp = Experiment(config, verbose=False)
    df = frame()
    forecaster = exp.fit(df)
    return exp, forecaster, df, tmp


@pytest.mark.slow
def test_fit_writes_the_cli_run_directory_and_a_cli_run_then_skips_every_stage(fitted):
    exp, forecaster, df, tmp = fitted
    run = tmp / "run"
    assert exp.run_dir == run and isinstance(forecaster, Forecaster)
    for stage in ("ingest", "window", "train", "evaluate", "export"):
        assert (run / stage / "meta.json").is_file()
    assert set(exp.metrics) >= {"model", "baselines"}
    result = cli_in_process("run", "--config", str(run / "config.yaml"))
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = re.findall(r"(\w+): up to date \(inputs unchanged\), skipped", result.stderr)
    assert skipped == ["ingest", "window", "train", "evaluate", "export"]
    # the same data as a pyarrow Table: the same file, nothing retrained
    before = (run / "train" / "meta.json").stat().st_mtime_ns
    exp.fit(pa.Table.from_pandas(df, preserve_index=False))
    assert (run / "train" / "meta.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_the_api_and_the_cli_train_identical_weights(fitted, tmp_path):
    exp, _, df, _ = fitted
    df.to_csv(tmp_path / "data.csv", index=False)
    config = write_config(
        tmp_path, {**{f"data.{k}": v for k, v in DATA.items()}, "data.source": str(tmp_path / "data.csv")}
    )
    result = cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("model.safetensors", "best/model.safetensors"):
        api, by_cli = load_file(str(exp.run_dir / "train" / name)), load_file(str(tmp_path / "run" / "train" / name))
        assert api.keys() == by_cli.keys()
        assert all(bool((api[k] == by_cli[k]).all()) for k in api), name


@pytest.mark.slow
def test_predict_defaults_to_the_fitted_frame_and_serves_new_series(fitted):
    exp, forecaster, df, _ = fitted
    forecast = exp.predict()
    pd.testing.assert_frame_equal(forecast, forecaster.predict(df))
    assert list(forecast.columns) == ["series", "time", "forecast"] and len(forecast) == 4 * 12
    renamed = exp.predict(df[df["series"] == "s0001"].assign(series="a_new_one"))
    assert renamed["series"].unique().tolist() == ["a_new_one"] and np.isfinite(renamed["forecast"]).all()


@pytest.mark.slow
def test_cross_validation_is_one_frame_of_every_fold_with_actuals_and_baselines(fitted):
    exp, _, df, _ = fitted
    cv = exp.cross_validation(df, folds=2, step=6)
    columns = ["fold", "series", "origin", "time", "step", "actual", "forecast", "naive", "seasonal_naive"]
    assert list(cv.columns) == columns
    assert sorted(cv["fold"].unique()) == [1, 2] and set(cv["step"]) == set(range(1, 13))
    assert pd.api.types.is_datetime64_any_dtype(cv["time"]) and pd.api.types.is_datetime64_any_dtype(cv["origin"])
    truth = df.set_index(["series", "time"])["value"]
    looked_up = truth.reindex(pd.MultiIndex.from_frame(cv[["series", "time"]])).to_numpy()
    np.testing.assert_allclose(cv["actual"], looked_up, rtol=1e-6)  # actual = the data at that time
    first = cv[cv["step"] == 1]
    assert (first["origin"] == first["time"]).all()
    origins = cv.groupby(["series", "fold"])["origin"].first().unstack()
    assert (abs(origins[1] - origins[2]) == pd.Timedelta(hours=6)).all()
    assert (exp.run_dir / "evaluate" / "backtest_forecasts.csv").is_file()
    # numpy integers (a notebook's computed fold count) are the same arguments
    pd.testing.assert_frame_equal(exp.cross_validation(df, folds=np.int64(2), step=np.int64(6)), cv)


def test_before_any_run_metrics_is_one_error_naming_the_file(tmp_path):
    exp = Experiment(write_config(tmp_path), verbose=False)
    with pytest.raises(DataError, match=r"metrics: no .*evaluate/metrics.json yet; fit a frame first"):
        exp.metrics  # noqa: B018 - a property: reading it is the test


@pytest.mark.slow
def test_predict_after_cross_validation_on_other_rows_still_defaults_to_the_fitted_frame(tmp_path):
    """docs/python.md: predict's default history is the frame given to fit; cross_validation(other) replaced it."""
    config = write_config(tmp_path, {**{f"data.{k}": v for k, v in DATA.items()}, "train.max_steps": 5})
    exp = Experiment(config, verbose=False)
    df = frame()
    exp.fit(df)
    exp.cross_validation(df[df["series"] != "s0003"], folds=1)
    assert sorted(exp.predict()["series"].unique()) == sorted(df["series"].unique())


@pytest.mark.slow
def test_cross_validation_keeps_series_ids_that_look_like_numbers_or_missing_values(tmp_path):
    """The frame is read back from backtest_forecasts.csv: ids were parsed as numbers ('001' -> 1.0, '1e3' ->
    1000.0) or as missing ('NA' -> NaN), so they matched neither the data nor `predict`'s."""
    config = write_config(tmp_path, {**{f"data.{k}": v for k, v in DATA.items()}, "train.max_steps": 5})
    exp = Experiment(config, verbose=False)
    df = frame()
    df["series"] = df["series"].map({"s0000": "001", "s0001": "1e3", "s0002": "NA", "s0003": "s3"})
    exp.fit(df)
    cv = exp.cross_validation(df, folds=1)
    assert set(cv["series"]) == {"001", "1e3", "NA", "s3"}
    assert set(exp.predict()["series"]) == {"001", "1e3", "NA", "s3"}


@pytest.mark.slow
def test_cross_validation_never_promotes_to_the_registry(tmp_path):
    """With `registry.promote` on, fit promotes as `run --promote` does; cross_validation is an evaluation: each
    call registered the same model again as a new version, recorded `rejected` and pruned real versions."""
    registry = {"registry.dir": str(tmp_path / "registry"), "registry.promote": True}
    config = write_config(tmp_path, {**{f"data.{k}": v for k, v in DATA.items()}, "train.max_steps": 5, **registry})
    exp = Experiment(config, verbose=False)
    df = frame()
    exp.fit(df)
    root = tmp_path / "registry" / "small"
    assert [json.loads(line)["decision"] for line in (root / "history.jsonl").read_text().splitlines()] == ["promoted"]
    exp.cross_validation(df, folds=1)
    exp.cross_validation(df, folds=1, refit=True)
    assert len((root / "history.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in root.glob("v*")) == ["v0001"]


@pytest.mark.slow
def test_plot_draws_forecasts_over_real_timestamps(fitted):
    import matplotlib.dates as mdates

    exp, _, df, _ = fitted
    fig = exp.plot(series=["s0002"])
    [ax] = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"history", "forecast"} <= set(lines)
    x = mdates.date2num(pd.Timestamp(df[df["series"] == "s0002"]["time"].max()))
    forecast_x = lines["forecast"].get_xdata()
    assert pd.Timestamp(forecast_x[0]) > pd.Timestamp(mdates.num2date(x).replace(tzinfo=None))
    assert ax.get_xlim()[0] > mdates.date2num(pd.Timestamp("2023-12-01"))  # dates, not step numbers
    with pytest.raises(DataError, match="series 'nope' is not in the forecast"):
        exp.plot(series=["nope"])


@pytest.mark.slow
def test_plot_takes_one_series_id_and_refuses_no_panels_in_one_line(fitted):
    """`series="s0002"` was iterated as the ids 's', '0', ...; `max_series=0` or `series=[]` reached matplotlib's
    "Number of rows must be a positive integer"."""
    exp, _, _, _ = fitted
    [ax] = exp.plot(series="s0002").axes
    assert ax.get_title() == "series s0002"
    assert len(exp.plot(max_series=np.int64(3)).axes) == 3
    with pytest.raises(ConfigError, match=r"^plot: max_series must be an integer >= 1, got 0$"):
        exp.plot(max_series=0)
    with pytest.raises(ConfigError, match=r"^plot: max_series must be an integer >= 1, got True$"):
        exp.plot(max_series=True)
    with pytest.raises(ConfigError, match=r"^plot: series names no series \(an empty list\)$"):
        exp.plot(series=[])


def test_make_config_merges_keywords_over_the_file_and_names_a_wrong_key(tmp_path):
    config = write_config(tmp_path)
    cfg = make_config(config, name="kw", window={"horizon": 5}, **{"train.max_steps": 7})
    assert (cfg.name, cfg.window.horizon, cfg.train.max_steps) == ("kw", 5, 7)
    assert cfg.window.lookback == 48  # the file's, kept beside the keyword
    assert make_config(None, **{"data.source": "synthetic"}).train.loss == "mae"  # the recipe's defaults
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_stepz' \(did you mean 'train.max_steps'"):
        make_config(config, **{"train.max_stepz": 7})
    with pytest.raises(DataError, match="expected a pandas DataFrame or a pyarrow Table, got list"):
        Experiment(config, verbose=False).fit([1, 2, 3])


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert block.count('"max_steps": 100') == 1
    block = block.replace('"max_steps": 100', '"max_steps": 10')  # the example as written, trained less: 30 s -> 10 s
    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(block, "README.md", "exec"), scope)
    finally:
        os.chdir(here)
    assert (tmp_path / "runs" / "notebook" / "export" / "model.safetensors").is_file()
    assert len(scope["forecast"]) == 3 * 24 and scope["cv"]["fold"].nunique() == 2


def short_run(tmp_path: Path, **overrides) -> Experiment:
    """An experiment on DATA that trains for 3 steps: for tests of what the API does around training."""
    settings = {**{f"data.{k}": v for k, v in DATA.items()}, "train.max_steps": 3, **overrides}
    return Experiment(write_config(tmp_path, settings), verbose=False)


@pytest.mark.slow
def test_a_rejected_frame_leaves_the_last_good_run_rerunnable(tmp_path):
    """The rejected frame replaced input/data.parquet before ingest refused it: `run --config config.yaml`, which
    reruns the last good run, then failed on the rejected rows."""
    df = frame()
    short_run(tmp_path).fit(df)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in (run / "input").iterdir()}
    config = (run / "config.yaml").read_text()
    with pytest.raises(DataError) as failed:
        short_run(tmp_path).fit(pd.concat([df, df.iloc[[5]]]))
    # the user's frame by name and its row by position from 1 (len(df) + 1), not a file they never wrote
    assert str(failed.value) == (
        "the frame given to fit: series 's0000': duplicate timestamp 2023-12-17 19:00:00 (row 1470)"
    )
    assert {p.name: p.read_bytes() for p in (run / "input").iterdir()} == before
    assert (run / "config.yaml").read_text() == config
    result = cli_in_process("run", "--config", str(run / "config.yaml"))
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = re.findall(r"(\w+): up to date \(inputs unchanged\), skipped", result.stderr)
    assert skipped == ["ingest", "window", "train", "evaluate", "export"]
    # another good frame becomes the input once its run succeeded, and the one before it goes
    exp = short_run(tmp_path)
    exp.fit(df[df["series"] != "s0003"])
    [current] = (run / "input").iterdir()
    assert current.name not in before and exp.cfg.data.source == str(current)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["source"] == str(current)


@pytest.mark.slow
def test_an_input_kept_under_the_earlier_single_name_is_reused_for_the_same_bytes(tmp_path):
    """Earlier versions kept every frame as input/data.parquet: the same frame again must keep that file (and so
    `data.source` and every cache key) rather than retrain a run directory they made."""
    df = frame()
    short_run(tmp_path).fit(df)
    input_dir = tmp_path / "run" / "input"
    [written] = input_dir.iterdir()
    written.rename(input_dir / "data.parquet")
    short_run(tmp_path).fit(df)  # the source moved: a new ingest, on the legacy file
    before = (tmp_path / "run" / "ingest" / "meta.json").stat().st_mtime_ns
    exp = short_run(tmp_path)
    exp.fit(df)
    assert [p.name for p in input_dir.iterdir()] == ["data.parquet"]
    assert exp.cfg.data.source == str(input_dir / "data.parquet")
    assert (tmp_path / "run" / "ingest" / "meta.json").stat().st_mtime_ns == before


def test_keywords_take_numpy_numbers_tuples_arrays_and_paths_as_their_plain_values(tmp_path):
    """Values computed in a notebook: numpy scalars failed the type checks (`np.int64(12)` is not an int), a
    tuple or an array of quantiles was not a list, a Path not a string."""
    cfg = make_config(
        write_config(tmp_path),
        window={"horizon": np.int64(12)},
        seed=np.int64(3),
        name=np.str_("notebook"),
        output_dir=tmp_path / "out",
        **{
            "train.lr": np.float32(0.001),
            "train.max_steps": np.int32(7),
            "train.deterministic": np.bool_(True),
            "model.quantiles": (0.1, 0.5, 0.9),
            "evaluate.plot_series": np.uint8(3),
            "data.source": tmp_path / "data.csv",
        },
    )
    assert (cfg.window.horizon, cfg.seed, cfg.train.max_steps, cfg.evaluate.plot_series) == (12, 3, 7, 3)
    assert cfg.train.lr == 0.001  # the float32 as written, not 0.0010000000474974513
    assert cfg.train.deterministic is True and cfg.model.quantiles == [0.1, 0.5, 0.9]
    assert (cfg.output_dir, cfg.data.source) == (str(tmp_path / "out"), str(tmp_path / "data.csv"))
    assert make_config(None, **{"model.quantiles": np.array([0.1, 0.5, 0.9])}).model.quantiles == [0.1, 0.5, 0.9]
    plain = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))  # config.yaml: plain YAML, no numpy objects
    assert (plain["seed"], plain["name"]) == (3, "notebook") and type(plain["train"]["lr"]) is float
    # the checks stay those of the CLI: a bool is not an integer, nor is 12.5
    with pytest.raises(ConfigError, match=r"window\.horizon must be an integer, got bool True"):
        make_config(None, window={"horizon": np.bool_(True)})
    with pytest.raises(ConfigError, match=r"window\.horizon must be an integer, got float 12\.5"):
        make_config(None, window={"horizon": np.float64(12.5)})


@pytest.mark.slow
def test_every_method_reads_a_frame_indexed_by_time_as_fit_does(tmp_path):
    """fit took a wide frame with a DatetimeIndex (and a long one indexed by its time column); predict and plot
    refused the same frame: "history: time column 'time' not found"."""
    df = frame()
    wide = df.pivot(index="time", columns="series", values="value").dropna().rename_axis(columns=None)
    exp = short_run(tmp_path / "wide", **{"data.format": "wide", "data.id_column": None})
    exp.fit(wide)  # the DatetimeIndex
    by_column = exp.predict(wide.reset_index())
    assert len(by_column) == 4 * 12
    pd.testing.assert_frame_equal(exp.predict(wide), by_column)
    assert len(exp.plot(history=wide, max_series=2).axes) == 2
    long = short_run(tmp_path / "long")
    long.fit(df.set_index("time"))
    pd.testing.assert_frame_equal(long.predict(df.set_index("time")), long.predict(df))
    pd.testing.assert_frame_equal(long.predict(df.set_index(["series", "time"])), long.predict(df))
    long.fit(df.set_index(["series", "time"]))
    pd.testing.assert_frame_equal(long.predict(), long.predict(df))  # the fitted frame, its index read as columns


@pytest.mark.slow
def test_a_column_mixing_numbers_and_text_reads_as_the_same_rows_in_a_csv_would(tmp_path):
    """pyarrow refused to store such a column (a raw ArrowInvalid); the CSV of the frame gets one line naming
    the row, and an id column mixing 0 and 's0001' is read as text ids."""
    df = frame()
    values = df.astype({"value": object})
    values.loc[5, "value"] = "?"
    exp = short_run(tmp_path)
    with pytest.raises(DataError) as failed:
        exp.fit(values)
    message = "the frame given to fit: row 6: non-numeric value '?' in column 'value' (series 's0000')"
    assert str(failed.value) == message
    assert list((tmp_path / "run" / "input").iterdir()) == []
    ids = df.astype({"series": object})
    ids.loc[ids["series"] == "s0000", "series"] = 0
    exp.fit(ids)
    assert sorted(exp.forecaster.spec.series.ids) == ["0", "s0001", "s0002", "s0003"]
    assert sorted(exp.predict()["series"].unique()) == ["0", "s0001", "s0002", "s0003"]
    with pytest.raises(DataError, match=r"^the frame given to fit: cannot be stored as a table: .*complex128"):
        exp.fit(df.assign(extra=df["value"] * 1j))
