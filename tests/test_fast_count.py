"""count01.fast.count: the count path (no positional embedding: everything at a query depends
only on the counts) against the token path and the textbook forward, its hand-written
gradients against autograd, and exact exhaustive evaluation against enumerating every string."""

import numpy as np
import pytest
import textbook as tb
import torch

from count01.config import Config
from count01.language import (
    Batch,
    eval_set,
    exhaustive,
    from_digits,
    kind_ids,
    training_batch,
)
from count01.measure.metrics import evaluate_logits
from count01.model import Model, trainable
from count01.train import loss_per_seed, make_optimizer, torch_threads, train

SMALL = Config(n_seeds=2, batch_size=64, max_len=12, long_max_len=16, exhaustive_len=6,
               eval_size=256)


def noisy_model(cfg: Config, seeds=(0, 1), scale: float = 0.3) -> Model:
    """Initial weights plus noise on every weight (biases, LN gains too): sharp, uneven
    attention and no symmetric zeros, so an error in any term shows."""
    m = Model.init(cfg, list(seeds))
    gen = torch.Generator().manual_seed(123)
    for k, w in m.weights.items():
        if k != "pos_embed.W_pos":
            m.weights[k] = w + scale * torch.randn(w.shape, generator=gen)
    return m


def random_strings(n: int, max_len: int, seed: int = 0, k: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, n)
    digits = np.asarray(kind_ids(k))[rng.integers(0, k + 2, (n, max_len))]
    return np.where(np.arange(max_len) < lengths[:, None], digits, -1)


def counts_only(batch: Batch) -> Batch:
    return Batch(batch.counts, batch.y, batch.weight)


@pytest.mark.parametrize("layernorm,bos,k", [(False, True, 1), (True, True, 1), (False, False, 1),
                                             (True, False, 1), (False, True, 3), (True, False, 3)])
def test_count_and_token_paths_agree_on_logits_head_outputs_and_attention_mass(layernorm, bos, k):
    cfg = SMALL.replace(layernorm=layernorm, bos=bos, noise_symbols=k)
    m = noisy_model(cfg)
    tok = from_digits(random_strings(300, 20, k=k), bos, k)
    by_tokens = m.run(tok, force_tokens=True)
    by_counts = m.run(counts_only(tok))
    for name in ("logits", "result", "z", "resid"):
        torch.testing.assert_close(getattr(by_counts, name), getattr(by_tokens, name),
                                   atol=1e-5, rtol=0, msg=name)
    torch.testing.assert_close(by_counts.mass(), by_tokens.mass(), atol=1e-5, rtol=0)
    torch.testing.assert_close(m(counts_only(tok)), by_tokens.logits, atol=1e-5, rtol=0)
    if not bos:
        assert by_counts.mass()[..., 4].abs().max() == 0
    assert by_tokens.logits.std() > 0.1  # not a degenerate model


@pytest.mark.parametrize("bos,symbols,pattern", [(True, 1, "iid"), (False, 1, "iid"),
                                                 (True, 3, "iid"), (False, 3, "bursty")])
def test_hand_written_count_gradient_equals_autograd(bos, symbols, pattern):
    cfg = SMALL.replace(bos=bos, heads=2, d_model=8, d_head=3, noise_symbols=symbols,
                        noise_pattern=pattern)
    m = noisy_model(cfg).to(torch.float64)
    batch = training_batch(cfg, m.seeds, 3)
    mult = m._mult(batch).transpose(1, 2)  # (S, V, B)
    target = torch.nn.functional.one_hot(batch.y, cfg.d_vocab).double().transpose(1, 2)
    loss, grads = m.count_loss_grad(mult, target)
    leaves = {k: w.clone().requires_grad_(True) for k, w in m.weights.items()}
    logits = Model(cfg, leaves, m.seeds)(batch)
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.y,
                                                 reduction="none").mean(1)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected.detach(), atol=1e-12, rtol=0)
    assert set(grads) == {k for k in m.weights if trainable(cfg, k)}
    for k, g in grads.items():
        torch.testing.assert_close(g, leaves[k].grad, atol=1e-12, rtol=0, msg=k)


@pytest.mark.parametrize("change", [{}, {"noise_symbols": 3},
                                    {"noise_symbols": 3, "noise_pattern": "bursty"}])
