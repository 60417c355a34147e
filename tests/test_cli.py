import subprocess
import sys

import pytest

from count01.cli import main

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
    import count01.metrics

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(count01.metrics, "evaluate", broken)
    assert main(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "count01 evaluate: unexpected error" in err
    assert "simulated bug" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="simulated bug"):
        main(["evaluate", str(run), "--debug"])
    monkeypatch.setenv("COUNT01_DEBUG", "1")
    with pytest.raises(RuntimeError, match="simulated bug"):
        main(["evaluate", str(run)])
