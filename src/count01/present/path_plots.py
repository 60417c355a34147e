"""The training-path study's figures (`count01.measure.paths`), drawn from its tables: success
rates, trajectories, minimal head sets, division of labour, phase diagram, early predictors."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..criteria import LABOURS, SUCCESS_L_ACC, SUCCESS_SET
from .figures import FORMATS, save

COLORS = {True: "tab:blue", False: "tab:red"}  # run succeeded / failed
RATIO_RANGE = (1e-12, 1e12)  # attention ratios drawn on log axes: 0 and inf at these edges


def _label(row, grid: list[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in grid) if grid else row["config_id"]


def _save(fig, path: Path) -> list[Path]:
    return save(fig, path, dpi=120)


def plot_success(success: pd.DataFrame, grid: list[str], path: Path) -> list[Path]:
    """Rate and interval per configuration: columns for a few configurations, rows (one per
    configuration, the labels readable) for many."""
    pos = np.arange(len(success))
    labels = [_label(r, grid) for _, r in success.iterrows()]
    err = [success["rate"] - success["ci_low"], success["ci_high"] - success["rate"]]
    many = len(pos) > 12
    if many:
        fig, ax = plt.subplots(figsize=(7, 0.22 * len(pos) + 1.8), layout="constrained")
        ax.errorbar(success["rate"], pos, xerr=err, fmt="o", ms=3, capsize=2,
                    label="success rate, Wilson 95% CI")
        for p, (k, n) in zip(pos, zip(success["n_success"], success["n_runs"])):
            ax.annotate(f"{k}/{n}", (1.03, p), va="center", fontsize=6)
        ax.set_yticks(pos, labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(-0.02, 1.15)
        ax.set_xlabel("success rate (fraction of seeds)")
        ax.set_ylabel("configuration")
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(pos) + 2), 4.5), layout="tight")
        ax.errorbar(pos, success["rate"], yerr=err, fmt="o", capsize=4,
                    label="success rate, Wilson 95% CI")
        for p, (k, n) in zip(pos, zip(success["n_success"], success["n_runs"])):
            ax.annotate(f"{k}/{n}", (p, 1.02), ha="center", fontsize=8)
        ax.set_xticks(pos, labels, rotation=30, ha="right")
        ax.set_ylim(-0.02, 1.1)
        ax.set_ylabel("success rate (fraction of seeds)")
        ax.set_xlabel("configuration")
    ax.set_title(f"How often training reaches the solution\n({SUCCESS_SET} l-acc >= "
                 f"{SUCCESS_L_ACC})")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_trajectories(traj: pd.DataFrame, htraj: pd.DataFrame, success: dict[int, bool],
                      title: str, path: Path) -> list[Path]:
    """Seeds (and heads) as thin lines over checkpoints, colored by the run's final success."""
    fig, axes = plt.subplots(4, 1, figsize=(7, 11), sharex=True, layout="tight")
    for seed, rows in sorted(traj.groupby("seed").indices.items()):  # groupby's order
        axes[0].plot(traj["step"].to_numpy()[rows], traj["hard_l_acc"].to_numpy()[rows],
                     color=COLORS[success[seed]], lw=0.7, alpha=0.6)
    step = htraj["step"].to_numpy()  # numpy columns: pandas' per-line overhead was most of it
    cols = [htraj["s_acc"].to_numpy()] + [htraj[c].to_numpy().clip(*RATIO_RANGE)
                                          for c in ("w01", "w02")]  # 0 and inf at the edges
    for (seed, _), rows in sorted(htraj.groupby(["seed", "head"]).indices.items()):
        for ax, v in zip(axes[1:], cols):
            ax.plot(step[rows], v[rows], color=COLORS[success[seed]], lw=0.6, alpha=0.45)
    axes[0].axhline(SUCCESS_L_ACC, color="gray", ls=":", lw=1)
    axes[2].axhline(1.0, color="gray", ls=":", lw=1)
    for ax in axes[2:]:
        ax.set_yscale("log")
    axes[0].set_ylabel(f"model l-acc on {SUCCESS_SET}\n(fraction, one line per seed)")
    axes[1].set_ylabel("head s-acc on hard\n(fraction, one line per seed x head)")
    axes[2].set_ylabel("w01: attention per 1 / per 0\n(ratio, log scale; 1 = balanced)")
    axes[3].set_ylabel("w02: attention per noise symbol / per 0\n(ratio, log scale)")
    axes[3].set_xlabel("training step (ratios beyond 1e-12..1e12, 0 and inf included, drawn at "
                       "the edges)")
    n_ok = sum(success.values())
    handles = [Line2D([], [], color=COLORS[True], label=f"run succeeded ({n_ok})"),
               Line2D([], [], color=COLORS[False], label=f"run failed ({len(success) - n_ok})")]
    axes[0].legend(handles=handles, loc="lower right", fontsize=8)
    axes[0].set_title(f"Training paths: {title}")
    return _save(fig, path)


