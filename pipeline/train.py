"""Stage 3, train: the Accelerate loop (DDP, mixed precision, exact resume, early stopping).

World-size invariance: the global batch of every step is a pure function of (seed, epoch,
position); each process takes its slice, and DDP averages the slices' gradients, so 1 and N
processes follow the same trajectory up to float summation order. Work happens in a hidden
work directory that becomes `train/` only when training has finished.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from safetensors.torch import save_file

from pipeline import auto, covariates
from pipeline import checkpoint as ckpt
from pipeline.artifacts import META, is_cached, recover, require_stage, stage_key, swap_into_place, write_json_atomic
from pipeline.calendar import Calendar
from pipeline.checkpoint import TrainState
from pipeline.config import Config
from pipeline.data import WindowBuffer
from pipeline.errors import ConfigError, DataError
from pipeline.ingest import load_ingest
from pipeline.model import ModelSpec, build_model
from pipeline.runtime import configure_process
from pipeline.tracking import open_tracker
from pipeline.window import load_index

log = logging.getLogger("pipeline")


def run(cfg: Config, force: bool = False) -> Path:
    out = cfg.run_dir / "train"
    window_meta = require_stage(cfg.run_dir / "window", "window", "train")
    cfg = auto.resolve(cfg)
    key = train_key(cfg, window_meta["fingerprint"])
    if not force and is_cached(out, key):
        log.info("train: up to date (inputs unchanged), skipped; --force redoes it")
        return out
    train(cfg, key)
    return out


# settings that change how a run is operated, not what it computes: free to change on resume
OPERATIONAL = ("resume", "log_every", "num_threads", "keep_last", "checkpoint_every", "eval_batch_size")


def train_key(cfg: Config, window_fingerprint: str) -> str:
    """What the trained weights depend on: model and train settings, seed, windows, starting weights."""
    from pipeline.registry import warm_start_identity

    settings = {k: v for k, v in asdict(cfg.train).items() if k not in OPERATIONAL}
    calendar = repr(cfg.data.calendar)  # model inputs, though set in the data section
    parts = (cfg.section_hash("model"), repr(sorted(settings.items())), str(cfg.seed), window_fingerprint, calendar)
    return stage_key("train", *parts, warm_start_identity(cfg))


def train(cfg: Config, key: str) -> None:
    """Train to `max_steps` or early stop, resuming from the work directory's last checkpoint."""
    accelerator = make_accelerator(cfg)
    settings = configure_process(cfg.train.num_threads)
    set_seed(cfg.seed, device_specific=True)  # dropout masks; a resume restores the saved RNG instead
    buffer, pairs, spec, data_info = load_training_data(cfg, accelerator.device)
    cfg = fit_batch(cfg, len(pairs["train"]), accelerator.num_processes)
    model = build_model(spec, seed=cfg.seed)
    init_weights(cfg, model, spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    work = cfg.run_dir / ".train.work"
    identity = {"key": key}
    state = restore(cfg, accelerator, model, optimizer, work, identity)
    setup = describe_setup(cfg, accelerator, settings, data_info)
    tracker = open_tracker(cfg, "train", accelerator.is_main_process, run_id=_run_id(work, accelerator))
    tracker.describe(setup)
    metrics = MetricsLog(work / "metrics.jsonl", state.step, accelerator.is_main_process)
    per_epoch = len(pairs["train"]) // cfg.train.batch_size
    progress = _progress(cfg, state, accelerator)
    reporter = StepReporter(cfg, accelerator, metrics, tracker, progress, state.step)

    try:
        if state.step == 0:  # the untrained model is a candidate too (with a residual head: its seasonal base)
            evaluate_and_keep_best(cfg, accelerator, model, buffer, pairs["val"], state, work, metrics, tracker)
        while state.step < cfg.train.max_steps and not state.stopped_early:
            micro = local_batches(pairs["train"], cfg, state, accelerator.process_index, accelerator.num_processes)
            set_lr(optimizer, lr_at(state.step, cfg))
            loss, grad_norm, skipped = train_step(accelerator, model, optimizer, buffer, micro, cfg, state.step)
            state.skipped_steps += int(skipped)
            advance(state, per_epoch)
            reporter.after_step(state, loss, grad_norm)
            if state.step % cfg.train.eval_every == 0 or state.step == cfg.train.max_steps:
                evaluate_and_keep_best(cfg, accelerator, model, buffer, pairs["val"], state, work, metrics, tracker)
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
                ckpt.save_checkpoint(
                    work / "checkpoints", state, accelerator, model, optimizer, identity, cfg.train.keep_last
                )
        finish(cfg, accelerator, model, state, work, key, spec, tracker, setup, buffer, pairs["val"])
    finally:
        progress.close()
        tracker.finish()


# ---------------------------------------------------------------- set-up helpers


def init_weights(cfg: Config, model, spec: ModelSpec) -> None:
    """`train.init_from`: start from the champion's or a saved model's weights (a resume still wins)."""
    from pipeline.registry import warm_start_state

    state = warm_start_state(cfg, spec, model.state_dict())
    if state is not None:
        model.load_state_dict(state)
        if spec.quantiles:  # training runs uncalibrated; `finish` calibrates the new best weights
            model.calibration.zero_()
        if spec.blend:  # training runs with all of the correction; `finish` sets the share
            model.blend.fill_(1.0)


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU (gradient scaling); use bf16 or no on CPU")
    AcceleratorState._reset_state()  # allow several runs with different settings in one process
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps
    )


