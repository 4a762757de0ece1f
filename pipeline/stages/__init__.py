"""The stages: ingest, window, train, evaluate, export, declared in `pipeline.stages.table`.

Each is a thin `run(cfg, force) -> Path` over the library. A stage reads its upstream stage's
output directory through the typed records and writes its own; it never imports another stage
(a test checks it). `tracking` and `table` are shared by the stages and are not stages.
"""
