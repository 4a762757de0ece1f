"""The model as ONNX, checked against PyTorch with ONNX Runtime on real windows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import ConfigError
from pipeline.library.inference import forecast_windows


def export_onnx(model: torch.nn.Module, buffer: WindowBuffer, pairs: np.ndarray, path: Path, atol: float) -> float:
    """Write the ONNX graph and return its largest deviation from PyTorch on `pairs`."""
    import onnxruntime as ort

    example, _ = buffer.gather(torch.from_numpy(pairs[:2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = {"input_names": ["x"], "output_names": ["forecast"]}
        try:  # the TorchScript exporter takes 0.2 s for an LSTM, the dynamo one about 10 s
            batch_axes = {"x": {0: "batch"}, "forecast": {0: "batch"}}  # quantiles: (batch, horizon, Q)
            torch.onnx.export(
                model, (example,), str(path), dynamic_axes=batch_axes, opset_version=17, dynamo=False, **names
            )
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without the legacy exporter
            batch = {"x": {0: torch.export.Dim("batch", min=1)}}
            torch.onnx.export(model, (example,), str(path), dynamic_shapes=batch, dynamo=True, **names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = forecast_windows(model, buffer, pairs, 4096)
    got = np.concatenate(
        [
            session.run(None, {"x": buffer.gather(torch.from_numpy(chunk))[0].numpy()})[0]
            for chunk in np.array_split(pairs, max(1, len(pairs) // 4096 + 1))
            if len(chunk)
        ]
    )
    diff = float(np.abs(got - expected).max())
    if not diff <= atol:  # the previous export stays in place: the caller writes into a staged directory
        raise ConfigError(
            f"export.parity_atol ({atol:g}): the ONNX model's forecasts differ from PyTorch's by up to {diff:.3g} on "
            f"the test windows, in scaled units (float32 kernels differ by about 1e-6); raise export.parity_atol, "
            f"or set export.onnx: false to export without ONNX"
        )
    return diff
