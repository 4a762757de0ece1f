"""Run directories and exports written before the typed records still load, serve and rerun.

tests/fixtures/run_2232a71 was written by lstm-pipeline at commit 2232a71 (the flat package, before
the layers): covariates of all three kinds, a series embedding, quantiles and a backtest, so every
field of every record is there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from pipeline.library.records import (
    SPEC_FILE,
    EvaluateRecord,
    ExportRecord,
    ForecasterSpec,
    IngestRecord,
    TrainRecord,
    WindowRecord,
)

from .conftest import cli_in_process

FIXTURE = Path(__file__).parent / "fixtures" / "run_2232a71"
FLOAT32_CLOSE = 1e-6  # relative; what float32 kernels on different CPUs agree to
RECORDS = {
    "ingest": IngestRecord,
    "window": WindowRecord,
    "train": TrainRecord,
    "evaluate": EvaluateRecord,
    "export": ExportRecord,
}


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A copy of the fixture (its config names its data and run directory relative to itself)."""
    copy = tmp_path / "old"
    shutil.copytree(FIXTURE, copy)
    return copy


@pytest.mark.parametrize("stage", list(RECORDS))
def test_every_meta_json_reads_into_its_record_and_writes_back_the_same(stage):
    payload = json.loads((FIXTURE / "run" / stage / "meta.json").read_text())
    record = RECORDS[stage].from_json(payload)
    assert record.to_json() == payload  # same keys and values (the order of keys aside)
    assert RECORDS[stage].read(FIXTURE / "run" / stage) == record


def test_the_ingest_record_holds_every_series_fact():
    record = IngestRecord.read(FIXTURE / "run" / "ingest")
    assert record.series.ids == ["a", "b", "c"] and record.n_series == 3 and record.freq == "h"
    assert (record.past_covariates, record.future_covariates, record.static_covariates) == (
        ["temp"],
        ["workday"],
        ["size"],
    )
    assert record.series.stats.covariate_loc.shape == (3, 2) and record.series.stats.static.shape == (3, 1)
    assert record.series.lengths.tolist() == [240] * 3 and record.series.offsets.tolist() == [0, 240, 480]


def test_the_old_export_loads_and_predicts_what_it_predicted_then(old_run):
    spec = ForecasterSpec.from_json(json.loads((FIXTURE / "run/export" / SPEC_FILE).read_text()))
    assert spec.model.series_embedding == 2 and spec.model.quantiles == (0.1, 0.5, 0.9)
    assert spec.to_json() == json.loads((FIXTURE / "run/export" / SPEC_FILE).read_text())
    out = old_run / "forecast.csv"
    result = cli_in_process(
        "predict", "--model", "run/export", "--input", "data.csv", "--future", "future.csv", "--output", str(out),
        cwd=old_run,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    # float32 to a few units in the last place: oneDNN's kernels sum in another order on an AVX2 CPU than on the
    # AVX-512 one that wrote the fixture (2e-8 relative seen on an AMD EPYC)
    expected = pd.read_csv(FIXTURE / "expected_forecast.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out), expected, rtol=FLOAT32_CLOSE)


@pytest.mark.slow
def test_run_on_the_old_directory_keeps_its_data_stages_and_reproduces_its_scores(old_run):
    # the recipe of 2232a71: the base it fixed, a head that does not read it, intervals widened in units of the
    # spread without the volatility band, the blend share its rule chose (the lowest validation loss; all chosen
    # otherwise by default since), the values as they are (`data.transform: auto` chooses since)
    result = cli_in_process(
        "run",
        "--config",
        "config.yaml",
        "data.transform=none",
        "model.base=profile",
        "model.base_input=false",
        "model.calibration_unit=spread",
        "model.calibration_band=false",
        f"model.blend={json.loads((FIXTURE / 'run/train/meta.json').read_text())['blend']['weight']}",
        cwd=old_run,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ingest: up to date" in result.stderr and "window: up to date" in result.stderr
    # train's cache key is computed differently since the stage table: it trained again, to the same weights
    before = json.loads((FIXTURE / "run/evaluate/metrics.json").read_text())
    after = json.loads((old_run / "run/evaluate/metrics.json").read_text())
    assert after.pop("seasons") == [24] and after.pop("base") == "profile 24 x 2"  # reported since
    assert after.pop("transform") == "none"
    assert after.pop("filled_points") == 0  # counted since: points data.missing filled are not scored
    assert _close(after, before)
    # the same training to float32's precision: bit for bit on the CPU that wrote the fixture, 9e-7 of each
    # tensor's largest weight on an AVX2 CPU (oneDNN sums in another order); a changed recipe moves them far more
    new, old = (load_file(str(root / "run/train/best/model.safetensors")) for root in (old_run, FIXTURE))
    assert new.keys() == old.keys()
    assert max(float((new[k] - old[k]).abs().max() / old[k].abs().max()) for k in new) < 1e-5


def _close(a, b, path: str = "metrics") -> bool:
    """Nested equality of two metrics.json trees, numbers to float32's precision (`FLOAT32_CLOSE`)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        return all(_close(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, list):
        assert len(a) == len(b), path
        return all(_close(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if isinstance(a, float):
        assert a == pytest.approx(b, rel=FLOAT32_CLOSE), path
        return True
    assert a == b, path
    return True


def test_a_record_missing_what_a_stage_needs_is_one_line_asking_for_force(old_run):
    meta = old_run / "run/train/meta.json"
    payload = json.loads(meta.read_text())
    del payload["model"]
    meta.write_text(json.dumps(payload))
    result = cli_in_process("evaluate", "--config", "config.yaml", cwd=old_run)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "run/train/meta.json" in lines[-1] and "--force" in lines[-1]
    assert "Traceback" not in result.stderr
