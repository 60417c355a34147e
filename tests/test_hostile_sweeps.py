"""Issue 11 on sweeps, paths, report, export, intervene and analyze: hostile inputs and faults end
in one line (exit 2), with nothing half-written, and a killed command resumes cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import refused

from count01.cli import main

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
