"""The `count01` command line: parses arguments and calls the API, nothing else.

Every user error (bad config value, malformed tokens, missing or corrupted checkpoint) surfaces
as a `Count01Error` and becomes one line on stderr with exit code 2. Anything else is a bug: one
line naming the command, exit code 1, and the traceback only with --debug or COUNT01_DEBUG=1.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

from .config import Config, ConfigError, Count01Error

EXIT_USAGE = 2  # bad input: a user can fix it
EXIT_BUG = 1  # an unexpected exception: count01 should have caught it as bad input, or it is a bug
DEFAULT_RUN = Path("runs/default")
RESUME_HINT = {  # what a user does after Ctrl-C, per command
    "train": "completed checkpoints are kept; count01 train --resume RUN continues",
    "sweep": "finished configurations are kept; the same command resumes",
    "reproduce": "finished stages are kept; the same command resumes",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise Count01Error(f"{self.prog}: {message}")


def path(text: str) -> Path:
    """An argparse type: a path, never the empty string (Path('') would mean the current
    directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def add_config_options(p: argparse.ArgumentParser) -> None:
    """--config FILE.toml and one --flag per Config field (e.g. --heads 4 --d-model 16)."""
    p.add_argument("--config", type=path, help="TOML file of Config fields (sections allowed)")
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
    from .files import load_config
    from .train import train

    if args.resume:
        overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
        if args.config or set(overrides) - {"steps"}:
            raise ConfigError("--resume takes the run's own config; only --steps may change")
        if args.out is not None:
            raise ConfigError("--resume RUN continues RUN in place; drop --out")
        cfg = load_config(args.resume)
        if "steps" in overrides:
            cfg = Config.from_dict(cfg.to_dict() | {"steps": overrides["steps"]}, source="options")
        out = args.resume
    else:
        cfg = config_from_args(args)
        out = args.out or DEFAULT_RUN
    if args.restarts is not None:
        if args.restarts < 1:
            raise ConfigError(f"--restarts must be positive, got {args.restarts}")
        if (args.resume or args.cfg_n_seeds is not None) and cfg.n_seeds != args.restarts:
            raise ConfigError(f"--restarts {args.restarts} trains {args.restarts} seeds, but "
                              f"n_seeds is {cfg.n_seeds}")
        cfg = cfg.replace(n_seeds=args.restarts)
    def announce(step: int) -> None:
        where = f"resuming {out} at step {step}; " if args.resume else ""
        print(f"{where}config: {cfg.describe()}", file=sys.stderr)

    train(cfg, out, resume=bool(args.resume), progress=not args.quiet, on_start=announce)
    from .files import saved_eval
    from .measure.metrics import format_table

    print(format_table(saved_eval(out)))
    print(f"run written to {out}", file=sys.stderr)
    if args.restarts is not None:
        from .restarts import keep_best

        best = keep_best(out)
        early = (f", {best['stopped_early']} given up early (--early-stop)"
                 if cfg.early_stop else "")
        print(f"restarts: {best['succeeded']} of {best['restarts']} seeds succeeded "
              f"({best['success']}){early}; best seed {best['best_seed']} (hard l-acc "
              f"{best['best_hard_l_acc']:.4f}, loss {best['best_hard_loss']:.4g}) written to "
              f"{best['best_dir']}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .files import writable
    from .measure.metrics import format_table
    from .measure.paths import success_table
    from .sweeps import Sweep, run_sweep

    if args.address and args.executor != "ray":
        raise ConfigError("--address needs --executor ray")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be positive, got {args.workers}")
    sweep = Sweep.from_toml(args.sweep)
    out = writable(args.out or Path("sweeps") / args.sweep.stem)
    tables = run_sweep(sweep, out, executor=args.executor, workers=args.workers,
                       address=args.address, log=(lambda msg: None) if args.quiet else None)
    print(format_table(success_table(tables["results"], list(sweep.grid)).to_dict("records")))
    print(f"tables written to {out}: results, heads, trajectory, head_trajectory (.csv, .parquet)",
          file=sys.stderr)


def cmd_paths(args: argparse.Namespace) -> None:
    from .files import writable
    from .measure.metrics import format_table
    from .measure.paths import analyze_paths

    out = writable(args.out or Path(args.sweep_dir) / "paths")
    summary = analyze_paths(args.sweep_dir, out)
    cols = ("config_id", "n_runs", "n_success", "n_diverged", "rate", "ci_low", "ci_high",
            "median_steps_to_success")
    print(format_table([{k: c[k] for k in cols} for c in summary["configs"]]))
    if summary["early_predictors"]:
        print("\nbest early predictor of failure per checkpoint step (all configurations pooled):")
        print(format_table(summary["early_predictors"]))
    if summary["missing_configs"]:
        print(f"{len(summary['missing_configs'])} configuration(s) not finished yet: re-run the "
              "sweep to complete them", file=sys.stderr)
    print(f"training-path study written to {out} (paths.json lists every file)", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .measure.metrics import evaluate, format_table
    from .runs import load

    model = load(args.run)
    sets = tuple(args.sets.split(",")) if args.sets else None
    print(format_table(evaluate(model, sets) if sets else evaluate(model)))


def cmd_predict(args: argparse.Namespace) -> None:
    from .measure.metrics import predict
    from .runs import load

    model = load(args.run)
    print(predict(model, args.tokens))


def cmd_export(args: argparse.Namespace) -> None:
    from .export import save_transformer_lens
    from .files import writable

    writable(args.out or Path(args.run) / "transformer_lens", what="--out" if args.out else "RUN")
    done = save_transformer_lens(args.run, args.seed, args.out)
    print(f"seed {done.seed} written to {done.out_dir} (TransformerLens state dict + config)")
    if done.tl_model is None:
        print("TransformerLens is not installed, so the export was not loaded back "
              "(pip install count01[lens])", file=sys.stderr)
    else:
        print(f"loaded back as {type(done.tl_model).__name__}: logits at EOS match count01 "
              f"to {done.max_logit_error:.1e} on every string up to length {done.checked_len}")


def cmd_import(args: argparse.Namespace) -> None:
    from .export import SHAPE_FIELDS, import_transformer_lens
    from .files import saved_eval, writable
    from .measure.metrics import format_table

    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    shaped = [k for k in SHAPE_FIELDS if k in given]
    if shaped:
        raise ConfigError(f"--{shaped[0].replace('_', '-')} comes from the checkpoint; import "
                          "takes only the task and evaluation fields")
    base = Config.from_toml(args.config).to_dict() if args.config else {}  # the whole config
    base = {k: v for k, v in base.items() if k not in SHAPE_FIELDS}
    writable(args.out)
    model = import_transformer_lens(args.src, args.out, args.tl_config, base | given)
    print(format_table(saved_eval(args.out)))
    print(f"seed {model.seeds[0]} imported from {args.src} into {args.out} ({model.cfg.heads} "
          f"heads, d_model {model.cfg.d_model}, pos_embed {model.cfg.pos_embed}, layernorm "
          f"{'on' if model.cfg.layernorm else 'off'}"
          + (f", {model.cfg.layers} layers, d_mlp {model.cfg.d_mlp}"
             if model.cfg.layers > 1 or model.cfg.d_mlp else "") + ")", file=sys.stderr)


def cmd_analyze(args: argparse.Namespace) -> None:
    from .measure.analysis import analyze, describe

    summary = analyze(args.run, grid_size=args.grid_size, progress=not args.quiet,
                      sweep_set=args.set, figures=not args.no_figures, threads=args.threads)
    print(describe(summary))
    print(f"analysis written to {Path(args.run) / 'analysis'}", file=sys.stderr)


def _weights(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def cmd_intervene(args: argparse.Namespace) -> None:
    import pandas as pd

    from .files import atomic_write, writable
    from .language import eval_set
    from .measure.interventions import attention_sweep, default_grid, grid_points, grid_summary
    from .measure.metrics import format_table
    from .runs import load
    from .train import torch_threads

    if args.grid_size is not None:
        default_grid(args.grid_size)  # a bad size: one line before the run is read
    if args.out:
        writable(args.out, kind="file")
    model = load(args.run)
    grid01, grid02 = default_grid(grid_points(model, args.grid_size))
    w01 = grid01 if args.w01 is None else _weights(args.w01, "--w01")
    w02 = grid02 if args.w02 is None else _weights(args.w02, "--w02")
    with torch_threads(1):  # small tensors: see analysis.analyze
        rows = attention_sweep(model, eval_set(model.cfg, args.set), eval_set(model.cfg, "fit"),
                               w01, w02, heads=args.heads)
    print(format_table(grid_summary(rows)))
    if args.out:
        atomic_write(args.out, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
        print(f"{len(rows)} rows (one per grid point, seed and head) written to {args.out}",
              file=sys.stderr)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from .files import writable
    from .study import reproduce

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be positive, got {args.workers}")
    if args.address and args.executor != "ray":
        raise ConfigError("--address needs --executor ray")
    if args.quick and args.scope not in (None, "quick"):
        raise ConfigError(f"--quick is --scope quick; it cannot go with --scope {args.scope}")
    scope = "quick" if args.quick else (args.scope or "full")
    default = {"quick": "study-quick", "full": "study", "wide": "study-wide"}[scope]
    out = writable(args.out or Path("runs") / default)
    reproduce(out, scope=scope, workers=args.workers, progress=not args.quiet,
              executor=args.executor, address=args.address)
    _print_verdicts(out)


def cmd_report(args: argparse.Namespace) -> None:
    from .files import writable
    from .study import build_report

    writable(args.out or args.dir, what="--out" if args.out else "DIR")
    files = build_report(args.dir, args.out)
    _print_verdicts(files.html.parent)


def _print_verdicts(out: Path) -> None:
    from .files import read_json

    page = out / "report.html"
    print(f"report written to {page} and {out / 'report.md'}")
    summary = out / "verdicts.json"
    if summary.exists():
        for v in read_json(summary):
            print(f"Q{v['question']}: {v['status']}. {v['finding']}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="count01", description="Train tiny attention-only transformers on "
                     "Count01 and take their attention heads apart.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an "
                        "unexpected error (also COUNT01_DEBUG=1; accepted after any command)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train S seeds as one batched model",
                       description="Train cfg.n_seeds seeds at once; writes a run directory.")
    p.add_argument("--out", type=path, help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--resume", type=path, metavar="RUN", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--restarts", type=int, metavar="K",
                   help="train K seeds (n_seeds = K) and keep the best (highest hard l-acc, ties "
                   "by hard loss) as a one-seed run in OUT/best; OUT/restarts.json tells how "
                   "many succeeded")
    add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="a grid of configurations x seeds, resumable",
                       description="Train every configuration of a sweep file (seeds batched), "
                       "locally or on Ray, into one tidy results table. Re-running the same "
                       "command skips finished configurations and resumes the one in progress.")
    p.add_argument("sweep", type=path, help="sweep TOML: seeds = N, [base] and [grid] tables of "
                   "Config fields (see examples/sweep.toml)")
    p.add_argument("--out", type=path, help="sweep directory (default sweeps/<file stem>)")
    p.add_argument("--executor", choices=["local", "ray", "inline"], default="local",
                   help="local: a process pool on this machine; ray: Ray (pip install "
                   "count01[ray]); inline: one job at a time in this process (debugging)")
    p.add_argument("--address", help="Ray cluster to join (auto or host:port); default: start a "
                   "local Ray instance on 127.0.0.1")
    p.add_argument("--workers", type=int, help="parallel configurations (default: CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("paths", help="training-path study of a sweep",
                       description="Success rate with Wilson 95% intervals, trajectories of "
                       "per-head s-acc, w01 and w02, minimal head sets and early predictors of "
                       "failure, as CSV tables, PNG/SVG figures and paths.json.")
    p.add_argument("sweep_dir", type=path, help="a directory written by count01 sweep")
    p.add_argument("--out", type=path, help="output directory (default SWEEP_DIR/paths)")
    p.set_defaults(func=cmd_paths)

    p = sub.add_parser("evaluate", help="l-acc, valid rate, ROC AUC per evaluation set and seed")
    p.add_argument("run", type=path, help="run directory")
    p.add_argument("--sets", help="comma-separated subset of iid,hard,exhaustive,long,noisy")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="the answer and probabilities for one string")
    p.add_argument("run", type=path, help="run directory")
    p.add_argument("tokens", help='digits 0, 1 and noise 2 (and 5, 6, ... with more noise '
                   'symbols), e.g. "0112021" (BOS/EOS are added)')
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("analyze", help="every head analysis of a run, into RUN/analysis/",
                       description="Per-head metrics, attention ratios, the attention "
                       "intervention grid, aggregation schemes, value swaps and minimal head "
                       "sets on every seed of a run: tidy CSV tables, metrics.json and PNG/SVG "
                       "figures in RUN/analysis/.")
    p.add_argument("run", type=path, help="run directory")
    p.add_argument("--grid-size", type=int, default=None, metavar="N",
                   help="N x N log grid of (w01, w02) from 1e-3 to 1e3, w02 also at 0 "
                   "(default 25, 5 for runs with layers > 1 or an MLP, whose model metrics "
                   "take a forward per grid point and head)")
    p.add_argument("--set", default="hard", help="evaluation set of the intervention, minimal "
                   "heads and figures (default hard)")
    p.add_argument("--no-figures", action="store_true",
                   help="tables and metrics.json only (faster)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: fastest for these small tensors on shared "
                   "cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("intervene", help="set attention ratios (w01, w02) and measure",
                       description="Replace the EOS query's attention of each head (or all heads "
                       "at once) by w(0)=1, w(1)=w01, w(noise)=w02 (every noise symbol), EOS/BOS "
                       "as measured; print "
                       "head s-acc and model l-acc, valid rate and AUC per grid point (mean "
                       "over seeds and heads, with the spread).")
    p.add_argument("run", type=path, help="run directory")
    p.add_argument("--grid-size", type=int, default=None, metavar="N",
                   help="N x N log grid of (w01, w02) from 1e-3 to 1e3, w02 also at 0 "
                   "(default 25, 5 for runs with layers > 1 or an MLP: a forward per grid "
                   "point and head); --w01 / --w02 replace either axis")
    p.add_argument("--w01", help="comma-separated weights per 1 relative to a 0")
    p.add_argument("--w02", help="comma-separated weights per noise symbol relative to a 0 (e.g. 0)")
    p.add_argument("--heads", choices=["each", "all", "both"], default="each",
                   help="intervene one head at a time, all at once, or both")
    p.add_argument("--set", default="hard", help="evaluation set (default hard)")
    p.add_argument("--out", type=path, help="also write every row (grid point x seed x head) "
                   "to this CSV file")
    p.set_defaults(func=cmd_intervene)

    p = sub.add_parser("reproduce", help="the default study end to end, then the report",
                       description="Sweep heads 1, 2, 4, 8 x 32 seeds (8 with --quick), study "
                       "the training paths, analyze the 4-head model, and write report.html and "
                       "report.md. Re-running the same command resumes.")
    p.add_argument("--quick", action="store_true", help="8 seeds, 1000 steps (about a minute); "
                   "the same as --scope quick")
    p.add_argument("--scope", choices=["quick", "full", "wide"], help="full (the default: every "
                   "question decided, minutes), quick (a smoke test) or wide (SPEC 5's full grids: "
                   "schedules, weight decay, positional embeddings, heads 1, 2, 4, 8, 64 seeds; "
                   "hours on 2 cores, for a Ray cluster; resumable)")
    p.add_argument("--executor", choices=["local", "ray", "inline"], default="local",
                   help="where the sweeps train (see count01 sweep)")
    p.add_argument("--address", help="Ray cluster to join (with --executor ray)")
    p.add_argument("--out", type=path, help="study directory (default runs/study, "
                   "runs/study-quick or runs/study-wide)")
    p.add_argument("--workers", type=int, help="training processes (default: the CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("report", help="rebuild report.html/.md from saved results",
                       description="Write report.html (self-contained) and report.md for a "
                       "study, sweep or run directory from its saved results, without training.")
    p.add_argument("dir", type=path, help="study, sweep or run directory")
    p.add_argument("--out", type=path, help="where to write the report (default: DIR)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="one seed as a TransformerLens model",
                       description="Write one seed's weights in TransformerLens format "
                       "(tl_state_dict.safetensors + tl_config.json) and, if TransformerLens is "
                       "installed, load them back and check them against count01.")
    p.add_argument("run", type=path, help="run directory")
    p.add_argument("--seed", type=int, help="seed number (default: the run's first seed)")
    p.add_argument("--to", choices=["transformer-lens"], default="transformer-lens",
                   help="target format")
    p.add_argument("--out", type=path,
                   help="output directory (default RUN/transformer_lens/seed_K)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="a TransformerLens checkpoint as a count01 run",
                       description="Read a one-layer attention-only TransformerLens model on the "
                       "Count01 vocabulary (a directory written by count01 export, or a state "
                       "dict: .safetensors, or .pt/.pth loaded weights-only, with its TL config "
                       "JSON) and write a one-seed count01 run that every command takes. The "
                       "model fields come from the checkpoint; --config and the field flags set "
                       "the task and evaluation (default: the exporting run's, else Config's "
                       "defaults). Unsupported models are refused, naming what is unsupported.")
    p.add_argument("src", type=path, help="directory written by count01 export, or a TL state "
                   "dict file (.safetensors, .pt, .pth)")
    p.add_argument("--from", dest="source_format", choices=["transformer-lens"],
                   default="transformer-lens", help="source format")
    p.add_argument("--out", type=path, required=True, help="run directory to write")
    p.add_argument("--tl-config", type=path, help="TransformerLens config JSON (default: "
                   "tl_config.json in SRC or beside it)")
    add_config_options(p)
    p.set_defaults(func=cmd_import)
    return parser


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM ends a command as Ctrl-C does: its `finally` blocks remove temporary files and
    stop its worker processes (Python's default would end it on the spot)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if on_main_thread else None
    try:
        return _main(argv)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("COUNT01_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), "count01")
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except Count01Error as e:
        print(f"count01: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"count01: interrupted; {RESUME_HINT.get(command, 'nothing was changed')}",
              file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a bad input: one line, the traceback only on request
        if debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"count01 {command}: unexpected error{where}: {type(e).__name__}: {e}; please report "
              "it with the command and the output of --debug (or COUNT01_DEBUG=1)",
              file=sys.stderr)
        return EXIT_BUG
    return 0


if __name__ == "__main__":
    sys.exit(main())