def load_training_data(cfg: Config, device: torch.device) -> tuple[WindowBuffer, dict, ModelSpec, dict]:
    ingest_meta, raw = load_ingest(cfg.run_dir, "train")
    window_meta, index = load_index(cfg.run_dir, "train")
    w = cfg.window
    if (window_meta["lookback"], window_meta["horizon"]) != (w.lookback, w.horizon):
        raise ConfigError("window.lookback/horizon differ from the window stage output; run 'lstm-pipeline window'")
    calendar = Calendar(tuple(cfg.data.calendar), ingest_meta["freq"])
    d, m = cfg.data, cfg.model
    spec = ModelSpec(
        input_size=1 + len(d.past_covariates) + len(d.future_covariates) + calendar.size + len(d.static_covariates),
        horizon=w.horizon,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        dropout=m.dropout,
        cell=m.cell,
        instance_norm=m.instance_norm,
        residual_season=m.residual_season,
        season_average=m.season_average,
        quantiles=m.quantiles,
        calendar=calendar.features,
        past_covariates=d.past_covariates,
        future_covariates=d.future_covariates,
        static_covariates=d.static_covariates,
        series_embedding=m.series_embedding,
        n_series=ingest_meta["n_series"] if m.series_embedding else 0,
        ensemble=m.ensemble,
        base_level=m.base_level,
        blend=m.blend != 1.0,
    )
    buffer = WindowBuffer.from_ingest(
        raw,
        ingest_meta["series"],
        w.lookback,
        w.horizon,
        device,
        resident=cfg.train.device_resident,
        transform=ingest_meta.get("transform", "none"),
        calendar=calendar,
        covariates=covariates.read(cfg.run_dir / "ingest", d.covariates),
        spec=spec,
    )
    # window indices live beside the buffer, so sampling and gathering never cross devices
    if len(index["val"]) == 0:
        raise DataError("no validation window: increase data.val_size or decrease window.horizon")
    index = {**index, "val": spread_subset(index["val"], cfg.train.val_windows)}
    pairs = {s: torch.from_numpy(index[s]).to(buffer.values.device) for s in ("train", "val")}
    if m.quantiles:
        log.info("train: quantile head %s, trained with the pinball loss", m.quantiles)
    info = {
        "data_fingerprint": ingest_meta["fingerprint"],
        "freq": ingest_meta["freq"],
        "n_series": ingest_meta["n_series"],
        "windows": window_meta["counts"],
    }
    return buffer, pairs, spec, info


