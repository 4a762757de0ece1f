"""Series ids that look like numbers ("007", "010") stay the text they are, from the CSV to the forecast.

pandas reads such a column as numbers: ingest named the series "7" and "10" (and merged "007" with "7"), and
`predict` read a history's "007" as 7, a series the model never saw, scaled by its history instead of its
training statistics. Here a model is trained on a CSV of two such series and asked for the forecast of each
one's first test window from a CSV, a JSON-lines and a request-body history: the ids are the file's, and
the numbers are evaluate's for that window (the training statistics, not the history's).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.library.forecaster import Forecaster
from pipeline.orchestrators.forecast_io import read_csv_text

from .conftest import cli_in_process, write_config

pytestmark = pytest.mark.slow
IDS = ("007", "010")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("ids")
    rng = np.random.default_rng(3)
    parts = []
    for k, (sid, n) in enumerate(zip(IDS, (220, 200))):
        t = np.arange(n)
        y = 30 + 10 * k + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, n)
        times = pd.date_range("2024-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S")
        parts.append(pd.DataFrame({"id": sid, "time": times, "y": np.round(y, 3)}))
    data = pd.concat(parts, ignore_index=True)
    data.to_csv(tmp / "data.csv", index=False)
    overrides = {
        "data": {"source": str(tmp / "data.csv"), "id_column": "id", "target_column": "y", "freq": "h"},
        "window.lookback": 24,
        "window.horizon": 6,
        "train.max_steps": 10,
        "export.onnx": False,
    }
    config = write_config(tmp, overrides)
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, data


def test_ingest_and_evaluate_keep_the_ids_as_written(trained):
    tmp, _ = trained
    meta = json.loads((tmp / "run/ingest/meta.json").read_text())
    assert [s["id"] for s in meta["series"]] == list(IDS)
    forecasts = pd.read_csv(tmp / "run/evaluate/forecasts.csv", dtype=str)
    assert sorted(forecasts["series"].unique()) == list(IDS)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "body"])
def test_predict_reads_the_ids_as_written_and_forecasts_them_as_trained(trained, kind):
    tmp, data = trained
    scored = pd.read_csv(tmp / "run/evaluate/forecasts.csv", dtype={"series": str}, parse_dates=["origin", "time"])
    first = scored[scored["origin"] == scored.groupby("series")["origin"].transform("min")]
    origins = first.groupby("series")["origin"].first()
    history = pd.concat([data[(data["id"] == sid) & (pd.to_datetime(data["time"]) < origins[sid])] for sid in IDS])
    if kind == "body":  # the forecast service's text/csv body
        frame = read_csv_text(history.to_csv(index=False).encode(), id_column="id")
        assert sorted(frame["id"].unique()) == list(IDS)
        return
    path = tmp / f"history_{kind}.{kind}"
    if kind == "csv":
        history.to_csv(path, index=False)
    else:
        history.to_json(path, orient="records", lines=True)
    out = tmp / f"forecast_{kind}.csv"
    result = cli_in_process("predict", "--model", str(tmp / "run/export"), "--input", str(path), "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    forecast = pd.read_csv(out, dtype={"id": str}, parse_dates=["time"])
    assert sorted(forecast["id"].unique()) == list(IDS)
    both = first.merge(forecast, left_on=["series", "time"], right_on=["id", "time"], suffixes=("_eval", ""))
    assert len(both) == 2 * 6
    np.testing.assert_allclose(both["forecast"], both["forecast_eval"], rtol=1e-5)


def test_the_documented_python_call_reads_the_ids_as_written(trained):
    """docs/python.md's `forecaster.predict(forecaster.read_history(path))`: the ids as text, as the CLI reads them
    (the module's `read_history` without the id column gave 7 and 10 as numbers, series the model never saw)."""
    tmp, data = trained
    data.to_csv(tmp / "python_history.csv", index=False)
    forecaster = Forecaster.load(tmp / "run/export")
    history = forecaster.read_history(tmp / "python_history.csv")
    assert sorted(history["id"].unique()) == list(IDS)
    forecast = forecaster.predict(history)
    assert sorted(forecast["id"].unique()) == list(IDS) and len(forecast) == 2 * 6


def test_a_json_history_whose_id_is_no_single_value_is_one_line(trained):
    """An id that is a JSON object was a TypeError traceback (exit 1; a 500 from the service)."""
    tmp, data = trained
    records = data.to_dict("records")
    records[3]["id"] = {"store": "007"}
    path = tmp / "nested.json"
    path.write_text(json.dumps(records))
    out = tmp / "nested_forecast.csv"
    done = cli_in_process("predict", "--model", str(tmp / "run/export"), "--input", str(path), "--output", str(out))
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {path}: row 4: series id {{'store': '007'}} (column 'id') is not a single value"
    )
