"""The command line as a new user and a W&B agent use it: overrides in every form, errors that blame the right thing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib
import yaml

from pipeline.config import load_config
from pipeline.library.errors import UserError
from pipeline.orchestrators.cli import parse_args

from .conftest import REPO, cli, cli_in_process, write_config


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--config", "c.yaml", "--seed=3", "name=trial", "--train.lr", "0.002", "--force"],
        ["run", "--force", "--train.lr=0.002", "--config=c.yaml", "seed=3", "--name", "trial"],
        ["run", "name=trial", "--config", "c.yaml", "--force", "--seed", "3", "train.lr=0.002"],
    ],
)
def test_overrides_in_any_form_and_any_order_for_any_key(argv):
    args = parse_args(argv)
    assert (args.command, args.config, args.force) == ("run", "c.yaml", True)
    assert sorted(args.overrides) == ["name=trial", "seed=3", "train.lr=0.002"]
    cfg = load_config(None, args.overrides)
    assert (cfg.seed, cfg.name, cfg.train.lr) == (3, "trial", 0.002)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--config", "c.yaml", "--frobnicate"], "unrecognized argument --frobnicate: unknown config key"),
        (["run", "--config", "c.yaml", "--train.lrr", "1"], "(did you mean 'train.lr'?)"),
        (["run", "--config", "c.yaml", "--seed"], "--seed needs a value"),
        (["run", "--config", "c.yaml", "stray"], "override 'stray' must look like key.sub=value"),
        (["predict", "--model", "m", "--input", "i", "--output", "o", "seed=1"], "predict takes no config overrides"),
        (["predict", "--model", "m", "--input", "i", "--output", "o", "--bogus"], "predict has no option --bogus; its"),
    ],
)
def test_a_wrong_argument_is_one_clear_error(argv, message):
    with pytest.raises(UserError) as err:
        parse_args(argv)
    assert message in str(err.value)


def test_a_typo_in_an_override_is_blamed_on_the_override_not_the_file(small_config):
    result = cli("train", "--config", str(small_config), "train.lrr=0.1")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line == "error: override 'train.lrr=0.1': unknown config key 'train.lrr' (did you mean 'train.lr'?)"
    result = cli("train", "--config", str(small_config), "--window.lookback=0")
    assert result.stderr.strip().splitlines()[-1] == (
        "error: override 'window.lookback=0': window.lookback must be positive, got 0"
    )


def test_the_sweep_file_sweeps_a_top_level_key_too():
    sweep = yaml.safe_load((REPO / "configs/sweep.yaml").read_text())
    assert "seed" in sweep["parameters"] and any("." in k for k in sweep["parameters"])


@pytest.mark.slow
def test_the_command_line_a_wandb_agent_builds_runs_a_trial_with_top_level_and_nested_keys(tmp_path):
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep = yaml.safe_load((REPO / "configs/sweep.yaml").read_text())
    values = {"seed": 3, "name": "trial_7", "train.lr": 0.002, "train.max_steps": 5, "export.onnx": False}
    args = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args"]
    assert "--seed=3" in args and "--train.lr=0.002" in args
    config = write_config(tmp_path, {"output_dir": str(tmp_path / "runs" / "{name}")})
    macros = {"env": [], "interpreter": [sys.executable], "program": [sweep["program"]], "args": args}
    command = []
    for part in map(str, sweep_utils.create_sweep_command(list(sweep["command"]))):
        command += macros[part[2:-1]] if part.startswith("${") else [str(config) if part.endswith(".yaml") else part]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "runs/trial_7/config.yaml").read_text())
    assert (saved["seed"], saved["name"], saved["train"]["lr"]) == (3, "trial_7", 0.002)


@pytest.mark.slow
def test_evaluate_refuses_a_model_trained_with_other_overrides_and_keeps_config_yaml(tmp_path):
    config = write_config(tmp_path, {"export.onnx": False})
    assert cli_in_process("run", "--config", str(config), "train.lr=0.001").returncode == 0
    saved = (tmp_path / "run/config.yaml").read_text()
    meta = json.loads((tmp_path / "run/train/meta.json").read_text())
    assert meta["config"]["train"]["lr"] == 0.001 and meta["settings"]  # the config train ran with, in its record
    for stage in ("evaluate", "export"):
        result = cli_in_process(stage, "--config", str(config))
        assert result.returncode == 2
        line = result.stderr.strip().splitlines()[-1]
        assert f"error: {stage}: " in line and "other settings" in line and "train.lr=0.001 there, 0.01 here" in line
    assert (tmp_path / "run/config.yaml").read_text() == saved  # it never claims settings the model did not use
    assert cli_in_process("evaluate", "--config", str(config), "--train.lr", "0.001").returncode == 0


@pytest.mark.slow
def test_a_fitted_batch_and_an_auto_budget_are_the_same_settings(tmp_path):
    """train fits train.batch_size to the windows and resolves max_steps: auto; evaluate and export compare the
    config as given, so they accept the model."""
    overrides = {"train.batch_size": 4096, "train.max_steps": "auto", "train.eval_every": 100, "export.onnx": False}
    config = write_config(tmp_path, overrides)
    for stage in ("ingest", "window", "train", "evaluate", "export"):
        result = cli_in_process(stage, "--config", str(config))
        assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "run/train/meta.json").read_text())
    assert meta["config"]["train"]["batch_size"] == 4096 and meta["state"]["step"] >= 400


@pytest.mark.slow
def test_force_starts_a_killed_training_over_and_ends_like_an_unbroken_one(tmp_path):
    from .test_resume import assert_bitwise_equal, kill_at_step, prepared

    reference = prepared(tmp_path / "reference", **{"train.max_steps": 80})
    assert cli_in_process("train", "--config", str(reference)).returncode == 0
    config = prepared(tmp_path / "killed", **{"train.max_steps": 80})
    kill_at_step(config, 1, 55)
    result = cli_in_process("train", "--config", str(config), "--force")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "starting over" in result.stderr and "resumed from" not in result.stderr
    assert_bitwise_equal(tmp_path / "killed/run", tmp_path / "reference/run")


@pytest.mark.slow
def test_an_offline_wandb_run_says_how_to_upload_every_stage(tmp_path):
    config = write_config(tmp_path, {"tracking.backend": "wandb", "tracking.mode": "offline", "export.onnx": False})
    result = cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted((tmp_path / "run/wandb").glob("offline-run-*"))
    assert len(runs) == 4  # one per tracked stage: ingest, train, evaluate, export
    assert f"wandb sync {tmp_path / 'run/wandb/offline-run-*'}" in result.stderr


def test_the_package_license_is_an_spdx_expression():
    """`license = {text = ...}` made every install warn (setuptools >= 77 takes the SPDX string)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])


def test_a_command_that_succeeds_destroys_the_process_group_and_one_that_fails_leaves_it(tmp_path):
    """Left to interpreter teardown, gloo's threads can abort a rank that finished (SIGABRT under torchrun); after
    a failure another rank may still wait in a collective, where destroying the group can hang."""
    import torch.distributed as dist

    from .conftest import run_main

    config = write_config(tmp_path, {"export.onnx": False})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert run_main(["ingest", "--config", str(config), "data.val_size=2.0"])[0] == 2
        assert dist.is_initialized()
        assert run_main(["ingest", "--config", str(config)])[0] == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_version_prints_the_package_version_and_exits_0():
    """`lstm-pipeline --version` answered `unknown config key 'version'` with exit 2."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result = cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"lstm-pipeline {project['version']}\n", "")
    assert "--version" in cli("--help").stdout


def test_stage_help_says_how_to_override_a_config_key():
    """`run --help` listed --config and --force only: the overrides every command takes were not mentioned."""
    for command in ("run", "train"):
        shown = " ".join(cli(command, "--help").stdout.split())
        assert "key.sub=value, --key.sub=value or --key.sub value" in shown and "docs/config.md" in shown
