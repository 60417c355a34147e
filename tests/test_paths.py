import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from count01.files import write_json
from count01.measure.paths import (
    QUANTITIES,
    analyze_paths,
    best_practice_table,
    early_stop_table,
    halves,
    labour_table,
    minimal_heads_table,
    predictor_table,
    restarts,
    stability_table,
    success_table,
    trajectory_figures,
)
from count01.stats import wilson
from count01.sweeps import FORMAT, TABLES, Sweep, run_sweep
from count01.train import STOP_RULE, STOP_RULES

TINY = {"steps": 100, "batch_size": 64, "checkpoint_every": 25, "eval_size": 512,
        "exhaustive_len": 6, "max_len": 8, "long_max_len": 12}


def _runs(success: dict[str, list[bool]]) -> pd.DataFrame:
    rows = []
    for cid, flags in success.items():
        for seed, ok in enumerate(flags):
            rows.append({"config_id": cid, "heads": int(cid[1:]), "seed": seed, "success": ok,
                         "ideal": ok and seed % 2 == 0, "diverged": False, "steps": 1000,
                         "steps_to_success": 100.0 * (seed + 1) if ok else np.nan,
                         "min_heads": (1 + seed % 2) if ok else np.nan})
    return pd.DataFrame(rows)


def test_success_table_counts_each_configuration():
    runs = _runs({"h1": [True, False, False, True], "h4": [True, True, True]})
    t = success_table(runs, ["heads"])
    assert list(t["config_id"]) == ["h1", "h4"] and list(t["heads"]) == [1, 4]
    assert list(t["n_runs"]) == [4, 3] and list(t["n_success"]) == [2, 3]
    assert list(t["rate"]) == [0.5, 1.0]
    assert list(t["median_steps_to_success"]) == [250.0, 200.0]  # successful runs only
    lo, hi = wilson(2, 4)
    assert t["ci_low"][0] == lo and t["ci_high"][0] == hi


def test_restarts_for_a_99_percent_chance_follow_the_rate_and_its_interval():
    assert list(restarts([1.0, 0.5, 0.1, 0.0])) == [1, 7, 44, np.inf]  # 1 - 0.5^7 >= 0.99 > 1 - 0.5^6
    t = success_table(_runs({"h1": [True, False, False, True]}), ["heads"])
    assert t["restarts_99"][0] == 7
    assert t["restarts_99_low"][0] < 7 < t["restarts_99_high"][0]  # from ci_high and ci_low
    assert list(t[["n_ideal", "ideal_rate"]].iloc[0]) == [1, 0.25]  # seed 0 only: ok, even


def test_best_practice_puts_the_cheapest_reliable_ideal_solution_first():
    runs = _runs({"h1": [True] * 8, "h2": [True, False] * 4, "h4": [False] * 8})
    runs.loc[runs["config_id"] == "h1", "ideal"] = True
    t = best_practice_table(success_table(runs, ["heads"]), runs, ["heads"])
    assert list(t["config_id"]) == ["h1", "h2", "h4"]  # h4 never ideal: infinitely costly
    assert t["restarts_99_ideal"][0] == restarts(wilson(8, 8)[0])[()]
    assert t["seed_steps_99_ideal"][0] == 1000 * t["restarts_99_ideal"][0]
    assert np.isinf(t["seed_steps_99_ideal"][2])


def test_early_stopping_rule_stops_a_chance_level_loss_after_its_start_and_nothing_else():
    rule, ln2 = STOP_RULE, math.log(2)
    assert (rule.quantity, rule.threshold, rule.start) == ("loss", ln2, 1 / 6)
    # a trajectory of iid loss at checkpoints 0, 250, ..., 1500 of a 1500-step run
    failing = [1.5, 0.70, 0.69, 0.60, 0.69, 0.69, 0.69]
    assert [rule.stops(x, 250 * i, 1500) for i, x in enumerate(failing)] == [
        False, True, False, False, False, False, False]  # not before a sixth, nor below ln 2
    assert rule.stops(ln2, 250, 1500) and not rule.stops(np.nextafter(ln2, 0), 250, 1500)
    assert not rule.stops(0.69, 249, 1500)  # coin-flip loss before its start: not yet
    assert rule.stops(float("nan"), 250, 1500) and rule.stops(float("inf"), 500, 1500)
    assert not rule.stops(float("nan"), 1500, 1500)  # never at the last step: training is over
    old = STOP_RULES[1]  # rule 1: hard l-acc at most 0.6 from a quarter of the steps
    assert old.stops(0.6, 375, 1500) and not old.stops(0.61, 375, 1500)
    assert not old.stops(0.5, 374, 1500) and old.stops(float("nan"), 375, 1500)


