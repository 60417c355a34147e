"""Sweep throughput: training runs (configuration x seed) per minute, local pool vs Ray.

    python benchmarks/sweep_throughput.py            # examples/sweep.toml: 5 head counts x 32 seeds
    python benchmarks/sweep_throughput.py --quick    # a tiny sweep, for CI (about a minute)

Each executor runs the same sweep from scratch into its own temporary directory; the wall time
includes process start-up, training, reading every checkpoint and writing the tables (and, for
Ray, starting a local instance). The tables of the two executors must be equal: the benchmark
fails if they are not.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from count01.measure.metrics import format_table
from count01.sweeps import TABLES, Sweep, SweepError, import_ray, run_sweep

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sweep.toml"
QUICK = {"seeds": 4, "grid": {"heads": [1, 2, 4]},
         "base": {"steps": 300, "checkpoint_every": 100, "batch_size": 64, "eval_size": 1024,
                  "exhaustive_len": 8, "max_len": 12, "long_max_len": 16}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny sweep (CI)")
    ap.add_argument("--sweep", type=Path, default=EXAMPLE, help="sweep TOML (default: the example)")
    ap.add_argument("--executors", default="local,ray", help="comma-separated: local, ray")
    ap.add_argument("--workers", type=int, help="parallel configurations (default: CPU count)")
    args = ap.parse_args()
    sweep = Sweep.from_dict(QUICK) if args.quick else Sweep.from_toml(args.sweep)
    points = sweep.points()
    n_runs = sum(p.cfg.n_seeds for p in points)
    print(f"sweep: {len(points)} configurations, {n_runs} runs "
          f"({'quick' if args.quick else args.sweep})")
    rows, tables = [], {}
    for executor in args.executors.split(","):
        if executor == "ray":
            try:
                import_ray()
            except SweepError as e:
                rows.append({"executor": executor, "seconds": float("nan"),
                             "runs_per_minute": float("nan"), "note": str(e)})
                continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            tables[executor] = run_sweep(sweep, Path(tmp) / "sweep", executor=executor,
                                         workers=args.workers, log=lambda msg: None)
            seconds = time.perf_counter() - t0
        ok = int(tables[executor]["results"]["success"].sum())
        rows.append({"executor": executor, "seconds": seconds,
                     "runs_per_minute": n_runs / seconds * 60,
                     "note": f"{ok}/{n_runs} runs succeeded"})
    print(format_table(rows))
    if len(tables) == 2:
        a, b = tables.values()
        for name in TABLES:
            pd.testing.assert_frame_equal(a[name], b[name])
        print("local and ray tables are equal")


if __name__ == "__main__":
    main()
