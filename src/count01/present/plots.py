"""Figures of the head analysis, drawn from the tidy tables in RUN/analysis/ (never from a model).

Each figure is written as PNG and SVG and stands alone: a title that says what and on which set,
axis labels with units, a legend or colour bar. `plot_all(analysis_dir)` redraws every figure
from the CSV files, so a report can regenerate them without torch.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..questions.q3 import VALUE_SWAP_GAP, swap_donors
from .figures import save

KINDS = (("mass_0", "0"), ("mass_1", "1"), ("mass_2", "noise (2, 5, ...)"), ("mass_eos", "EOS"),
         ("mass_bos", "BOS"))
KIND_COLORS = ("#4477aa", "#ee6677", "#bbbbbb", "#228833", "#ccbb44")
SCHEMES = ("learned", "uniform", "single", "leave_one_out", "fitted")
SCHEME_LABELS = {"learned": "learned\n(alpha = 1)", "uniform": "uniform\n(equal norms)",
                 "single": "single head\n(others mean)",
                 "leave_one_out": "leave one out\n(mean-ablated)",
                 "fitted": "fitted alpha\n(cross-entropy)"}


def _figure(*grid: int, **kw):
    """A figure with constrained layout: laid out once, no 'tight' bounding-box pass per file."""
    return plt.subplots(*grid, layout="constrained", **kw)


def _save(fig, out: Path, name: str) -> list[Path]:
    return save(fig, out / name, dpi=110)


def _head_labels(df: pd.DataFrame) -> list[str]:
    """"seed s head h", with the head's layer where the model has several (`head` is the
    global index layer * H + h; tables of older runs have no layer column)."""
    if "layer" not in df or df["layer"].nunique() <= 1:
        return [f"seed {s} head {h}" for s, h in zip(df["seed"], df["head"])]
    return [f"seed {s} head {h} (layer {n})"
            for s, h, n in zip(df["seed"], df["head"], df["layer"])]


def head_table(heads: pd.DataFrame, set_name: str, out: Path) -> list[Path]:
    """The per-head metrics as a table: one row per (seed, head), accuracies coloured."""
    df = heads[heads["set"] == set_name].sort_values(["seed", "head"])
    cols = ["head_auc", "s_acc", "probe_s_acc", "w01", "w02", "w_eos", "w_bos", "mass_bos",
            "mass_eos"]
    values = df[cols].to_numpy()
    colour = np.where(np.arange(len(cols)) < 3, np.clip((values - 0.5) * 2, 0, 1), np.nan)
    fig, ax = _figure(figsize=(10, 1.1 + 0.22 * (len(df) + 1)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(colour), cmap=cmap, vmin=-0.3, vmax=1.3, aspect="auto")
    # the same colours on the metric's own scale: colour (v - 0.5) * 2 on [-0.3, 1.3]
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.35, 1.15), cmap)
    fig.colorbar(scale, ax=ax, boundaries=np.linspace(0.5, 1.0, 51), ticks=np.linspace(0.5, 1, 6),
                 label="AUC / s-acc (fraction)", fraction=0.03, pad=0.01)
    for (r, c), v in np.ndenumerate(values):
        ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(df)), _head_labels(df), fontsize=8)
    ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(df) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.6", lw=0.5)
    ax.tick_params(which="both", length=0)
    ax.set_title(f"Per-head metrics on set '{set_name}' (thresholds and probes fitted on 'fit').\n"
                 "AUC / s-acc / probe s-acc coloured (red <= 0.5 = chance); w = attention per "
                 "occurrence relative to a 0; mass = fraction of the EOS row", fontsize=9)
    return _save(fig, out, "heads_table")


def attention_mass(heads: pd.DataFrame, set_name: str, out: Path) -> list[Path]:
    """Stacked bars: where each head's EOS query puts its attention, by token kind."""
    df = heads[heads["set"] == set_name].sort_values(["seed", "head"])
    fig, ax = _figure(figsize=(8, 1.0 + 0.25 * len(df)))
    y = np.arange(len(df))
    left = np.zeros(len(df))
    noise = [c for c in df.columns if c.startswith("mass_") and c[5:].isdigit() and c != "mass_0"
             and c != "mass_1"]
    for (col, label), colour in zip(KINDS, KIND_COLORS):
        x = df[noise].sum(axis=1).to_numpy() if col == "mass_2" else df[col].to_numpy()  # every noise
        ax.barh(y, x, left=left, color=colour, label=label, edgecolor="white", lw=0.3)
        left += x
    ax.set_yticks(y, _head_labels(df), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("attention mass of the EOS query (fraction of the row, weighted mean)")
    ax.set_title(f"Attention to 0 / 1 / noise / EOS / BOS per head, set '{set_name}'")
    fig.legend(title="token kind", ncol=5, loc="outside lower center", fontsize=8)
    return _save(fig, out, "attention_mass")


def _grid(df: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of `value` over heads and seeds on the (w02 rows, w01 columns) grid."""
    mean = df.groupby(["w02", "w01"])[value].mean().unstack("w01")
    return mean.index.to_numpy(), mean.columns.to_numpy(), mean.to_numpy()


def _log_ticks(values: np.ndarray) -> tuple[list[int], list[str]]:
    """Index positions of the grid points that are powers of ten (and of 0)."""
    ticks, labels = [], []
    for i, v in enumerate(values):
        if v == 0:
            ticks.append(i)
            labels.append("0")
        elif abs(np.log10(v) - round(np.log10(v))) < 1e-9:
            ticks.append(i)
            labels.append(f"1e{round(np.log10(v))}")
    return ticks, labels


def _position(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Fractional grid index of measured values (log scale; 0 maps to a w = 0 row if any)."""
    pos = np.arange(len(grid), dtype=float)
    positive = grid > 0
    idx = np.interp(np.log10(np.clip(values, 1e-300, None)), np.log10(grid[positive]),
                    pos[positive])
    if not positive.all():
        idx = np.where(values <= 0, pos[~positive][0], idx)
    return idx


HEATMAP_PANELS = (("each", "s_acc_fixed", "head s-acc, readout fixed before intervention"),
                  ("each", "s_acc_refit", "head s-acc, readout refitted under it"),
                  ("each", "l_acc", "model l-acc, that one head intervened"),
                  ("all", "l_acc", "model l-acc, every head intervened"))


def intervention_heatmaps(inter: pd.DataFrame, heads: pd.DataFrame | None, out: Path
                          ) -> list[Path]:
    """Head s-acc and model l-acc over the (w01, w02) grid, mean over heads and seeds, with the
    measured (w01, w02) of every head marked."""
    set_name = inter["set"].iloc[0]
    fig, axes = _figure(2, 2, figsize=(10, 8.6), sharex=True, sharey=True)
    for ax, (mode, value, label) in zip(axes.flat, HEATMAP_PANELS):
        w02, w01, grid = _grid(inter[inter["intervened"] == mode], value)
        im = ax.imshow(grid, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_title(label, fontsize=10)
        if heads is not None and len(heads):
            ax.scatter(_position(heads["w01"].to_numpy(), w01),
                       _position(heads["w02"].to_numpy(), w02), s=14, facecolor="none",
                       edgecolor="white", lw=0.8, label="measured (seed, head)")
    xt, xl = _log_ticks(w01)
    yt, yl = _log_ticks(w02)
    for ax in axes[1]:
        ax.set_xticks(xt, xl)
        ax.set_xlabel("w01: attention per 1 / per 0 (log scale)")
    for ax in axes[:, 0]:
        ax.set_yticks(yt, yl)
        ax.set_ylabel("w02: attention per noise symbol / per 0\n(log scale; bottom row: 0)")
    if heads is not None and len(heads):
        axes[0, 0].legend(loc="upper left", fontsize=7, framealpha=0.6)
    fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy (fraction), mean over heads and seeds")
    fig.suptitle(f"Attention intervention on '{set_name}': each head's EOS row replaced by "
                 "w(0)=1, w(1)=w01, w(noise)=w02", fontsize=11)
    return _save(fig, out, "intervention_heatmaps")


def intervention_curve(inter: pd.DataFrame, heads: pd.DataFrame | None, out: Path
                       ) -> list[Path]:
    """At w02 = 0: s-acc (fixed and refitted readout) and l-acc against w01, mean +- 1 std."""
    set_name = inter["set"].iloc[0]
    w02 = inter["w02"].min()
    df = inter[(inter["w02"] == w02) & (inter["intervened"] == "each")]
    fig, ax = _figure(figsize=(7.5, 4.5))
    for value, label, colour in (("s_acc_fixed", "head s-acc, readout fixed before", "#4477aa"),
                                 ("s_acc_refit", "head s-acc, readout refitted", "#228833"),
                                 ("l_acc", "model l-acc, that head intervened", "#ee6677")):
        g = df.groupby("w01")[value]
        mean, std = g.mean(), g.std(ddof=0)
        ax.plot(mean.index, mean, color=colour, label=f"{label} (mean)")
        ax.fill_between(mean.index, (mean - std).clip(0, 1), (mean + std).clip(0, 1),
                        color=colour, alpha=0.2, label=f"{label} (+- 1 std over heads, seeds)")
    ax.axvline(1.0, color="k", lw=0.8, ls=":", label="w01 = 1 (balanced)")
    if heads is not None and len(heads):
        ax.axvline(heads["w01"].median(), color="k", lw=0.8, ls="--",
                   label=f"measured w01, median = {heads['w01'].median():.3g}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("w01: attention per 1 / per 0 (log scale)")
    ax.set_ylabel("accuracy (fraction)")
    ax.set_title(f"Intervention at w02 = {w02:g} on '{set_name}': one head at a time")
    ax.legend(fontsize=7, loc="lower center")
    return _save(fig, out, "intervention_w02_0")


def aggregation(agg: pd.DataFrame, set_name: str, out: Path) -> list[Path]:
    """l-acc, valid rate and AUC of each aggregation scheme (in the sentence framing also end
    and sentence accuracy); bars = mean, whiskers = min..max."""
    df = agg[agg["set"] == set_name]
    schemes = [s for s in SCHEMES if s in set(df["scheme"])]
    fig, ax = _figure(figsize=(9, 4.5))
    x = np.arange(len(schemes))
    bars = [b for b in (("l_acc", "#4477aa"), ("valid", "#ccbb44"), ("auc", "#228833"),
                        ("end", "#ee6677"), ("sentence", "#aa3377")) if b[0] in df]
    width = 0.8 / len(bars)
    for k, (value, colour) in enumerate(bars):
        stats = df.groupby("scheme")[value].agg(["mean", "min", "max"]).loc[schemes]
        err = np.stack([stats["mean"] - stats["min"], stats["max"] - stats["mean"]])
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, stats["mean"], width, yerr=err,
               capsize=2, color=colour,
               label={"l_acc": "l-acc", "valid": "valid rate", "auc": "ROC AUC",
                      "end": "end accuracy", "sentence": "sentence accuracy"}[value])
    ax.set_xticks(x, [SCHEME_LABELS[s] for s in schemes], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction (mean over seeds and heads; whiskers min..max)")
    ax.set_title(f"Aggregation of head outputs on '{set_name}'")
    fig.legend(ncol=len(bars), loc="outside lower center", fontsize=8)
    return _save(fig, out, "aggregation")


def value_swap(swap: pd.DataFrame, set_name: str, out: Path) -> list[Path]:
    """Every head's s-acc against the s-acc of its two hybrids: keeping its attention with another
    head's values, and keeping its values with another head's attention (means over partners).
    Points on the diagonal: the swap changed nothing. Readable for 4 heads or 256.

    Between equally good heads a swap tells nothing, so a third panel takes the hybrids whose
    donors differ in s-acc by more than VALUE_SWAP_GAP (the rule of question 3) and shows how far
    each lands from either donor."""
    df = swap[swap["set"] == set_name]
    own = df[~df["swapped"]].set_index(["seed", "attn_head"])["s_acc"]
    hyb = df[df["swapped"]]
    keep_attn = hyb.groupby(["seed", "attn_head"])["s_acc"].mean()
    keep_vals = hyb.groupby(["seed", "ov_head"])["s_acc"].mean().rename_axis(["seed", "attn_head"])
    fig, axes = _figure(1, 3, figsize=(14, 4.8))
    lo = min(0.45, float(np.nanmin(df["s_acc"])) - 0.02) if len(df) else 0.45
    for ax, series, title, colour in (
            (axes[0], keep_attn, "its attention + another head's values", "#228833"),
            (axes[1], keep_vals, "its values + another head's attention", "#ee6677")):
        x, y = own.align(series, join="inner")
        ax.plot([lo, 1.0], [lo, 1.0], color="#888888", lw=0.8, ls="--", label="no change")
        ax.scatter(x, y, s=14, alpha=0.6, color=colour, label=f"one head (n = {len(x)})")
        ax.set_xlim(lo, 1.005)
        ax.set_ylim(lo, 1.005)
        ax.set_aspect("equal")
        ax.set_xlabel("s-acc of the head itself (fraction)")
        ax.set_title(f"{title}\nmedian change {float(np.nanmedian(y - x)):+.3f}", fontsize=9)
        ax.legend(loc="lower right", fontsize=7)
    axes[0].set_ylabel("s-acc of the hybrid (fraction; threshold refitted on 'fit')")

    ax, gap = axes[2], VALUE_SWAP_GAP
    donors = swap_donors(df)
    unequal = donors["informative"].to_numpy()
    d_attn = (donors["s_acc"] - donors["by_attn"]).abs().to_numpy()[unequal]
    d_vals = (donors["s_acc"] - donors["by_vals"]).abs().to_numpy()[unequal]
    top = max(float(np.max(d_attn, initial=0)), float(np.max(d_vals, initial=0)), gap) * 1.05
    ax.plot([0, top], [0, top], color="#888888", lw=0.8, ls="--", label="as close to both")
    ax.scatter(d_attn, d_vals, s=18, alpha=0.7, color="#4477aa",
               label=f"one hybrid (n = {int(unequal.sum())})")
    closer = int((d_attn < d_vals).sum())
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("|hybrid - its attention donor| (s-acc)")
    ax.set_ylabel("|hybrid - its value donor| (s-acc)")
    ax.set_title(f"hybrids of heads whose s-acc differ by > {gap:g}\n"
                 f"closer to the attention donor (above the diagonal): {closer} of "
                 f"{int(unequal.sum())}", fontsize=9)
    if not unequal.any():
        ax.text(0.5, 0.5, "no two heads differ by more than this:\nthe swap cannot tell "
                "attention from values", ha="center", va="center", transform=ax.transAxes,
                fontsize=8)
    ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(f"Value swap on '{set_name}': does s-acc follow the attention or the values?")
    return _save(fig, out, "value_swap")


def attention_examples(rows: pd.DataFrame, out: Path, n_seeds: int = 2) -> list[Path]:
    """The raw EOS attention of every head on a few example strings, for the first seeds: one
    panel per (seed, string), heads as rows, the string's slots as columns."""
    seeds = sorted(rows["seed"].unique())[:n_seeds]
    examples = sorted(rows["example"].unique())
    n_heads = int(rows["head"].max()) + 1
    fig, axes = _figure(len(seeds), len(examples), squeeze=False,
                        figsize=(3.2 * len(examples) + 1.2, 0.5 + (0.35 * n_heads + 0.9) * len(seeds)))
    image, top = None, float(rows.loc[rows["seed"].isin(seeds), "weight"].max())
    for r, seed in enumerate(seeds):
        for c, ex in enumerate(examples):
            df = rows[(rows["seed"] == seed) & (rows["example"] == ex)]
            grid = df.pivot(index="head", columns="position", values="weight")
            tokens = df.drop_duplicates("position").sort_values("position")["token"]
            ax = axes[r, c]
            image = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=0, vmax=top, aspect="auto")
            ax.set_xticks(range(len(tokens)), list(tokens), fontsize=7)
            layer = df.drop_duplicates("head").set_index("head")["layer"] \
                if "layer" in df and rows["layer"].nunique() > 1 else None
            ax.set_yticks(range(n_heads), [f"head {h}" + ("" if layer is None else
                                                         f" (layer {layer[h]})")
                                           for h in grid.index], fontsize=7)
            ax.set_title(f"seed {seed}: " + "".join(t for t in tokens if t in "012"), fontsize=8)
            if r == len(seeds) - 1:
                ax.set_xlabel("token (slot of the string)", fontsize=8)
    fig.colorbar(image, ax=axes, label="attention of the EOS query (fraction of the row)",
                 fraction=0.03)
    fig.suptitle("EOS attention per head on example strings: the same colour on 0s and 1s "
                 "means w01 near 1, dark 2s mean w02 near 0", fontsize=9)
    return _save(fig, out, "attention_examples")


STATUS_COLORS = {"held": "#2e7d32", "did not hold": "#c62828", "mixed": "#b26a00",
                 "inconclusive": "#5e35b1", "not measured": "#757575"}


def sensitivity(table: pd.DataFrame, out: Path) -> Path:
    """Each rule's verdict with one threshold varied at a time (rows: rule and threshold;
    columns: the factor on the default), from a `questions.base.sensitivity` table. Returns the PNG."""
    rows = list(dict.fromkeys(zip(table["rule"], table["threshold"])))
    factors = np.sort(table["factor"].unique())
    status = table.set_index(["rule", "threshold", "factor"])["status"]
    names = list(STATUS_COLORS)
    codes = np.array([[names.index(status[r, t, f]) for f in factors] for r, t in rows])
    fig, ax = _figure(figsize=(8, 1.2 + 0.24 * len(rows)))
    cmap = matplotlib.colors.ListedColormap(list(STATUS_COLORS.values()))
    ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, aspect="auto")
    ticks = [i for i, f in enumerate(factors) if np.isclose(np.log2(f) * 4, round(np.log2(f) * 4))]
    ax.set_xticks(ticks, [f"x{factors[i]:.2g}" for i in ticks], fontsize=8)
    ax.set_yticks(range(len(rows)), [f"rule {r}: {t}" for r, t in rows], fontsize=8)
    ax.axvline(int(np.argmin(np.abs(np.log(factors)))), color="white", lw=1.5)
    ax.set_xlabel("factor on the threshold's default (white line: the rule as written)")
    ax.set_ylabel("rule (question or sub-claim) and threshold varied")
    handles = [matplotlib.patches.Patch(color=c, label=n) for n, c in STATUS_COLORS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              title="verdict", title_fontsize=8)
    ax.set_title("Threshold sensitivity: each verdict with one threshold varied, the others "
                 "at their defaults", fontsize=9)
    _save(fig, out, "sensitivity")
    return out / "sensitivity.png"


def _heads_figures(d: Path, set_name: str) -> list[Path]:
    heads = pd.read_csv(d / "heads.csv")
    return (head_table(heads, set_name, d / "figures")
            + attention_mass(heads, set_name, d / "figures"))


def _intervention_figures(d: Path, set_name: str) -> list[Path]:
    inter = pd.read_csv(d / "intervention.csv")
    heads = pd.read_csv(d / "heads.csv")
    measured = heads[heads["set"] == inter["set"].iloc[0]]
    return (intervention_heatmaps(inter, measured, d / "figures")
            + intervention_curve(inter, measured, d / "figures"))


# figure group -> (the tables it reads, what draws it); analysis draws each group as soon as its
# tables are written
GROUPS = {
    "heads": (("heads.csv",), _heads_figures),
    "intervention": (("intervention.csv", "heads.csv"), _intervention_figures),
    "aggregation": (("aggregation.csv",), lambda d, s: aggregation(
        pd.read_csv(d / "aggregation.csv"), s, d / "figures")),
    "value_swap": (("value_swap.csv",), lambda d, s: value_swap(
        pd.read_csv(d / "value_swap.csv"), s, d / "figures")),
    "attention_examples": (("attention_examples.csv",), lambda d, s: attention_examples(
        pd.read_csv(d / "attention_examples.csv", dtype={"token": str}), d / "figures")),
}


def draw(analysis_dir: str | Path, group: str, set_name: str) -> list[Path]:
    """The figures of one group (see GROUPS) from the tables in analysis_dir."""
    return GROUPS[group][1](Path(analysis_dir), set_name)


def plot_all(analysis_dir: str | Path, set_name: str | None = None) -> list[Path]:
    """Every figure from the CSV tables of an analysis directory, into its figures/ folder.
    set_name: the set of the per-head and aggregation figures (default: the intervention's)."""
    d = Path(analysis_dir)
    set_name = set_name or str(pd.read_csv(d / "intervention.csv", nrows=1)["set"].iloc[0])
    return [p for group in GROUPS for p in draw(d, group, set_name)]
