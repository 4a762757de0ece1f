"""Stage 3, train: the Accelerate loop (DDP, mixed precision, exact resume, early stopping).

World-size invariance: the global batch of every step is a pure function of (seed, epoch,
position) (`pipeline.library.schedule`); each process takes its slice, and DDP averages the
slices' gradients, so 1 and N processes follow the same trajectory up to float summation
order. Precision: the training forward and backward run under autocast in the configured
precision; validation, like everything that is scored or served, runs in float32 on the
float32 master weights. Work happens in a hidden work directory that becomes `train/` only
when training has finished.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, set_seed

from pipeline.config import Config
from pipeline.config.auto import resolve
from pipeline.config.model_spec import model_spec
from pipeline.library import checkpoint as ckpt
from pipeline.library.artifacts import recover, swap_into_place, write_json_atomic, write_text_atomic
from pipeline.library.base_choice import choose_base
from pipeline.library.blend import blend_best, point_errors, set_share
from pipeline.library.buffer import WindowBuffer
from pipeline.library.calendar import Calendar
from pipeline.library.calibration import calibrate_best
from pipeline.library.errors import ConfigError, DataError
from pipeline.library.losses import loss_function, observed_total, training_loss
from pipeline.library.model import build_model
from pipeline.library.model_spec import ModelSpec
from pipeline.library.records import IngestRecord, TrainRecord, TrainState, WindowRecord, is_cached
from pipeline.library.report import write_loss_curve
from pipeline.library.runtime import (
    choose_threads,
    configure_process,
    main_process_only,
    make_deterministic,
    resolve_precision,
)
from pipeline.library.schedule import advance, local_batches, lr_at, set_lr
from pipeline.library.selection import effective_windows, one_standard_error
from pipeline.library.step_check import StepCheck, step_is_bad, step_values
from pipeline.library.store import read_covariates, read_filled, read_values
from pipeline.library.threads import ThreadTuner, same_bits
from pipeline.library.train_log import MetricsLog
from pipeline.library.warm_start import warm_start_bases, warm_start_identity, warm_start_state
from pipeline.library.windows import read_index
from pipeline.stages.table import cache_key, check_upstream, stage_dir, train_settings
from pipeline.stages.tracking import Tracker, dataset_artifact, open_tracker, weights_artifact

log = logging.getLogger("pipeline")


def run(cfg: Config, force: bool = False) -> Path:
    out = stage_dir(cfg, "train")
    window = WindowRecord.require(stage_dir(cfg, "window"), "train")
    check_upstream(cfg, "train")
    cfg = resolve(cfg)
    key = train_key(cfg, window.fingerprint)
    if not force and is_cached(out, key):
        log.info("train: up to date (inputs unchanged), skipped; --force redoes it")
        main_process_only(partial(drop_spent_work, cfg.run_dir / ".train.work", key))
        return out
    train(cfg, key, fresh=force)
    return out


def drop_spent_work(work: Path, key: str) -> None:
    """Remove a work directory nothing can resume: an interrupted run of the settings `train/` already holds (a
    killed `train --force`), or one without a checkpoint. Its checkpoints could only rebuild the weights that are
    already there, and `--force` starts over anyway; a run of other settings is kept for when they come back."""
    if not work.is_dir():
        return
    last = ckpt.latest_valid(work / "checkpoints")
    if last is not None and not ckpt.has_identity(last, {"key": key}):
        return
    shutil.rmtree(work, ignore_errors=True)
    log.info("train: removed %s, an interrupted run of the settings train/ already holds", work)


def train_key(cfg: Config, window_fingerprint: str) -> str:
    """What the trained weights depend on: model and train settings, seed, windows, starting weights."""
    return cache_key("train", cfg, window_fingerprint, warm_start_identity(cfg.train.init_from, cfg.registry_root))


@dataclass
class Session:
    """One training run's parts, so the helpers beside `train()` take it instead of a dozen arguments."""

    cfg: Config
    key: str
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: TrainingData
    work: Path
    tracker: Tracker
    metrics: MetricsLog
    setup: dict
    loss: Callable
    threads: ThreadTuner | None = None  # train.num_threads: auto on a CPU
    ran_with: Config | None = None  # the config as given (before the batch is fitted): what the record keeps
    check: StepCheck | None = None  # the steps' non-finite verdicts, read a step late