def test_early_stopping_replayed_on_checkpoints_counts_stops_wrong_stops_and_savings():
    runs = _runs({"h1": [True, True, False, False]})
    acc = {0: [0.5, 0.55, 1.0, 1.0], 1: [0.5, 0.9, 1.0, 1.0],  # 0 stopped at 250 yet succeeded
           2: [0.5, 0.5, 0.5, 0.5], 3: [0.5, 0.7, 0.7, 0.7, 0.5]}  # 2 stopped at 250, 3 missed:
    # its chance-level l-acc at the last step (1000) stops nothing, as in training
    traj = pd.DataFrame([{"config_id": "h1", "seed": s, "step": 250 * i, "hard_l_acc": a}
                         for s, row in acc.items() for i, a in enumerate(row)])
    t = early_stop_table(traj, runs, ["heads"], STOP_RULES[1]).iloc[0]
    assert (t["rule"], t["n_runs"], t["n_failed"], t["n_stopped"]) == (1, 4, 2, 2)
    assert (t["n_wrongly_stopped"], t["n_missed"]) == (1, 1)
    assert t["seed_steps"] == 4000 and t["saved_fraction"] == 2 * 750 / 4000


def test_the_replay_of_the_training_rule_reads_the_loss_and_stops_blown_up_seeds():
    runs = _runs({"h1": [True, False, False], "h2": [True, True, False]})
    loss = {("h1", 0): [2.0, 0.3, 0.1, 0.0, 0.0],  # above ln 2 only at step 0: trains on
            ("h1", 1): [2.0, 0.9, 0.9, 0.9, 0.9],  # stopped at 250 (a sixth of 1000 is 167)
            ("h1", 2): [2.0, np.nan, np.nan, np.nan, np.nan],  # blew up: stopped at 250
            ("h2", 0): [2.0, 0.8, 0.2, 0.0, 0.0],  # stopped at 250, yet it would have succeeded
            ("h2", 1): [2.0, 0.5, 0.2, 0.0, 0.0],
            ("h2", 2): [2.0, 0.5, 0.5, 0.5, 0.9]}  # failed, but only the last step is at chance
    traj = pd.DataFrame([{"config_id": c, "seed": s, "step": 250 * i, "loss": x}
                         for (c, s), row in loss.items() for i, x in enumerate(row)])
    t = early_stop_table(traj, runs, ["heads"]).set_index("config_id")
    assert list(t["rule"]) == [STOP_RULE.version] * 2
    assert list(t["n_stopped"]) == [2, 1] and list(t["n_wrongly_stopped"]) == [0, 1]
    assert list(t["n_missed"]) == [0, 1]
    assert list(t["saved_fraction"]) == [2 * 750 / 3000, 750 / 3000]


def test_the_replay_stops_the_seeds_that_training_with_early_stopping_gives_up(tmp_path):
    base = TINY | {"steps": 60, "checkpoint_every": 20, "init_scale": 3.0}
    tables = {}
    for early in (False, True):
        sweep = Sweep.from_dict({"seeds": 4, "base": base | {"early_stop": early}})
        tables[early] = run_sweep(sweep, tmp_path / str(early), executor="inline",
                                  log=lambda m: None)
    plain = tables[False]
    replay = early_stop_table(plain["trajectory"], plain["results"], [])
    trained = tables[True]["results"]
    assert replay["n_stopped"].item() == trained["stopped_at"].notna().sum() >= 1
    assert replay["saved_fraction"].item() == (60 - trained["stopped_at"].fillna(60)).sum() / 240


def test_the_grid_is_split_in_a_checkerboard_of_design_and_held_out_configurations():
    points = Sweep.from_dict({"seeds": 1, "grid": {"heads": [1, 4], "lr": [1e-3, 1e-2, 1e-1]}}
                             ).points()
    half = halves(points)
    assert [half[p.id] for p in points] == ["design", "held-out"] * 3
    assert {p.grid["heads"] for p in points if half[p.id] == "design"} == {1, 4}


