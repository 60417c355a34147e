"""What layers and an MLP cost in training (issue 17): seed-steps per second of the optimiser steps
`count01.train` takes (`train.Trainer.step`, no evaluation) at S seeds for the default model
(one attention-only layer: the count path with its hand-written gradient), one layer with an MLP
(the count path through autograd), two and three layers with and without an MLP (the prefix
path through autograd: layer 0 over token kinds, the last layer at the query alone; a middle
layer is textbook, P x P), and two layers with a learned positional embedding (the textbook
layer 0: every position attends over its prefix, P x P; the last layer at the query alone as
on the prefix path), the cost the prefix path removes. The variants are interleaved
over repeats, so drift in the machine's speed hits all alike; the median over repeats, each
variant's ratio to the default and the prefix path's to the textbook forward are printed, and
what a question-6 run (16 two-layer seeds, 3000 steps) would take at the measured rate.

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
            "2 layers (prefix path, autograd)": {"layers": 2},
            "2 layers + MLP 64 (prefix path, autograd)": {"layers": 2, "d_mlp": 64},
            "3 layers (prefix path, autograd)": {"layers": 3},
            "2 layers, learned positions (P x P)": {"layers": 2, "pos_embed": "learned"}}
PREFIX, TEXTBOOK = "2 layers (prefix path, autograd)", "2 layers, learned positions (P x P)"
Q6_SEEDS, Q6_STEPS = 16, 3000  # a question-6 run of two layers (the target: well under 60 s)


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
    prefix, textbook = statistics.median(got[PREFIX]), statistics.median(got[TEXTBOOK])
    print(f"prefix path / P x P layer 0 (2 layers): {prefix / textbook:.1f}x; a run of "
          f"{Q6_SEEDS} two-layer seeds x {Q6_STEPS} steps: about "
          f"{Q6_SEEDS * Q6_STEPS / prefix:.0f} s at this rate (measured at S = {args.seeds})")


if __name__ == "__main__":
    main()
