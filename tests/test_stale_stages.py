"""Stage outputs that no longer belong together are refused, and a failed run keeps the last good config.yaml.

A run that fails after replacing ingest's output (new data whose windows then fail) leaves window,
train, evaluate and export from the old data; a stage command run alone with overrides its upstream
stages did not get would read windows of another shape. Both used to be scored (or crash with an
IndexError) and written into config.yaml as if the model had been trained that way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import cli_in_process, write_config

pytestmark = pytest.mark.slow

DOWNSTREAM = ("window", "train", "evaluate", "export")


def digests(run: Path, stages: tuple[str, ...]) -> dict[str, str]:
    files = [p for stage in stages for p in sorted((run / stage).rglob("*")) if p.is_file()]
    files.append(run / "config.yaml")
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, Path]:
    config = write_config(tmp_path, {"export.onnx": False})
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    return config, tmp_path / "run"


def test_a_run_that_fails_after_new_data_keeps_the_config_and_leaves_nothing_to_score(finished):
    config, run = finished
    before = digests(run, DOWNSTREAM)
    short = cli_in_process("run", "--config", str(config), "data.synthetic.length=50", "data.synthetic.min_length=50")
    assert short.returncode == 2 and "too short" in last_line(short)
    assert digests(run, DOWNSTREAM) == before  # config.yaml included: it still describes the trained model
    for stage in ("train", "evaluate", "export"):
        refused = cli_in_process(stage, "--config", str(config), "--force")
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert last_line(refused) == (
            f"error: {stage}: {run / 'window'} was made from other data than {run / 'ingest'} holds now "
            "(ingest ran after it); run 'lstm-pipeline run' with this config and overrides"
        )
    assert digests(run, DOWNSTREAM) == before
    again = cli_in_process("run", "--config", str(config))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train: up to date" in again.stderr  # the old data again: the model still fits it
    assert digests(run, DOWNSTREAM) == before


@pytest.mark.parametrize(
    ("override", "stage_dir", "detail"),
    [
        ("window.lookback=36", "window", "window.lookback=48 there, 36 here"),
        ("data.scaling=robust", "ingest", "data.scaling='standard' there, 'robust' here"),
    ],
)
def test_stage_commands_refuse_upstream_outputs_made_with_other_settings(finished, override, stage_dir, detail):
    config, run = finished
    before = digests(run, DOWNSTREAM)
    for stage in ("train", "evaluate", "export"):
        refused = cli_in_process(stage, "--config", str(config), override, "--force")
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert last_line(refused) == (
            f"error: {stage}: {run / stage_dir} was made with other settings than this config's ({detail}); "
            "run 'lstm-pipeline run' with this config and overrides"
        )
    assert digests(run, DOWNSTREAM) == before


def test_auto_given_as_the_value_ingest_chose_is_the_same_setting(finished):
    config, run = finished
    chosen = json.loads((run / "ingest/meta.json").read_text())["transform"]
    result = cli_in_process("evaluate", "--config", str(config), f"data.transform={chosen}", "--force")
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_model_trained_on_other_windows_is_refused(finished):
    config, run = finished
    window = cli_in_process("window", "--config", str(config), "window.stride=2")
    assert window.returncode == 0, window.stderr[-2000:]
    for stage in ("evaluate", "export"):
        refused = cli_in_process(stage, "--config", str(config), "window.stride=2", "--force")
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert last_line(refused) == (
            f"error: {stage}: {run / 'train'} holds a model trained on other windows than {run / 'window'} holds "
            "now (ingest or window ran after it); run 'lstm-pipeline run' with this config and overrides"
        )
    retrained = cli_in_process("run", "--config", str(config), "window.stride=2")
    assert retrained.returncode == 0, retrained.stderr[-2000:]
    meta = json.loads((run / "train/meta.json").read_text())
    assert meta["window_fingerprint"] == json.loads((run / "window/meta.json").read_text())["fingerprint"]
