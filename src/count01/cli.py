"""The `count01` command line: parses arguments and calls the API, nothing else.

Every user error (bad config value, malformed tokens, missing or corrupted checkpoint) surfaces
as a `Count01Error` and becomes one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from .config import Config, ConfigError, Count01Error

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise Count01Error(f"{self.prog}: {message}")


def add_config_options(p: argparse.ArgumentParser) -> None:
    """--config FILE.toml and one --flag per Config field (e.g. --heads 4 --d-model 16)."""
    p.add_argument("--config", type=Path, help="TOML file of Config fields (sections allowed)")
    g = p.add_argument_group("config fields (override the TOML file)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        g.add_argument(flag, dest=f"cfg_{f.name}", default=None, metavar=f.name.upper(),
                       help=f"default {f.default}")


def config_from_args(args: argparse.Namespace) -> Config:
    base = Config.from_toml(args.config).to_dict() if args.config else {}
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    return Config.from_dict(base | overrides, source="options")


def cmd_train(args: argparse.Namespace) -> None:
    from .runs import load_config
    from .train import train

    if args.resume:
        overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
        if args.config or set(overrides) - {"steps"}:
            raise ConfigError("--resume takes the run's own config; only --steps may change")
        cfg = load_config(args.resume)
        if "steps" in overrides:
            cfg = Config.from_dict(cfg.to_dict() | {"steps": overrides["steps"]}, source="options")
        out = args.resume
    else:
        cfg = config_from_args(args)
        out = args.out
        if (out / "config.json").exists():
            raise ConfigError(f"{out} already holds a run; continue it with --resume {out}, "
                              "or choose another --out")
    print(f"config: {cfg.describe()}", file=sys.stderr)
    train(cfg, out, resume=bool(args.resume), progress=not args.quiet)
    from .metrics import format_table
    from .runs import read_json

    print(format_table(read_json(Path(out) / "metrics.json")["eval"]))
    print(f"run written to {out}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .metrics import evaluate, format_table
    from .runs import load

    model = load(args.run)
    sets = tuple(args.sets.split(",")) if args.sets else None
    print(format_table(evaluate(model, sets) if sets else evaluate(model)))


def cmd_predict(args: argparse.Namespace) -> None:
    from .metrics import predict
    from .runs import load

    model = load(args.run)
    print(predict(model, args.tokens))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="count01", description="Train tiny attention-only transformers on "
                     "Count01 and take their attention heads apart.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train S seeds as one batched model",
                       description="Train cfg.n_seeds seeds at once; writes a run directory.")
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="run directory")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="l-acc, valid rate, ROC AUC per evaluation set and seed")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--sets", help="comma-separated subset of iid,hard,exhaustive,long,noisy")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="the answer and probabilities for one string")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("tokens", help='digits 0, 1 and 2, e.g. "0112021" (BOS/EOS are added)')
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except Count01Error as e:
        print(f"count01: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("count01: interrupted (completed checkpoints are kept; --resume continues)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
