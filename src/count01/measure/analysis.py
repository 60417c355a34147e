"""`count01 analyze RUN`: every head analysis of SPEC 4 and 5 on a trained run, every seed.

Writes RUN/analysis/ (built in a temporary directory RUN/.analysis.XXXX, then swapped in whole,
so a crash never leaves a half-written analysis; the temporary directories a killed analysis
left behind are removed by the next one, which holds RUN/.lock meanwhile). Thresholds, probes,
means, norms and fitted alphas are always fitted on the `fit` split and scored on the evaluation
sets. All metrics are weighted by the examples' weights (exact on `exhaustive`). Files and their
columns:

metrics.json   run, config, seeds, n_heads, sweep_set (set of the intervention), figure_set,
               grid {w01, w02}, files {name: description}, summary (per question: the numbers
               the report quotes, see `summarise`), seconds {stage: wall time}, cpu_seconds
               {stage: CPU time of this process; figures are drawn by a second process while
               the later stages compute, so figures_and_summary is the wait for the last ones;
               `fit` fits on the fit split what the analyses need and registers them on each
               set's one pass, which the first stage to read the set runs for all of them (the
               model stage; on the count path, whose logits take no pass, a later one)}.
model.csv      set, seed, l_acc, valid, auc
               the trained model: l-acc (argmax of the logits = answer), valid rate (argmax is
               0 or 1), ROC AUC of logit(1) - logit(0).
heads.csv      set, seed, layer, head, head_auc, s_acc, s_threshold, probe_s_acc, w01, w02,
               w_eos, w_bos, mass_0, mass_1, mass_2, mass_eos, mass_bos, total_effect
               Heads of every layer: `head` in every table is the global index layer * H + h
               (heads of one layer: the head itself), `layer` its layer (heads.csv,
               intervention.csv, alpha.csv; value_swap.csv: attn_layer, ov_layer).
               head_auc: AUC of the direct score s_h = (o_h W_U)[1] - (o_h W_U)[0]; s_acc:
               accuracy of "1 iff s_h > s_threshold", threshold fitted on `fit`; probe_s_acc:
               logistic regression on o_h fitted on `fit`; w01, w02, w_eos, w_bos: per-occurrence
               attention on 1, 2, EOS, BOS relative to a 0; mass_*: fraction of the EOS query's
               attention on each kind. With K > 1 noise symbols w02 is the mean over the
               symbols, and w02_2, w02_5, ... and mass_5, ... follow for each symbol.
               total_effect: the model's l-acc with the head mean-ablated (its output replaced
               by its mean over `fit`: at the query the mean at the query, below the last layer
               at every other position the mean over the positions before the query) minus its
               l-acc as trained; with one attention-only layer, leave-one-out's change. With
               L >= 2 layers or an MLP s_h is the head's direct path to the logits, read at
               the query (through W_U alone with ln_final, as at L = 1), total_effect its whole
               effect.
intervention.csv  set, intervened, w01, w02, seed, layer, head, s_acc_fixed, s_acc_refit,
               head_auc, l_acc, valid, auc
               one row per grid point x seed x head. The head attends by w(0) = 1, w(1) = w01,
               w(noise) = w02, EOS / BOS at its measured weights. intervened = "each": only this
               head is intervened; "all": every head of the seed is (then l_acc, valid, auc are
               the same for all heads of a seed). s_acc_fixed: the head's threshold fitted before
               the intervention; s_acc_refit: refitted on `fit` under it; head_auc: of s_h under
               it; l_acc, valid, auc: of the whole model under the intervention; in the
               sentence framing then end, sentence: end accuracy (the ending's query is not
               intervened) and the greedy sentence's accuracy with the intervened answer.
               A head is intervened at its own layer's query row ("all": every head of every
               layer); in "all" rows a head of layer >= 1 is measured on what it outputs with
               the lower layers' query rows intervened (its own query and value there change).
               With L >= 2 layers or an MLP the model metrics run the query row through the
               later layers once per grid point and head (all: once per grid point), so the
               grid has interventions.DEEP_GRID_SIZE points a side there by default
               (metrics.json's grid says which).
ideal_intervention.csv  set, intervened, w01, w02, seed, head, s_acc_fixed, s_acc_refit,
               head_auc, l_acc, valid, auc
               as intervention.csv, for an ideal counter with as many heads (`controls.ideal`,
               one seed, seed 0), one head intervened, w02 = 0, on the same set and w01 grid: the
               reference question 3 compares the model's collapse with.
aggregation.csv  scheme, head, seed, set, l_acc, valid, auc
               scheme in learned (alpha = 1), uniform (every head at the same mean norm of o_h,
               total kept), single (only `head` kept, the others mean-ablated), leave_one_out
               (`head` mean-ablated), fitted (alpha fitted by cross-entropy on `fit`);
               head = -1 for schemes of the whole model.
alpha.csv      seed, layer, head, mean_norm, alpha_learned, alpha_uniform, alpha_fitted
               mean_norm: weighted mean |o_h| on `fit`; the alpha of each scheme. With L >= 2
               layers or an MLP alpha scales the head's output at every position and every
               later computation sees it (schemes and fitted alpha through the later layers,
               exact); mean ablation as for total_effect.
value_swap.csv  set, seed, attn_layer, attn_head, ov_layer, ov_head, swapped, s_acc, l_acc
               head attn_head's attention pattern with head ov_head's value/output weights
               (W_V, b_V, W_O); swapped = attn_head != ov_head (False: the head itself); s_acc
               with the threshold refitted on `fit` for the hybrid; l_acc of the whole model
               with the hybrid in place of head attn_head (scale included, readout not refitted);
               in the sentence framing then end, sentence, with the hybrid at the ending too.
               With L >= 2 layers: head ov_head's values as its own layer computes them, the
               hybrid in head attn_head's place at its query row (`interventions`).
attention_examples.csv  seed, example, position, token, layer, head, weight
               the EOS query's attention of every head on each slot of a few fixed example
               strings (EXAMPLES; position 0 is BOS when the model has one): the raw pattern, for
               a reader who wants to see it rather than its summaries.
minimal_heads.csv  seed, n_heads, heads, l_acc_threshold, set
               the smallest set of heads (";"-separated ids, "" for none) keeping l-acc >=
               l_acc_threshold on `set` once alpha is refitted on `fit`; n_heads = -1 and heads
               "none" where even all heads refitted fall short.
figures/       heads_table, attention_mass, intervention_heatmaps (s-acc and l-acc over the
               grid), intervention_w02_0, aggregation, value_swap, attention_examples (.png and
               .svg), drawn by `plots.plot_all` from the CSV files alone.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import Count01Error
from ..criteria import SUCCESS_L_ACC, SUCCESS_SET
from ..files import DIR_MODE, locked, watch_parent, write_json
from ..heap import keep_freed_memory
from ..language import EVAL_SETS, eval_set, from_digits, vocab
from ..present import plots
from ..runs import load
from ..train import torch_threads
from .activations import Shared, head_ids, merged_run
from .aggregation import (
    aggregate,
    fit_alpha,
    mean_norms,
    minimal_heads,
    ride_aggregate,
    uniform_alpha,
)
from .controls import ideal_intervention
from .interventions import default_grid, grid_points, ride_value_swap, sweep_columns, value_swap
from .metrics import evaluate_logits, head_table, ride_head_hits


class AnalysisError(Count01Error):
    pass


# strings whose raw EOS attention is shown: a 1-majority with noise, a tie, a 0-majority, a short one
EXAMPLES = ("0112021", "1100212", "20201002", "011")
FILES = {
    "metrics.json": "summary numbers per question, settings and timings",
    "model.csv": "the trained model per set and seed: l_acc, valid, auc",
    "heads.csv": "per (set, seed, head): head AUC, s-acc, probe s-acc, attention ratios, mass",
    "intervention.csv": "attention intervention per grid point (w01, w02), seed and head",
    "ideal_intervention.csv": "the same intervention (w02 = 0) on an ideal counter",
    "aggregation.csv": "l_acc, valid, auc per aggregation scheme, head, seed and set",
    "alpha.csv": "per (seed, head): mean |o_h| and the alpha of each aggregation scheme",
    "value_swap.csv": "s-acc of head i's attention with head j's values, per set and seed",
    "minimal_heads.csv": "per seed: the smallest set of heads keeping l-acc >= 0.99 (refitted)",
    "attention_examples.csv": "the EOS query's attention per head on each slot of EXAMPLES",
}


def attention_examples(model) -> pd.DataFrame:
    """The EOS query's attention of every head of every seed on each slot of EXAMPLES: one row
    per (seed, example, head, position) up to the example's EOS."""
    width = max(map(len, EXAMPLES))
    batch = from_digits(np.array([[int(c) for c in t] + [-1] * (width - len(t))
                                  for t in EXAMPLES]), model.cfg.bos, model.cfg.noise_symbols)
    with torch.no_grad():  # every layer's query row: merged_run (one layer: force_tokens)
        run = model.run(batch, force_tokens=True) if model.cfg.layers == 1 else \
            merged_run(model, batch)
        pattern = run.pattern.numpy()  # (S, B, L * H, P)
    i, b, h, k = np.indices(pattern.shape).reshape(4, -1)
    keep = k <= batch.eos_pos.numpy()[b]  # the padding after EOS is not part of the string
    names = np.array(vocab(model.cfg.noise_symbols), dtype=object)  # by token id
    return pd.DataFrame({"seed": np.array(model.seeds)[i[keep]], "example": b[keep],
                         "position": k[keep], "token": names[batch.tokens.numpy()[b, k][keep]],
                         "layer": h[keep] // model.cfg.heads, "head": h[keep],
                         "weight": pattern.reshape(-1)[keep]})


