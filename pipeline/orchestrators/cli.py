"""`lstm-pipeline <command>`: exit 0 ok, 2 bad config or input (one line on stderr), 1 internal error."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import warnings
from pathlib import Path

from pipeline.library.errors import ConfigError, UserError
from pipeline.stages.table import NAMES as STAGES

log = logging.getLogger("pipeline")

COMMANDS = ("run", *STAGES, "predict", "decision")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit 2 with usage; keep it one line
        raise UserError(message)


VALUE_FLAGS = ("--config", "--model", "--input", "--output", "--future")
SWITCHES = ("--force", "--promote", "-h", "--help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lstm-pipeline", description="Staged LSTM time-series training pipeline.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name in ("run", *STAGES):
        p = sub.add_parser(name, help="all stages" if name == "run" else f"the {name} stage")
        p.add_argument("--config", required=True, help="experiment YAML")
        p.add_argument("--force", action="store_true", help="redo stages even when their inputs are unchanged")
        if name == "run":
            p.add_argument(
                "--promote", action="store_true", help="then promote the export if it beats the registry's champion"
            )
    p = sub.add_parser("predict", help="forecast the next horizon from a history file")
    p.add_argument("--model", required=True, help="export directory (or a registry's <dir>/<name>/current)")
    p.add_argument("--input", required=True, help="history csv/parquet/json")
    p.add_argument("--output", required=True, help="forecast csv to write")
    p.add_argument("--future", help="future covariates for the horizon (models trained with data.future_covariates)")
    p = sub.add_parser(
        "decision", help="print the registry's last decision; exit 0 promoted or unchanged, 3 not promoted"
    )
    p.add_argument("--config", required=True, help="experiment YAML (names the registry)")
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
    if overrides and args.command == "predict":
        raise UserError(f"predict takes no config overrides: {' '.join(overrides)}")
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
        predict(Path(args.model), Path(args.input), Path(args.output), Path(args.future) if args.future else None)
        return 0
    from pipeline.config import load_config

    promote = ["registry.promote=true"] if getattr(args, "promote", False) else []
    cfg = load_config(args.config, [*args.overrides, *promote])
    if args.command == "decision":
        from pipeline.orchestrators.registry import last_decision

        record, code = last_decision(cfg)
        print(json.dumps(record))
        return code
    state = dist_state()
    setup_logging(state.is_main_process)
    if args.command not in ("ingest", "window"):  # those two never import torch
        configure_process(cfg.train.num_threads)
    from pipeline.orchestrators.run import run_stages

    run_stages(cfg, STAGES if args.command == "run" else (args.command,), force=args.force)
    return 0


def predict(model_dir: Path, history_path: Path, output: Path, future_path: Path | None = None) -> None:
    from pipeline.library.artifacts import write_text_atomic
    from pipeline.library.forecaster import Forecaster, read_history
    from pipeline.library.registry_store import resolve_model_dir

    forecaster = Forecaster.load(resolve_model_dir(model_dir))
    future = read_history(future_path, "future covariates") if future_path else None
    forecast = forecaster.predict(
        read_history(history_path), source=str(history_path), future=future, future_source=str(future_path)
    )
    write_text_atomic(output, forecast.to_csv(index=False))
    log.info("predict: wrote %d rows to %s", len(forecast), output)


# permission, read-only file system, a file where a directory should be, disk or quota full
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC, errno.EDQUOT}


def one_line(message: str) -> str:
    """The message on one terminal line: line breaks and other control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


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
    return code


if __name__ == "__main__":
    sys.exit(main())
