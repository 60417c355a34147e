import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from count01.config import Config
from count01.runs import CheckpointError, checkpoints, load, load_tensors
from count01.train import train


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
        torch.testing.assert_close(batched.weights[k][1], w[0], atol=1e-5, rtol=0)


def test_training_is_deterministic_bit_for_bit(tiny):
    a, b = train(tiny, progress=False), train(tiny, progress=False)
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k])
    assert not torch.equal(a.weights["embed.W_E"][0], a.weights["embed.W_E"][1])


def test_training_reduces_the_loss(tiny):
    from count01.language import eval_set
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
    from count01.metrics import evaluate
    hard = [r for r in evaluate(model, ("hard",))]
    solved = sum(r["l_acc"] == 1.0 for r in hard)
    assert solved >= 6, hard


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
    from count01.language import training_batch
    from count01.model import Model
    from count01.train import Trainer

    cfg = tiny.replace(pos_embed="learned")
    trainer = Trainer(cfg, Model.init(cfg))
    assert trainer.prefetch
    for step in (0, 1, 5, 2):
        got = trainer._token_batch(step)
        assert torch.equal(got.tokens, training_batch(cfg, cfg.seeds, step).tokens)
    trainer.model.seeds = [7, 8]  # as if the batch had changed its seeds
    got = trainer._token_batch(3)
    assert torch.equal(got.tokens, training_batch(cfg, [7, 8], 3).tokens)