def analyze(run_dir: str | Path, grid_size: int | None = None, progress: bool = True,
            sweep_set: str = SUCCESS_SET, figures: bool = True, threads: int | None = 1) -> dict:
    """Run every analysis on a run directory and write RUN/analysis/. Returns metrics.json.

    figures=False skips the figures (tables and metrics.json only); `plots.plot_all` can draw
    them later from the tables. threads: torch threads during the analysis. One is the
    default because its tensors are small: on two cores shared with other work, two threads
    waiting on each other made it 2-5x slower (None: leave torch's setting).
    """
    if threads is not None and threads < 1:
        raise AnalysisError(f"threads must be positive, got {threads}")
    if grid_size is not None:
        default_grid(grid_size)  # a bad size: one line before the run is read
    keep_freed_memory()  # the evaluation sets' tensors, allocated again by every analysis
    with torch_threads(threads):
        return _analyze(Path(run_dir), grid_size, progress, sweep_set, figures)


def _analyze(run: Path, size: int | None, progress: bool, sweep_set: str, figures: bool
             ) -> dict:
    model = load(run).to(torch.float64)
    cfg = model.cfg
    grid = default_grid(grid_points(model, size))
    fit = eval_set(cfg, "fit")
    sets = {name: eval_set(cfg, name) for name in EVAL_SETS}
    if sweep_set not in sets:
        sets[sweep_set] = eval_set(cfg, sweep_set)
    with locked(run, "analysis"):
        for left in run.glob(".analysis.*"):  # a killed analysis' temporary directories
            shutil.rmtree(left, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=run, prefix=".analysis."))
        os.chmod(tmp, DIR_MODE)
        pool = _figure_process() if figures else None
        try:
            summary = _compute(model, fit, sets, sweep_set, grid, tmp, pool, progress)
            summary = {"run": str(run)} | summary
            write_json(tmp / "metrics.json", summary)
            _swap_in(tmp, run / "analysis")
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _figure_process() -> ProcessPoolExecutor:
    """One worker process that draws figures from each table as soon as it is written, while
    this process computes the next. Forked (where the OS can) and started at once, before this
    analysis runs threads (the ranking threads of an earlier one in this process are not
    inherited: `metrics._pool`): it inherits matplotlib and pandas already imported and never
    touches torch; spawning instead would re-import the package, seconds on a small machine. It exits
    when this process dies, even by SIGKILL (`files.watch_parent`)."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=watch_parent,
                               initargs=(os.getpid(),))
    pool.submit(int).result()
    return pool


def _compute(model, fit, sets, sweep_set: str, grid: tuple[np.ndarray, np.ndarray], tmp: Path,
             pool, progress: bool) -> dict:
    """Every table, written to tmp as it is done (figures submitted to `pool`), and the summary
    with the time of each stage. Every analysis reads one `Shared`: each set is run, and each
    quantity fitted on `fit` computed, once for all of them."""
    cfg = model.cfg
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    tables: dict[str, pd.DataFrame] = {}
    jobs = []
    bar = tqdm(total=10, disable=not progress, desc="analyze", leave=False)
    t = time.perf_counter(), time.process_time()

    def done(stage: str, table: str | None = None, df: pd.DataFrame | None = None) -> None:
        nonlocal t
        if table is not None:
            tables[table] = df
            df.to_csv(tmp / f"{table}.csv", index=False)
            if pool is not None and table in plots.GROUPS:
                jobs.append(pool.submit(plots.draw, tmp, table, sweep_set))
        seconds[stage] = time.perf_counter() - t[0]
        cpu[stage] = time.process_time() - t[1]
        bar.set_postfix_str(stage)
        bar.update(1)
        t = time.perf_counter(), time.process_time()

    shared = Shared(model)
    with torch.no_grad():  # what is fitted on `fit`, then each set's analyses on one pass
        fitted = fit_alpha(model, fit, shared=shared)
        for batch in sets.values():
            shared.of(batch).ride_pass()
            ride_head_hits(shared, batch, fit)
            ride_value_swap(shared, batch, fit)
        ride_aggregate(model, sets, fit, fitted, shared)
    done("fit")

    rows = []
    with torch.no_grad():
        for name, batch in sets.items():
            a = shared.of(batch)
            got = evaluate_logits(a.logits, batch,
                                  a.end.logits if cfg.framing == "sentence" else None)
            rows += [{"set": name, "seed": seed} | {k: float(v[i]) for k, v in got.items()}
                     for i, seed in enumerate(model.seeds)]
    done("model", "model", pd.DataFrame(rows))

    done("heads", "heads", pd.DataFrame(head_table(model, sets, fit, shared)))

    w01, w02 = grid
    inter = pd.DataFrame(sweep_columns(model, sets[sweep_set], fit, w01, w02, heads="both",
                                       shared=shared))
    inter.insert(0, "set", sweep_set)
    inter.insert(list(inter.columns).index("head"), "layer", inter["head"] // cfg.heads)
    done("intervention", "intervention", inter)
    ideal = ideal_intervention(cfg, sets[sweep_set], fit, w01)
    ideal.insert(0, "set", sweep_set)
    tables["ideal_intervention"] = ideal
    ideal.to_csv(tmp / "ideal_intervention.csv", index=False)

    norms, uniform = mean_norms(model, fit, shared), uniform_alpha(model, fit, shared)
    tables["alpha"] = pd.DataFrame([
        {"seed": seed, "layer": n, "head": h, "mean_norm": float(norms[i, h]),
         "alpha_learned": 1.0, "alpha_uniform": float(uniform[i, h]),
         "alpha_fitted": float(fitted[i, h])}
        for i, seed in enumerate(model.seeds) for h, (n, _) in enumerate(head_ids(model))])
    tables["alpha"].to_csv(tmp / "alpha.csv", index=False)
    done("aggregation", "aggregation", pd.DataFrame(aggregate(model, sets, fit, fitted, shared)))

    found = minimal_heads(model, fit, sets[sweep_set], SUCCESS_L_ACC, shared)
    done("minimal_heads", "minimal_heads", pd.DataFrame([
        {"seed": seed, "n_heads": -1 if f is None else len(f),
         "heads": "none" if f is None else ";".join(map(str, f)),
         "l_acc_threshold": SUCCESS_L_ACC, "set": sweep_set}
        for seed, f in zip(model.seeds, found)]))

    swaps = []
    for name, batch in sets.items():
        swaps += [{"set": name} | r for r in value_swap(model, batch, fit, shared)]
    swaps = pd.DataFrame(swaps)
    for side in ("attn", "ov"):
        swaps.insert(list(swaps.columns).index(f"{side}_head"), f"{side}_layer",
                     swaps[f"{side}_head"] // cfg.heads)
    done("value_swap", "value_swap", swaps)

    done("attention_examples", "attention_examples", attention_examples(model))

    for job in jobs:
        job.result()  # a figure that failed raises here
    summary = {"config": cfg.to_dict(), "seeds": model.seeds, "n_heads": len(head_ids(model)),
               "sweep_set": sweep_set, "figure_set": sweep_set,
               "grid": {"w01": w01.tolist(), "w02": w02.tolist()}, "files": FILES,
               "summary": summarise(tables, sweep_set)}
    done("figures_and_summary")
    bar.close()
    return summary | {"seconds": seconds, "cpu_seconds": cpu}


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished directory `tmp` (two renames; the old one is removed)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=".analysis.old."))
        out.rename(old / "analysis")
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _stats(series: pd.Series) -> dict[str, float]:
    return {"mean": float(series.mean()), "std": float(series.std(ddof=0)),
            "min": float(series.min()), "max": float(series.max())}


def summarise(tables: dict[str, pd.DataFrame], sweep_set: str) -> dict:
    """The numbers each question of SPEC 1 rests on (mean, std, min, max over seeds / heads).

    q1_pseudo_ensemble: heads: per set, head_auc, s_acc, probe_s_acc over (seed, head);
      model: per set, the trained model's l_acc, valid, auc over seeds.
    q2_aggregation: per scheme on the sweep set, l_acc, valid, auc over (seed[, head]).
    q3_attention: measured w01, w02, w_eos, w_bos; intervention curves at w02 = 0 (one head at
      a time) at the grid point nearest w01 = 1 and at the two ends, and along w02 at w01 = 1;
      value swap: s-acc of heads vs of hybrids keeping the attention or the values.
    minimal_heads: sizes per seed.
    """
    heads, agg, inter = tables["heads"], tables["aggregation"], tables["intervention"]
    q1 = {"heads": {name: {c: _stats(g[c]) for c in ("head_auc", "s_acc", "probe_s_acc")}
                    for name, g in heads.groupby("set", sort=False)},
          "model": {name: {c: _stats(g[c]) for c in ("l_acc", "valid", "auc")}
                    for name, g in tables["model"].groupby("set", sort=False)}}
    a = agg[agg["set"] == sweep_set]
    q2 = {s: {c: _stats(g[c]) for c in ("l_acc", "valid", "auc")}
          for s, g in a.groupby("scheme", sort=False)}
    measured = heads[heads["set"] == sweep_set]
    each = inter[inter["intervened"] == "each"]
    w02_zero = each[each["w02"] == each["w02"].min()]
    grid01 = sorted(w02_zero["w01"].unique())
    near1 = min(grid01, key=lambda w: abs(math.log10(w)))
    points = {"w01_low": grid01[0], "w01_near_1": near1, "w01_high": grid01[-1]}
    cols = ("s_acc_fixed", "s_acc_refit", "l_acc")
    curve = {k: {"w01": w, "w02": float(w02_zero["w02"].iloc[0])}
             | {c: _stats(w02_zero[w02_zero["w01"] == w][c]) for c in cols}
             for k, w in points.items()}
    at1 = each[each["w01"] == near1]
    grid02 = sorted(at1["w02"].unique())
    along02 = {k: {"w01": near1, "w02": w} | {c: _stats(at1[at1["w02"] == w][c]) for c in cols}
               for k, w in (("w02_low", grid02[0]), ("w02_high", grid02[-1]))}
    swap = tables["value_swap"]
    swap = swap[swap["set"] == sweep_set]
    own = swap[~swap["swapped"]].set_index(["seed", "attn_head"])["s_acc"]
    hyb = swap[swap["swapped"]]
    same_attn = (hyb["s_acc"].to_numpy()
                 - own.loc[list(zip(hyb["seed"], hyb["attn_head"]))].to_numpy())
    same_vals = (hyb["s_acc"].to_numpy()
                 - own.loc[list(zip(hyb["seed"], hyb["ov_head"]))].to_numpy())
    q3 = {"measured": {c: _stats(measured[c]) for c in ("w01", "w02", "w_eos", "w_bos")},
          "intervention_w02_0": curve, "intervention_w01_near_1": along02,
          "value_swap": {"s_acc_heads": _stats(own), "s_acc_hybrids": _stats(hyb["s_acc"]),
                         "mean_abs_change_keeping_attention": float(abs(same_attn).mean())
                         if len(hyb) else None,
                         "mean_abs_change_keeping_values": float(abs(same_vals).mean())
                         if len(hyb) else None}}
    mh = tables["minimal_heads"]
    minimal = {"threshold": SUCCESS_L_ACC, "set": sweep_set,
               "n_heads": dict(zip(map(str, mh["seed"]), map(int, mh["n_heads"]))),
               "heads": dict(zip(map(str, mh["seed"]), mh["heads"]))}
    return {"q1_pseudo_ensemble": q1, "q2_aggregation": q2, "q3_attention": q3,
            "minimal_heads": minimal}


def describe(summary: dict) -> str:
    """A few lines for the terminal: the headline number of each question and the timings."""
    s, sweep = summary["summary"], summary["sweep_set"]
    heads = s["q1_pseudo_ensemble"]["heads"].get(sweep, {})
    lines = [f"analysis of {summary['run']}: {len(summary['seeds'])} seeds x "
             f"{summary['n_heads']} heads, figures and intervention on '{sweep}'"]
    if heads:
        lines.append(f"  heads:        s-acc mean {heads['s_acc']['mean']:.3f} "
                     f"(min {heads['s_acc']['min']:.3f}), head AUC mean "
                     f"{heads['head_auc']['mean']:.3f}, probe s-acc mean "
                     f"{heads['probe_s_acc']['mean']:.3f}")
    agg = s["q2_aggregation"]
    lines.append("  aggregation:  " + ", ".join(
        f"{k} l-acc {v['l_acc']['mean']:.3f} / AUC {v['auc']['mean']:.3f}" for k, v in agg.items()))
    m = s["q3_attention"]["measured"]
    lines.append(f"  attention:    w01 mean {m['w01']['mean']:.3g} (sd {m['w01']['std']:.2g}), "
                 f"w02 mean {m['w02']['mean']:.3g} (sd {m['w02']['std']:.2g})")
    curve = s["q3_attention"]["intervention_w02_0"]
    lines.append("  intervention: s-acc refit at w02=0: " + ", ".join(
        f"w01={v['w01']:.3g}: {v['s_acc_refit']['mean']:.3f} +- {v['s_acc_refit']['std']:.3f}"
        for v in curve.values()))
    lines.append(f"  minimal heads (l-acc >= {s['minimal_heads']['threshold']}): "
                 + ", ".join(f"seed {k}: {v}" for k, v in s["minimal_heads"]["heads"].items()))
    lines.append("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["seconds"].items()))
    return "\n".join(lines)
