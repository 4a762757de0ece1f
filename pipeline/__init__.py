"""lstm-pipeline: staged LSTM time-series training (ingest, window, train, evaluate, export)."""

__version__ = "0.1.0"
