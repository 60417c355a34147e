"""count01 against TransformerLens: training throughput on the same model, data and optimiser.

The model (1 layer, attention-only, 4 heads, d_model 16, d_head 4, no positional embedding, BOS
on), the data (`training_batch(cfg, [seed], step)`, batch 256) and the optimiser (AdamW,
lr 1e-2, weight decay 0) are the same for the three paths:

  (a) TransformerLens, one seed at a time, as its users write it: the 4.x `TransformerBridge`
      booted natively (`TransformerBridge.boot_native`) and loaded with our initial weights
      through `convert_tl_checkpoint` (count01.export; a `HookedTransformer` where the 3.x line
      is installed), forward on the token batch,
      cross-entropy at the EOS positions. W_pos is frozen at zero (no positional embedding);
      TL 4.x's native unembed keeps b_U as a fixed buffer, so there (a) trains 5 fewer
      parameters.
  (b) count01's token path, one seed at a time: `model.run(batch, force_tokens=True).logits`.
  (c) count01, 64 seeds batched on the best path: `train.Trainer` (count path, hand-written
      gradient, flat AdamW) on one torch thread, exactly as `count01 train` runs it.

Each timed step includes drawing its batch, as training does. Before timing, the three paths
must agree: (a) and (b) give the same loss on the first batch, and seed 0 of (c) follows (b)'s
loss trajectory. Repeats of the three paths are interleaved, so drift in the machine's speed
hits all alike; the median over repeats is reported.

    python benchmarks/vs_transformerlens.py            # full
    python benchmarks/vs_transformerlens.py --quick    # a few steps: checks that it runs (CI)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.nn.functional as F

from count01.config import Config
from count01.export import ExportError, to_transformer_lens
from count01.language import training_batch
from count01.model import Model
from count01.train import Trainer, make_optimizer, torch_threads

CFG = Config(heads=4, d_model=16, d_head=4, pos_embed="none", bos=True, batch_size=256, lr=1e-2,
             weight_decay=0.0)
BATCHED = 64

Step = Callable[[int], torch.Tensor]  # step(t) trains on batch t; returns the loss per seed


def lens_step(cfg: Config, seed: int) -> tuple[str, Step]:
    """(a) TransformerLens, one seed: a TransformerBridge on 4.x, a HookedTransformer on 3.x.
    Returns the model's class name and the step."""
    tl = to_transformer_lens(Model.init(cfg, [seed]), 0)  # same initial weights as (b)
    tl.train()
    tl.pos_embed.W_pos.requires_grad_(False)  # no positional embedding: W_pos stays zero
    opt = torch.optim.AdamW([p for p in tl.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)

    def step(t: int) -> torch.Tensor:
        batch = training_batch(cfg, [seed], t, tokens=True)
        tokens, eos, y = batch.tokens[0], batch.eos_pos[0], batch.y[0]
        logits = tl(tokens)  # (B, L, d_vocab)
        loss = F.cross_entropy(logits[torch.arange(len(tokens)), eos], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()[None]

    return type(tl).__name__, step


def token_step(cfg: Config, seed: int) -> Step:
    """(b) count01's token path, one seed."""
    model = Model.init(cfg, [seed])
    opt = make_optimizer(model, cfg)

    def step(t: int) -> torch.Tensor:
        batch = training_batch(cfg, [seed], t, tokens=True)
        logits = model.run(batch, force_tokens=True).logits  # (1, B, d_vocab)
        loss = F.cross_entropy(logits[0], batch.y[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()[None]

    return step


def batched_step(cfg: Config) -> Step:
    """(c) count01, cfg.n_seeds seeds at once, on the path `train` takes."""
    trainer = Trainer(cfg, Model.init(cfg))

    def step(t: int) -> torch.Tensor:
        with torch_threads(1):
            return trainer.step(t)

    return step


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny step counts: only checks it runs")
    p.add_argument("--steps", type=int, help="timed steps per repeat for one-seed paths (a), (b)")
    p.add_argument("--batched-steps", type=int, help="timed steps per repeat for (c)")
    p.add_argument("--repeats", type=int, help="timed repeats per path (median reported)")
    p.add_argument("--warmup", type=int, help="untimed steps first (also the agreement check)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    steps = args.steps or (2 if args.quick else 40)
    batched_steps = args.batched_steps or (2 if args.quick else 20)
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup or (2 if args.quick else 5)

    torch.manual_seed(0)
    seed = CFG.seed
    paths: dict[str, tuple[str, int, int, Step]] = {}  # key -> (label, seeds, steps, step)
    try:
        name, step = lens_step(CFG, seed)
        paths["a"] = (f"(a) TransformerLens {package_version('transformer-lens')} {name}, 1 seed",
                      1, steps, step)
    except ExportError as e:  # TransformerLens is not installed: run the rest
        print(f"(a) skipped: {e}", file=sys.stderr)
    paths["b"] = ("(b) count01 token path, 1 seed", 1, steps, token_step(CFG, seed))
    cfg_c = CFG.replace(n_seeds=BATCHED)
    paths["c"] = (f"(c) count01 {BATCHED} seeds batched, count path", BATCHED, batched_steps,
                  batched_step(cfg_c))

    # agreement: same model, same data, same optimiser, before anything is timed
    losses = {k: torch.stack([step(t) for t in range(warmup)]) for k, (*_, step) in paths.items()}
    gap_cb = (losses["c"][:, 0] - losses["b"][:, 0]).abs().max().item()
    print(f"check: seed {seed} of (c) follows (b) over {warmup} steps: max |loss gap| = "
          f"{gap_cb:.1e}")
    if not gap_cb < 1e-4:
        raise SystemExit("(b) and (c) do not train the same model")
    if "a" in paths:
        gap_ab = (losses["a"][0] - losses["b"][0]).abs().item()
        print(f"check: (a) and (b) agree on the first batch's loss: |gap| = {gap_ab:.1e}")
        if not gap_ab < 1e-5:
            raise SystemExit("(a) and (b) do not compute the same model")

    rates: dict[str, list[float]] = {k: [] for k in paths}
    t_next = warmup
    for _ in range(repeats):
        for key, (_, n_seeds, n_steps, step) in paths.items():  # interleaved
            t0 = time.perf_counter()
            for t in range(t_next, t_next + n_steps):
                step(t)
            rates[key].append(n_seeds * n_steps / (time.perf_counter() - t0))
        t_next += max(n for _, _, n, _ in paths.values())

    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, python "
          f"{platform.python_version()}; {repeats} repeats, median")
    print(f"{'path':<58} {'seeds':>5} {'steps':>5} {'seed-steps/s':>13}")
    median = {k: statistics.median(v) for k, v in rates.items()}
    for key, (label, n_seeds, n_steps, _) in paths.items():
        print(f"{label:<58} {n_seeds:>5} {n_steps:>5} {median[key]:>13.1f}")
    ratios = {f"{c}/{o}": median["c"] / median[o] for c, o in (("c", "a"), ("c", "b"))
              if o in median}
    print("  ".join(f"({k.replace('/', ')/(')}) = {v:.1f}x" for k, v in ratios.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed_steps_per_s": median, "all": rates, "ratios": ratios,
                       "labels": {k: v[0] for k, v in paths.items()}, "repeats": repeats,
                       "torch": torch.__version__, "threads": torch.get_num_threads()}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
