"""The experiment config: typed sections loaded from YAML plus `key=value` overrides.

Stages and orchestrators read it; the library never does. `auto` resolves the `auto` values
from what ingest found, `model_spec` turns the model section into the network's spec, and
`reference` generates the documented reference of every key.
"""

from pipeline.config.loading import load_config, parse_override, save_config
from pipeline.config.sections import (
    BacktestConfig,
    Config,
    DataConfig,
    EvaluateConfig,
    ExportConfig,
    ModelConfig,
    RegistryConfig,
    SyntheticConfig,
    TrackingConfig,
    TrainConfig,
    WindowConfig,
)

__all__ = [
    "BacktestConfig",
    "Config",
    "DataConfig",
    "EvaluateConfig",
    "ExportConfig",
    "ModelConfig",
    "RegistryConfig",
    "SyntheticConfig",
    "TrackingConfig",
    "TrainConfig",
    "WindowConfig",
    "load_config",
    "parse_override",
    "save_config",
]
