"""Stage 2, window: (series, start) index pairs per split; no window is ever materialised.

A window starting at `start` reads inputs `[start, start + lookback)` and targets
`[start + lookback, start + lookback + horizon)` of its series. Splits are by the position of
the *targets*: a training window's targets end at or before the series' `train_end`, a
validation window's targets lie in `[train_end, val_end)`, a test window's in
`[val_end, length)`. Inputs may reach back into earlier parts (that is history, not leakage).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline import auto
from pipeline.artifacts import META, is_cached, require_stage, stage_key, staged_dir, write_json_atomic
from pipeline.config import Config
from pipeline.errors import DataError
from pipeline.runtime import main_process_only

log = logging.getLogger("pipeline")

SPLITS = ("train", "val", "test")


def window_starts(first: np.ndarray, last: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """All (series, target_start) with target_start in [first[i], last[i]] stepping by `step`.

    Vectorised over series: no Python loop per series or per window.
    """
    counts = np.where(last >= first, (last - first) // step + 1, 0).astype(np.int64)
    series = np.repeat(np.arange(len(first), dtype=np.int64), counts)
    begin = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(begin, counts)
    return series, np.repeat(first, counts) + within * step


def build_window_index(
    lengths: np.ndarray,
    train_end: np.ndarray,
    val_end: np.ndarray,
    lookback: int,
    horizon: int,
    stride: int = 1,
    val_stride: int | None = None,
    test_stride: int | None = None,
) -> dict[str, np.ndarray]:
    """Per split an (n, 2) int64 array of (series, input start); pure function of its arguments."""
    lengths, train_end, val_end = (np.asarray(a, dtype=np.int64) for a in (lengths, train_end, val_end))
    # bounds on the first target position t of a window (input start = t - lookback)
    bounds = {
        "train": (np.full_like(lengths, lookback), train_end - horizon, stride),
        "val": (np.maximum(train_end, lookback), val_end - horizon, val_stride or stride),
        "test": (np.maximum(val_end, lookback), lengths - horizon, test_stride or horizon),
    }
    index = {}
    for split, (first, last, step) in bounds.items():
        series, target_start = window_starts(first, last, step)
        index[split] = np.stack([series, target_start - lookback], axis=1)
    return index


def run(cfg: Config, force: bool = False) -> Path:
    main_process_only(lambda: _run(cfg, force))
    return cfg.run_dir / "window"


def _run(cfg: Config, force: bool) -> None:
    out = cfg.run_dir / "window"
    ingest_meta = require_stage(cfg.run_dir / "ingest", "ingest", "window")
    cfg = auto.resolve(cfg, ingest_meta)
    key = stage_key("window", cfg.section_hash("window"), ingest_meta["fingerprint"])
    if not force and is_cached(out, key):
        log.info("window: up to date (inputs unchanged), skipped; --force redoes it")
        return
    records = ingest_meta["series"]
    lengths = np.array([r["length"] for r in records], dtype=np.int64)
    train_end = np.array([r["train_end"] for r in records], dtype=np.int64)
    val_end = np.array([r["val_end"] for r in records], dtype=np.int64)
    w = cfg.window
    index = build_window_index(
        lengths, train_end, val_end, w.lookback, w.horizon, w.stride, w.val_stride, w.test_stride
    )
    index, dropped = _apply_short_series_policy(index, records, cfg)
    counts = {s: len(index[s]) for s in SPLITS}
    with staged_dir(out) as tmp:
        for split in SPLITS:
            np.save(tmp / f"{split}.npy", index[split])
        write_json_atomic(
            tmp / META,
            {
                "stage": "window",
                "key": key,
                "fingerprint": key,
                "ingest_fingerprint": ingest_meta["fingerprint"],
                "lookback": w.lookback,
                "horizon": w.horizon,
                "counts": counts,
                "dropped_series": dropped,
            },
        )
    log.info("window: train %d, val %d, test %d windows", counts["train"], counts["val"], counts["test"])


def _apply_short_series_policy(
    index: dict[str, np.ndarray], records: list[dict], cfg: Config
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Series without a window in every split are dropped with a warning, or fail, by policy.

    An ingest without a test part (a refit fold's, cut at its cutoff: `pipeline.refit`) needs
    train and validation windows only.
    """
    n = len(records)
    splits = SPLITS if any(r["val_end"] < r["length"] for r in records) else SPLITS[:2]
    has = np.logical_and.reduce([np.bincount(index[s][:, 0], minlength=n) > 0 for s in splits])
    short = np.flatnonzero(~has)
    w = cfg.window
    need = f"window.lookback + window.horizon = {w.lookback + w.horizon}"
    if len(short) == n:
        r = records[0]
        raise DataError(
            f"every series is too short for {need} within its splits (e.g. series '{r['id']}': "
            f"{r['length']} points, train part {r['train_end']}, test part {r['length'] - r['val_end']}); "
            f"shorten the window or use longer series"
        )
    names = [records[i]["id"] for i in short]
    if len(short) and cfg.data.short_series == "error":
        raise DataError(
            f"series '{names[0]}' is too short for {need} in its train/val/test parts "
            f"({len(names)} such series); set data.short_series: drop to skip them"
        )
    if len(short):
        log.warning("window: dropped %d series too short for %s: %s", len(names), need, ", ".join(names[:10]))
        keep = np.ones(n, dtype=bool)
        keep[short] = False
        index = {s: a[keep[a[:, 0]]] for s, a in index.items()}
    return index, names


def load_index(run_dir: Path, needed_by: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = require_stage(run_dir / "window", "window", needed_by)
    index = {s: np.load(run_dir / "window" / f"{s}.npy", allow_pickle=False) for s in SPLITS}
    return meta, index
