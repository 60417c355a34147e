"""Issue 11 on sweeps, paths, report, export, intervene and analyze: hostile inputs and faults end
in one line (exit 2), with nothing half-written, and a killed command resumes cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import refused
from test_sweeps import _alive, _all_exit, _children

import count01
from count01.cli import main
from count01.files import CheckpointError, saved_eval, write_json
from count01.plan import FORMAT as STUDY
from count01.study import make_plan
from count01.sweeps import TABLES

TINY = ["--batch-size", "64", "--eval-size", "256", "--exhaustive-len", "5", "--max-len", "8",
        "--long-max-len", "12"]
SWEEP = """seeds = 1
[base]
steps = 20
checkpoint_every = 10
batch_size = 64
eval_size = 256
exhaustive_len = 5
max_len = 8
long_max_len = 12
[grid]
heads = [1]
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A directory holding `good` (a one-seed run), `sw` (a finished one-configuration sweep),
    `sw.toml` (its file) and `afile` (a plain file)."""
    root = tmp_path_factory.mktemp("hostile")
    assert main(["train", "--n-seeds", "1", "--steps", "20", "--quiet", "--out",
                 str(root / "good"), *TINY]) == 0
    (root / "sw.toml").write_text(SWEEP)
    assert main(["sweep", str(root / "sw.toml"), "--out", str(root / "sw"), "--executor",
                 "inline", "--quiet"]) == 0
    (root / "afile").write_text("x\n")
    return root


@pytest.fixture
def here(made, tmp_path, monkeypatch) -> Path:
    """A fresh working directory with the fixture's files (the run and sweep linked in)."""
    monkeypatch.chdir(tmp_path)
    for name in ("good", "sw", "sw.toml", "afile"):
        (tmp_path / name).symlink_to(made / name)
    return tmp_path


# --- 1. unusable output paths are refused before any work ------------------------------------

BAD_OUT = {"afile": "is a file", "afile/x": "afile is not a directory",
           "/proc/x": "cannot be written", "dangling": "dangling symbolic link"}


@pytest.mark.parametrize("bad", list(BAD_OUT))
@pytest.mark.parametrize("command", [
    ["sweep", "sw.toml", "--executor", "inline", "--quiet"], ["paths", "sw"], ["report", "good"],
    ["export", "good"], ["reproduce", "--quick", "--quiet"],
    ["train", "--steps", "20", "--quiet", *TINY]])
def test_an_unusable_output_directory_is_one_line_before_any_work(here, made, command, bad,
                                                                   capsys):
    (here / "dangling").symlink_to(here / "nowhere")
    refused([*command, "--out", bad], capsys, BAD_OUT[bad], here, made)


@pytest.mark.parametrize("bad, match", [("good", "is a directory"), *list(BAD_OUT.items())[1:]])
def test_intervene_refuses_an_unusable_csv_path_before_computing(here, made, bad, match, capsys):
    (here / "dangling").symlink_to(here / "nowhere")
    refused(["intervene", "good", "--w01", "1", "--w02", "0", "--out", bad], capsys, match, here,
            made)


def test_report_refuses_a_directory_argument_that_is_a_file(here, capsys):
    refused(["report", "afile"], capsys, "DIR afile is a file", here)


# --- 2. grid values equal once converted are one configuration, refused -----------------------

@pytest.mark.parametrize("axis, values", [("heads", "[2, 2.0]"), ("init_scale", "[1, 1.0]"),
                                          ("bos", '[false, "false"]'), ("heads", "[1, 1]")])
def test_grid_values_equal_once_converted_are_refused(here, axis, values, capsys):
    (here / "dup.toml").write_text(SWEEP.replace("heads = [1]", f"{axis} = {values}"))
    refused(["sweep", "dup.toml", "--executor", "inline", "--out", "dup"], capsys,
            "the grid repeats a configuration", here)