def draw_trajectories(out: Path, success: pd.DataFrame, runs: pd.DataFrame,
                      trajectory: pd.DataFrame, head_trajectory: pd.DataFrame, grid: list[str]
                      ) -> list[Path]:
    """The trajectory figure of each configuration (row) of `success`: their files."""
    paths = []
    for _, row in success.iterrows():
        cid = row["config_id"]
        mine = runs["config_id"] == cid
        paths += plot_trajectories(trajectory[trajectory["config_id"] == cid],
                                   head_trajectory[head_trajectory["config_id"] == cid],
                                   dict(zip(runs.loc[mine, "seed"], runs.loc[mine, "success"])),
                                   _label(row, grid), out / "trajectories" / cid)
    return paths


def plot_minimal_heads(table: pd.DataFrame, grid: list[str], path: Path) -> list[Path]:
    configs = list(dict.fromkeys(table["config_id"]))
    sizes = sorted(int(s) for s in table["size"].dropna().unique())
    cats = [str(s) for s in sizes] + ["none"]
    if len(configs) > 8:  # bars with a legend of every configuration stop being readable
        return _plot_minimal_heads_grid(table, grid, configs, cats, path)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(cats) * max(1, len(configs) / 2) + 2), 4),
                           layout="tight")
    width = 0.8 / len(configs)
    for i, cid in enumerate(configs):
        g = table[table["config_id"] == cid]
        frac = dict(zip(g["size"].astype("string").fillna("none"), g["fraction"]))
        ax.bar(np.arange(len(cats)) + (i - (len(configs) - 1) / 2) * width,
               [frac.get(c, 0.0) for c in cats], width, label=_label(g.iloc[0], grid))
    ax.set_xticks(np.arange(len(cats)), cats)
    ax.set_xlabel(f"size of the smallest head set keeping {SUCCESS_SET} l-acc >= {SUCCESS_L_ACC} "
                  "(alpha refitted; none = no set does)")
    ax.set_ylabel("fraction of seeds")
    ax.set_title("Minimal head sets")
    ax.legend(fontsize=8)
    return _save(fig, path)


PHASE_AXES = ("init_scale", "lr")  # the phase diagram's axes; its panels: PHASE_PANELS
PHASE_PANELS = ("optimizer", "heads")


def phase_table(success: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The success table with every configuration's phase-diagram fields (taken from the runs,
    so they are there whether or not the sweep varied them)."""
    fields = runs.groupby("config_id", sort=False)[[*PHASE_AXES, *PHASE_PANELS]].first()
    return success.drop(columns=[c for c in fields.columns if c in success.columns]).merge(
        fields, left_on="config_id", right_index=True)


def plot_phase(table: pd.DataFrame, path: Path) -> list[Path]:
    """Success and ideal rate over init_scale x lr, a column of panels per (optimizer, heads);
    cells are averaged over any other grid field and annotated with k/n."""
    panels = table.groupby(list(PHASE_PANELS), sort=True)
    xs, ys = sorted(table["lr"].unique()), sorted(table["init_scale"].unique())
    fig, axes = plt.subplots(2, panels.ngroups, figsize=(3.2 * panels.ngroups + 2.5, 7.5),
                             squeeze=False, layout="constrained")
    for col, ((opt, heads), g) in enumerate(panels):
        cells = g.groupby(["init_scale", "lr"])[["n_success", "n_ideal", "n_runs"]].sum()
        for row, (what, label) in enumerate((("n_success", "success rate"),
                                             ("n_ideal", "ideal-solution rate"))):
            grid = np.full((len(ys), len(xs)), np.nan)
            ax = axes[row, col]
            for (init, lr), c in cells.iterrows():
                i, j = ys.index(init), xs.index(lr)
                grid[i, j] = c[what] / c["n_runs"]
                ax.annotate(f"{int(c[what])}/{int(c['n_runs'])}", (j, i), ha="center",
                            va="center", fontsize=7)
            im = ax.imshow(grid, origin="lower", cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
            ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
            ax.set_xlabel("learning rate lr")
            ax.set_ylabel("init_scale (x 1/sqrt(fan_in))")
            ax.set_title(f"{label}\n{opt}, heads={heads}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="fraction of seeds")
    fig.suptitle("Phase diagram: where training reaches\nthe solution (top) and the ideal "
                 "solution (bottom)")
    return _save(fig, path)


def _plot_minimal_heads_grid(table: pd.DataFrame, grid: list[str], configs: list[str],
                             cats: list[str], path: Path) -> list[Path]:
    """The minimal head-set sizes as a configuration x size heat map (many configurations)."""
    frac = np.zeros((len(configs), len(cats)))
    labels = []
    for i, cid in enumerate(configs):
        g = table[table["config_id"] == cid]
        got = dict(zip(g["size"].astype("string").fillna("none"), g["fraction"]))
        frac[i] = [got.get(c, 0.0) for c in cats]
        labels.append(_label(g.iloc[0], grid))
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(configs) + 1.8), layout="constrained")
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(np.arange(len(cats)), cats)
    ax.set_yticks(np.arange(len(configs)), labels, fontsize=6)
    ax.set_xlabel(f"size of the smallest head set keeping {SUCCESS_SET} l-acc >= {SUCCESS_L_ACC} "
                  "(alpha refitted; none = no set does)", fontsize=8)
    ax.set_ylabel("configuration")
    ax.set_title("Minimal head sets")
    fig.colorbar(im, ax=ax, label="fraction of seeds")
    return _save(fig, path)


LABOUR_COLORS = {"pseudo-ensemble": "tab:blue", "divided": "tab:orange", "mixed": "tab:green",
                 "unsolved": "tab:gray"}


def plot_labour(table: pd.DataFrame, grid: list[str], path: Path) -> list[Path]:
    """Each configuration's runs by division of labour, one stacked row per configuration."""
    labels = [_label(r, grid) for _, r in table.iterrows()]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(table) + 1.8), layout="constrained")
    left = np.zeros(len(table))
    for name in LABOURS:
        frac = (table[f"n_{name.replace('-', '_')}"] / table["n_runs"]).to_numpy()
        ax.barh(np.arange(len(table)), frac, left=left, color=LABOUR_COLORS[name], label=name)
        left += frac
    ax.set_yticks(np.arange(len(table)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of seeds")
    ax.set_ylabel("configuration")
    ax.set_title("Division of labour between heads (SPEC 4), per configuration")
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.06))
    return _save(fig, path)


