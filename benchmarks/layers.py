"""What layers and an MLP cost in training (issue 17): seed-steps per second of the optimiser steps
`count01.train` takes (`train.Trainer.step`, no evaluation) at S seeds for the default model
(one attention-only layer: the count path with its hand-written gradient), one layer with an MLP
(the count path through autograd), and two layers with and without an MLP (the token path's
textbook forward through autograd). The variants are interleaved over repeats, so drift in the
machine's speed hits all alike; the median over repeats and each variant's ratio to the default
are printed.

    python benchmarks/layers.py            # S = 8, 30 steps, 3 repeats (several minutes)
    python benchmarks/layers.py --quick    # a few steps: checks that it runs (CI)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

from count01.config import Config
from count01.model import Model
from count01.train import Trainer, torch_threads

VARIANTS = {"1 layer (count path, by hand)": {},
            "1 layer + MLP 64 (count path, autograd)": {"d_mlp": 64},
            "2 layers (tokens, autograd)": {"layers": 2},
            "2 layers + MLP 64 (tokens, autograd)": {"layers": 2, "d_mlp": 64}}


def seed_steps_per_second(cfg: Config) -> float:
    with torch_threads(1):  # as `train` runs
        trainer = Trainer(cfg, Model.init(cfg))
        trainer.step(0)  # warm-up: first-call costs are not a step's
        t0 = time.perf_counter()
        for step in range(1, cfg.steps):
            trainer.step(step)
        return cfg.n_seeds * (cfg.steps - 1) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: checks that it runs")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    steps, repeats = (5, 1) if args.quick else (args.steps, args.repeats)
    base = Config(n_seeds=args.seeds, steps=steps + 1)
    got: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, changes in VARIANTS.items():
            got[name].append(seed_steps_per_second(base.replace(**changes)))
    print(f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; S = {args.seeds}, "
          f"{steps} steps, batch {base.batch_size}, max_len {base.max_len}, median of {repeats}")
    first = statistics.median(got[next(iter(VARIANTS))])
    print(f"{'variant':<42} {'seed-steps/s':>12} {'x default':>10}")
    for name, values in got.items():
        m = statistics.median(values)
        print(f"{name:<42} {m:>12.1f} {m / first:>10.3f}")


if __name__ == "__main__":
    main()