# --- 3. a crafted sweep or study directory cannot make paths or report reach outside it -------

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _set_config_id(sweep_dir: Path, config_id: str) -> None:
    path = sweep_dir / "results.parquet"
    pd.read_parquet(path).assign(config_id=config_id).to_parquet(path, index=False)


def test_paths_refuses_a_config_id_that_is_not_the_sweeps_own(here, tmp_path_factory, capsys):
    sw = _copy(here / "sw", here / "crafted")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    _set_config_id(sw, str(elsewhere / "x"))
    refused(["paths", "crafted"], capsys, "not a configuration of the sweep", here, elsewhere)


def test_report_embeds_nothing_from_outside_the_directory(here, capsys):
    sw = _copy(here / "sw", here / "crafted")
    assert main(["paths", "crafted"]) == 0
    capsys.readouterr()
    (here / "secret.png").write_bytes(b"\x89PNG secret")
    figure = sw / "paths" / "success_rate.png"
    figure.unlink()
    figure.symlink_to(here / "secret.png")
    refused(["report", "crafted"], capsys, "lies outside", here)
    figure.unlink()
    shutil.copy(sw / "paths" / "success_rate.svg", figure)  # any file will do: only the id matters
    _set_config_id(sw, "../../../../secret")
    refused(["report", "crafted"], capsys, "not a configuration of the sweep", here)


def test_a_study_whose_analysed_run_lies_outside_it_is_refused(here, capsys):
    (here / "study").mkdir()
    plan = make_plan(quick=True, seeds=1, heads=(1,), grid_size=2, steps=20)
    write_json(here / "study" / "study.json", {"format": STUDY, "plan": plan.to_dict(),
                                               "stages": {}, "analysed_run": "../good"})
    refused(["report", "study"], capsys, "lies outside the study", here)


# --- 4. corrupted or foreign files are one line naming the file ----------------------------------

@pytest.mark.parametrize("text, match", [
    ('{"runs": []}', "is not a sweep record"), ("[1, 2]", "is not a sweep record"),
    ('{"config": ', "corrupted JSON")])
def test_a_corrupted_sweep_record_is_refused_naming_it(here, text, match, capsys):
    sw = _copy(here / "sw", here / "copy")
    record = next((sw / "results").glob("*.json"))
    record.write_text(text)
    err = refused(["sweep", "sw.toml", "--out", "copy", "--executor", "inline", "--quiet"],
                  capsys, match, here)
    assert record.name in err and "delete it" in err


def test_a_sweep_or_study_file_holding_a_list_is_refused(here, capsys):
    sw = _copy(here / "sw", here / "copy")
    (sw / "sweep.json").write_text("[]")
    for command in (["paths", "copy"], ["report", "copy"]):
        refused(command, capsys, "sweep.json is not a count01 sweep", here)
    (here / "study").mkdir()
    (here / "study" / "study.json").write_text("[]")
    for command in (["report", "study"], ["reproduce", "--quick", "--out", "study"]):
        refused(command, capsys, "study.json is not a count01 study", here)


def test_a_runs_metrics_that_are_not_evaluation_rows_are_refused(here, capsys):
    run = _copy(here / "good", here / "copy")
    write_json(run / "metrics.json", {"steps": 20, "eval": 5})
    refused(["report", "copy"], capsys, "metrics.json is not a run's metrics", here)
    with pytest.raises(CheckpointError, match="not a run's metrics"):
        saved_eval(run)


def test_a_sweep_file_that_is_a_directory_is_refused(here, capsys):
    (here / "adir").mkdir()
    refused(["sweep", "adir", "--executor", "inline"], capsys, "cannot read sweep file", here)


# --- 6. smaller: one grid-size rule, no sweep into a run, no silent empty sweep ----------------

@pytest.mark.parametrize("command", [["intervene", "good", "--out", "rows.csv"],
                                     ["analyze", "good"]])
def test_a_one_point_grid_is_refused_by_intervene_as_by_analyze(here, made, command, capsys):
    refused([*command, "--grid-size", "1"], capsys, "grid_size must be at least 2", here, made)


