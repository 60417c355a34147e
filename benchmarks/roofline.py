"""How far count01's training step is from the machine's limit.

FLOPs per training step are counted from the shapes of what the count path computes
(`Model.count_loss_grad` and the AdamW update: every matmul as 2*m*n*k, every elementwise op as
one FLOP per output element). The machine's limit is measured: the best float32 matmul
throughput torch reaches on a large square GEMM, on all cores and on one core. The fraction of
that limit the training step reaches is printed for S = 1, 8, 64 and 256 seeds (timed with
`Trainer.step` on one intra-op thread, as `count01.train` runs it; best window of several).

For comparison the script also counts the FLOPs of the same step on the token path (keys and
values of every token, the EOS query's row only): the work the count path does not do.

    python benchmarks/roofline.py            # full (about a minute)
    python benchmarks/roofline.py --quick    # a few steps: checks that it runs (CI)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import torch

from count01.config import Config
from count01.model import Model
from count01.train import Trainer, torch_threads

CFG = Config()
K = V = 5  # token kinds (0, 1, 2, EOS, BOS) and output vocabulary


def count_path_flops(cfg: Config, n_seeds: int) -> dict[str, float]:
    """FLOPs of one training step on the count path, split by where they are spent."""
    H, d, e, B = cfg.heads, cfg.d_model, cfg.d_head_, cfg.batch_size
    per_kind_fwd = (2 * K * d * 3 * H * e  # q, k, v of the five kinds: one matmul
                    + 3 * K * H * e + 3 * K * H  # scores, exp(score - score_EOS)
                    + 2 * H * e * d * V  # W_O W_U
                    + 2 * H * K * e * V + H * K * V  # r = v W_O W_U, times a
                    + 2 * d * V + d)  # c0
    per_kind_bwd = (3 * H * K * V + H * K  # da, dr
                    + 2 * 2 * H * K * e * V  # dv, dM
                    + 4 * H * K + 2 * H * K * e + 2 * H * K * e  # ds, dq, dk
                    + 2 * 2 * d * K * 3 * H * e  # dW_qkv, dW_E
                    + 2 * V * d + 2 * H * e * d * V + d * V  # dxo, dW_U
                    + 2 * H * e * V * d)  # dW_O
    per_example = (2 * H * K + H  # D = a @ mult, 1/D
                   + H * K + 2 * V * H * K + V  # C, logits = c0 + UU^T C
                   + 4 * V + 2 * V  # log-softmax, loss
                   + 3 * V  # g
                   + 2 * H * K * V + 2 * H * K * V  # dC, dUU
                   + 2 * H * K + 3 * H + V  # dD, dc0
                   + 2 * H * K)  # da from dD
    params = sum(w.numel() for w in Model.init(cfg, [0]).parameters())
    return {"per kind (weights only)": n_seeds * (per_kind_fwd + per_kind_bwd),
            "per example": n_seeds * B * per_example,
            "AdamW": n_seeds * 11 * params}


def token_path_flops(cfg: Config, n_seeds: int) -> float:
    """FLOPs of the same step on the token path (mean length, EOS query row only), forward +
    backward taken as 3x forward."""
    H, d, e, B = cfg.heads, cfg.d_model, cfg.d_head_, cfg.batch_size
    L = (cfg.min_len + cfg.max_len) / 2 + 1 + cfg.bos  # tokens up to EOS
    forward = (2 * L * d * 2 * H * e + 2 * d * H * e  # keys and values of every token, query
               + 4 * H * L * e + 5 * H * L  # scores, softmax, weighted values
               + 2 * H * e * d + 2 * d * V)  # W_O, W_U
    return n_seeds * B * 3 * forward


def matmul_peak(threads: int, size: int, repeats: int) -> float:
    """Best float32 GEMM throughput (FLOP/s) torch reaches with `threads` threads."""
    with torch_threads(threads):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def step_seconds(n_seeds: int, steps: int, windows: int) -> float:
    """Best per-step wall time over `windows` windows of `steps` training steps."""
    cfg = CFG.replace(n_seeds=n_seeds)
    trainer = Trainer(cfg, Model.init(cfg))
    best = float("inf")
    with torch_threads(1):
        for t in range(3):
            trainer.step(t)
        for w in range(windows):
            t0 = time.perf_counter()
            for t in range(steps):
                trainer.step(3 + w * steps + t)
            best = min(best, (time.perf_counter() - t0) / steps)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: only checks it runs")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    size, gemm_repeats = (256, 2) if args.quick else (2048, 5)
    steps, windows = (2, 1) if args.quick else (20, 10)

    cores = os.cpu_count() or 1
    peak_all = matmul_peak(cores, size, gemm_repeats)
    peak_one = matmul_peak(1, size, gemm_repeats)
    print(f"count01 roofline, {datetime.date.today()}, {cores} logical cores, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.1f}"
          f"{', quick mode' if args.quick else ''}")
    print(f"float32 matmul peak ({size}x{size} GEMM): {peak_all / 1e9:.1f} GFLOP/s on {cores} "
          f"cores, {peak_one / 1e9:.1f} GFLOP/s on one")
    print(f"model: H={CFG.heads} d_model={CFG.d_model} d_head={CFG.d_head_} "
          f"batch={CFG.batch_size}, count path, one intra-op thread (as count01 train runs)")
    print(f"{'S':>4} {'MFLOP/step':>11} {'token path':>11} {'ms/step':>8} {'GFLOP/s':>8} "
          f"{'% all cores':>12} {'% one core':>11}  split (kind / example / AdamW)")
    rows = []
    for S in (1, 8, 64, 256):
        parts = count_path_flops(CFG, S)
        flops = sum(parts.values())
        seconds = step_seconds(S, steps, windows)
        rate = flops / seconds
        split = " / ".join(f"{100 * v / flops:.0f}%" for v in parts.values())
        print(f"{S:>4} {flops / 1e6:11.2f} {token_path_flops(CFG, S) / 1e6:11.1f} "
              f"{seconds * 1e3:8.2f} {rate / 1e9:8.2f} {100 * rate / peak_all:11.2f}% "
              f"{100 * rate / peak_one:10.2f}%  {split}")
        rows.append({"seeds": S, "flops_per_step": flops, "flops_split": parts,
                     "token_path_flops_per_step": token_path_flops(CFG, S),
                     "seconds_per_step": seconds, "flops_per_s": rate,
                     "fraction_of_peak_all_cores": rate / peak_all,
                     "fraction_of_peak_one_core": rate / peak_one})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": str(datetime.date.today()), "cores": cores,
                       "torch": torch.__version__, "quick": args.quick,
                       "matmul_peak_all_cores": peak_all, "matmul_peak_one_core": peak_one,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