def plot_predictors(pred: pd.DataFrame, path: Path) -> list[Path]:
    pooled = pred[pred["scope"] == "all"]
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="tight")
    for name, g in pooled.groupby("quantity", sort=False):
        ax.plot(g["step"], g["auc_best"], marker="o", ms=3, label=name)
    ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
    ax.set_ylim(0.4, 1.02)
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("ROC AUC for failure (best direction)")
    ax.set_title("Which early quantities predict a failed run (all configurations pooled)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def draw(out: Path, tables: dict[str, pd.DataFrame], runs: pd.DataFrame, trajectory: pd.DataFrame,
         head_trajectory: pd.DataFrame, grid: list[str], trajectories: bool = True
         ) -> tuple[dict[str, str], dict[str, str]]:
    """Every figure of SWEEP_DIR/paths/ from its tables (`success`, `minimal_heads`,
    `early_predictors`, `labour` if any) and the sweep's runs and trajectories: (figure files
    written, figures skipped with why). trajectories=False leaves the trajectory figures, most
    of the work, to `draw_trajectories` calls (the study spreads them over its workers); they
    are listed all the same."""
    success, minimal, pred = tables["success"], tables["minimal_heads"], tables["early_predictors"]
    files, skipped = {}, {}
    files |= {p.name: "figure" for p in plot_success(success, grid, out / "success_rate")}
    paths = (draw_trajectories(out, success, runs, trajectory, head_trajectory, grid)
             if trajectories else [out / "trajectories" / f"{cid}.{ext}"
                                   for cid in success["config_id"] for ext in FORMATS])
    files |= {f"trajectories/{p.name}": "figure" for p in paths}
    if minimal["size"].notna().any():
        figs = plot_minimal_heads(minimal, grid, out / "minimal_heads")
        files |= {p.name: "figure" for p in figs}
    else:
        skipped["minimal_heads"] = "no run has a minimal head set"
    if "labour" in tables:
        files |= {p.name: "figure" for p in plot_labour(tables["labour"], grid, out / "labour")}
    phase = phase_table(success, runs)
    if phase["init_scale"].nunique() > 1 or phase["lr"].nunique() > 1:
        files |= {p.name: "figure" for p in plot_phase(phase, out / "phase_diagram")}
    else:
        skipped["phase_diagram"] = "the sweep varies neither init_scale nor lr"
    if (pred["scope"] == "all").any():
        files |= {p.name: "figure" for p in plot_predictors(pred, out / "early_predictors")}
    else:
        skipped["early_predictors"] = "no checkpoint step has both failed and successful runs"
    return files, skipped