def test_training_on_the_count_path_equals_training_on_the_token_path(change):
    cfg = SMALL.replace(steps=200, **change)
    by_counts = train(cfg, progress=False)
    model = Model.init(cfg)  # the token path, through autograd and torch's AdamW
    opt = make_optimizer(model, cfg)
    with torch_threads(1):
        for step in range(cfg.steps):
            batch = training_batch(cfg, model.seeds, step, tokens=True)
            assert torch.equal(batch.counts, training_batch(cfg, model.seeds, step).counts)
            logits = model.run(batch, force_tokens=True).logits
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.y,
                                                     reduction="none").mean(1)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
    moved = 0.0
    for k, w in by_counts.weights.items():
        torch.testing.assert_close(w, model.weights[k].detach(), atol=1e-4, rtol=0, msg=k)
        moved = max(moved, (w - Model.init(cfg).weights[k]).abs().max().item())
    assert moved > 0.1  # the weights did travel


def chunked_token_logits(model: Model, batch: Batch, size: int = 8192) -> torch.Tensor:
    out = []
    with torch_threads(1):
        for i in range(0, len(batch), size):
            part = Batch(batch.counts[i:i + size], batch.y[i:i + size], batch.weight[i:i + size],
                         batch.tokens[i:i + size], batch.eos_pos[i:i + size])
            out.append(model.run(part, force_tokens=True).logits)
    return torch.cat(out, 1)


@pytest.fixture(scope="module")
def half_trained() -> Model:
    """Stopped early on purpose: it still errs on some strings, so l-acc and valid rate are
    strictly between 0 and 1 and the comparison below has something to get wrong."""
    cfg = SMALL.replace(steps=40, n_seeds=2, max_len=10, init_scale=2.0)
    return train(cfg, progress=False).to(torch.float64)


@pytest.mark.parametrize("n", [1, 4, 7, 10])
def test_exact_exhaustive_metrics_equal_enumerating_every_string(half_trained, n):
    m = half_trained
    exact = exhaustive(m.cfg, max_len=n)
    enumerated = exhaustive(m.cfg, tokens=True, max_len=n)
    assert len(enumerated) == sum(3**k for k in range(1, n + 1))
    a = evaluate_logits(m(exact), exact)
    b = evaluate_logits(chunked_token_logits(m, enumerated), enumerated)
    for key in ("l_acc", "valid", "auc"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-9, rtol=0, err_msg=key)
    if n == 10:
        assert ((0 < a["l_acc"]) & (a["l_acc"] < 1)).all(), a


