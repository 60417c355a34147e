import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from count01.cli import main
from count01.files import checkpoints
from count01.language import EVAL_SETS
from count01.measure.metrics import evaluate
from count01.model import Model
from count01.runs import load, save_tensors
from count01.sweeps import (
    HEAD_SETS,
    TABLES,
    Sweep,
    SweepError,
    load_tables,
    record_run,
    run_sweep,
    seed_steps,
)
from count01.train import train

TINY = {"steps": 600, "batch_size": 64, "checkpoint_every": 100, "eval_size": 512,
        "exhaustive_len": 6, "max_len": 8, "long_max_len": 12}


def write_sweep(path: Path, grid: dict, seeds: int = 2, **base) -> Path:
    lines = [f"seeds = {seeds}", "[base]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in (TINY | base).items()]
    lines += ["[grid]"] + [f"{k} = {json.dumps(v)}" for k, v in grid.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tiny sweep (heads 1 and 2, two seeds each) on the local executor."""
    root = tmp_path_factory.mktemp("sweep")
    spec = write_sweep(root / "tiny.toml", {"heads": [1, 2]})
    sweep = Sweep.from_toml(spec)
    return sweep, root / "out", run_sweep(sweep, root / "out", log=quiet), spec


# --- the sweep file ----------------------------------------------------------------------------

def test_grid_expands_to_every_combination_in_file_order():
    sweep = Sweep.from_dict({"seeds": 3, "base": {"steps": 10},
                             "grid": {"heads": [1, 2], "lr": [0.1, 0.01]}})
    points = sweep.points()
    assert [p.grid for p in points] == [{"heads": 1, "lr": 0.1}, {"heads": 1, "lr": 0.01},
                                        {"heads": 2, "lr": 0.1}, {"heads": 2, "lr": 0.01}]
    assert all(p.cfg.n_seeds == 3 and p.cfg.steps == 10 for p in points)
    assert [(p.cfg.heads, p.cfg.lr) for p in points] == [(1, 0.1), (1, 0.01), (2, 0.1), (2, 0.01)]


def test_skip_leaves_out_the_combinations_it_names_and_must_name_one():
    data = {"seeds": 2, "grid": {"noise": [0.0, 0.5], "noise_pattern": ["iid", "bursty"]},
            "skip": [{"noise": 0, "noise_pattern": "bursty"}]}
    sweep = Sweep.from_dict(data)
    assert [p.grid for p in sweep.points()] == [
        {"noise": 0.0, "noise_pattern": "iid"}, {"noise": 0.5, "noise_pattern": "iid"},
        {"noise": 0.5, "noise_pattern": "bursty"}]
    assert Sweep.from_dict(json.loads(json.dumps(sweep.to_dict()))) == sweep  # as sweep.json
    assert "skip" not in Sweep.from_dict(data | {"skip": []}).to_dict()  # old sweeps unchanged
    with pytest.raises(SweepError, match="matches no combination"):
        Sweep.from_dict(data | {"skip": [{"noise": 0.25}]})
    with pytest.raises(SweepError, match="skip names heads, not a grid field"):
        Sweep.from_dict(data | {"skip": [{"heads": 2}]})
    with pytest.raises(SweepError, match="skip must be a list of tables"):
        Sweep.from_dict(data | {"skip": {"noise": 0}})


def test_seeds_at_gives_the_configurations_it_names_their_own_seeds_and_must_name_one():
    data = {"seeds": 2, "grid": {"layers": [1, 2], "d_mlp": [0, 64]},
            "seeds_at": [{"layers": 1, "seeds": 6}, {"layers": 2, "d_mlp": 64, "seeds": 3}]}
    sweep = Sweep.from_dict(data)
    assert [(p.grid["layers"], p.grid["d_mlp"], p.cfg.n_seeds) for p in sweep.points()] == [
        (1, 0, 6), (1, 64, 6), (2, 0, 2), (2, 64, 3)]
    assert Sweep.from_dict(json.loads(json.dumps(sweep.to_dict()))) == sweep  # as sweep.json
    assert "seeds_at" not in Sweep.from_dict(data | {"seeds_at": []}).to_dict()
    plain = [p.id for p in Sweep.from_dict(data | {"seeds_at": []}).points()]
    assert [p.id == q for p, q in zip(sweep.points(), plain)] == [False, False, True, False]
    with pytest.raises(SweepError, match="matches no combination"):
        Sweep.from_dict(data | {"seeds_at": [{"layers": 3, "seeds": 4}]})
    with pytest.raises(SweepError, match="seeds_at names heads, not a grid field"):
        Sweep.from_dict(data | {"seeds_at": [{"heads": 2, "seeds": 4}]})
    with pytest.raises(SweepError, match="needs seeds = N"):
        Sweep.from_dict(data | {"seeds_at": [{"layers": 1}]})
    with pytest.raises(SweepError, match="its seeds twice"):
        Sweep.from_dict(data | {"seeds_at": [{"layers": 1, "seeds": 4}, {"d_mlp": 0, "seeds": 5}]})
    with pytest.raises(SweepError, match="n_seeds"):
        Sweep.from_dict(data | {"seeds_at": [{"layers": 1, "seeds": 0}]})


def test_config_ids_are_stable_readable_and_distinct():
    data = {"seeds": 2, "base": {"steps": 10}, "grid": {"heads": [1, 2], "init_scale": [0.5, 1]}}
    a = [p.id for p in Sweep.from_dict(data).points()]
    assert a == [p.id for p in Sweep.from_dict(json.loads(json.dumps(data))).points()]
    assert len(set(a)) == 4 and a[0].startswith("heads=1_init_scale=0.5-")
    other = [p.id for p in Sweep.from_dict(data | {"base": {"steps": 11}}).points()]
    assert not set(a) & set(other)  # a different base is a different configuration


def test_the_number_of_seeds_can_sit_at_top_level_in_base_or_in_grid_but_only_once():
    grid = {"heads": [1]}
    for data in ({"seeds": 5, "grid": grid}, {"base": {"seeds": 5}, "grid": grid},
                 {"base": {"n_seeds": 5}, "grid": grid}, {"grid": grid | {"seeds": 5}}):
        assert Sweep.from_dict(data).points()[0].cfg.n_seeds == 5
    with pytest.raises(SweepError, match="given twice"):
        Sweep.from_dict({"seeds": 5, "base": {"n_seeds": 4}, "grid": grid})


@pytest.mark.parametrize("data, match", [
    ({"grid": {"heads": 4}}, "non-empty list"),
    ({"grid": {"heads": []}}, "non-empty list"),
    ({"grid": {"heads": [1, 1]}}, "repeats"),
    ({"grid": {"seed": [0, 1]}}, "cannot be a grid axis"),
    ({"grid": {"hedas": [1, 2]}}, "unknown option"),
    ({"grid": {"heads": [3]}}, "not divisible"),
    ({"base": {"heads": 2}, "grid": {"heads": [1]}}, "both in"),
    ({"sweep": {}}, "unknown key"),
])
def test_a_bad_sweep_is_refused_before_anything_trains(data, match):
    with pytest.raises(SweepError, match=match):
        Sweep.from_dict(data)


def test_a_bad_sweep_file_is_one_error_line_on_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nheads = [1, 2\n")
    for args, match in ((["sweep", str(bad)], "not valid TOML"),
                        (["sweep", str(tmp_path / "none.toml")], "not found"),
                        (["paths", str(tmp_path)], "not a sweep directory")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err


# --- the tables --------------------------------------------------------------------------------

def test_the_results_table_has_one_row_per_run_and_the_documented_columns(swept):
    sweep, out, tables, _ = swept
    runs = tables["results"]
    assert len(runs) == 2 * 2 and list(runs["seed"]) == [0, 1, 0, 1]
    assert list(runs["heads"]) == [1, 1, 2, 2]
    expected = (["config_id", "min_len", "max_len", "noise", "noise_symbols", "noise_pattern",
                 "burst_len", "p_one", "class_balanced", "bos", "framing", "lm_loss", "heads",
                 "d_model", "d_head", "pos_embed", "layernorm", "init_scale", "layers", "d_mlp",
                 "n_seeds", "steps",
                 "batch_size", "optimizer", "lr", "schedule", "warmup", "weight_decay",
                 "checkpoint_every", "early_stop", "eval_seed", "eval_size",
                 "exhaustive_len", "long_max_len", "noisy_noise", "seed", "success", "ideal",
                 "diverged",
                 "steps_to_success", "loss"]
                + [f"{s}_{k}" for s in EVAL_SETS for k in ("l_acc", "valid", "auc")]
                + ["min_heads", "min_head_set", "labour", "stopped_at"]
                + [f"h{h}_{k}" for h in range(2) for k in ("s_acc", "w01", "w02")])
    assert list(runs.columns) == expected
    assert runs.loc[runs["heads"] == 1, "h1_s_acc"].isna().all()  # no second head
    assert runs.loc[runs["heads"] == 2, "h1_s_acc"].notna().all()
    assert (runs["success"] == (runs["hard_l_acc"] >= 0.99)).all()
    general = runs[[f"{s}_l_acc" for s in ("hard", "long", "noisy", "exhaustive")]].min(axis=1)
    assert (runs["ideal"] == (general >= 0.99)).all() and (runs["success"] >= runs["ideal"]).all()
    assert list(runs["d_head"]) == [16, 16, 8, 8]  # resolved from d_model // heads
    n_ckpt = 600 // 100 + 1
    assert len(tables["trajectory"]) == 4 * n_ckpt
    assert len(tables["head_trajectory"]) == 2 * n_ckpt * (1 + 2)
    assert len(tables["heads"]) == 2 * len(HEAD_SETS) * (1 + 2)
    for name in TABLES:  # CSV and Parquet hold the same table
        pd.testing.assert_frame_equal(pd.read_csv(out / f"{name}.csv"),
                                      pd.read_parquet(out / f"{name}.parquet"),
                                      check_dtype=False)


def test_table_numbers_are_those_of_the_saved_runs(swept):
    sweep, out, tables, _ = swept
    runs, traj, heads = tables["results"], tables["trajectory"], tables["heads"]
    for point in sweep.points():
        run = out / "runs" / point.id
        assert [s for s, _ in checkpoints(run)] == list(range(0, 601, 100))
        mine = runs[runs["config_id"] == point.id]
        for r in evaluate(load(run)):
            assert mine.loc[mine["seed"] == r["seed"], f"{r['set']}_l_acc"].item() == r["l_acc"]
        t = traj[traj["config_id"] == point.id]
        final = t[t["step"] == 600].set_index("seed")["hard_l_acc"]
        assert np.array_equal(final.to_numpy(), mine.set_index("seed")["hard_l_acc"].to_numpy())
        for seed, g in t.groupby("seed"):
            reached = g.loc[g["hard_l_acc"] >= 0.99, "step"]
            got = mine.loc[mine["seed"] == seed, "steps_to_success"].item()
            assert (np.isnan(got) and reached.empty) or got == reached.min()
    hard = heads[heads["set"] == "hard"]
    row = runs.iloc[-1]
    h1 = hard[(hard["config_id"] == row["config_id"]) & (hard["seed"] == row["seed"])
              & (hard["head"] == 1)]
    assert row["h1_w01"] == h1["w01"].item() and row["h1_s_acc"] == h1["s_acc"].item()


def test_rerunning_a_finished_sweep_trains_nothing_and_an_added_value_trains_only_itself(
        swept, tmp_path):
    sweep, out, tables, _ = swept
    stamps = {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    lines = []
    again = run_sweep(sweep, out, executor="inline", log=lines.append)
    assert "2 done, 0 to run" in lines[0] and len(lines) == 1
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    for name in TABLES:
        pd.testing.assert_frame_equal(again[name], tables[name])
    wider = Sweep.from_dict(sweep.to_dict() | {"grid": {"heads": [1, 2, 4]}})
    lines = []
    grown = run_sweep(wider, out, executor="inline", log=lines.append)
    assert "2 done, 1 to run" in lines[0]
    assert len(grown["results"]) == 6
    old = grown["results"][grown["results"]["heads"] < 4].drop(columns=["h2_s_acc", "h2_w01",
                                                                       "h2_w02", "h3_s_acc",
                                                                       "h3_w01", "h3_w02"])
    pd.testing.assert_frame_equal(old, tables["results"])
    run_sweep(sweep, out, executor="inline", log=quiet)  # restore the fixture's table


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _all_exit(pids: list[int], seconds: float) -> bool:
    """Wait up to `seconds` for these processes to exit; kill the survivors. True if none
    survived."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    survivors = [p for p in pids if _alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    return not survivors


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_table_of_an_uninterrupted_one(swept, tmp_path):
    _, _, straight, spec = swept
    cmd = [sys.executable, "-m", "count01", "sweep", str(spec), "--workers", "2", "--quiet"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.monotonic() + 120
        runs = killed / "runs"
        while time.monotonic() < deadline and not any(
                s >= 100 for r in runs.glob("*") for s, _ in checkpoints(r)):
            workers = _children(proc.pid) or workers
            time.sleep(0.02)
        workers = [w for w in _children(proc.pid) or workers if _alive(w)]
        proc.send_signal(signal.SIGKILL)  # the driver only: its workers must notice and stop
        proc.wait()
        assert workers, "the sweep's workers were never seen"
        assert _all_exit(workers, 15), "workers outlived their killed driver"
    finally:
        _all_exit(workers, 0)
    assert len(list((killed / "results").glob("*.json"))) < 2, "finished before the kill"
    resumed = run_sweep(Sweep.from_toml(spec), killed, executor="inline", log=quiet)
    for name in TABLES:
        pd.testing.assert_frame_equal(resumed[name], straight[name])


def test_a_diverged_seed_is_a_failure_and_the_other_seeds_are_analysed_as_usual(tiny, tmp_path):
    run = tmp_path / "run"
    model = train(tiny, run, progress=False)
    clean = record_run(model, run)
    step, last = checkpoints(run)[-1]
    blown = Model(tiny, {k: w.clone() for k, w in model.weights.items()}, model.seeds)
    blown.weights["unembed.W_U"][1, 0, 0] = float("nan")  # seed 1 blew up at the last step
    save_tensors(last, blown.weights, tiny, blown.seeds, step=step)
    got = record_run(blown, run)
    ok, bad = got["runs"]
    assert bad["diverged"] and not bad["success"] and not bad["ideal"] and not ok["diverged"]
    assert bad["hard_l_acc"] is None and bad["min_heads"] is None and bad["loss"] is None
    assert ok == clean["runs"][0]
    same = [h for h in clean["heads"] if h["seed"] == 0]  # alone: last-bit differences only
    assert [{k: v for k, v in h.items() if not isinstance(v, str)} for h in got["heads"]] == [
        pytest.approx({k: v for k, v in h.items() if not isinstance(v, str)}, rel=1e-12)
        for h in same]  # approx only on numbers: pytest >= 9.2 refuses it on strings
    assert [h["set"] for h in got["heads"]] == [h["set"] for h in same]
    assert got["trajectory"][:-1] == clean["trajectory"][:-1]  # earlier checkpoints untouched
    assert got["trajectory"][-1] == {"seed": 1, "step": step, "loss": None, "hard_l_acc": None,
                                     "hard_valid": None, "hard_auc": None}


# --- executors ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_ray_executor_writes_the_same_tables_as_the_local_one(swept, tmp_path):
    pytest.importorskip("ray")
    sweep, _, tables, _ = swept
    by_ray = run_sweep(sweep, tmp_path / "ray", executor="ray", workers=2, log=quiet)
    for name in TABLES:
        pd.testing.assert_frame_equal(by_ray[name], tables[name])


@pytest.mark.slow
def test_the_ray_executor_joins_an_existing_cluster_by_address(swept, tmp_path):
    """A Ray head started apart (as on a cluster), joined with --address host:port."""
    pytest.importorskip("ray")
    import socket
    import tempfile

    sweep, _, tables, spec = swept
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a short temp dir (Ray's unix sockets live under it); token auth off on this test head
    env = os.environ | {"RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp"),
                        "RAY_AUTH_MODE": "disabled"}
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run(ray + ["start", "--head", f"--port={port}", "--num-cpus=2",
                          "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                          "--disable-usage-stats"], env=env, check=True, capture_output=True)
    try:
        done = subprocess.run([sys.executable, "-m", "count01", "sweep", str(spec), "--executor",
                               "ray", "--address", f"127.0.0.1:{port}", "--out",
                               str(tmp_path / "joined")], env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        subprocess.run(ray + ["stop", "--force"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Connected to Ray cluster" in done.stderr
    joined = load_tables(tmp_path / "joined")
    for name in TABLES:
        pd.testing.assert_frame_equal(joined[name], tables[name])


def test_the_ray_executor_without_ray_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    spec = write_sweep(tmp_path / "s.toml", {"heads": [1]})
    assert main(["sweep", str(spec), "--executor", "ray", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install count01[ray]" in err
    assert not (tmp_path / "o").exists()


def test_address_without_the_ray_executor_is_refused(tmp_path, capsys):
    spec = write_sweep(tmp_path / "s.toml", {"heads": [1]})
    assert main(["sweep", str(spec), "--address", "auto", "--out", str(tmp_path / "o")]) == 2
    assert "--address needs --executor ray" in capsys.readouterr().err


def test_a_record_written_before_a_field_was_added_still_counts(swept):
    from count01.config import ADDED_FIELDS
    from count01.sweeps import read_record

    sweep, out, tables, _ = swept
    point = sweep.points()[0]
    path = out / "results" / f"{point.id}.json"
    rec = json.loads(path.read_text())
    older = rec | {"config": {k: v for k, v in rec["config"].items() if k not in ADDED_FIELDS}}
    path.write_text(json.dumps(older))
    try:
        assert read_record(out, point)["runs"] == rec["runs"]
    finally:
        path.write_text(json.dumps(rec))


def test_a_sweep_with_early_stopping_says_where_each_seed_was_given_up(tmp_path):
    sweep = Sweep.from_dict({"seeds": 4, "base": {"steps": 60, "batch_size": 64,
                                                  "checkpoint_every": 20, "eval_size": 512,
                                                  "exhaustive_len": 6, "max_len": 8,
                                                  "long_max_len": 12, "init_scale": 3.0,
                                                  "early_stop": True}})
    runs = run_sweep(sweep, tmp_path / "sw", executor="inline", log=lambda m: None)["results"]
    assert runs["stopped_at"].tolist()[:2] == [20, 20] and runs["stopped_at"].isna().sum() == 2
    assert seed_steps(tmp_path / "sw") == 20 + 20 + 60 + 60  # stopped seeds to their stop
    assert seed_steps(tmp_path / "none") == 0


def test_records_written_before_the_new_columns_still_make_the_tables(swept, tmp_path):
    import shutil

    from count01.sweeps import tables_of

    sweep, out, tables, _ = swept
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for path in (old / "results").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["runs"] = [{k: v for k, v in r.items() if k not in ("ideal", "labour", "stopped_at")}
                       for r in rec["runs"]]
        path.write_text(json.dumps(rec))
    got = tables_of(old, sweep.points())["results"]
    assert list(got.columns) == list(tables["results"].columns)
    assert (got["ideal"] == tables["results"]["ideal"]).all() and got["labour"].isna().all()


def test_the_tables_the_driver_writes_are_those_read_afresh_from_the_records(swept, tmp_path):
    """The driver keeps each record as read back once, rather than re-reading every record
    after each job: its tables are byte for byte the ones `tables_of` builds from the files."""
    from count01.sweeps import tables_of
    from count01.sweeps.tables import write_tables

    sweep, out, _, _ = swept
    write_tables(tmp_path, tables_of(out, sweep.points()))
    for name in TABLES:
        assert (tmp_path / f"{name}.csv").read_bytes() == (out / f"{name}.csv").read_bytes()
