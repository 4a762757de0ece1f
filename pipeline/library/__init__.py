"""The library layer: plain functions and small typed objects that every stage builds on.

Nothing here takes the experiment `Config` or imports a stage or an orchestrator (a test
checks it): the series store, the window index, the buffer and its gather, the model, its
inputs, inference, metrics, checkpoints, the typed stage records, the registry's store.
"""
