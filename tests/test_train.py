import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import listing
from test_fast_count import SMALL

from count01.config import Config
from count01.files import CheckpointError, checkpoints
from count01.language import (
    eval_set,
    training_batch,
)
from count01.model import Model
from count01.runs import load, load_tensors, save_tensors
from count01.train import Trainer, loss_per_seed, lr_at, make_optimizer, torch_threads, train


def test_seed_k_in_a_batch_trains_like_seed_k_alone(tiny):
    cfg = tiny.replace(n_seeds=3, seed=10)
    batched = train(cfg, progress=False)
    alone = train(cfg.replace(seed=12, n_seeds=1), progress=False)
    for k, w in alone.weights.items():
        torch.testing.assert_close(batched.weights[k][2], w[0], atol=1e-5, rtol=0)


def test_batched_training_on_the_token_path_matches_single_seeds_too(tiny):
    cfg = tiny.replace(n_seeds=2, pos_embed="learned", steps=30)
    batched = train(cfg, progress=False)
    alone = train(cfg.replace(seed=1, n_seeds=1), progress=False)
    for k, w in alone.weights.items():
        assert torch.equal(batched.weights[k][1], w[0]), k


def test_training_is_deterministic_bit_for_bit(tiny):
    a, b = train(tiny, progress=False), train(tiny, progress=False)
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k])
    assert not torch.equal(a.weights["embed.W_E"][0], a.weights["embed.W_E"][1])


def test_training_reduces_the_loss(tiny):
    cfg = tiny.replace(steps=150)
    batch = eval_set(cfg, "iid")
    before = torch.nn.functional.cross_entropy(
        __import__("count01").Model.init(cfg)(batch)[0], batch.y)
    after = torch.nn.functional.cross_entropy(train(cfg, progress=False)(batch)[0], batch.y)
    assert after < 0.5 * before


def test_a_run_directory_holds_config_weights_metrics_and_checkpoints(tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny, out, progress=False)
    assert json.loads((out / "config.json").read_text()) == tiny.to_dict()
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["set"] for r in metrics["eval"]} == {"iid", "hard", "exhaustive", "long", "noisy"}
    assert len(metrics["eval"]) == 5 * tiny.n_seeds
    steps = [s for s, _ in checkpoints(out)]
    assert steps == [0, 20, 40, 60]
    assert not list(out.rglob("*.tmp"))
    assert load(out).seeds == tiny.seeds


def test_extending_a_finished_run_equals_training_longer_at_once(tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny.replace(steps=40), out, progress=False)
    resumed = train(tiny, out, resume=True, progress=False)
    straight = train(tiny, progress=False)
    for k in straight.weights:
        assert torch.equal(resumed.weights[k], straight.weights[k])
    assert json.loads((out / "config.json").read_text())["steps"] == tiny.steps  # now this long
    train(tiny, out, resume=True, progress=False)  # a plain resume of the longer run is fine


def test_resume_refuses_a_different_config(tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny.replace(steps=20), out, progress=False)
    with pytest.raises(CheckpointError, match="does not match"):
        train(tiny.replace(lr=0.5), out, resume=True, progress=False)