def spread_subset(windows: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` rows, evenly spaced (all of them for limit 0): the same rows for any world size."""
    if not limit or len(windows) <= limit:
        return windows
    log.info("train: validating on %d of %d validation windows (train.val_windows)", limit, len(windows))
    return windows[np.linspace(0, len(windows) - 1, limit).round().astype(np.int64)]


AUTO_MIN_STEPS = 400
"""`train.max_steps: auto` trains at least this many steps (early stopping may end sooner)."""


def fit_batch(cfg: Config, n_train: int, world_size: int) -> Config:
    """`cfg` with a global batch that fits the training windows, checked against the world size, and
    `train.max_steps: auto` resolved.

    Short series (a few hundred monthly points) have fewer windows than the default batch: the
    batch becomes the largest power of two that fits, the same for any world size, so a config
    written for long series still trains (with a warning) instead of failing. An `auto` budget
    is 400 steps, or one pass over the training windows when that is more: large data gets
    at least one look at every window, early stopping on validation ends it when it stops paying.
    """
    t = cfg.train
    batch = t.batch_size
    if n_train < batch:
        batch = 1 << (n_train.bit_length() - 1) if n_train > 0 else 0
        log.warning("train: %d training windows < train.batch_size %d: batch is %d", n_train, t.batch_size, batch)
    share = world_size * t.gradient_accumulation_steps
    if batch == 0 or batch % share:
        fitted = f", fitted to {n_train} training windows" if batch != t.batch_size else ""
        raise ConfigError(
            f"train.batch_size ({batch}{fitted}) must be divisible by the number of processes ({world_size}) times "
            f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps})"
        )
    steps = t.max_steps
    if steps == "auto":
        steps = max(AUTO_MIN_STEPS, math.ceil(n_train / batch))
        log.info("train: max_steps auto = %d (%d training windows, batch %d)", steps, n_train, batch)
    if (batch, steps) == (t.batch_size, t.max_steps):
        return cfg
    return replace(cfg, train=replace(t, batch_size=batch, max_steps=steps))


def restore(cfg: Config, accelerator, model, optimizer, work: Path, identity: dict) -> TrainState:
    """The state to start from: a checkpoint per `train.resume`, or a fresh start."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        recover(work)
    accelerator.wait_for_everyone()
    path = resume_point(cfg.train.resume, work)  # read-only: every rank reaches the same answer
    accelerator.wait_for_everyone()  # all have looked before the main process changes anything
    if accelerator.is_main_process:
        if path is None:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if path is None:
        return TrainState()
    ckpt.check_identity(path, identity)
    state = ckpt.load_checkpoint(path, accelerator, model, optimizer)
    log.info("train: resumed from %s (step %d, epoch %d)", path, state.step, state.epoch)
    return state


def resume_point(resume: str, work: Path) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        return ckpt.latest_valid(work / "checkpoints")
    path = Path(resume)
    if not (path / ckpt.STATE_FILE).is_file():
        raise ConfigError(f"train.resume: {resume} is not a checkpoint directory (no {ckpt.STATE_FILE})")
    return path


def _run_id(work: Path, accelerator) -> str | None:
    """The W&B run id of this training run, kept in the work dir so a resume continues it."""
    if not accelerator.is_main_process:
        return None
    path = work / "wandb_run_id"
    if not path.exists():
        import secrets

        path.write_text(secrets.token_hex(4))
    return path.read_text().strip()


def describe_setup(cfg: Config, accelerator, settings: dict, data_info: dict) -> dict:
    """What ran where: logged, tracked, and kept in train/meta.json.

    Gathering one record from every process proves they all took part (a 2-process run that
    silently fell back to 1 process would show world size 1 here).
    """
    import accelerate

    from pipeline import __version__

    processes = gather_records(
        accelerator, {"rank": accelerator.process_index, "world_size": accelerator.num_processes}
    )
    setup = {
        "world_size": accelerator.num_processes,
        "processes": processes,
        "device": str(accelerator.device),
        "precision": cfg.train.mixed_precision,
        "threads_per_process": settings["threads"],
        "versions": {"pipeline": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__},
        "data": data_info,
    }
    log.info(
        "train: world size %d, device %s, precision %s, %d threads per process, %s windows",
        setup["world_size"],
        setup["device"],
        setup["precision"],
        settings["threads"],
        data_info["windows"],
    )
    return setup


def gather_records(accelerator, record: dict) -> list[dict]:
    if accelerator.num_processes == 1:
        return [record]
    from accelerate.utils import gather_object

    return gather_object([record])


def _progress(cfg: Config, state: TrainState, accelerator):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.train.max_steps,
        initial=state.step,
        desc="train",
        disable=not accelerator.is_main_process,
        mininterval=2.0,
        dynamic_ncols=True,
    )


# ---------------------------------------------------------------- the step


@lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """Permutation of the training windows for one epoch; depends on (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


def local_batches(train_pairs: torch.Tensor, cfg: Config, state: TrainState, rank: int, world: int) -> list:
    """This process's micro-batches of the current global batch."""
    size = cfg.train.batch_size
    order = epoch_order(cfg.seed, state.epoch, len(train_pairs), train_pairs.device)
    batch = order[state.batch_in_epoch * size : (state.batch_in_epoch + 1) * size]
    micro = batch.view(cfg.train.gradient_accumulation_steps, world, -1)[:, rank]
    return [train_pairs[m] for m in micro]


def advance(state: TrainState, batches_per_epoch: int) -> None:
    state.step += 1
    state.batch_in_epoch += 1
    if state.batch_in_epoch == batches_per_epoch:
        state.epoch += 1
        state.batch_in_epoch = 0


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio * lr`: a pure function of the step."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return t.lr * (t.min_lr_ratio + (1.0 - t.min_lr_ratio) * cosine)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def pinball_loss(forecast: torch.Tensor, target: torch.Tensor, quantiles, reduction: str = "mean") -> torch.Tensor:
    """Pinball loss of quantile forecasts (B, horizon, Q) against targets (B, horizon).

    Averaged over the quantiles, so `reduction="none"` gives (B, horizon) like the point losses.
    """
    q = torch.as_tensor(quantiles, dtype=forecast.dtype, device=forecast.device)
    err = target[..., None] - forecast
    per_point = torch.maximum(q * err, (q - 1.0) * err).mean(dim=-1)
    return per_point.mean() if reduction == "mean" else per_point


LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}


