"""What keeping freed memory saves (`count01.heap.keep_freed_memory`): CPU time and page faults
per optimiser step (`train.Trainer.step`, one torch thread) with glibc's malloc defaults and with
the setting, each variant in a fresh process (the setting is process-wide), the two alternated
over repeats so that drift in the machine's speed hits both alike; medians and their ratio.

The variants are the training paths whose step allocates large tensors: two layers with an MLP
(the prefix path through autograd, question 6's slowest model), one layer with an MLP (the count
path through autograd), the `sentence` framing with `lm_loss` and learned positions (every query
row), and the default model's count path (small tensors: the control, which should not change).

    python benchmarks/heap.py            # 20 steps, 3 repeats (a few minutes)
    python benchmarks/heap.py --quick    # a few steps, one repeat: checks that it runs (CI)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {"2 layers + MLP 64, 20 seeds (prefix path, autograd)":
            {"layers": 2, "d_mlp": 64, "heads": 2, "d_head": 4, "n_seeds": 20},
            "1 layer + MLP 64, 32 seeds (count path, autograd)":
            {"d_mlp": 64, "heads": 2, "d_head": 4, "n_seeds": 32},
            "sentence, lm_loss, learned positions, 16 seeds (autograd)":
            {"framing": "sentence", "lm_loss": True, "pos_embed": "learned", "d_head": 4,
             "n_seeds": 16},
            "default model, 64 seeds (count path, by hand; control)": {"n_seeds": 64}}


def child(fields: dict, keep: bool, steps: int) -> dict:
    """CPU seconds and page faults per step of `steps` steps after two warm-up steps."""
    import torch

    from count01.config import Config
    from count01.model import Model
    from count01.train import Trainer

    if not keep:  # glibc's defaults: the Trainer's call (its only one here) does nothing
        sys.modules["count01.train"].keep_freed_memory = lambda: None
    torch.set_num_threads(1)
    cfg = Config(**fields, steps=steps + 2)
    trainer = Trainer(cfg, Model.init(cfg))
    for step in range(2):
        trainer.step(step)
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    for step in range(2, steps + 2):
        trainer.step(step)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": (time.process_time() - t0) / steps,
            "faults": (after.ru_minflt - before.ru_minflt) / steps}


def measure(fields: dict, keep: bool, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(fields),
                          "--keep", str(int(keep)), "--steps", str(steps)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: checks that it runs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), bool(args.keep), args.steps)))
        return
    steps, repeats = (2, 1) if args.quick else (args.steps, args.repeats)
    print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {steps} steps, "
          f"medians of {repeats}, one torch thread, a fresh process each")
    for name, fields in VARIANTS.items():
        got: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(repeats):
            for keep in (False, True):
                got[keep].append(measure(fields, keep, steps))
        cpu = {k: statistics.median(r["cpu"] for r in v) for k, v in got.items()}
        faults = {k: statistics.median(r["faults"] for r in v) for k, v in got.items()}
        print(f"{name}:\n  glibc's defaults {cpu[False] * 1e3:8.1f} ms CPU a step, "
              f"{faults[False]:8.0f} page faults a step\n  freed memory kept "
              f"{cpu[True] * 1e3:8.1f} ms CPU a step, {faults[True]:8.0f} page faults a step"
              f"\n  defaults / kept: {cpu[False] / cpu[True]:.2f}x")


if __name__ == "__main__":
    main()
