"""Training-path analysis (SPEC 5, question 4 of SPEC 1): how often a configuration reaches the
solution, how its heads get there, and which early quantities tell a failing run apart.

It reads a sweep's tables (`sweeps`), never models, and writes SWEEP_DIR/paths/ (its figures
drawn from the tables by `count01.present.path_plots`). Success is the
sweep's: final l-acc >= 0.99 on `hard`; a failure is a run that is not a success. <grid> stands
for the sweep's grid fields (e.g. heads, init_scale), one column each.

- success.csv: config_id, <grid>, n_runs, n_success, n_diverged (failures whose weights blew up
  to NaN/inf), rate (n_success / n_runs), ci_low, ci_high (Wilson 95% interval of the rate),
  n_ideal, ideal_rate, ideal_ci_low, ideal_ci_high (the same for SPEC 4's ideal solution: hard,
  long, noisy and exhaustive l-acc >= 0.99), median_steps_to_success (median over successful
  runs of the first checkpoint step with hard l-acc >= 0.99; empty if none), restarts_99 (runs
  needed for a 99% chance of at least one success at this rate; inf at rate 0), restarts_99_low
  and restarts_99_high (the same at the upper and lower end of the rate's interval).
- stability.csv: config_id, <grid>, n_success, then over the successful runs' heads on hard the
  quartiles (_q25, _median, _q75) of log10_w01, log10_w02 and s_acc, and min_heads_mean,
  min_heads_sd, min_heads_modal_share (the minimal head-set size across seeds).
- early_stop.csv: one row per (early-stopping rule of `train.STOP_RULES`, configuration): rule
  (its version), config_id, <grid>, n_runs, n_failed, n_stopped (runs the rule, replayed on the
  checkpoints, gives up on), n_wrongly_stopped (stopped runs that went on to succeed), n_missed
  (failed runs it does not stop), seed_steps (the configuration's, without stopping),
  saved_fraction (share of them after the stops), half ("design" or "held-out": `halves`).
- labour.csv: config_id, <grid>, n_runs, n_pseudo_ensemble, n_divided, n_mixed, n_unsolved (the
  runs of each division of labour, SPEC 4), n_solved, then pseudo_ensemble_share and
  divided_share among the solved runs with their Wilson 95% interval (_ci_low, _ci_high); for
  sweeps whose results hold the labour column.
- best_practice.csv: config_id, <grid>, n_runs, n_ideal, ideal_rate, ideal_ci_low,
  ideal_ci_high, steps, restarts_99_ideal (runs for a 99% chance of one ideal run, from
  ideal_ci_low: pessimistic), seed_steps_99_ideal (restarts_99_ideal x steps: the compute that
  buys a reliable ideal solution), cheapest first.
- minimal_heads.csv: config_id, <grid>, heads (the configuration's head count), size (size of the
  smallest head set keeping hard l-acc >= 0.99 with alpha refitted; empty = no head set does),
  n_runs (runs with that size), fraction (of the configuration's runs).
- early_quantities.csv: one row per (run, checkpoint before the last): config_id, <grid>, seed,
  step, step_frac (step / steps), failed (bool), then the quantities: loss (cross-entropy on iid),
  hard_l_acc, hard_auc, best_head_s_acc and mean_head_s_acc (max / mean over heads of s-acc on
  hard), min_abs_log_w01 and mean_abs_log_w01 (min / mean over heads of |ln w01|: 0 is balanced
  attention between 0s and 1s), max_log_w02 and mean_log_w02 (max / mean over heads of ln w02).
- early_predictors.csv: scope ("all": every configuration pooled; else a config_id), step,
  quantity, n_runs, n_failed, auc (ROC AUC of the quantity as a score for failure: the chance a
  failing run's value exceeds a successful run's, ties 1/2), auc_best (max(auc, 1 - auc)),
  direction ("higher" or "lower": which values signal failure). Only scopes and steps with both
  failures and successes.
- success_rate.png/.svg: rate and Wilson 95% interval per configuration.
- trajectories/<config_id>.png/.svg: hard l-acc per seed, then s-acc, w01 and w02 per seed and
  head over the checkpoints; thin lines, blue = run succeeded, red = failed.
- minimal_heads.png/.svg: distribution of the minimal head-set size per configuration.
- labour.png/.svg: each configuration's runs by division of labour (with labour.csv).
- phase_diagram.png/.svg: success and ideal rate over init_scale x lr, a panel per (optimizer,
  heads); drawn when the sweep varies init_scale or lr.
- early_predictors.png/.svg: pooled auc_best of every quantity against the checkpoint step.
- paths.json: {sweep_dir, success, n_configs, missing_configs (ids not finished), n_runs,
  configs: [{config_id, grid, n_runs, n_success, n_diverged, rate, ci_low, ci_high, n_ideal,
  ideal_rate, ideal_ci_low, ideal_ci_high, median_steps_to_success, restarts_99 (null: no number
  of restarts suffices), restarts_99_low, restarts_99_high, min_heads: {size or "none":
  n_runs}}], early_predictors: [the best pooled quantity per step: {step, quantity, auc,
  auc_best, direction, n_runs, n_failed}], early_stop_rules ({version: text}),
  early_stop_rule (the version training uses), figures_skipped: {name: why},
  files: {name: what}}.
- .lock: held while `analyze_paths` writes here (it first removes what a killed one left).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..criteria import LABOURS, RESTART_CHANCE, SUCCESS_L_ACC, SUCCESS_SET
from ..files import atomic_write, json_safe, locked, remove_leftovers, write_json
from ..present import path_plots
from ..stats import wilson
from ..sweeps import Point, load_tables, read_points
from ..train import STOP_RULE, STOP_RULES, StopRule
from .metrics import roc_auc_rows

QUANTITIES = ("loss", "hard_l_acc", "hard_auc", "best_head_s_acc", "mean_head_s_acc",
              "min_abs_log_w01", "mean_abs_log_w01", "max_log_w02", "mean_log_w02")


def _per_config(runs: pd.DataFrame, grid: list[str]):
    """The runs grouped by configuration, in sweep order, and a frame of each one's config_id and
    grid values for the per-configuration columns to join."""
    g = runs.groupby("config_id", sort=False)
    return g, (g[grid].first().reset_index() if grid
               else pd.DataFrame({"config_id": list(g.groups)}))


def success_table(runs: pd.DataFrame, grid: list[str]) -> pd.DataFrame:
    """One row per configuration: runs, successes, rate, Wilson 95% interval, median steps."""
    g, out = _per_config(runs, grid)
    out["n_runs"] = g.size().to_numpy()
    out["n_success"] = g["success"].sum().astype(int).to_numpy()
    out["n_diverged"] = g["diverged"].sum().astype(int).to_numpy()
    out["rate"] = out["n_success"] / out["n_runs"]
    out["ci_low"], out["ci_high"] = wilson(out["n_success"], out["n_runs"])
    out["n_ideal"] = g["ideal"].sum().astype(int).to_numpy()
    out["ideal_rate"] = out["n_ideal"] / out["n_runs"]
    out["ideal_ci_low"], out["ideal_ci_high"] = wilson(out["n_ideal"], out["n_runs"])
    ok = runs[runs["success"]]
    median = ok.groupby("config_id")["steps_to_success"].median()
    out["median_steps_to_success"] = out["config_id"].map(median).astype(float)
    # restarts for a 99% chance of one success: from the rate, and from either end of its interval
    out["restarts_99"] = restarts(out["rate"])
    out["restarts_99_low"], out["restarts_99_high"] = restarts(out["ci_high"]), restarts(out["ci_low"])
    return out


def restarts(rate, chance: float = RESTART_CHANCE) -> np.ndarray:
    """Independent runs needed for P(at least one success) >= chance at a success rate: the least
    k with 1 - (1 - rate)^k >= chance (inf at rate 0)."""
    rate = np.asarray(rate, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.ceil(np.log1p(-chance) / np.log1p(-np.minimum(rate, 1.0)))
    return np.where(rate >= 1.0, 1.0, np.where(rate <= 0.0, np.inf, k))


def halves(points: list[Point]) -> dict[str, str]:
    """config_id -> "design" or "held-out": the configurations at even positions of the sweep's
    grid order, and those at odd ones (criteria's protocol for choosing an early-stopping rule)."""
    return {p.id: "held-out" if i % 2 else "design" for i, p in enumerate(points)}


def early_stop_table(trajectory: pd.DataFrame, runs: pd.DataFrame, grid: list[str],
                     rule: StopRule = STOP_RULE) -> pd.DataFrame:
    """What an early-stopping rule (`train.StopRule`) would have done to the sweep's runs,
    replayed on their checkpoints: per configuration, the runs it stops, how many of those went on
    to succeed (wrongly stopped), the failures it misses, and the share of seed-steps it saves."""
    t = trajectory.merge(runs[["config_id", "seed", "steps", "success"]], on=["config_id", "seed"])
    value = t[rule.quantity].astype(float)  # empty (NaN) where the weights were not finite
    hit = t[[rule.stops(v, s, n) for v, s, n in zip(value, t["step"], t["steps"])]]
    stop = hit.groupby(["config_id", "seed"])["step"].min().rename("stop_step")
    r = runs.merge(stop, left_on=["config_id", "seed"], right_index=True, how="left")
    r["stopped"] = r["stop_step"].notna()
    r["saved"] = np.where(r["stopped"], r["steps"] - r["stop_step"], 0)
    g, out = _per_config(r, grid)
    out.insert(0, "rule", rule.version)
    out["n_runs"] = g.size().to_numpy()
    out["n_failed"] = (g.size() - g["success"].sum()).astype(int).to_numpy()
    out["n_stopped"] = g["stopped"].sum().astype(int).to_numpy()
    out["n_wrongly_stopped"] = (r["stopped"] & r["success"]).groupby(r["config_id"],
                                                                      sort=False).sum().to_numpy()
    out["n_missed"] = (~r["stopped"] & ~r["success"]).groupby(r["config_id"],
                                                               sort=False).sum().to_numpy()
    out["seed_steps"] = g["steps"].sum().to_numpy()
    out["saved_fraction"] = (g["saved"].sum() / g["steps"].sum()).to_numpy()
    return out


def labour_table(runs: pd.DataFrame, grid: list[str]) -> pd.DataFrame:
    """Per configuration, how its runs divide the labour between heads (SPEC 4): the count of
    each class of `criteria.LABOURS`, and the share of pseudo-ensembles and of divided seeds
    among the solved ones with Wilson 95% intervals."""
    g, out = _per_config(runs, grid)
    out["n_runs"] = g.size().to_numpy()
    for name in LABOURS:
        out[f"n_{name.replace('-', '_')}"] = g["labour"].apply(
            lambda x, name=name: int((x == name).sum())).to_numpy()
    out["n_solved"] = out["n_runs"] - out["n_unsolved"]
    for name in ("pseudo_ensemble", "divided"):
        out[f"{name}_share"] = out[f"n_{name}"] / out["n_solved"]
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = wilson(out[f"n_{name}"], out["n_solved"])
    return out


def stability_table(runs: pd.DataFrame, heads: pd.DataFrame, grid: list[str]) -> pd.DataFrame:
    """How alike the seeds of a configuration are: the spread over its successful runs' heads of
    w01, w02 and s-acc on `hard` (median and quartiles; w01 and w02 as log10, where spread is a
    factor), and of the minimal head-set size (mean, sd, share of the commonest size)."""
    ok = runs.loc[runs["success"], ["config_id", "seed"]]
    h = heads[heads["set"] == SUCCESS_SET].merge(ok, on=["config_id", "seed"])
    with np.errstate(divide="ignore"):  # a ratio of 0 is -inf: the quartiles take it as it is
        h = h.assign(log10_w01=np.log10(h["w01"]), log10_w02=np.log10(h["w02"]))
    rows = []
    for cid, g in runs.groupby("config_id", sort=False):
        mine = h[h["config_id"] == cid]
        row = {"config_id": cid} | {k: g[k].iloc[0] for k in grid}
        row["n_success"] = int(g["success"].sum())
        for col in ("log10_w01", "log10_w02", "s_acc"):
            q = mine[col].quantile([0.25, 0.5, 0.75]) if len(mine) else pd.Series([np.nan] * 3)
            row |= {f"{col}_q25": float(q.iloc[0]), f"{col}_median": float(q.iloc[1]),
                    f"{col}_q75": float(q.iloc[2])}
        sizes = g.loc[g["success"], "min_heads"].dropna().astype(float)
        row |= {"min_heads_mean": sizes.mean(), "min_heads_sd": sizes.std(ddof=0),
                "min_heads_modal_share": (sizes.value_counts().max() / len(sizes)
                                          if len(sizes) else np.nan)}
        rows.append(row)
    return pd.DataFrame(rows)


def best_practice_table(success: pd.DataFrame, runs: pd.DataFrame, grid: list[str]
                        ) -> pd.DataFrame:
    """The configurations by what a reliable ideal solution costs: seed-steps for a 99% chance of
    at least one ideal run, counted pessimistically (from the lower end of the ideal rate's
    Wilson interval), cheapest first; configurations that never reached it come last."""
    steps = runs.groupby("config_id", sort=False)["steps"].first()
    t = success[["config_id", *grid, "n_runs", "n_ideal", "ideal_rate", "ideal_ci_low",
                 "ideal_ci_high"]].copy()
    t["steps"] = t["config_id"].map(steps).to_numpy()
    t["restarts_99_ideal"] = restarts(t["ideal_ci_low"])
    t["seed_steps_99_ideal"] = t["restarts_99_ideal"] * t["steps"]
    return t.sort_values(["seed_steps_99_ideal", "ideal_ci_low"], ascending=[True, False],
                         kind="stable").reset_index(drop=True)


def minimal_heads_table(runs: pd.DataFrame, grid: list[str]) -> pd.DataFrame:
    """The distribution of the minimal head-set size per configuration (empty size = none)."""
    rows = []
    for cid, g in runs.groupby("config_id", sort=False):
        sizes = g["min_heads"].astype("Int64")
        for size, n in sizes.value_counts(dropna=False).sort_index().items():
            rows.append({"config_id": cid} | {k: g[k].iloc[0] for k in grid}
                        | {"heads": int(g["heads"].iloc[0]), "size": size, "n_runs": int(n),
                           "fraction": n / len(g)})
    return pd.DataFrame(rows)


def early_quantities(tables: dict[str, pd.DataFrame], grid: list[str]) -> pd.DataFrame:
    """Per run and checkpoint before the last: the quantities that might predict failure."""
    keys = ["config_id", "seed", "step"]
    with np.errstate(divide="ignore"):  # a ratio of 0 is -inf; predictor_table drops it
        h = tables["head_trajectory"].assign(
            abs_log_w01=lambda d: np.abs(np.log(d["w01"])), log_w02=lambda d: np.log(d["w02"]))
    heads = h.groupby(keys, sort=False).agg(
        best_head_s_acc=("s_acc", "max"), mean_head_s_acc=("s_acc", "mean"),
        min_abs_log_w01=("abs_log_w01", "min"), mean_abs_log_w01=("abs_log_w01", "mean"),
        max_log_w02=("log_w02", "max"), mean_log_w02=("log_w02", "mean")).reset_index()
    runs = tables["results"][["config_id", "seed", "steps", "success"]]
    q = tables["trajectory"][["config_id", *grid, "seed", "step", "loss", "hard_l_acc", "hard_auc"]]
    q = q.merge(heads, on=keys).merge(runs, on=["config_id", "seed"])
    q = q[q["step"] < q["steps"]]
    q.insert(3 + len(grid), "step_frac", q["step"] / q["steps"])
    q.insert(4 + len(grid), "failed", ~q["success"])
    return q.drop(columns=["steps", "success"]).reset_index(drop=True)


def predictor_table(q: pd.DataFrame) -> pd.DataFrame:
    """ROC AUC of every early quantity for failure, pooled ("all") and per configuration."""
    rows = []
    scopes = [("all", q)] + list(q.groupby("config_id", sort=False))
    for scope, d in scopes:
        for step, g in d.groupby("step"):
            for name in QUANTITIES:
                v = g[["failed", name]].replace([np.inf, -np.inf], np.nan).dropna()
                n_failed = int(v["failed"].sum())
                if n_failed == 0 or n_failed == len(v):
                    continue
                auc = float(roc_auc_rows(torch.tensor(v[name].to_numpy(float))[None],
                                         torch.tensor(v["failed"].to_numpy(int)),
                                         torch.ones(len(v), dtype=torch.float64))[0])
                rows.append({"scope": scope, "step": int(step), "quantity": name,
                             "n_runs": len(v), "n_failed": n_failed, "auc": auc,
                             "auc_best": max(auc, 1 - auc),
                             "direction": "higher" if auc >= 0.5 else "lower"})
    cols = ["scope", "step", "quantity", "n_runs", "n_failed", "auc", "auc_best", "direction"]
    return pd.DataFrame(rows, columns=cols)


# --- the whole analysis -------------------------------------------------------------------------

def analyze_paths(sweep_dir: str | Path, out: str | Path | None = None,
                  trajectories: bool = True) -> dict[str, Any]:
    """Write every table, figure and paths.json of the training-path study; return the summary.
    One writer at a time per output directory, which first removes what a killed one left.
    trajectories=False leaves the trajectory figures to `trajectory_figures` calls, made after
    this one (paths.json lists them all the same)."""
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "paths" if out is None else Path(out)
    points = read_points(sweep_dir)
    tables = load_tables(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out, "paths"):
        for d in (out, out / "trajectories"):
            remove_leftovers(d)
        return _write(sweep_dir, out, points, tables, trajectories)


def trajectory_figures(sweep_dir: str | Path, config_ids: list[str],
                       out: str | Path | None = None) -> None:
    """The trajectory figures of `config_ids` into the paths directory `analyze_paths(...,
    trajectories=False)` has written; calls for other configurations may run beside it."""
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "paths" if out is None else Path(out)
    grid = list(read_points(sweep_dir)[0].grid)
    tables = load_tables(sweep_dir)
    success = success_table(tables["results"], grid)
    path_plots.draw_trajectories(out, success[success["config_id"].isin(config_ids)],
                                 tables["results"], tables["trajectory"],
                                 tables["head_trajectory"], grid)


def _write(sweep_dir: Path, out: Path, points: list[Point], tables: dict[str, pd.DataFrame],
           trajectories: bool) -> dict[str, Any]:
    grid = list(points[0].grid)
    runs = tables["results"]
    success = success_table(runs, grid)
    minimal = minimal_heads_table(runs, grid)
    quantities = early_quantities(tables, grid)
    pred = predictor_table(quantities)
    csvs = {"success": success, "minimal_heads": minimal, "early_quantities": quantities,
            "early_predictors": pred, "stability": stability_table(runs, tables["heads"], grid),
            "early_stop": pd.concat([
                early_stop_table(tables["trajectory"], runs, grid, rule).assign(
                    half=lambda d: d["config_id"].map(halves(points)))
                for rule in STOP_RULES.values()], ignore_index=True),
            **({"labour": labour_table(runs, grid)} if "labour" in runs else {}),
            "best_practice": best_practice_table(success, runs, grid)}
    for name, df in csvs.items():
        atomic_write(out / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))

    files, skipped = path_plots.draw(out, csvs, runs, tables["trajectory"],
                                     tables["head_trajectory"], grid, trajectories)
    files = {f"{n}.csv": "table (columns in count01.measure.paths)" for n in csvs} | files

    pooled = pred[pred["scope"] == "all"]
    best = pooled.loc[pooled.groupby("step")["auc_best"].idxmax()] if len(pooled) else pooled
    configs = []
    for _, row in success.iterrows():
        m = minimal[minimal["config_id"] == row["config_id"]]
        configs.append({"config_id": row["config_id"], "grid": {k: _plain(row[k]) for k in grid}}
                       | {k: _plain(row[k]) for k in ("n_runs", "n_success", "n_diverged",
                                                      "rate", "ci_low", "ci_high", "n_ideal",
                                                      "ideal_rate", "ideal_ci_low",
                                                      "ideal_ci_high", "median_steps_to_success",
                                                      "restarts_99", "restarts_99_low",
                                                      "restarts_99_high")}
                       | {"min_heads": {("none" if pd.isna(s) else str(int(s))): int(n)
                                        for s, n in zip(m["size"], m["n_runs"])}})
    summary = {"sweep_dir": str(sweep_dir), "success": f"{SUCCESS_SET} l-acc >= {SUCCESS_L_ACC}",
               "n_configs": len(success),
               "missing_configs": [p.id for p in points if p.id not in set(success["config_id"])],
               "n_runs": len(runs), "configs": configs,
               "early_predictors": [{k: _plain(v) for k, v in r.items() if k != "scope"}
                                    for r in best.to_dict("records")],
               "early_stop_rules": {str(v): r.text() for v, r in STOP_RULES.items()},
               "early_stop_rule": STOP_RULE.version,
               "figures_skipped": skipped, "files": files | {"paths.json": "this summary"}}
    summary = json_safe(summary)  # returned as written: NaN as None
    write_json(out / "paths.json", summary)
    return summary


def _plain(v):
    """numpy scalars as JSON values (write_json turns NaN into null)."""
    return v.item() if isinstance(v, (np.integer, np.bool_, np.floating)) else v