def loss_function(cfg: Config):
    """`train.loss` as a callable (forecast, target, reduction="mean")."""
    if cfg.train.loss == "pinball":
        quantiles = tuple(cfg.model.quantiles)
        return lambda forecast, target, reduction="mean": pinball_loss(forecast, target, quantiles, reduction)
    return LOSSES[cfg.train.loss]


def training_loss(cfg: Config, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of a batch; with `model.ensemble` > 1, the mean of each member's own loss."""
    if cfg.model.ensemble == 1:
        return loss_function(cfg)(model(x).float(), y)
    forecasts = model(x, members=True).float()  # (ensemble, B, horizon[, Q])
    return loss_function(cfg)(forecasts, y.expand(forecasts.shape[: y.dim() + 1]))


def train_step(accelerator, model, optimizer, buffer: WindowBuffer, micro: list, cfg: Config, step: int):
    """One optimizer step over the micro-batches; returns (mean local loss, gradient norm, skipped).

    A non-finite loss or gradient stops training with an error naming the step, or, with
    `train.skip_nonfinite`, skips the whole optimizer step on every rank alike.
    """
    total = torch.zeros((), device=buffer.values.device)
    grad_norm = torch.zeros(())
    skipped = False
    for pairs in micro:
        with accelerator.accumulate(model):
            x, y = buffer.gather(pairs)
            loss = training_loss(cfg, model, x, y)
            if not finite_everywhere(accelerator, loss):
                skipped = _non_finite(cfg, "loss", loss.item(), step)
                loss = sum(p.sum() * 0.0 for p in model.parameters())  # keeps DDP and accumulation in step
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
                # already global: gradients were all-reduced; under fp16 an overflow is the grad scaler's to skip
                if not torch.isfinite(grad_norm) and accelerator.scaler is None:
                    skipped = _non_finite(cfg, "gradient norm", float(grad_norm), step)
                if not skipped:
                    optimizer.step()
                    skipped = bool(getattr(optimizer, "step_was_skipped", False))  # the scaler's skip
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
    return total / len(micro), grad_norm, skipped


def finite_everywhere(accelerator, loss: torch.Tensor) -> bool:
    flag = torch.isfinite(loss.detach()).float()
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, "sum") / accelerator.num_processes
    return bool(flag == 1.0)


