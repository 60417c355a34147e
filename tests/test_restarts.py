"""`count01 train --restarts K` and `restarts.keep_best`: K seeds trained as one run, the best kept
as a run of its own."""

import json

import torch

from count01.cli import main
from count01.restarts import keep_best
from count01.runs import load
from count01.train import STOP_RULE, train

TRAIN = ["--steps", "80", "--batch-size", "64", "--checkpoint-every", "40", "--eval-size", "256",
         "--exhaustive-len", "5", "--max-len", "8", "--long-max-len", "12", "--quiet"]


def test_restarts_keep_the_best_seed_as_a_run_of_its_own(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--restarts", "3", "--out", str(out)] + TRAIN) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "restarts.json").read_text())
    assert summary["restarts"] == 3 and "of 3 seeds succeeded" in printed
    seeds = summary["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1, 2]
    assert summary["succeeded"] == sum(s["hard_l_acc"] >= 0.99 for s in seeds)
    key = {s["seed"]: (-s["hard_l_acc"], s["hard_loss"]) for s in seeds}
    assert summary["best_seed"] == min(key, key=key.get)
    full, best = load(out), load(out / "best")
    assert best.seeds == [summary["best_seed"]] and best.cfg.n_seeds == 1
    for k, w in best.weights.items():
        assert torch.equal(w[0], full.weights[k][summary["best_seed"]])
    assert main(["evaluate", str(out / "best"), "--sets", "hard"]) == 0


def test_restarts_with_early_stopping_report_the_seeds_given_up(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "--restarts", "4", "--early-stop", "true", "--init-scale", "3", "--lr",
            "0.03", "--out", str(out)] + TRAIN
    assert main(args) == 0
    summary = json.loads((out / "restarts.json").read_text())
    stopped = [s["seed"] for s in summary["seeds"] if s["stopped_at"] is not None]
    assert summary["stopped_early"] == len(stopped) >= 1
    assert summary["early_stop_rule"] == STOP_RULE.text()
    assert summary["best_seed"] not in stopped
    assert f"{len(stopped)} given up early" in capsys.readouterr().out


def test_restarts_and_a_different_n_seeds_conflict(tmp_path, capsys):
    assert main(["train", "--restarts", "3", "--n-seeds", "2", "--out", str(tmp_path / "r")]
                + TRAIN) == 2
    assert "--restarts 3 trains 3 seeds" in capsys.readouterr().err


def test_keep_best_prefers_accuracy_then_loss(tmp_path, tiny):
    out = tmp_path / "run"
    train(tiny.replace(n_seeds=3), out, progress=False)
    summary = keep_best(out)
    accs = [s["hard_l_acc"] for s in summary["seeds"]]
    assert summary["best_hard_l_acc"] == max(accs)
    tied = [s for s in summary["seeds"] if s["hard_l_acc"] == max(accs)]
    assert summary["best_hard_loss"] == min(s["hard_loss"] for s in tied)
