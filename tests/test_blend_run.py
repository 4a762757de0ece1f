"""`model.blend` through the CLI: the share is set after training and travels with the weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.library import blend
from pipeline.library.forecaster import Forecaster

from .conftest import cli_in_process, write_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("value", [0.5, "validation"])
def test_blend_is_set_after_training_and_exported(tmp_path, value):
    config = write_config(tmp_path, {"model.blend": value, "train.max_steps": 20})
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    meta = json.loads((run / "train/meta.json").read_text())
    record = meta["blend"]
    losses = {float(w): v for w, v in record["val_loss"].items()}
    assert list(losses) == list(blend.GRID) and record["lowest"] == min(losses, key=losses.get)
    expected = 0.5 if value == 0.5 else record["weight"]
    if value == "validation":  # the one-standard-error rule moves from the lowest towards the base, never past it
        assert expected in blend.GRID and expected <= record["lowest"] and losses[expected] <= losses[0.0]
        assert 1 <= record["effective_windows"] <= meta["setup"]["data"]["windows"]["val"]
    assert record["weight"] == expected and meta["model"]["blend"] is True
    assert float(load_file(str(run / "train/best/model.safetensors"))["blend"]) == expected
    assert json.loads((run / "export/meta.json").read_text())["onnx_parity"] <= 1e-4  # the graph holds the share

    forecaster = Forecaster.load(run / "export")
    model = forecaster.model
    assert float(model.blend) == expected
    x = torch.randn(3, 48 + 12, model.spec.input_size)
    with torch.no_grad():
        blended = model(x)
        model.blend.fill_(1.0)
        full = model(x)
        model.blend.fill_(0.0)
        base = model(x)
    np.testing.assert_allclose(blended.numpy(), (base + expected * (full - base)).numpy(), atol=1e-5)
    assert not np.allclose(full.numpy(), base.numpy(), atol=1e-3)  # training moved away from the base
