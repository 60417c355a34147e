import json
import subprocess
import sys

import pytest
from conftest import refused

from count01.cli import main
from count01.files import load_config
from count01.runs import load

TINY = ["--steps", "40", "--n-seeds", "2", "--batch-size", "64", "--checkpoint-every", "20",
        "--eval-size", "256", "--exhaustive-len", "5", "--max-len", "8", "--long-max-len", "12",
        "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out)] + TINY) == 0
    return out


def test_train_evaluate_predict_end_to_end(run, capsys):
    assert main(["evaluate", str(run)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert {"set", "seed", "l_acc", "valid", "auc"} <= set(header)
    assert "exhaustive" in table and "noisy" in table and "hard" in table
    assert main(["predict", str(run), "0112021"]) == 0
    out = capsys.readouterr().out
    assert "n0=2 n1=3 n2=2" in out and "p(EOS)" in out


def test_a_run_with_three_noise_symbols_trains_evaluates_and_predicts_them(tmp_path, capsys):
    out = tmp_path / "k3"
    assert main(["train", "--out", str(out), "--noise-symbols", "3"] + TINY) == 0
    assert main(["evaluate", str(out)]) == 0
    assert "exhaustive" in capsys.readouterr().out
    assert main(["predict", str(out), "0125601"]) == 0
    got = capsys.readouterr().out
    assert "n0=2 n1=2 n2=1 n5=1 n6=1" in got and "p(6)" in got
    _fails_cleanly(["predict", str(out), "0127"], capsys, "only digits 0, 1, 2, 5, 6")


COMMANDS = ("train", "evaluate", "predict", "analyze", "intervene", "sweep", "paths", "report",
            "reproduce", "export")


def test_the_console_entry_point_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "count01", "--help"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and all(c in done.stdout for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith(f"usage: count01 {command}")


def _fails_cleanly(args, capsys, match):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "Traceback" not in err


@pytest.mark.parametrize("args, match", [
    (["train", "--heads", "0"], "heads must be positive"),
    (["train", "--d-model", "10", "--heads", "4"], "not divisible"),
    (["train", "--noise", "1.5"], "noise must be in [0, 1)"),
    (["train", "--noise", "-0.1"], "noise must be in [0, 1)"),
    (["train", "--batch-size", "0"], "batch_size must be positive"),
    (["train", "--n-seeds", "-2"], "n_seeds must be positive"),
    (["train", "--d-head", "0"], "d_head must be positive"),
    (["train", "--noise", "abc"], "noise expects float"),
    (["train", "--bogus", "3"], "unrecognized arguments"),
    (["train", "--pos-embed", "rotary"], "pos_embed must be one of"),
    (["train", "--config", "/nonexistent.toml"], "config file not found"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_training_options_fail_cleanly_and_write_nothing(args, match, capsys, tmp_path):
    out = tmp_path / "never"
    _fails_cleanly(args + ["--out", str(out)] if args[0] == "train" else args, capsys, match)
    assert not out.exists()


@pytest.mark.parametrize("text, match", [
    ("0113", "invalid token"), ("", "empty string"), ("01 x", "invalid token")])
def test_malformed_token_strings_fail_cleanly(run, text, match, capsys):
    _fails_cleanly(["predict", str(run), text], capsys, match)


def test_an_unknown_option_in_a_config_file_fails_cleanly(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("heads = 4\nhedas = 2\n")
    out = tmp_path / "never"
    _fails_cleanly(["train", "--config", str(toml), "--out", str(out)], capsys, "unknown option")
    assert not out.exists()


def listing(d) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_missing_truncated_and_foreign_checkpoints_fail_cleanly(run, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import save_file

    _fails_cleanly(["evaluate", str(tmp_path / "missing")], capsys, "no such run")
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.safetensors").unlink()  # a run killed before its final weights
    before = listing(broken)
    _fails_cleanly(["evaluate", str(broken)], capsys, "no final weights")
    data = (run / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    _fails_cleanly(["evaluate", str(broken)], capsys, "corrupted or truncated")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    _fails_cleanly(["predict", str(broken), "01"], capsys, "corrupted or truncated")
    save_file({"x": torch.zeros(3)}, str(broken / "model.safetensors"))  # valid, not ours
    _fails_cleanly(["evaluate", str(broken)], capsys, "not a count01 checkpoint")
    (broken / "model.safetensors").unlink()
    assert listing(broken) == before  # the failures wrote nothing into the run


def test_a_config_that_does_not_match_the_checkpoint_fails_cleanly(run, tmp_path, capsys):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["d_model"] = 8
    (other / "config.json").write_text(json.dumps(cfg))
    before = listing(other)
    _fails_cleanly(["evaluate", str(other)], capsys, "does not match")
    _fails_cleanly(["train", "--resume", str(other)], capsys, "does not match")
    assert listing(other) == before


def test_train_refuses_to_overwrite_a_run_and_resume_rejects_new_options(run, capsys):
    before = listing(run)
    _fails_cleanly(["train", "--out", str(run)] + TINY, capsys, "already holds a run")
    _fails_cleanly(["train", "--resume", str(run), "--heads", "2"], capsys, "only --steps")
    assert listing(run) == before


def test_an_unexpected_error_is_one_line_with_exit_1_and_a_traceback_only_with_debug(
        run, monkeypatch, capsys):
    import count01.measure.metrics

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(count01.measure.metrics, "evaluate", broken)
    assert main(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "count01 evaluate: unexpected error" in err
    assert "simulated bug" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="simulated bug"):
        main(["evaluate", str(run), "--debug"])
    monkeypatch.setenv("COUNT01_DEBUG", "1")
    with pytest.raises(RuntimeError, match="simulated bug"):
        main(["evaluate", str(run)])


@pytest.mark.parametrize("args, match", [
    (["--lr", "inf"], "lr must be a finite number"),
    (["--init-scale", "inf"], "init_scale must be a finite number"),
    (["--weight-decay", "nan"], "weight_decay must be a finite number"),
    (["--eval-seed", "-1"], "eval_seed must be in 0.."),
    (["--seed", "18446744073709551616"], "seed must be in 0.."),
    (["--eval-size", "1000000000000"], "eval_size"),
    (["--batch-size", "1000000000"], "batch_size"),
    (["--long-max-len", "1000000"], "long_max_len"),
    (["--exhaustive-len", "10000"], "exhaustive_len"),
    (["--heads", "100000", "--d-head", "4"], "heads"),
    (["--layers", "10000"], "layers"),  # L x H heads and their MLPs, refused before allocating
    (["--d-model", "1000000"], "d_model"),
    (["--n-seeds", "10000000"], "n_seeds"),
    (["--framing", "poem"], "framing must be one of classify, sentence"),
    (["--lm-loss", "true"], "lm_loss needs framing = sentence"),
    (["--lm-loss", "maybe", "--framing", "sentence"], "lm_loss expects bool"),
    (["--framing", "sentence", "--lm-loss", "true", "--layernorm", "true"], "lm_loss with layernorm"),
    (["--noise-symbols", "0"], "noise_symbols must be in 1..6, got 0"),
    (["--noise-symbols", "-1"], "noise_symbols must be in 1..6, got -1"),
    (["--noise-symbols", "x"], "noise_symbols expects int"),
    (["--noise-symbols", "1000000"], "noise_symbols must be in 1..6"),
    (["--noise-symbols", "6", "--pos-embed", "learned", "--exhaustive-len", "14"],
     "noise_symbols"),
])
def test_bad_or_impossible_values_are_refused_before_anything_is_written(
        args, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["train", "--out", "run", "--quiet"] + args, capsys, match, tmp_path)


def test_unusable_output_paths_are_refused_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out, match in [("afile", "is a file"), ("afile/x", "not a directory"),
                       ("/proc/x", "cannot be written"), ("dangling", "dangling symbolic link"),
                       ("", "an empty path")]:
        refused(["train", "--out", out] + TINY, capsys, match, tmp_path)


def test_a_second_training_run_into_a_directory_being_written_is_refused(capsys, tmp_path):
    from count01.files import locked

    out = tmp_path / "busy"
    with locked(out, "training run"):  # another process's run, as far as the lock tells
        refused(["train", "--out", out] + TINY, capsys, "another training run", tmp_path)


def test_resume_refuses_out_and_a_directory_that_holds_no_run(run, capsys, tmp_path):
    refused(["train", "--resume", run, "--out", tmp_path / "x"], capsys, "drop --out", tmp_path,
            run)
    (tmp_path / "empty").mkdir()
    refused(["train", "--resume", tmp_path / "empty"], capsys, "holds no run", tmp_path)


def test_predict_refuses_a_string_longer_than_the_positional_embedding(capsys, tmp_path):
    out = tmp_path / "pos"
    assert main(["train", "--out", str(out), "--pos-embed", "learned"] + TINY) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "01" * 6]) == 0  # n_ctx 14: BOS, 12 digits, EOS
    capsys.readouterr()
    refused(["predict", out, "0" * 13], capsys, "covers 12 at most", tmp_path)


def test_a_checkpoint_with_corrupted_metadata_or_foreign_dtypes_is_refused(run, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from count01.runs import FORMAT

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    weights = load_file(str(run / "model.safetensors"))
    cases = [({"format": FORMAT, "model": "{not json", "seeds": "[0, 1]"}, weights, "not JSON"),
             ({"format": FORMAT, "model": "{}"}, weights, "corrupted metadata"),
             ({"format": FORMAT, "model": "{}", "seeds": "[0, 1]", "step": "1.5"}, weights,
              "corrupted metadata")]
    good_meta = {"format": FORMAT, "model": json.dumps(load_config(run).model_dict()),
                 "seeds": "[0, 1]"}
    cases.append((good_meta, {k: v.long() for k, v in weights.items()}, "count01 weights are float32"))
    cases.append((good_meta | {"seeds": "[0]"}, {k: v[:1] for k, v in weights.items()}, "says [0, 1]"))
    for meta, tensors, match in cases:
        save_file(tensors, str(bad / "model.safetensors"), metadata=meta)
        refused(["evaluate", bad], capsys, match, bad)
    save_file(weights, str(bad / "model.safetensors"), metadata=good_meta)
    assert main(["evaluate", str(bad)]) == 0
    capsys.readouterr()
    assert torch.equal(load(bad).weights["embed.W_E"], weights["embed.W_E"])


def test_the_sentence_framing_evaluates_and_predicts_the_ending(capsys, tmp_path):
    out = tmp_path / "sentence"
    assert main(["train", "--out", str(out), "--framing", "sentence", "--lm-loss", "true"]
                + TINY) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header == ["set", "seed", "l_acc", "valid", "auc", "end", "sentence"]
    assert main(["predict", str(out), "0112021"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["seed", "answer", "truth", "ends"]
    assert all(row.split()[3] in ("yes", "no", "-") for row in lines[2:])
    assert load_config(out).framing == "sentence" and load_config(out).lm_loss