def _non_finite(cfg: Config, what: str, value: float, step: int) -> bool:
    if not cfg.train.skip_nonfinite:
        raise DataError(
            f"train: {what} became {value} at step {step + 1}; training stopped, the last good checkpoint is "
            f"kept; lower train.lr, check the data, or set train.skip_nonfinite=true"
        )
    log.warning("train: %s became %s at step %d; step skipped (train.skip_nonfinite)", what, value, step + 1)
    return True


class StepReporter:
    """Progress bar every step; loss, lr, gradient norm and windows/s every `log_every` steps."""

    def __init__(self, cfg: Config, accelerator, metrics, tracker, progress, step: int) -> None:
        self.cfg, self.accelerator, self.progress = cfg, accelerator, progress
        self.metrics, self.tracker = metrics, tracker
        self.last_step, self.last_time = step, time.perf_counter()

    def after_step(self, state: TrainState, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.progress.update(1)
        if state.step % self.cfg.train.log_every and state.step != self.cfg.train.max_steps:
            return
        now = time.perf_counter()
        rate = (state.step - self.last_step) * self.cfg.train.batch_size / max(now - self.last_time, 1e-9)
        mean_loss = self.accelerator.reduce(loss.detach(), "mean").item()
        row = {"step": state.step, "epoch": state.epoch, "loss": mean_loss, "lr": lr_at(state.step - 1, self.cfg)}
        row.update(grad_norm=float(grad_norm), windows_per_s=rate, skipped_steps=state.skipped_steps)
        self.metrics.write(row)
        self.tracker.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=state.step)
        self.progress.set_postfix(loss=f"{mean_loss:.4f}")
        self.last_step, self.last_time = state.step, time.perf_counter()


# ---------------------------------------------------------------- validation and the end


@torch.no_grad()
def validation_loss(accelerator, model, buffer: WindowBuffer, val_pairs: torch.Tensor, batch_size: int, loss) -> float:
    """The training loss over every validation window, each scored exactly once across ranks.

    Always in float32, whatever `train.mixed_precision`: validation picks the weights that are
    exported and served, and those run in float32 (evaluate, ONNX, predict).
    """
    module = accelerator.unwrap_model(model)
    module.eval()
    shard = val_pairs[accelerator.process_index :: accelerator.num_processes]
    sums = torch.zeros(2, dtype=torch.float64, device=buffer.values.device)
    for chunk in shard.split(batch_size):
        x, y = buffer.gather(chunk)
        sums[0] += loss(float32_forward(module, x), y, reduction="none").sum(dtype=torch.float64)
        sums[1] += y.numel()
    module.train()
    sums = accelerator.reduce(sums, "sum")
    return float(sums[0] / sums[1])


def float32_forward(module, x: torch.Tensor) -> torch.Tensor:
    """The module's own forward, without the autocast wrapper `Accelerator.prepare` sets on the instance."""
    return type(module).forward(module, x).float()


def evaluate_and_keep_best(cfg, accelerator, model, buffer, val_pairs, state, work, metrics, tracker) -> None:
    val = validation_loss(accelerator, model, buffer, val_pairs, cfg.train.eval_batch_size, loss_function(cfg))
    if not math.isfinite(val):
        raise DataError(f"train: validation loss became {val} at step {state.step}; lower train.lr")
    improved = val < state.best_val
    if improved:
        state.best_val, state.best_step, state.evals_since_best = val, state.step, 0
        if accelerator.is_main_process:
            best = work / "best"
            best.mkdir(parents=True, exist_ok=True)
            tmp = best / ".model.safetensors.tmp"
            save_file(ckpt.unwrapped_state(accelerator, model), str(tmp))
            tmp.replace(best / "model.safetensors")
            write_json_atomic(best / "best.json", {"step": state.step, "val_loss": val})
    else:
        state.evals_since_best += 1
        if cfg.train.patience and state.evals_since_best >= cfg.train.patience:
            state.stopped_early = True
            log.info(
                "train: early stop at step %d (best val %.5f at step %d)", state.step, state.best_val, state.best_step
            )
    metrics.write({"step": state.step, "val_loss": val, "best_val_loss": state.best_val})
    tracker.log({"val/loss": val, "val/best_loss": state.best_val}, step=state.step)
    accelerator.wait_for_everyone()