def test_killed_training_resumes_to_the_same_weights_bit_for_bit(tmp_path):
    args = ["--steps", "600", "--n-seeds", "2", "--batch-size", "64", "--checkpoint-every", "50",
            "--eval-size", "256", "--exhaustive-len", "6", "--quiet"]
    cmd = [sys.executable, "-m", "count01", "train"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)] + args, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(s >= 100 for s, _ in checkpoints(killed)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists(), "run finished before it could be killed"
    subprocess.run(cmd + ["--resume", str(killed), "--quiet"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    straight = tmp_path / "straight"
    subprocess.run(cmd + ["--out", str(straight)] + args, check=True, env=env,
                   stdout=subprocess.DEVNULL)
    a, _ = load_tensors(killed / "model.safetensors")
    b, _ = load_tensors(straight / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_default_config_solves_hard_for_most_seeds():
    model = train(Config(), progress=False)
    from count01.measure.metrics import evaluate
    hard = [r for r in evaluate(model, ("hard",))]
    solved = sum(r["l_acc"] == 1.0 for r in hard)
    assert solved >= 6, hard


def test_identical_runs_write_byte_identical_weight_files(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny, a, progress=False)
    train(tiny, b, progress=False)
    for name in ("model.safetensors", "resume.safetensors", "checkpoints/step_0000020.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_resumed_run_reports_the_final_loss_of_an_uninterrupted_one(tiny, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(tiny, straight, progress=False)
    train(tiny, killed, progress=False)
    (killed / "model.safetensors").unlink()  # killed after its last checkpoint
    (killed / "metrics.json").unlink()
    train(tiny, killed, resume=True, progress=False)
    loss = [json.loads((d / "metrics.json").read_text())["final_loss"] for d in (straight, killed)]
    assert loss[0] == loss[1] and all(x > 0 for x in loss[0])
    train(tiny, killed, resume=True, progress=False)  # resuming a finished run changes nothing
    assert json.loads((killed / "metrics.json").read_text())["final_loss"] == loss[0]


@pytest.mark.parametrize("damage, match", [
    (lambda t: {k: v for k, v in t.items() if not k.startswith("optim.")}, "optimiser state"),
    (lambda t: {k: v for k, v in t.items() if k != "optim.unembed.W_U.exp_avg"}, "optimiser state"),
    (lambda t: t | {"optim.unembed.W_U.exp_avg": torch.zeros(3)}, "has shape"),
    (lambda t: t | {"optim.unembed.W_U.step": torch.tensor([7.0])}, "is 7.0, but"),
])
def test_resume_refuses_an_incomplete_or_inconsistent_optimiser_state(damage, match, tiny,
                                                                      tmp_path):
    out = tmp_path / "run"
    train(tiny.replace(steps=40), out, progress=False)
    tensors, meta = load_tensors(out / "resume.safetensors")
    save_tensors(out / "resume.safetensors", damage(tensors), tiny, meta["seeds"],
                 step=meta["step"], loss=meta["loss"])
    before = listing(out)
    with pytest.raises(CheckpointError, match=match):
        train(tiny, out, resume=True, progress=False)
    assert listing(out) == before


@pytest.mark.parametrize("meta, match", [({"step": 1.5}, "corrupted metadata"),
                                         ({"step": 999}, "outside 1..steps"),
                                         ({"loss": "x"}, "no loss per seed")])
def test_resume_refuses_a_missing_or_bad_step_or_loss(meta, match, tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny.replace(steps=40), out, progress=False)
    tensors, saved = load_tensors(out / "resume.safetensors")
    save_tensors(out / "resume.safetensors", tensors, tiny, saved["seeds"],
                 **({"step": saved["step"], "loss": saved["loss"]} | meta))
    with pytest.raises(CheckpointError, match=match):
        train(tiny, out, resume=True, progress=False)


def test_the_schedule_warms_up_linearly_then_holds_or_decays_by_a_cosine_to_zero():
    cfg = Config(lr=0.1, steps=12, warmup=2, schedule="cosine")
    got = [lr_at(cfg, t) for t in range(cfg.steps)]
    by_hand = [0.05, 0.1] + [0.05 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    assert got == pytest.approx(by_hand, abs=1e-15)
    assert lr_at(cfg.replace(schedule="constant"), 7) == 0.1 and lr_at(cfg, 11) < 0.003


def interrupted_then_resumed(cfg: Config, out, monkeypatch, at: int = 35):
    """Train into `out`, Ctrl-C at step `at` (after the last checkpoint before it), resume."""
    step = Trainer.step

    def interrupted(self, t):
        if t == at:
            raise KeyboardInterrupt
        return step(self, t)

    monkeypatch.setattr(Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.undo()
    return train(cfg, out, resume=True, progress=False)


def trains_alone_and_resumes_bit_for_bit(cfg: Config, tmp_path, monkeypatch):
    """Train cfg into tmp_path/straight and assert that seed 1 trains as it would alone and that a
    killed-then-resumed run is the straight one, bit for bit. Returns the straight model."""
    straight = train(cfg, tmp_path / "straight", progress=False)
    alone = train(cfg.replace(seed=1, n_seeds=1), progress=False)
    resumed = interrupted_then_resumed(cfg, tmp_path / "killed", monkeypatch)
    for k, w in straight.weights.items():
        assert torch.equal(alone.weights[k], w[1:]), k
        assert torch.equal(resumed.weights[k], w), k
    return straight


@pytest.mark.parametrize("optimizer, schedule", [("sgd", "constant"), ("sgd", "cosine"),
                                                 ("adamw", "cosine")])
def test_every_optimiser_and_schedule_batches_and_resumes_bit_for_bit(optimizer, schedule, tiny,
                                                                      tmp_path, monkeypatch):
    cfg = tiny.replace(optimizer=optimizer, schedule=schedule, warmup=10, lr=0.05)
    trains_alone_and_resumes_bit_for_bit(cfg, tmp_path, monkeypatch)
    if schedule == "cosine":  # steps set the schedule: a cosine run cannot be extended
        with pytest.raises(CheckpointError, match="steps cannot change"):
            train(cfg.replace(steps=80), tmp_path / "straight", resume=True, progress=False)


def test_early_stopping_gives_up_on_failing_seeds_and_trains_the_others_on(tiny, tmp_path,
                                                                           monkeypatch):
    cfg = tiny.replace(n_seeds=4, init_scale=3.0, early_stop=True)  # iid loss at step 20:
    # 1.10, 2.39, 0.26, 0.40 (STOP_RULE gives up on a loss >= ln 2 from a sixth of the steps)
    model = train(cfg, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == {
        "0": 20, "1": 20}
    at_stop = load_tensors(tmp_path / "run" / "checkpoints" / "step_0000020.safetensors")[0]
    for k, w in model.weights.items():
        assert torch.equal(w[:2], at_stop[k][:2]), k  # frozen where they were given up
    alone = train(cfg.replace(seed=2, n_seeds=1, early_stop=False), progress=False)
    for k, w in alone.weights.items():  # the others train on as they would alone
        torch.testing.assert_close(model.weights[k][2:3], w, atol=1e-5, rtol=0)
    resumed = interrupted_then_resumed(cfg, tmp_path / "killed", monkeypatch)
    for k, w in model.weights.items():
        assert torch.equal(resumed.weights[k], w), k
    assert (json.loads((tmp_path / "killed" / "metrics.json").read_text())["final_loss"]
            == json.loads((tmp_path / "run" / "metrics.json").read_text())["final_loss"])


def test_early_stopping_gives_up_on_seeds_whose_weights_blew_up(tiny, tmp_path):
    cfg = tiny.replace(init_scale=10.0, early_stop=True)  # NaN weights by step 20
    train(cfg, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == {
        "0": 20, "1": 20}


def test_when_early_stopping_gives_up_on_every_seed_training_ends_there(tiny, tmp_path):
    cfg = tiny.replace(lr=1e-5, early_stop=True)
    model = train(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped"] == {"0": 20, "1": 20} and model.n_seeds == 2
    assert [s for s, _ in checkpoints(tmp_path / "run")] == [0, 20]
    assert train(cfg, tmp_path / "run", resume=True, progress=False).n_seeds == 2


@pytest.mark.parametrize("pos_embed", ["learned", "sinusoidal"])
def test_position_path_gradient_by_hand_equals_autograds(tiny, pos_embed):
    """The Trainer's hand-written gradient on the position path against autograd through the
    model's forward, in float64 on one training batch."""
    from count01.model import Model
    from count01.train import Trainer, loss_per_seed

    cfg = tiny.replace(pos_embed=pos_embed)
    model = Model.init(cfg).to(torch.float64)
    trainer = Trainer(cfg, model)
    assert trainer.by_hand
    loss, grad = trainer.loss_grad(3)
    leaves = {k: model.weights[k].detach().clone().requires_grad_() for k in trainer.names}
    want = loss_per_seed(Model(cfg, model.weights | leaves, model.seeds), cfg, 3)
    flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(want.sum(), list(leaves.values()))])
    torch.testing.assert_close(loss, want.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(grad, flat, atol=1e-12, rtol=1e-10)


def test_position_path_training_is_deterministic_and_resumes_bit_for_bit(tiny, tmp_path):
    cfg = tiny.replace(pos_embed="learned")
    out = tmp_path / "run"
    train(cfg.replace(steps=40), out, progress=False)
    resumed = train(cfg, out, resume=True, progress=False)
    a, b = train(cfg, progress=False), train(cfg, progress=False)
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k
        assert torch.equal(resumed.weights[k], a.weights[k]), k


def test_a_prefetched_batch_is_used_only_for_its_own_step_and_seeds(tiny):
    """The position path makes the next step's batch ahead; a trainer asked for another step
    (a resume, a skipped step) or holding other seeds gets the batch it asks for."""
    from count01.model import Model
    from count01.train import Trainer

    cfg = tiny.replace(pos_embed="learned")
    trainer = Trainer(cfg, Model.init(cfg))
    assert trainer.prefetch
    def make(seeds, t):
        return training_batch(cfg, seeds, t)

    for step in (0, 1, 5, 2):
        got = trainer._ahead(step, make)
        assert torch.equal(got.tokens, training_batch(cfg, cfg.seeds, step).tokens)
    trainer.model.seeds = [7, 8]  # as if the batch had changed its seeds
    got = trainer._ahead(3, make)
    assert torch.equal(got.tokens, training_batch(cfg, [7, 8], 3).tokens)


@pytest.mark.parametrize("change", [{}, {"lm_loss": True},
                                    {"pos_embed": "learned", "lm_loss": True},
                                    {"noise_symbols": 3}, {"noise_symbols": 3, "lm_loss": True}])
def test_the_sentence_framing_trains_batches_and_resumes_bit_for_bit(change, tiny, tmp_path,
                                                                     monkeypatch):
    """By hand on the count path (with and without lm_loss), autograd on the position path:
    the loss falls, a seed trains as it would alone bit for bit, and a resumed run is the
    straight one. The count path is exact because count_rows_loss_grad's products keep one
    layout per seed and avoid MKL's 5 x 5 bmms (whose results depend on the batch's size),
    and lm_loss rows are as many as a batch can hold (the config's bound, not the batch's
    longest seed: MKL's sums differ with a product's length), in blocks of train.ROW_BLOCK.
    Autograd with positions is exact too
    (checked here, not by construction): its products have B * L rows per seed, and torch
    differentiates each seed's slice alike."""
    cfg = tiny.replace(framing="sentence", **change)
    trains_alone_and_resumes_bit_for_bit(cfg, tmp_path, monkeypatch)
    from count01.model import Model

    first = Trainer(cfg, Model.init(cfg)).loss_grad(0)[0]
    final = json.loads((tmp_path / "straight" / "metrics.json").read_text())["final_loss"]
    assert max(final) < first.min().item()
@pytest.mark.parametrize("pattern", ["iid", "bursty"])
def test_three_noise_symbols_train_deterministically_batch_and_resume_bit_for_bit(
        pattern, tiny, tmp_path, monkeypatch):
    cfg = tiny.replace(noise_symbols=3, noise_pattern=pattern)
    straight = trains_alone_and_resumes_bit_for_bit(cfg, tmp_path, monkeypatch)
    assert straight.weights["embed.W_E"].shape[1] == 7
    again = train(cfg, progress=False)
    for k, w in straight.weights.items():
        assert torch.equal(again.weights[k], w), k
    assert not torch.equal(straight.weights["embed.W_E"], Model.init(cfg).weights["embed.W_E"])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("schedule, warmup", [("constant", 0), ("constant", 4), ("cosine", 5)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_trainer_is_the_torch_optimiser_bit_for_bit(optimizer, schedule, warmup, weight_decay):
    # LayerNorm: the one option on which the Trainer's gradient is autograd's, so the updates
    # compared are the only difference (elsewhere the gradient is written by hand)
    cfg = SMALL.replace(pos_embed="learned", layernorm=True, weight_decay=weight_decay, steps=15,
                        optimizer=optimizer, schedule=schedule, warmup=warmup)
    trainer = Trainer(cfg, Model.init(cfg))
    reference = Model.init(cfg)
    opt = make_optimizer(reference, cfg)
    with torch_threads(1):
        for step in range(cfg.steps):
            trainer.step(step)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step)
            opt.zero_grad(set_to_none=True)
            loss_per_seed(reference, cfg, step).sum().backward()
            opt.step()
    for k, w in trainer.weights().items():
        assert torch.equal(w, reference.weights[k].detach()), k