def test_the_labour_table_counts_each_class_and_its_share_among_solved_runs():
    runs = pd.DataFrame({"config_id": "c", "heads": 4, "seed": range(6),
                         "labour": ["pseudo-ensemble"] * 3 + ["divided", "mixed", "unsolved"]})
    t = labour_table(runs, ["heads"]).iloc[0]
    assert (t["n_pseudo_ensemble"], t["n_divided"], t["n_mixed"], t["n_unsolved"]) == (3, 1, 1, 1)
    assert t["n_solved"] == 5 and t["pseudo_ensemble_share"] == 0.6
    assert (t["divided_ci_low"], t["divided_ci_high"]) == tuple(float(x) for x in wilson(1, 5))


def test_stability_measures_the_spread_of_heads_across_successful_seeds():
    runs = _runs({"h1": [True, True, True, False]})
    heads = pd.DataFrame({"config_id": "h1", "set": "hard", "seed": range(4), "head": 0,
                          "w01": [1.0, 10.0, 100.0, 1e6], "w02": 0.01, "s_acc": [1, 0.9, 0.8, 0.1]})
    t = stability_table(runs, heads, ["heads"])
    row = t.iloc[0]
    assert row["log10_w01_median"] == 1.0 and row["log10_w01_q75"] == 1.5  # failed seed left out
    assert row["log10_w02_q25"] == row["log10_w02_q75"] == -2.0
    assert row["min_heads_mean"] == 4 / 3 and row["min_heads_modal_share"] == 2 / 3


def test_minimal_head_table_is_a_distribution_with_none_for_no_set():
    t = minimal_heads_table(_runs({"h2": [True, True, True, False]}), ["heads"])
    got = {("none" if pd.isna(s) else int(s)): f for s, f in zip(t["size"], t["fraction"])}
    assert got == {1: 0.5, 2: 0.25, "none": 0.25}
    assert t["n_runs"].sum() == 4


def test_a_quantity_that_separates_failures_gets_auc_one_and_noise_about_a_half():
    rng = np.random.default_rng(0)
    n = 200
    failed = np.arange(n) < 50
    q = pd.DataFrame({"config_id": "c", "seed": np.arange(n), "step": 10, "failed": failed}
                     | {name: rng.normal(size=n) for name in QUANTITIES})
    q["min_abs_log_w01"] = np.where(failed, 3.0, 0.1) + rng.uniform(0, 0.5, n)  # far from 1
    q["hard_l_acc"] = np.where(failed, 0.5, 0.9)  # lower is worse
    t = predictor_table(q).set_index(["scope", "quantity"])
    assert t.loc[("all", "min_abs_log_w01"), "auc"] == 1.0
    assert t.loc[("all", "min_abs_log_w01"), "direction"] == "higher"
    assert t.loc[("all", "hard_l_acc"), "auc"] == 0.0
    assert t.loc[("all", "hard_l_acc"), "direction"] == "lower"
    assert t.loc[("all", "hard_l_acc"), "auc_best"] == 1.0
    assert abs(t.loc[("all", "loss"), "auc"] - 0.5) < 0.15
    assert t.loc[("all", "loss"), "n_failed"] == 50


def test_no_predictor_rows_where_every_run_succeeded():
    q = pd.DataFrame({"config_id": "c", "seed": range(4), "step": 10, "failed": False}
                     | {name: np.arange(4.0) for name in QUANTITIES})
    assert predictor_table(q).empty


# --- the whole study on a tiny sweep -----------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """lr 1e-2 learns the tiny task, lr 1e-5 cannot in 100 steps: both outcomes occur."""
    out = tmp_path_factory.mktemp("paths") / "sweep"
    sweep = Sweep.from_dict({"seeds": 3, "base": TINY, "grid": {"lr": [1e-2, 1e-5]}})
    tables = run_sweep(sweep, out, executor="inline", log=lambda msg: None)
    return out, tables, analyze_paths(out)


def test_the_study_writes_every_documented_file(study):
    out, _, summary = study
    paths = out / "paths"
    expected = {"success.csv", "minimal_heads.csv", "early_quantities.csv", "early_predictors.csv",
                "stability.csv", "best_practice.csv", "early_stop.csv", "phase_diagram.png",
                "phase_diagram.svg", "labour.csv", "labour.png", "labour.svg",
                "success_rate.png", "success_rate.svg", "minimal_heads.png", "minimal_heads.svg",
                "early_predictors.png", "early_predictors.svg", "paths.json"}
    expected |= {f"trajectories/{c['config_id']}.{e}" for c in summary["configs"]
                 for e in ("png", "svg")}
    written = {str(p.relative_to(paths)) for p in paths.rglob("*")
               if p.is_file() and p.name != ".lock"}
    assert written == expected == set(summary["files"])
    for name in written:
        assert (paths / name).stat().st_size > 1000 or name.endswith(".csv")
    assert json.loads((paths / "paths.json").read_text()) == summary
    assert summary["figures_skipped"] == {} and summary["missing_configs"] == []


