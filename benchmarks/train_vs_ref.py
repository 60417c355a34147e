"""Training throughput of this checkout against another git revision (default main), side by side.

`count01.train` at S seeds (default 64), count path and learned positions, each timing in a
fresh process, the two revisions alternated over repeats so the machine's drift hits both.
Fixed costs (imports, first allocations) cancel: each measurement times two step counts and
divides the difference. The other revision's `src/` is exported with `git archive` into a
temporary directory; nothing in the repository changes.

    python benchmarks/train_vs_ref.py                # main vs this checkout, S = 64
    python benchmarks/train_vs_ref.py --ref HEAD~3 --seeds 8
    python benchmarks/train_vs_ref.py --quick        # a few steps: checks that it runs
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMING = r"""
import json, sys, time
from count01.config import Config
from count01.train import train
pos, n1, n2, S = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def seconds(steps):
    cfg = Config(pos_embed=pos, n_seeds=S, steps=steps, checkpoint_every=10**9)
    t0 = time.perf_counter()
    train(cfg, progress=False)
    return time.perf_counter() - t0
seconds(2)
a, b = seconds(n1), seconds(n2)
print(json.dumps(S * (n2 - n1) / (b - a)))
"""


def rate(src: Path, pos: str, steps: tuple[int, int], seeds: int) -> float:
    """Seed-steps per second of `count01.train` from the package in `src`, in a new process."""
    out = subprocess.run([sys.executable, "-c", TIMING, pos, *map(str, steps), str(seeds)],
                         env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="main", help="the git revision to compare against")
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny step counts: only checks it runs")
    args = p.parse_args(argv)
    steps = {"none": (100, 700), "learned": (20, 140)}
    if args.quick:
        steps, args.repeats = {"none": (2, 4), "learned": (2, 4)}, 1
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref, "src"],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        srcs = {args.ref: Path(tmp) / "src", "this checkout": ROOT / "src"}
        got: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for name, src in srcs.items():
                for pos, n in steps.items():
                    got.setdefault((name, pos), []).append(rate(src, pos, n, args.seeds))
    med = {k: statistics.median(v) for k, v in got.items()}
    print(f"count01.train at S = {args.seeds}, seed-steps/s, median of {args.repeats}:")
    for (name, pos), r in med.items():
        print(f"  {name:14s} pos_embed={pos:8s} {r:9.0f}")
    for name in srcs:
        print(f"  {name:14s} count path / learned positions: "
              f"{med[name, 'none'] / med[name, 'learned']:.1f}x")
    print(f"  learned positions, this checkout / {args.ref}: "
          f"{med['this checkout', 'learned'] / med[args.ref, 'learned']:.2f}x; count path: "
          f"{med['this checkout', 'none'] / med[args.ref, 'none']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
