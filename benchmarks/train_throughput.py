"""Training throughput of count01: S seeds batched against the same seeds trained one by one.

Trains the default model (H=4, d_model=16, d_head=4, batch 256, no positional embedding, so
the count path) for a fixed number of steps with `count01.train`, exactly as a user calls it:
S = 1, 8 and 64 seeds batched, and 64 seeds looped one at a time (64 runs of S = 1), and 64
seeds with three noise symbols (the count path without its per-triple table); then the same
model with a learned and a sinusoidal positional embedding (the position path) at S = 1 and 64;
and in the `sentence` framing (SPEC 2; the count path, two queries per example) at S = 64,
without lm_loss (the issue's target: within 2x of `classify`) and with it (every string
position a query, a tenth of the steps). Prints seed-steps per second (seeds x steps /
wall-clock seconds) for each and the ratios. The variants are interleaved over repeats, so
drift in the machine's speed hits all alike, and the median over repeats is reported.

A second table shows what each optimisation bought, at S = 1 and S = 64 on one thread: the
token path with full L x L causal attention, autograd and torch's AdamW (what one would write
first), the token path computing only the EOS query's row, the count path with autograd, and
the count path with the hand-written gradient and flat AdamW (what `train` runs); then, with a
learned positional embedding, the position path through autograd and with its hand-written
gradient (what `train` runs with positions).

    python benchmarks/train_throughput.py            # full (a minute or two)
    python benchmarks/train_throughput.py --quick    # a few steps: checks that it runs (CI)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from count01.config import Config
from count01.language import training_batch
from count01.model import Model
from count01.train import Trainer, loss_per_seed, make_optimizer, torch_threads, train

CFG = Config(checkpoint_every=10**9)  # the default model; nothing written to disk


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def batched(n_seeds: int, steps: int, pos_embed: str = "none", **fields) -> float:
    """Seconds to train n_seeds seeds together for `steps` steps (Config `fields` changed)."""
    t0 = time.perf_counter()
    train(CFG.replace(n_seeds=n_seeds, steps=steps, pos_embed=pos_embed, **fields),
          progress=False)
    return time.perf_counter() - t0


def looped(n_seeds: int, steps: int) -> float:
    """Seconds to train n_seeds seeds one after the other, `steps` steps each."""
    t0 = time.perf_counter()
    for seed in range(n_seeds):
        train(CFG.replace(seed=seed, n_seeds=1, steps=steps), progress=False)
    return time.perf_counter() - t0


def full_attention_logits(model: Model, tokens: torch.Tensor, eos_pos: torch.Tensor
                          ) -> torch.Tensor:
    """Logits at EOS the textbook way: every query position attends (causal L x L pattern),
    then the EOS row is read off. The default model only (no positional embedding, no LN)."""
    w, a = model.weights, "blocks.0.attn."
    seeds = torch.arange(tokens.shape[0])[:, None, None]
    x = w["embed.W_E"][seeds, tokens]  # (S, B, L, d)
    q = torch.einsum("sbld,shde->sbhle", x, w[a + "W_Q"]) + w[a + "b_Q"][:, None, :, None]
    k = torch.einsum("sbld,shde->sbhle", x, w[a + "W_K"]) + w[a + "b_K"][:, None, :, None]
    v = torch.einsum("sbld,shde->sbhle", x, w[a + "W_V"]) + w[a + "b_V"][:, None, :, None]
    scores = q @ k.transpose(-1, -2) / model.cfg.d_head_**0.5  # (S, B, H, L, L)
    L = tokens.shape[-1]
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    z = scores.softmax(-1) @ v  # (S, B, H, L, e)
    resid = x + torch.einsum("sbhle,shed->sbld", z, w[a + "W_O"]) + w[a + "b_O"][:, None, None]
    rows = torch.arange(tokens.shape[1])
    at_eos = resid[seeds[..., 0], rows, eos_pos]  # (S, B, d); eos_pos (S, B)
    return torch.einsum("sbd,sdv->sbv", at_eos, w["unembed.W_U"]) + w["unembed.b_U"][:, None]


def autograd_step(cfg: Config, tokens: bool, full: bool = False):
    """One AdamW step through autograd on the token path (full: every query's attention row)
    or the count path."""
    model = Model.init(cfg)
    opt = make_optimizer(model, cfg)

    def step(t: int) -> None:
        if tokens:
            batch = training_batch(cfg, model.seeds, t, tokens=True)
            if full:
                logits = full_attention_logits(model, batch.tokens, batch.eos_pos)
            else:
                logits = model.run(batch, force_tokens=True).logits  # (S, B, V)
            loss = F.cross_entropy(logits.transpose(1, 2), batch.y, reduction="none").mean(1)
        else:
            loss = loss_per_seed(model, cfg, t)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()

    return step


PATHS = {  # what each optimisation bought: name -> step factory
    "token path, full L x L attention, autograd, torch AdamW": lambda cfg: autograd_step(
        cfg, tokens=True, full=True),
    "token path, EOS row only, autograd, torch AdamW": lambda cfg: autograd_step(cfg, tokens=True),
    "count path, autograd, torch AdamW": lambda cfg: autograd_step(cfg, tokens=False),
    "count path, hand-written gradient, flat AdamW (train)": lambda cfg: Trainer(
        cfg, Model.init(cfg)).step,
    "learned positions: position path, autograd, torch AdamW": lambda cfg: autograd_step(
        cfg.replace(pos_embed="learned"), tokens=False),
    "learned positions: position path, hand-written gradient (train)": lambda cfg: Trainer(
        cfg.replace(pos_embed="learned"), Model.init(cfg.replace(pos_embed="learned"))).step,
}


def path_rate(make, n_seeds: int, seconds: float, min_steps: int = 2) -> float:
    """Seed-steps per second of one training path, after one warm-up step: steps run until
    `seconds` have passed (at least min_steps), so slow paths cost no more than fast ones."""
    with torch_threads(1):
        step = make(CFG.replace(n_seeds=n_seeds))
        step(0)
        t, t0 = 0, time.perf_counter()
        while t < min_steps or time.perf_counter() - t0 < seconds:
            t += 1
            step(t)
        return n_seeds * t / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny step counts: only checks it runs")
    p.add_argument("--steps", type=int, help="steps per timed run (default 300; quick: 3)")
    p.add_argument("--looped-steps", type=int,
                   help="steps per seed in the looped variant (default 50; quick: 2)")
    p.add_argument("--repeats", type=int, help="timed repeats (median reported; default 3)")
    p.add_argument("--path-seconds", type=float,
                   help="seconds per variant in the optimisation table (default 3; quick: 0)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    steps = args.steps or (3 if args.quick else 300)
    looped_steps = args.looped_steps or (2 if args.quick else 50)
    repeats = args.repeats or (1 if args.quick else 3)
    path_seconds = args.path_seconds if args.path_seconds is not None else (
        0.0 if args.quick else 3.0)

    variants = {  # name -> (seeds, steps per seed, timed function)
        "S=1 batched": (1, steps, lambda: batched(1, steps)),
        "S=8 batched": (8, steps, lambda: batched(8, steps)),
        "S=64 batched": (64, steps, lambda: batched(64, steps)),
        "S=64 looped one by one": (64, looped_steps, lambda: looped(64, looped_steps)),
        "S=64 batched, 3 noise symbols": (64, steps, lambda: batched(64, steps, noise_symbols=3)),
    }
    for pos in ("learned", "sinusoidal"):
        for n in (1, 64):
            variants[f"S={n} batched, {pos} pos"] = (
                n, steps, lambda n=n, pos=pos: batched(n, steps, pos))
    lm_steps = max(2, steps // 10)
    variants["S=64 batched, sentence"] = (64, steps, lambda: batched(64, steps,
                                                                     framing="sentence"))
    variants["S=64 batched, sentence + lm_loss"] = (
        64, lm_steps, lambda: batched(64, lm_steps, framing="sentence", lm_loss=True))
    batched(2, 3)  # warm-up: imports, caches, first allocations
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, (*_, run) in variants.items():
            times[name].append(run())
    rate = {k: variants[k][0] * variants[k][1] / statistics.median(v) for k, v in times.items()}

    print(f"count01 training throughput, {datetime.date.today()}, {cpu_name()}, "
          f"{os.cpu_count()} logical cores, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}, {'quick mode, ' if args.quick else ''}median of {repeats}")
    print(f"model: H={CFG.heads} d_model={CFG.d_model} d_head={CFG.d_head_} batch={CFG.batch_size}"
          f" pos_embed={CFG.pos_embed} (count path); {steps} steps per batched run, "
          f"{looped_steps} per looped seed")
    for name, r in rate.items():
        print(f"  {name:32s} {r:10.0f} seed-steps/s   ({statistics.median(times[name]):.2f} s)")
    ratios = {"S=64 batched / S=64 looped": rate["S=64 batched"] / rate["S=64 looped one by one"],
              "S=64 batched / S=1 batched": rate["S=64 batched"] / rate["S=1 batched"],
              "S=8 batched / S=1 batched": rate["S=8 batched"] / rate["S=1 batched"],
              "count path, 1 / 3 noise symbols, S=64": (
                  rate["S=64 batched"] / rate["S=64 batched, 3 noise symbols"])}
    for pos in ("learned", "sinusoidal"):  # the position path's cost against the count path's
        for n in (1, 64):
            ratios[f"count path / {pos} pos, S={n}"] = (
                rate[f"S={n} batched"] / rate[f"S={n} batched, {pos} pos"])
    for name in ("sentence", "sentence + lm_loss"):  # the target: sentence within 2x
        ratios[f"classify / {name}, S=64"] = rate["S=64 batched"] / rate[f"S=64 batched, {name}"]
    for name, r in ratios.items():
        print(f"  {name:34s} {r:6.1f}x")

    check = Model.init(CFG.replace(n_seeds=2))
    batch = training_batch(check.cfg, check.seeds, 0, tokens=True)
    with torch.no_grad():
        gap = (full_attention_logits(check, batch.tokens, batch.eos_pos)
               - check.run(batch, force_tokens=True).logits).abs().max().item()
    print(f"check: full L x L attention and count01's EOS row give the same logits: max |gap| = "
          f"{gap:.1e}")
    if not gap < 1e-4:
        raise SystemExit("the full-attention baseline computes another function")
    print(f"what each optimisation bought (seed-steps/s, one thread, {path_seconds:g} s each, "
          f"median of {repeats}):")
    print(f"  {'path':66s} {'S=1':>8s} {'S=64':>8s}  S=64/S=1")
    paths: dict[str, dict[int, float]] = {}
    for name, make in PATHS.items():
        paths[name] = {n: statistics.median(path_rate(make, n, path_seconds)
                                            for _ in range(repeats))
                       for n in (1, 64)}
        r = paths[name]
        print(f"  {name:66s} {r[1]:8.0f} {r[64]:8.0f}  {r[64] / r[1]:7.1f}x")
    first, last = (paths[k] for k in (next(iter(PATHS)), list(PATHS)[3]))
    print(f"  all together, S=64 on the last path / S=1 on the first: {last[64] / first[1]:.0f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": str(datetime.date.today()), "cpu": cpu_name(),
                       "cores": os.cpu_count(), "torch": torch.__version__, "quick": args.quick,
                       "load_average": os.getloadavg()[0],
                       "seed_steps_per_s": rate, "ratios": ratios, "paths": paths,
                       "seconds": times}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