def test_trajectory_figures_drawn_apart_are_the_ones_analyze_paths_draws(study, tmp_path):
    """The study draws the trajectory figures in jobs of a few configurations beside the other
    work (`study.paths_stage`): the same files, PNGs and tables byte for byte (SVGs hold a
    date), and paths.json lists them as before."""
    out, _, summary = study
    apart = tmp_path / "paths"
    assert analyze_paths(out, apart, trajectories=False) == summary
    assert not list(apart.glob("trajectories/*"))
    ids = [c["config_id"] for c in summary["configs"]]
    for part in (ids[:1], ids[1:]):
        trajectory_figures(out, part, apart)
    whole = out / "paths"
    files = sorted(str(p.relative_to(whole)) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(apart)) for p in apart.rglob("*") if p.is_file())
    for name in files:
        if not name.endswith((".svg", ".lock")):
            assert (whole / name).read_bytes() == (apart / name).read_bytes(), name


def test_every_training_path_figure_is_readable_alone(study, tmp_path, monkeypatch):
    from test_analysis import readable_alone

    from count01.present import path_plots

    out, _, _ = study
    drawn = {}
    monkeypatch.setattr(path_plots, "save",
                        lambda fig, path, **kw: drawn.setdefault(path.name, fig) and [])
    analyze_paths(out, tmp_path / "paths")
    assert {"success_rate", "minimal_heads", "early_predictors", "phase_diagram",
            "labour"} <= set(drawn)
    assert any(name.startswith("lr=") for name in drawn)  # a trajectory figure per configuration
    for name, fig in drawn.items():
        assert not readable_alone(fig), f"{name} lacks {readable_alone(fig)}"


def test_the_study_agrees_with_the_sweep_table(study):
    out, tables, summary = study
    runs = tables["results"]
    success = pd.read_csv(out / "paths" / "success.csv")
    assert list(success.columns) == ["config_id", "lr", "n_runs", "n_success", "n_diverged",
                                     "rate", "ci_low", "ci_high", "n_ideal", "ideal_rate",
                                     "ideal_ci_low", "ideal_ci_high", "median_steps_to_success",
                                     "restarts_99", "restarts_99_low", "restarts_99_high"]
    for row, conf in zip(success.itertuples(), summary["configs"]):
        mine = runs[runs["config_id"] == row.config_id]
        assert row.n_runs == len(mine) == conf["n_runs"] == 3
        assert row.n_success == mine["success"].sum() == conf["n_success"]
        assert sum(conf["min_heads"].values()) == 3
    assert success["n_success"].iloc[0] > success["n_success"].iloc[1]  # lr 1e-5 fails
    q = pd.read_csv(out / "paths" / "early_quantities.csv")
    assert list(q.columns) == ["config_id", "lr", "seed", "step", "step_frac", "failed",
                               *QUANTITIES]
    assert set(q["step"]) == {0, 25, 50, 75}  # every checkpoint before the last
    pred = pd.read_csv(out / "paths" / "early_predictors.csv")
    assert list(pred.columns) == ["scope", "step", "quantity", "n_runs", "n_failed", "auc",
                                  "auc_best", "direction"]
    assert set(pred["scope"]) <= {"all"} | set(success["config_id"])
    assert len(summary["early_predictors"]) == pred.loc[pred["scope"] == "all", "step"].nunique()


def test_an_unfinished_sweep_is_studied_as_far_as_it_got(study, tmp_path):
    out, _, _ = study
    sweep = Sweep.from_dict({"seeds": 3, "base": TINY, "grid": {"lr": [1e-2, 1e-5, 1e-3]}})
    for name in TABLES:  # the tables of two finished configurations out of three
        shutil.copy(out / f"{name}.parquet", tmp_path / f"{name}.parquet")
    write_json(tmp_path / "sweep.json", {"format": FORMAT, "sweep": sweep.to_dict(),
                                         "points": [{"id": p.id, "grid": p.grid}
                                                    for p in sweep.points()]})
    summary = analyze_paths(tmp_path)
    assert summary["missing_configs"] == [sweep.points()[2].id]
    assert summary["n_configs"] == 2 and summary["n_runs"] == 6