def test_exact_exhaustive_evaluation_at_length_64_is_finite_and_extends_length_10(half_trained):
    m = half_trained
    full = exhaustive(m.cfg, max_len=64)
    assert len(full) == sum((n + 1) * (n + 2) // 2 for n in range(1, 65))
    assert torch.isfinite(full.weight).all()
    assert float(full.weight.sum()) == pytest.approx((3**65 - 3) / 2, rel=1e-12)
    logits = m(full)
    assert torch.isfinite(logits).all()
    r = evaluate_logits(logits, full)
    assert all(np.isfinite(v).all() and (0 <= v).all() and (v <= 1).all() for v in r.values())
    short = full.counts.sum(1) <= 10  # the same numbers restricted to strings up to length 10
    part = Batch(full.counts[short], full.y[short], full.weight[short])
    ten = exhaustive(m.cfg, max_len=10)
    for key, v in evaluate_logits(logits[:, short], part).items():
        np.testing.assert_allclose(v, evaluate_logits(m(ten), ten)[key], atol=1e-12, rtol=0)


@pytest.mark.parametrize("bos,lm,k", [(True, True, 1), (False, True, 1), (True, False, 1),
                                      (True, False, 3), (True, True, 3)])
def test_count_rows_loss_grad_matches_autograd_through_every_query_row(bos, lm, k):
    """Model.count_rows_loss_grad on the sentence framing's rows (answers, endings and with
    lm_loss every string position) against autograd through the textbook L x L forward,
    float64, random weights, every bias nonzero; k noise symbols (k > 1: rows from drawn count
    tuples, no per-triple table)."""
    from count01.model import trainable
    from count01.train import _sentence_table, sentence_rows

    cfg = Config(bos=bos, heads=3, d_model=12, d_head=5, batch_size=24, max_len=9,
                 long_max_len=12, noise=0.3, framing="sentence", lm_loss=lm, noise_symbols=k)
    m = tb.random_model(cfg)
    table = _sentence_table(cfg.min_len, cfg.max_len, bos, torch.float64) if k == 1 else None
    rows = [r.expand(2, *r.shape[1:]) for r in sentence_rows(cfg, [3], 5, torch.float64, table)]
    loss, grads = m.count_rows_loss_grad(*rows)
    batch = training_batch(cfg, [3], 5, tokens=True)
    names = [k for k in m.weights if trainable(cfg, k)]
    leaves = {k: m.weights[k].clone().requires_grad_() for k in names}
    every = tb.textbook(Model(cfg, m.weights | leaves, m.seeds), batch.tokens[0],
                     batch.eos_pos[0])["every_row"]
    want = tb.sentence_loss(every, batch.tokens[0], batch.eos_pos[0], lm)
    torch.testing.assert_close(loss, want.detach(), atol=1e-10, rtol=0)
    assert set(grads) == set(names)
    for k, g in zip(names, torch.autograd.grad(want.sum(), [leaves[k] for k in names])):
        torch.testing.assert_close(grads[k], g, atol=1e-10, rtol=1e-10, msg=k)


@pytest.mark.parametrize("R", [64, 320])
def test_count_rows_loss_grad_of_a_seed_does_not_depend_on_its_batch(R):
    """Seed k of S = 2, 3, 8 gets the loss and gradient it gets alone, bit for bit, on the same
    rows (float32 on one thread, R a multiple of train.ROW_BLOCK: as the Trainer runs)."""
    from count01.train import torch_threads

    gen = torch.Generator().manual_seed(R)
    cfg = Config(framing="sentence")
    for S in (2, 3, 8):
        m = Model.init(cfg, list(range(S)))
        for w in m.weights.values():
            w.add_(torch.randn(w.shape, generator=gen) * 0.5)
        V = cfg.d_vocab
        query = torch.nn.functional.one_hot(torch.randint(V, (S, R), generator=gen), V)
        query = query.transpose(1, 2).float()
        mult = torch.randint(0, 9, (S, V, R), generator=gen).float() + query
        target = torch.nn.functional.one_hot(torch.randint(V, (S, R), generator=gen), V)
        rows = (mult, query, target.transpose(1, 2).float(), torch.rand(S, R, generator=gen))
        with torch_threads(1):
            loss, grads = m.count_rows_loss_grad(*rows)
        for k in range(S):
            with torch_threads(1):
                one, alone = m.select(k).count_rows_loss_grad(*(r[k:k + 1].clone() for r in rows))
            assert torch.equal(loss[k:k + 1], one), (S, k)
            for name, g in alone.items():
                assert torch.equal(grads[name][k:k + 1], g), (S, k, name)


@pytest.mark.parametrize("pos_embed, k", [("none", 1), ("learned", 1), ("none", 3)])
def test_the_ending_query_equals_the_textbook_row_after_the_first_eos(pos_embed, k):
    """Logits and head outputs at the answer y (the `sentence` ending, `at_end`): the count path
    (no positions) and the token path (positions) against row eos + 1 of the textbook forward;
    with the true answer fed and with the other one; k noise symbols."""
    from count01.language import at_end

    cfg = Config(pos_embed=pos_embed, heads=3, d_model=12, d_head=5, eval_size=60, max_len=9,
                 long_max_len=12, framing="sentence", lm_loss=pos_embed != "none",
                 noise_symbols=k)
    m = tb.random_model(cfg)
    batch = eval_set(cfg, "iid", tokens=True)
    rows = torch.arange(len(batch))
    for fed in (batch.y, 1 - batch.y):
        end = at_end(batch, fed)
        ref = tb.textbook(m, end.tokens, batch.eos_pos)
        want = ref["every_row"][:, rows, batch.eos_pos + 1]
        counts = type(batch)(batch.counts, end.y, batch.weight, query=fed)
        for b in ([end, counts] if pos_embed == "none" else [end]):
            torch.testing.assert_close(m(b), want, atol=1e-10, rtol=0)
        torch.testing.assert_close(m(batch), ref["logits"], atol=1e-10, rtol=0)
    if pos_embed != "none":  # autograd's sentence loss (the Trainer's path with positions)
        train_batch = training_batch(cfg, m.seeds, 2)
        per_seed = [tb.sentence_loss(tb.textbook(m.select(i), train_batch.tokens[i],
                                           train_batch.eos_pos[i])["every_row"],
                                  train_batch.tokens[i], train_batch.eos_pos[i], True)
                    for i in range(2)]
        torch.testing.assert_close(loss_per_seed(m, cfg, 2), torch.cat(per_seed), atol=1e-10,
                                   rtol=0)
