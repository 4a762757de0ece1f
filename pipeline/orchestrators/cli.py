"""`lstm-pipeline <command>`: exit 0 ok, 2 bad config or input (one line on stderr), 1 internal error."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import warnings
from pathlib import Path

from pipeline import __version__
from pipeline.library.errors import ConfigError, UserError, shown
from pipeline.library.runtime import release_process_group
from pipeline.orchestrators.forecast_io import one_line
from pipeline.stages.table import NAMES as STAGES

log = logging.getLogger("pipeline")

COMMANDS = ("run", *STAGES, "predict", "decision", "rollback", "serve")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit 2 with usage; keep it one line
        raise UserError(message)


PREDICT_FLAGS = ("--model", "--input", "--output", "--future", "--scale")
SERVE_FLAGS = ("--model", "--host", "--port", "--poll", "--threads", "--max-body-mb")
NO_CONFIG = {"predict": PREDICT_FLAGS, "serve": SERVE_FLAGS}
"""The commands that read no config, and their options: anything else after them is no config key either."""
VALUE_FLAGS = ("--config", "--to", *PREDICT_FLAGS, *SERVE_FLAGS[1:])
SWITCHES = ("--force", "--promote", "-h", "--help", "--version")
SERVE_INSTALL = "pip install 'lstm-pipeline[serve]'"


OVERRIDES_HELP = (
    "Any config key can follow, in any order with the flags: key.sub=value, --key.sub=value or --key.sub value "
    "(e.g. train.lr=0.001 --seed 1); every key is in docs/config.md."
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lstm-pipeline", description="Staged LSTM time-series training pipeline.")
    parser.add_argument("--version", action="version", version=f"lstm-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name in ("run", *STAGES):
        p = sub.add_parser(name, help="all stages" if name == "run" else f"the {name} stage", epilog=OVERRIDES_HELP)
        p.add_argument("--config", required=True, help="experiment YAML")
        p.add_argument("--force", action="store_true", help="redo stages even when their inputs are unchanged")
        if name == "run":
            p.add_argument(
                "--promote", action="store_true", help="then promote the export if it beats the registry's champion"
            )
    p = sub.add_parser("predict", help="forecast the next horizon from a history file")
    p.add_argument("--model", required=True, help="export directory (or a registry's <dir>/<name>/current)")
    p.add_argument("--input", required=True, help="history csv/parquet/json")
    p.add_argument("--output", required=True, help="forecast file to write (.csv, .tsv, .parquet, .json or .jsonl)")
    p.add_argument("--future", help="future covariates for the horizon (models trained with data.future_covariates)")
    p.add_argument(
        "--scale",
        choices=("training", "history"),
        default="training",
        help="statistics of trained series: their training ones (default) or their history's, as new series get",
    )
    p = sub.add_parser(
        "decision", help="print the registry's last decision; exit 0 promoted, unchanged or rolled back, 3 not promoted"
    )
    p.add_argument("--config", required=True, help="experiment YAML (names the registry)")
    p = sub.add_parser(
        "rollback",
        help="serve the version that served before the current one (or --to vNNNN); the nightly decision never "
        "promotes the version taken out again",
    )
    p.add_argument("--config", required=True, help="experiment YAML (names the registry)")
    p.add_argument("--to", help="the version to serve (default: the one that served before the current one)")
    p = sub.add_parser("serve", help="HTTP forecasts (POST /forecast) that follow a registry's current")
    p.add_argument("--model", required=True, help="export directory (or a registry's <dir>/<name>/current)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks of a registry's current")
    p.add_argument("--threads", type=int, help="torch threads for the forecasts (default: min(4, cores))")
    p.add_argument(
        "--max-body-mb", type=float, default=64.0, help="larger request bodies are answered 413 (default: 64)"
    )
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command and its flags through argparse; every other argument is a config override.

    An override is `key=value`, `--key=value` (what a W&B sweep agent passes) or `--key value`,
    for any config key, top-level ones (`seed`, `name`) included, in any order with the flags.
    """
    flags, overrides = split_overrides(argv)
    args = build_parser().parse_args(flags)
    if args.command is None:
        raise UserError(f"no command given; use one of {', '.join(COMMANDS)}")
    if overrides and args.command in ("predict", "serve"):
        raise UserError(f"{args.command} takes no config overrides: {' '.join(overrides)}")
    args.overrides = overrides
    return args


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the command and its flags, the config overrides as `key=value`) of a command line."""
    from pipeline.config.loading import key_type

    flags, overrides = [], []
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        name = token.split("=", 1)[0]
        command = flags[0] if flags else None
        if command in NO_CONFIG and token.startswith("-") and name not in (*NO_CONFIG[command], "-h", "--help"):
            raise UserError(f"{command} has no option {shown(name)}; its options: {', '.join(NO_CONFIG[command])}")
        if name in VALUE_FLAGS:
            flags.append(token)
            if "=" not in token and tokens:
                flags.append(tokens.pop(0))
        elif token in SWITCHES or (not flags and not token.startswith("-")):
            flags.append(token)  # a switch, or the command itself
        elif "=" in token:
            overrides.append(token.removeprefix("--"))
        elif token.startswith("--"):  # `--key value`
            try:
                key_type(token[2:])
            except ConfigError as exc:
                raise UserError(f"unrecognized argument {token}: {exc}") from None
            if not tokens or tokens[0].startswith("--"):
                raise UserError(f"{token} needs a value ({token} VALUE or {token}=VALUE)")
            overrides.append(f"{token[2:]}={tokens.pop(0)}")
        else:
            raise UserError(f"override '{token}' must look like key.sub=value (or --key.sub value)")
    return flags, overrides


def run_command(args: argparse.Namespace) -> int:
    from pipeline.library.runtime import configure_process, dist_state, setup_logging

    if args.command == "predict":
        setup_logging()
        configure_process()
        future = Path(args.future) if args.future else None
        predict(Path(args.model), Path(args.input), Path(args.output), future, args.scale)
        return 0
    if args.command == "serve":
        setup_logging()
        serve(args)
        return 0
    from pipeline.config import load_config

    promote = ["registry.promote=true"] if getattr(args, "promote", False) else []
    cfg = load_config(args.config, [*args.overrides, *promote])
    if args.command == "decision":
        from pipeline.orchestrators.registry import last_decision

        record, code = last_decision(cfg)
        print(json.dumps(record))
        return code
    if args.command == "rollback":
        from pipeline.library.runtime import setup_logging
        from pipeline.orchestrators.rollback import rollback

        setup_logging()
        print(json.dumps(rollback(cfg, args.to)))
        return 0
    state = dist_state()
    setup_logging(state.is_main_process)
    if args.command not in ("ingest", "window"):  # those two never import torch
        configure_process(cfg.train.num_threads)
    from pipeline.orchestrators.run import run_stages

    run_stages(cfg, STAGES if args.command == "run" else (args.command,), force=args.force)
    return 0


def predict(
    model_dir: Path, history_path: Path, output: Path, future_path: Path | None = None, scale: str = "training"
) -> None:
    from pipeline.library.artifacts import write_bytes_atomic
    from pipeline.library.forecaster import Forecaster
    from pipeline.library.registry_store import resolve_model_dir
    from pipeline.orchestrators.forecast_io import forecast, forecast_bytes, forecast_format

    kind = forecast_format(output)
    forecaster = Forecaster.load(resolve_model_dir(model_dir))
    future = forecaster.read_history(future_path, "future covariates") if future_path else None
    history = forecaster.read_history(history_path)
    result = forecast(forecaster, history, str(history_path), future, str(future_path), scale)
    write_bytes_atomic(output, forecast_bytes(result, kind))
    log.info("predict: wrote %d rows to %s", len(result), output)


def serve(args: argparse.Namespace) -> None:
    """`lstm-pipeline serve`: its flags checked first, so a bad one is one line before anything loads."""
    from pipeline.library.runtime import available_cores

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if not args.poll > 0:
        raise UserError(f"--poll must be a positive number of seconds, got {args.poll:g}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if not 0 < args.max_body_mb < float("inf"):
        raise UserError(f"--max-body-mb must be a positive number of MB, got {args.max_body_mb:g}")
    try:
        from pipeline.orchestrators.serve import serve as run_service
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastapi", "starlette", "uvicorn"):
            raise
        raise UserError(f"serve needs FastAPI and uvicorn ({exc.name} is not installed): {SERVE_INSTALL}") from None
    threads = args.threads or min(4, available_cores())
    run_service(Path(args.model), args.host, args.port, args.poll, threads, args.max_body_mb)


# permission, read-only file system, a file where a directory should be, disk or quota full
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC, errno.EDQUOT}


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        code = run_command(parse_args(sys.argv[1:] if argv is None else argv))
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment, not the code: a path that cannot be written or read
        if exc.errno not in _USER_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {one_line(where + (exc.strerror or str(exc)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    release_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