def test_a_sweep_into_a_run_directory_is_refused(here, capsys):
    _copy(here / "good", here / "copy")
    refused(["sweep", "sw.toml", "--out", "copy", "--executor", "inline"], capsys,
            "holds a run (config.json), not a sweep", here)


def test_an_empty_sweep_file_is_refused_and_a_base_only_one_says_what_it_runs(here, capsys):
    (here / "empty.toml").write_text("# nothing yet\n")
    refused(["sweep", "empty.toml", "--executor", "inline"], capsys, "empty.toml is empty", here)
    (here / "base.toml").write_text(SWEEP.replace("[grid]\nheads = [1]\n", ""))
    assert main(["sweep", "base.toml", "--executor", "inline", "--out", "base"]) == 0
    assert "1 configuration (no [grid]: the [base] fields alone) x 1 seeds" in \
        capsys.readouterr().err


# --- 5. a killed command leaves no process, and the next run removes what it left ---------------

@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_analysis_leaves_no_worker_and_resumes_to_an_uninterrupted_one(here, how):
    killed, straight = _copy(here / "good", here / "killed"), _copy(here / "good", here / "straight")
    args = ["analyze", "--grid-size", "2", "--quiet"]
    src = Path(count01.__file__).parents[1]  # this checkout's code, whatever is installed
    proc = subprocess.Popen([sys.executable, "-m", "count01", *args, "killed"],
                            env=os.environ | {"PYTHONPATH": str(src)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not workers and proc.poll() is None:
            if any(killed.glob(".analysis.*")):  # the figure worker starts right after it
                workers = [w for w in _children(proc.pid) if _alive(w)]
            time.sleep(0.02)
        proc.send_signal(how)
        code = proc.wait(10)
        assert workers, "the figure worker was never seen"
        assert _all_exit(workers, 5), "the figure worker outlived its command"
    finally:
        _all_exit(workers, 0)
        if proc.poll() is None:
            proc.kill()
    assert code != 0 and not (killed / "analysis").exists(), "finished before the kill"
    if how == signal.SIGKILL:  # no clean-up could run: the next analysis does it
        assert any(killed.glob(".analysis.*"))
    assert main([*args, "killed"]) == 0 and main([*args, "straight"]) == 0
    assert not any(killed.glob(".analysis.*"))
    names = sorted(p.name for p in (straight / "analysis").glob("*.csv"))
    assert names == sorted(p.name for p in (killed / "analysis").glob("*.csv")) and names
    for name in names:
        pd.testing.assert_frame_equal(pd.read_csv(killed / "analysis" / name),
                                      pd.read_csv(straight / "analysis" / name))


def test_a_resumed_sweep_removes_what_a_killed_one_left(here, made):
    sw = _copy(here / "sw", here / "copy")
    record = next((sw / "results").glob("*.json"))
    record.unlink()  # its configuration is unfinished again: the sweep reloads its run
    run = sw / "runs" / record.stem
    left = [sw / ".results.csv.k1ll3d.tmp", sw / "results" / f".{record.name}.k1ll3d.tmp",
            run / ".resume.safetensors.k1ll3d.tmp",
            run / "checkpoints" / ".step_0000020.safetensors.k1ll3d.tmp"]
    for p in left:
        p.touch()
    assert main(["sweep", "sw.toml", "--out", "copy", "--executor", "inline", "--quiet"]) == 0
    assert not any(p.exists() for p in left)
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(sw / f"{name}.parquet"),
                                      pd.read_parquet(made / "sw" / f"{name}.parquet"))


def test_paths_removes_what_a_killed_paths_left(here, capsys):
    sw = _copy(here / "sw", here / "copy")
    left = [sw / "paths" / ".success.csv.k1ll3d.tmp",
            sw / "paths" / "trajectories" / ".x.png.k1ll3d.tmp"]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    assert main(["paths", "copy"]) == 0
    assert not any(p.exists() for p in left)