def train(cfg: Config, key: str, fresh: bool = False) -> None:
    """Train to `max_steps` or early stop, resuming from the work directory's last checkpoint (unless `fresh`:
    `--force` starts over)."""
    if cfg.train.deterministic:
        make_deterministic()
    accelerator = make_accelerator(cfg)
    configure_process(cfg.train.num_threads)
    set_seed(cfg.seed, device_specific=True)  # dropout masks; a resume restores the saved RNG instead
    data = load_training_data(cfg, accelerator.device)
    given, cfg = cfg, fit_batch(cfg, len(data.pairs["train"]), accelerator.num_processes)
    model = build_model(data.spec, seed=cfg.seed)
    init_weights(cfg, model, data.spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    work = cfg.run_dir / ".train.work"
    state = restore(cfg, accelerator, model, optimizer, work, {"key": key}, fresh)
    loss = loss_function(cfg.train.loss, cfg.model.quantiles, data.buffer.partial_targets)
    probe = lambda: step_probe(cfg, accelerator, model, optimizer, data, loss, state)  # noqa: E731
    threads = thread_tuner(cfg, accelerator, work, probe, state.step)
    setup = describe_setup(cfg, accelerator, torch.get_num_threads(), data.info)
    if threads is None and cfg.train.num_threads in ("auto", 0) and (work / PINNED_THREADS).is_file():
        setup["threads_kept"] = "the whole run: the candidate counts compute different bits for this model and batch"
    tracker = open_tracker(
        cfg, "train", accelerator.is_main_process, _run_id(work, accelerator), deferred=bool(cfg.train.checkpoint_every)
    )
    tracker.describe(setup)
    metrics = MetricsLog(work / "metrics.jsonl", state.step, accelerator.is_main_process)
    session = Session(
        cfg, key, accelerator, model, optimizer, data, work, tracker, metrics, setup, loss, threads=threads,
        ran_with=given, check=None if cfg.train.skip_nonfinite else StepCheck(accelerator),
    )  # fmt: skip
    progress = _progress(cfg, state, accelerator)
    reporter = StepReporter(session, progress, state.step)

    try:
        if state.step == 0:  # the untrained model is a candidate too (with a residual head: its seasonal base)
            validate_and_keep_best(session, state)
        while state.step < cfg.train.max_steps and not state.stopped_early:
            loss_value, grad_norm = optimizer_step(session, state)
            reporter.after_step(state, loss_value, grad_norm)
            if state.step % cfg.train.eval_every == 0 or state.step == cfg.train.max_steps:
                validate_and_keep_best(session, state)
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
                if session.check is not None:
                    session.check.settle()  # a checkpoint never holds a bad step
                ckpt.save_checkpoint(
                    work / "checkpoints", state, accelerator, model, optimizer, {"key": key}, cfg.train.keep_last
                )
                tracker.commit()  # the tracker holds what the checkpoint holds: a resume logs the rest once
        finish(session, state)
    except BaseException:
        tracker.discard()  # steps past the last checkpoint: the resumed run logs them
        raise
    finally:
        progress.close()
        tracker.finish()


# ---------------------------------------------------------------- set-up helpers


@dataclass
class TrainingData:
    """The buffer, the train and validation windows on its device, the model's spec, facts for the log."""

    buffer: WindowBuffer
    pairs: dict[str, torch.Tensor]
    spec: ModelSpec
    info: dict
    base: dict | None = None  # model.base: validation: the chosen base and each candidate's validation loss
    fallback: ModelSpec | None = None  # ... and the best base of all where the correction is not trained over it
    window_fingerprint: str | None = None  # the window stage output the pairs come from


def init_weights(cfg: Config, model, spec: ModelSpec) -> None:
    """`train.init_from`: start from the champion's or a saved model's weights (a resume still wins)."""
    state = warm_start_state(cfg.train.init_from, cfg.registry_root, spec, model.state_dict())
    if state is not None:
        model.load_state_dict(state)
        if spec.quantiles:  # training runs uncalibrated; `finish` calibrates the new best weights
            model.calibration.zero_()
        if spec.quantiles and spec.band_season:
            model.band.zero_()
        if spec.blend:  # training runs with all of the correction; `finish` sets the share
            model.blend.fill_(1.0)


def training_precision(cfg: Config) -> tuple[str, str]:
    """The precision this machine trains `cfg` in (Accelerate's name) and why; a ConfigError where it cannot.

    Cheap and free of Accelerate's state, so `run` asks it before ingest: a setting this machine
    refuses fails in one line before any stage has worked, not after ingest and window."""
    from accelerate.utils import parse_flag_from_env

    on_gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    return resolve_precision(cfg.train.mixed_precision, torch.device("cuda" if on_gpu else "cpu"))


def make_accelerator(cfg: Config):
    """Accelerate's Accelerator for this run: its device, DDP, and the precision (`auto` resolved and logged)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision, why = training_precision(cfg)
    AcceleratorState._reset_state()  # allow several runs with different settings in one process
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps
    )
    if cfg.train.mixed_precision == "auto":
        log.info("train: precision %s (%s)", precision, why)
    return accelerator


PINNED_THREADS = "threads"
"""In the work directory: the thread count a run keeps throughout, where the candidates compute different bits."""


def thread_tuner(cfg: Config, accelerator, work: Path, probe: Callable[[], Callable], step: int) -> ThreadTuner | None:
    """`train.num_threads: auto` on a CPU: a tuner between one thread and the cores this process may use, timing
    the first training steps at each, where both compute the same bits (`same_bits` on `probe()`, real steps);
    else the faster of them on that step for the whole run, kept in the work directory so that a resume keeps it:
    switching would make the run's steps depend on timing, and a resume could not repeat them exactly."""
    if cfg.train.num_threads not in ("auto", 0) or accelerator.device.type != "cpu":
        return None
    candidates = sorted({1, choose_threads("auto")})
    if len(candidates) == 1:
        return None
    pinned, count = work / PINNED_THREADS, [0]
    if accelerator.is_main_process:
        if pinned.is_file():
            count[0] = int(pinned.read_text())
        else:
            same, seconds = same_bits(probe(), candidates)
            if not same:
                count[0] = min(seconds, key=lambda n: (seconds[n], -n))
                write_text_atomic(pinned, f"{count[0]}\n")
    if accelerator.num_processes > 1:
        count = broadcast_object_list(count)
    if count[0]:
        torch.set_num_threads(count[0])
        log.info(
            "train: %d threads for the whole run: 1 and %d threads compute different bits for this model and batch, "
            "so the count is not switched (a resume must repeat every step exactly)", count[0], candidates[-1],
        )  # fmt: skip
        return None
    tuner = ThreadTuner(candidates)
    tuner.start(step)
    return tuner


def step_probe(
    cfg: Config, accelerator, model, optimizer, data: TrainingData, loss, state: TrainState, steps: int = 3
) -> Callable:
    """What `same_bits` compares across thread counts: the weights and losses after this process's next `steps`
    optimizer steps (clipping and AdamW included), and a validation forward, computed on copies of the model and
    the optimizer (theirs, and the random state, stay untouched). One step is not enough: on some shapes the
    first step's gradients agree to the bit and the second's do not."""
    weights = {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    moments = copy.deepcopy(optimizer.state_dict())
    t = cfg.train
    rank, world, per_epoch = (
        accelerator.process_index,
        accelerator.num_processes,
        len(data.pairs["train"]) // t.batch_size,
    )
    batches, at = [], dataclasses.replace(state)
    for _ in range(steps):
        batches.append(local_batches(data.pairs["train"], t.batch_size, t.gradient_accumulation_steps, cfg.seed, at,
                                     rank, world))  # fmt: skip
        advance(at, per_epoch)
    val = data.pairs["val"][: t.eval_batch_size]

    def compute() -> list[torch.Tensor]:
        module = build_model(data.spec, seed=cfg.seed)
        module.load_state_dict(weights)
        adamw = torch.optim.AdamW(module.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        adamw.load_state_dict(moments)
        losses = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the same dropout masks at every count
            for micro in batches:
                for pairs in micro:
                    x, y = data.buffer.gather(pairs)
                    with accelerator.autocast():
                        value = training_loss(loss, module, x, y, cfg.model.ensemble)
                    (value / len(micro)).backward()
                    losses.append(value.detach())
                torch.nn.utils.clip_grad_norm_(module.parameters(), t.grad_clip or float("inf"))
                adamw.step()
                adamw.zero_grad(set_to_none=True)
            module.eval()
            with torch.no_grad():
                forecast = module(data.buffer.gather(val)[0]).float()
        return [*losses, *module.state_dict().values(), forecast]

    return compute


def load_training_data(cfg: Config, device: torch.device) -> TrainingData:
    ingest_dir = stage_dir(cfg, "ingest")
    ingest = IngestRecord.require(ingest_dir, "train")
    window = WindowRecord.require(stage_dir(cfg, "window"), "train")
    index = read_index(stage_dir(cfg, "window"))
    w = cfg.window
    if (window.lookback, window.horizon) != (w.lookback, w.horizon):
        raise ConfigError("window.lookback/horizon differ from the window stage output; run 'lstm-pipeline window'")
    spec = model_spec(cfg, ingest)
    buffer = WindowBuffer.from_ingest(
        read_values(ingest_dir),
        ingest.series,
        w.lookback,
        w.horizon,
        device,
        resident=cfg.train.device_resident,
        transform=ingest.transform,
        calendar=Calendar(spec.calendar, ingest.freq, spec.calendar_zone),
        covariates=read_covariates(ingest_dir, spec.covariates),
        spec=spec,
        filled=read_filled(ingest_dir),
    )
    # window indices live beside the buffer, so sampling and gathering never cross devices
    if len(index["val"]) == 0:
        raise DataError("no validation window: increase data.val_size or decrease window.horizon")
    index = {**index, "val": spread_subset(index["val"], cfg.train.val_windows)}
    pairs = {s: torch.from_numpy(index[s]).to(buffer.values.device) for s in ("train", "val")}
    spec, fallback, base = choose_residual_base(cfg, spec, buffer, pairs)
    if spec.quantiles:
        log.info("train: quantile head %s, trained with the pinball loss", list(spec.quantiles))
    info = {
        "data_fingerprint": ingest.fingerprint,
        "freq": ingest.freq,
        "n_series": ingest.n_series,
        "windows": window.counts,
    }
    return TrainingData(buffer, pairs, spec, info, base, fallback, window.fingerprint)


def choose_residual_base(
    cfg: Config, spec: ModelSpec, buffer: WindowBuffer, pairs: dict[str, torch.Tensor]
) -> tuple[ModelSpec, ModelSpec | None, dict | None]:
    """The spec with the residual base `model.base: validation` picks (`pipeline.library.base_choice`), the spec
    with its fallback (None without one) and the choice's record.

    The bases have nothing fitted, so every window before the test part tests them out of sample:
    they are compared on the validation windows and up to `train.val_windows` training windows.
    A warm start keeps the base of the weights it starts from: their correction was learned on it
    (where their run had a fallback base, the fallback stays one, whichever of the two forecast there).
    """
    if cfg.model.base != "validation" or not spec.residual_season:
        return spec, None, None
    saved, fallback = warm_start_bases(cfg.train.init_from, cfg.registry_root)
    if saved is not None and saved.residual_season:
        needs = max(base_steps(saved), base_steps(fallback[0]) if fallback else 0)
        if needs > cfg.window.lookback:
            raise ConfigError(
                f"train.init_from: the starting weights' residual base reads {needs} input steps, "
                f"window.lookback is {cfg.window.lookback}: set window.lookback to at least {needs} or train afresh"
            )
        log.info("train: residual base of the starting weights kept (train.init_from)")
        return kept_base(spec, saved, fallback)
    loss = loss_function(cfg.train.loss, cfg.model.quantiles, buffer.partial_targets)
    train = pairs["train"]
    if cfg.train.val_windows and len(train) > cfg.train.val_windows:
        train = train[torch.linspace(0, len(train) - 1, cfg.train.val_windows).round().long()]
    windows = torch.cat([train, pairs["val"]])
    seasons = tuple(cfg.model.seasons)
    return choose_base(spec, seasons, cfg.window.lookback, buffer, windows, cfg.train.eval_batch_size, loss)


def kept_base(spec: ModelSpec, saved: ModelSpec, fallback: tuple[ModelSpec, dict] | None):
    """`choose_residual_base` for a warm start: the base the starting weights' correction was trained over, and their
    run's fallback where it had one (a base never trained over: `fall_back`), which stays this run's fallback."""
    kept = spec.with_base(saved.base_fields())
    if fallback is None:
        return kept, None, None
    forecast, record = fallback
    log.info(
        "train: %s stays the forecast unless the model beats it on validation (train.init_from)", record["fallback"]
    )
    return (
        kept,
        spec.with_base(forecast.base_fields()),
        {**record, "fallback_used": False, "kept_from": "train.init_from"},
    )


def base_steps(spec: ModelSpec) -> int:
    """The input steps a residual base needs: its cycles of its longest season (a multi-seasonal profile
    averages fewer where the window holds fewer, but at least one of each season)."""
    if spec.base == "multi":
        return max(spec.seasons)
    return spec.residual_season * spec.season_average


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
    return dataclasses.replace(cfg, train=dataclasses.replace(t, batch_size=batch, max_steps=steps))


def restore(cfg: Config, accelerator, model, optimizer, work: Path, identity: dict, fresh: bool) -> TrainState:
    """The state to start from: a checkpoint per `train.resume`, or a fresh start (`fresh` with resume auto, or
    with resume auto where the last checkpoint was made for other settings or data; a checkpoint named by
    `train.resume` must match)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        recover(work)
    accelerator.wait_for_everyone()
    resume = "never" if fresh and cfg.train.resume == "auto" else cfg.train.resume
    path = resume_point(resume, work)  # read-only: every rank reaches the same answer
    if resume == "auto" and path is not None and not ckpt.has_identity(path, identity):
        # an interrupted run's, before the settings or the data changed (a nightly retrain killed one night and
        # started on the next night's rows): nothing to resume, and refusing would fail every night after
        log.warning("train: the checkpoints in %s are of other settings or data; starting over", path.parent)
        path = None
    if resume != cfg.train.resume and ckpt.latest_valid(work / "checkpoints") is not None:
        log.info("train: --force: starting over (the checkpoints of an interrupted run are dropped)")
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


def check_resume(cfg: Config) -> None:
    """A checkpoint named by `train.resume` that is not there; `run` asks before any stage works."""
    if cfg.train.resume not in ("auto", "never"):
        resume_point(cfg.train.resume, cfg.run_dir / ".train.work")


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


def describe_setup(cfg: Config, accelerator, threads: int, data_info: dict) -> dict:
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
        "precision": accelerator.mixed_precision,
        "precision_setting": cfg.train.mixed_precision,
        "threads_per_process": threads,
        "threads_setting": cfg.train.num_threads,
        "versions": {"pipeline": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__},
        "data": data_info,
    }
    log.info(
        "train: world size %d, device %s, precision %s, %d threads per process, %s windows",
        setup["world_size"],
        setup["device"],
        setup["precision"],
        threads,
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


def optimizer_step(session: Session, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of the next global batch, one optimizer step, the state advanced."""
    cfg, accelerator = session.cfg, session.accelerator
    t = cfg.train
    micro = local_batches(
        session.data.pairs["train"],
        t.batch_size,
        t.gradient_accumulation_steps,
        cfg.seed,
        state,
        accelerator.process_index,
        accelerator.num_processes,
    )
    set_lr(session.optimizer, lr_at(state.step, t.lr, t.warmup_steps, t.max_steps, t.min_lr_ratio))
    if accelerator.device.type == "cuda":
        seed_cuda_step(cfg.seed, accelerator.process_index, state.step)
    start = time.perf_counter()
    loss, grad_norm, skipped = train_step(
        accelerator, session.model, session.optimizer, session.data.buffer, micro, cfg, state.step, session.loss,
        session.check,
    )  # fmt: skip
    state.skipped_steps += int(skipped)
    advance(state, len(session.data.pairs["train"]) // t.batch_size)
    if session.threads is not None:
        session.threads.after_step(state.step, time.perf_counter() - start)
    return loss, grad_norm


def seed_cuda_step(seed: int, rank: int, step: int) -> None:
    """Seed this process's GPU generator from (seed, rank, step) alone, before the step's first forward.

    cuDNN's recurrent dropout (`model.dropout` between `num_layers` > 1) draws its masks from a state of its
    own, which PyTorch seeds once from the GPU generator and cuDNN then advances at every call: a resume
    restores the generator (the checkpoint's RNG state) but not that state, so the resumed steps' masks were
    not the unbroken run's. PyTorch re-creates the state from the generator whenever the generator is seeded,
    so with this the masks of every step depend on the step, whether the run was resumed or not."""
    digest = hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    torch.cuda.manual_seed(int.from_bytes(digest, "little") >> 1)


def train_step(
    accelerator, model, optimizer, buffer: WindowBuffer, micro: list, cfg: Config, step: int, loss=None,
    check: StepCheck | None = None,
):  # fmt: skip
    """One optimizer step over the micro-batches; returns (mean local loss, gradient norm, skipped).

    A non-finite loss or gradient stops training with an error naming the step, or, with
    `train.skip_nonfinite`, skips the whole optimizer step on every rank alike. Given a `check` (the
    training loop's), a stopping verdict is read one step later (`library.step_check`); else at once.
    """
    loss_fn = loss or loss_function(cfg.train.loss, cfg.model.quantiles, buffer.partial_targets)
    total = torch.zeros((), device=buffer.device)  # the batches' device (the buffer may stay on the host)
    grad_norm = torch.zeros(())
    skipped = False
    for pairs in micro:
        with accelerator.accumulate(model):
            x, y = buffer.gather(pairs)
            batch_loss = training_loss(loss_fn, model, x, y, cfg.model.ensemble)
            accelerator.backward(batch_loss)  # every rank backs every micro-batch, finite or not: DDP stays in step
            total += batch_loss.detach()
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
                values = step_values(accelerator, total, grad_norm)
                if check is not None and not cfg.train.skip_nonfinite:
                    check.defer(values, step)
                else:
                    skipped = step_is_bad(cfg.train.skip_nonfinite, accelerator, values, step)
                if not skipped:
                    optimizer.step()
                    skipped = bool(getattr(optimizer, "step_was_skipped", False))  # the fp16 scaler's skip
                elif accelerator.scaler is not None:  # gradients were unscaled for clipping: close its step
                    scaler = accelerator.scaler
                    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            optimizer.zero_grad(set_to_none=True)
    return total / len(micro), grad_norm, skipped


class StepReporter:
    """Progress bar every step; loss, lr, gradient norm and windows/s every `log_every` steps."""

    def __init__(self, session: Session, progress, step: int) -> None:
        self.session, self.progress = session, progress
        self.last_step, self.last_time = step, time.perf_counter()

    def after_step(self, state: TrainState, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        s, t = self.session, self.session.cfg.train
        self.progress.update(1)
        if state.step % t.log_every and state.step != t.max_steps:
            return
        now = time.perf_counter()
        rate = (state.step - self.last_step) * t.batch_size / max(now - self.last_time, 1e-9)
        mean_loss = s.accelerator.reduce(loss.detach(), "mean")
        mean_loss, norm = torch.stack([mean_loss.float(), grad_norm.to(mean_loss.device).float()]).tolist()  # one read
        lr = lr_at(state.step - 1, t.lr, t.warmup_steps, t.max_steps, t.min_lr_ratio)
        row = {"step": state.step, "epoch": state.epoch, "loss": mean_loss, "lr": lr}
        row.update(grad_norm=norm, windows_per_s=rate, skipped_steps=state.skipped_steps)
        s.metrics.write(row)
        s.tracker.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=state.step)
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
    sums = torch.zeros(2, dtype=torch.float64, device=buffer.device)
    for chunk in shard.split(batch_size):
        x, y = buffer.gather(chunk)
        total, count = observed_total(loss(float32_forward(module, x), y, reduction="none"), y)
        sums[0] += total
        sums[1] += count
    module.train()
    sums = accelerator.reduce(sums, "sum")
    return float(sums[0] / sums[1])


def float32_forward(module, x: torch.Tensor) -> torch.Tensor:
    """The module's own forward, without the autocast wrapper `Accelerator.prepare` sets on the instance."""
    return type(module).forward(module, x).float()


def validate_and_keep_best(session: Session, state: TrainState) -> None:
    """Validate; keep the weights when they are the best so far; count towards early stopping."""
    cfg, accelerator = session.cfg, session.accelerator
    if session.check is not None:
        session.check.settle()
    val = validation_loss(
        accelerator, session.model, session.data.buffer, session.data.pairs["val"], cfg.train.eval_batch_size,
        session.loss,
    )  # fmt: skip
    if not math.isfinite(val):
        raise DataError(f"train: validation loss became {val} at step {state.step}; lower train.lr")
    if val < state.best_val:
        state.best_val, state.best_step, state.evals_since_best = val, state.step, 0
        if accelerator.is_main_process:
            best = session.work / "best"
            best.mkdir(parents=True, exist_ok=True)
            ckpt.save_weights(ckpt.unwrapped_state(accelerator, session.model), best / "model.safetensors")
            write_json_atomic(best / "best.json", {"step": state.step, "val_loss": val})
    else:
        state.evals_since_best += 1
        if cfg.train.patience and state.evals_since_best >= cfg.train.patience:
            state.stopped_early = True
            log.info(
                "train: early stop at step %d (best val %.5f at step %d)", state.step, state.best_val, state.best_step
            )
    session.metrics.write({"step": state.step, "val_loss": val, "best_val_loss": state.best_val})
    session.tracker.log({"val/loss": val, "val/best_loss": state.best_val}, step=state.step)
    accelerator.wait_for_everyone()


def finish(session: Session, state: TrainState) -> None:
    """Write the final weights and record (setting a blend share and calibrating the best weights), then swap
    the work directory into `train/`."""
    cfg, accelerator, spec = session.cfg, session.accelerator, session.data.spec
    if session.check is not None:
        session.check.settle()
    if accelerator.is_main_process:
        work, buffer, val = session.work, session.data.buffer, session.data.pairs["val"]
        ckpt.save_weights(ckpt.unwrapped_state(accelerator, session.model), work / "model.safetensors")
        write_loss_curve(work / "metrics.jsonl", work / "loss.png")
        best = work / "best" / "model.safetensors"
        calibration = blend = None
        base = session.data.base
        if spec.blend:
            blend = blend_best(best, spec, buffer, val, cfg.train.eval_batch_size, session.loss, cfg.model.blend)
            compare = cfg.model.blend == "validation"  # a share the config fixes is kept
            spec, base, blend = fall_back(session.data, spec, blend, best, cfg.train.eval_batch_size, compare)
        if spec.quantiles and cfg.model.calibrate:
            calibration = calibrate_best(best, spec, buffer, val, cfg.train.eval_batch_size)
        if session.threads is not None and session.threads.active:
            session.setup["thread_choices"] = session.threads.choices
        given = session.ran_with or cfg  # evaluate and export compare their config with this one
        record = TrainRecord(
            session.key, spec, state, session.setup, calibration, blend, train_settings(given), config=given.to_dict(),
            base=base, window_fingerprint=session.data.window_fingerprint,
        )  # fmt: skip
        record.write(work)
        swap_into_place(work, stage_dir(cfg, "train"))
        log.info("train: done at step %d; best val loss %.5f at step %d", state.step, state.best_val, state.best_step)
        summary = {"val/best_loss": state.best_val, "train/steps": state.step}
        for name, c in (calibration or {}).items():
            summary[f"val/coverage_{name}"] = c["val_coverage_before"]
            summary[f"val/coverage_{name}_calibrated"] = c["val_coverage_after"]
        session.tracker.summary(summary)
        track_lineage(session, state)
    accelerator.wait_for_everyone()


def fall_back(
    data: TrainingData, spec: ModelSpec, blend: dict, weights: Path, batch_size: int, compare: bool = True
) -> tuple[ModelSpec, dict | None, dict]:
    """(the spec the forecast runs with, the base choice's record, the blend's record) where the best base of all
    is one the correction was not trained over (`base_choice.fallback_only`): the forecast is that base alone where
    the blend keeps none of the correction, or where that base alone is better than the model, with the share it
    keeps, on the validation windows by more than a standard error (`selection`; the point forecast's absolute
    error, a quantile model's median's; with `compare`, the share chosen on validation). So a run is never clearly
    worse there than its best base, the fallback too. The margin keeps the model on a near tie: vic_elec's quantile
    model, 0.5% worse than the fallback on validation, was 9% better on the test part (bench/LOG.md).

    Only base fields and the share differ, and no other weight depends on them: the weights file is changed in
    its `blend` buffer alone. The record names both bases' fields (`trained_base`, `fallback_base`), so a warm start
    from these weights trains over the one their correction was learned on and keeps the other as its fallback."""
    if data.fallback is None:
        return spec, data.base, blend
    base = {**data.base, "trained_base": spec.base_fields(), "fallback_base": data.fallback.base_fields()}
    if blend["weight"] != 0.0:
        if not compare:
            return spec, base, blend
        val = data.pairs["val"]
        ours = point_errors(weights, spec, blend["weight"], data.buffer, val, batch_size)
        alone = point_errors(weights, data.fallback, 0.0, data.buffer, val, batch_size)
        scored = ~(np.isnan(ours) | np.isnan(alone))  # a window whose targets were all filled says nothing
        val, ours, alone = val[torch.from_numpy(scored).to(val.device)], ours[scored], alone[scored]
        base = {**base, "validation_error": {"model": float(ours.mean()), "fallback": float(alone.mean())}}
        n_effective = effective_windows(val.cpu().numpy(), spec.horizon)
        if one_standard_error(np.stack([ours, alone], axis=1), n_effective) == 0:  # the model first: the one chosen
            return spec, base, blend
        log.info(
            "train: %s alone (validation error %.5f) is better than the model keeping %.2f of the correction (%.5f) "
            "by more than a standard error: the fallback forecasts",
            base["fallback"], alone.mean(), blend["weight"], ours.mean(),
        )  # fmt: skip
        set_share(weights, data.fallback, 0.0)
        blend = {**blend, "weight": 0.0, "kept_before_fallback": blend["weight"]}
    log.info("train: the forecast is %s alone (none of the correction kept)", base["fallback"])
    return data.fallback, {**base, "fallback_used": True}, blend


def track_lineage(session: Session, state: TrainState) -> None:
    """W&B lineage: this run used the data artifact ingest logged, and made the weights artifact export uses."""
    cfg, tracker = session.cfg, session.tracker
    data = dataset_artifact(cfg, stage_dir(cfg, "ingest"))
    if data is not None:
        tracker.use_artifact(**data)
    metadata = {"train_fingerprint": session.key, "best_step": state.best_step, "best_val_loss": state.best_val}
    tracker.log_artifact(None, **weights_artifact(cfg, stage_dir(cfg, "train"), metadata))