def finish(cfg, accelerator, model, state, work: Path, key: str, spec: ModelSpec, tracker, setup, buffer, val) -> None:
    """Write the final weights and meta (calibrating a quantile model's best weights), then swap into `train/`."""
    if accelerator.is_main_process:
        save_file(ckpt.unwrapped_state(accelerator, model), str(work / "model.safetensors"))
        calibration = blend = None
        if spec.blend:
            blend = blend_best(work / "best", spec, buffer, val, cfg)
        if spec.quantiles and cfg.model.calibrate:
            calibration = calibrate_best(work / "best", spec, buffer, val, cfg.train.eval_batch_size)
        meta = {
            "stage": "train",
            "key": key,
            "fingerprint": key,
            "model": spec.to_dict(),
            "state": asdict(state),
            "setup": setup,
            "calibration": calibration,
            "blend": blend,
        }
        write_json_atomic(work / META, meta)
        swap_into_place(work, cfg.run_dir / "train")
        log.info("train: done at step %d; best val loss %.5f at step %d", state.step, state.best_val, state.best_step)
        summary = {"val/best_loss": state.best_val, "train/steps": state.step}
        for name, c in (calibration or {}).items():
            summary[f"val/coverage_{name}"] = c["val_coverage_before"]
            summary[f"val/coverage_{name}_calibrated"] = c["val_coverage_after"]
        tracker.summary(summary)
    accelerator.wait_for_everyone()


def blend_best(best: Path, spec: ModelSpec, buffer: WindowBuffer, val_pairs: torch.Tensor, cfg: Config) -> dict:
    """Set the `blend` share of the best weights (`model.blend`: fixed or chosen on validation; idempotent)."""
    from safetensors.torch import load_file

    from pipeline import blend

    model = build_model(spec)
    model.load_state_dict(load_file(str(best / "model.safetensors")))
    model.to(buffer.device).eval()
    losses = blend.validation_losses(model, buffer, val_pairs, cfg.train.eval_batch_size, loss_function(cfg))
    weight = blend.choose(losses) if cfg.model.blend == "validation" else float(cfg.model.blend)
    model.blend.fill_(weight)
    tmp = best / ".model.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(best / "model.safetensors")
    log.info(
        "train: the forecast keeps %.2f of the trained correction (validation loss %.5f; all of it %.5f, none %.5f)",
        weight,
        losses.get(weight, float("nan")),
        losses[1.0],
        losses[0.0],
    )
    return {"weight": weight, "val_loss": {str(w): v for w, v in losses.items()}}


def calibrate_best(best: Path, spec: ModelSpec, buffer: WindowBuffer, val_pairs: torch.Tensor, batch_size: int) -> dict:
    """Set the calibration offsets of the best weights from the validation windows (idempotent)."""
    from safetensors.torch import load_file

    from pipeline.calibration import calibrate

    model = build_model(spec)
    model.load_state_dict(load_file(str(best / "model.safetensors")))
    model.to(buffer.device)
    report = calibrate(model.eval(), buffer, val_pairs, batch_size)
    tmp = best / ".model.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(best / "model.safetensors")
    for name, c in report.items():
        log.info(
            "train: interval %s covers %.1f%% of the validation points, %.1f%% after calibration (nominal %.0f%%)",
            name,
            100 * c["val_coverage_before"],
            100 * c["val_coverage_after"],
            100 * c["nominal"],
        )
    return report


class MetricsLog:
    """train/metrics.jsonl; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
