"""How long `count01 analyze` takes, stage by stage.

By default it analyses a default-config run of 8 seeds (eval sets of 8192 draws, the full
25 x 25 intervention grid). Without --run the weights are freshly initialised: timing does not
need a trained model, and an untrained one is the slow case for the minimal-heads search (no
small set of heads passes, so every subset is fitted). Then, on the count path, the exact
evaluation of every string of length 1..64 (quick: 12) through its count triple.

    python benchmarks/analysis_speed.py                 # default config, 8 seeds, full grid
    python benchmarks/analysis_speed.py --run runs/default
    python benchmarks/analysis_speed.py --pos-embed learned   # the position path
    python benchmarks/analysis_speed.py --compare learned
        # `count01 analyze` of a 4-seed count-path run and of a 4-seed run with learned
        # positions, alternated in one process: the ratio of their times (issue 14's target)
    python benchmarks/analysis_speed.py --quick         # tiny sizes: checks that it runs (CI)
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from count01.config import Config
from count01.files import load_config, write_json
from count01.language import EVAL_SETS, eval_set, exhaustive
from count01.measure.analysis import analyze
from count01.measure.metrics import evaluate
from count01.model import Model
from count01.runs import save_tensors

COMPARE_SEEDS = 4  # issue 14: a 4-seed position run against a 4-seed count-path run
TARGET = 3.0  # issue 14: the position run's analysis within this many times the count path's


def make_run(cfg: Config, out: Path) -> Path:
    """A run directory holding freshly initialised weights."""
    model = Model.init(cfg)
    write_json(out / "config.json", cfg.to_dict())
    save_tensors(out / "model.safetensors", model.weights, cfg, model.seeds, step=0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="analyze a copy of this trained run instead")
    p.add_argument("--seeds", type=int, help="seeds per run (default 8; 4 with --compare)")
    p.add_argument("--grid-size", type=int, default=25)
    p.add_argument("--pos-embed", default="none", choices=["none", "learned", "sinusoidal"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (analyze's default 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    p.add_argument("--compare", choices=["learned", "sinusoidal"],
                   help="analyze a count-path run and a run with this positional embedding, "
                        "alternated --repeats times, and print the ratio of their times")
    p.add_argument("--repeats", type=int, default=2, help="with --compare (median reported)")
    args = p.parse_args(argv)
    if args.compare:
        args.seeds = args.seeds or COMPARE_SEEDS
        return compare(args)
    args.seeds = args.seeds or 8
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            cfg = load_config(args.run)
            run = Path(tmp) / "run"
            run.mkdir()
            for name in ("config.json", "model.safetensors"):
                (run / name).write_bytes((args.run / name).read_bytes())
            grid = args.grid_size
        else:
            cfg = Config(n_seeds=args.seeds, pos_embed=args.pos_embed)
            grid = args.grid_size
            if args.quick:
                cfg = cfg.replace(n_seeds=2, eval_size=256, max_len=8, long_max_len=12,
                                  exhaustive_len=6)
                grid = 4
            run = make_run(cfg, Path(tmp) / "run")
        sizes = {name: len(eval_set(cfg, name)) for name in EVAL_SETS + ("fit",)}
        print(f"python {platform.python_version()}, torch {torch.__version__}, {args.threads} "
              f"torch thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"config: heads={cfg.heads} d_model={cfg.d_model} pos_embed={cfg.pos_embed} "
              f"seeds={cfg.n_seeds}; grid {grid} x {grid + 1}; examples per set "
              f"(unique count triples on the count path): {sizes}")
        t0 = time.perf_counter()
        summary = analyze(run, grid_size=grid, progress=False, threads=args.threads)
        total = time.perf_counter() - t0
    print(f"  {'stage':<20s} {'wall':>8s} {'cpu':>8s}   (cpu: all threads; wall suffers "
          "when other processes share the cores)")
    for stage, seconds in summary["seconds"].items():
        print(f"  {stage:<20s} {seconds:7.2f}s {summary['cpu_seconds'][stage]:7.2f}s")
    print(f"  {'total':<20s} {total:7.2f}s {sum(summary['cpu_seconds'].values()):7.2f}s")
    if not cfg.count_path:  # with positions, strings must be enumerated: no exact evaluation
        return 0
    exact_len = 12 if args.quick else 64
    exact_cfg = cfg.replace(exhaustive_len=exact_len)
    model = Model.init(exact_cfg)
    t0 = time.perf_counter()
    triples = len(exhaustive(exact_cfg))
    evaluate(model, sets=("exhaustive",))
    exact = time.perf_counter() - t0
    print(f"exact evaluation of every string of length 1..{exact_len} ({triples} count triples): "
          f"{exact:.2f} s for {model.n_seeds} seeds, {exact / model.n_seeds:.3f} s per seed")
    return 0


def compare(args) -> int:
    """`count01 analyze` of a fresh count-path run and of the same config with a positional
    embedding, alternated so the machine's drift hits both; medians of wall and CPU seconds."""
    walls: dict[str, list[float]] = {"none": [], args.compare: []}
    cpus: dict[str, list[float]] = {"none": [], args.compare: []}
    print(f"python {platform.python_version()}, torch {torch.__version__}, {args.threads} torch "
          f"thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for pos in walls:
            cfg = Config(n_seeds=args.seeds, pos_embed=pos)
            if args.quick:
                cfg = cfg.replace(n_seeds=2, eval_size=256, max_len=8, long_max_len=12,
                                  exhaustive_len=6)
            runs[pos] = make_run(cfg, Path(tmp) / pos)
        grid = 4 if args.quick else args.grid_size
        for _ in range(1 if args.quick else args.repeats):
            for pos, run in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                analyze(run, grid_size=grid, progress=False, threads=args.threads)
                walls[pos].append(time.perf_counter() - t0)
                cpus[pos].append(time.process_time() - c0)  # the figure process not counted
    med = {k: (statistics.median(walls[k]), statistics.median(cpus[k])) for k in walls}
    print(f"count01 analyze, {cfg.n_seeds} seeds, grid {grid} x {grid + 1}, medians of "
          f"{len(walls['none'])}:")
    for pos, (wall, cpu) in med.items():
        print(f"  pos_embed={pos:<11s} wall {wall:7.2f} s   cpu (this process) {cpu:7.2f} s")
    w_ratio = med[args.compare][0] / med["none"][0]
    c_ratio = med[args.compare][1] / med["none"][1]
    print(f"  {args.compare} / count path: wall {w_ratio:.1f}x, cpu {c_ratio:.1f}x "
          f"(target: wall within {TARGET:g}x)")
    print(f"  peak resident memory of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
