"""count01.fast.position: the position path (one layer with a positional embedding) against the
textbook full L x L forward and autograd in float64."""

import subprocess
import sys

import pytest
import test_fast_count as fc
import torch
from textbook import random_model, textbook

from count01.config import Config
from count01.fast.position import PosCache
from count01.language import (
    at_end,
    eval_set,
    from_digits,
    training_batch,
)
from count01.model import Model, trainable

POSITION_OPTIONS = [(p, bos) for p in ("learned", "sinusoidal") for bos in (True, False)]


@pytest.mark.parametrize("pos_embed,bos,noise_symbols",
                         [o + (1,) for o in POSITION_OPTIONS] + [("learned", True, 3)])
def test_position_path_matches_the_textbook_forward_and_autograd(pos_embed, bos, noise_symbols):
    """Model.pos_loss_grad, and the position path's logits (Model.__call__, Model.run), pattern
    and head outputs, against the full L x L forward and autograd, float64, random weights
    (with three noise symbols too: kinds and logits are the config's vocabulary)."""
    cfg = Config(pos_embed=pos_embed, bos=bos, heads=3, d_model=12, d_head=5, batch_size=40,
                 max_len=9, long_max_len=12, noise=0.3, noise_symbols=noise_symbols)
    m = random_model(cfg)
    batch = training_batch(cfg, [3], 5, tokens=True)
    tokens, eos = batch.tokens[0], batch.eos_pos[0]
    names = [k for k in m.weights if trainable(cfg, k)]
    leaves = {k: m.weights[k].clone().requires_grad_() for k in names}
    ref = textbook(Model(cfg, m.weights | leaves, m.seeds), tokens, eos)
    ce = torch.nn.functional.cross_entropy(ref["logits"].transpose(1, 2),
                                           batch.y.expand(2, -1), reduction="none").mean(1)
    want = torch.autograd.grad(ce.sum(), [leaves[k] for k in names])
    loss, grads = m.pos_loss_grad(tokens, eos, batch.y[0])
    torch.testing.assert_close(loss, ce.detach(), atol=1e-10, rtol=0)
    for k, g in zip(names, want):
        torch.testing.assert_close(grads[k], g, atol=1e-10, rtol=1e-10, msg=k)
    one = type(batch)(batch.counts[0], batch.y[0], batch.weight[0], tokens, eos)
    cache = m.run(one)
    for k in ("logits", "pattern", "result"):
        torch.testing.assert_close(getattr(cache, k), ref[k].detach(), atol=1e-10, rtol=0,
                                   msg=k)
    torch.testing.assert_close(m(one), ref["logits"].detach(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("ending", [False, True])
@pytest.mark.parametrize("pos_embed,bos", POSITION_OPTIONS)
def test_position_paths_run_matches_the_reference_slots_forward(pos_embed, bos, ending):
    """Model.run on the position path (a PosCache, from the tables) against the reference
    forward over slots (Model.run with an attention override of exp(score)): every field,
    the mass per kind and each slot's value read out through W_O; at EOS, and at the
    `sentence` ending (`at_end`: the fed answer, here the true one or a 2, the query, from
    `query_tables`)."""
    cfg = Config(pos_embed=pos_embed, bos=bos, heads=3, d_model=12, d_head=5, eval_size=50,
                 max_len=9, long_max_len=12, framing="sentence" if ending else "classify")
    m = random_model(cfg)
    batch = eval_set(cfg, "long")
    if ending:
        batch = at_end(batch, torch.where(torch.arange(len(batch)) % 5 == 0, 2, batch.y))
    fast = m.run(batch)
    assert isinstance(fast, PosCache)
    own = torch.exp(fast.scores - fast.scores.max(-1, keepdim=True).values)
    ref = m.run(batch, attn_override=own)  # the slots forward, this pattern
    for k in ("pattern", "scores", "z", "result", "resid", "logits"):
        torch.testing.assert_close(getattr(fast, k), getattr(ref, k), atol=1e-10, rtol=0,
                                   msg=k)
    mult = ref.mult[..., None, :, None]
    torch.testing.assert_close(fast.v * mult, ref.v.expand_as(fast.v) * mult, atol=1e-10,
                               rtol=0)
    torch.testing.assert_close(fast.mass(), ref.mass(), atol=1e-10, rtol=0)
    W_O, r = m.weights["blocks.0.attn.W_O"], m.weights["unembed.W_U"][..., 1]
    torch.testing.assert_close(fast.slot_readout(W_O, r) * ref.mult[:, :, None],
                               ref.slot_readout(W_O, r) * ref.mult[:, :, None], atol=1e-10, rtol=0)
    assert torch.equal(fast.kinds, ref.kinds) and torch.equal(fast.mult, ref.mult)


@pytest.mark.parametrize("pos_embed,bos", POSITION_OPTIONS)
def test_every_query_row_matches_the_textbook_forward(pos_embed, bos):
    """Model.causal_logits (every query row, from the tables) against the textbook full L x L
    forward: logits at every position, and the gradient of a loss on all of them, float64."""

    cfg = Config(pos_embed=pos_embed, bos=bos, heads=3, d_model=12, d_head=5, eval_size=40,
                 max_len=9, long_max_len=12)
    m = random_model(cfg)
    batch = eval_set(cfg, "iid")
    names = [k for k in m.weights if trainable(cfg, k)]
    got, want = [], []
    for forward, out in ((lambda mm: mm.causal_logits(batch.tokens), got),
                         (lambda mm: textbook(mm, batch.tokens, batch.eos_pos)["every_row"], want)):
        leaves = {k: m.weights[k].clone().requires_grad_() for k in names}
        logits = forward(Model(cfg, m.weights | leaves, m.seeds))  # (S, B, L, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 2),
                                                 batch.tokens.roll(-1, 1).expand(2, -1, -1)
                                                 .flatten())
        out += [logits.detach()] + list(torch.autograd.grad(loss, list(leaves.values())))
    for k, a, b in zip(["logits"] + names, got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=k)


def test_position_path_redoes_underflowing_rows_in_the_log_domain():
    """Scores hundreds apart: A[p, t_j] Bt[p, j] underflows for some example (every factor is
    shifted by its own table row's maximum, not the example's), and those rows are redone in the
    log domain; logits and gradients still match the textbook forward (float32 here, where the
    shift-by-row-maximum products underflow at score gaps near 70)."""
    from count01.model import trainable

    cfg = Config(pos_embed="learned", heads=2, d_model=8, batch_size=64, max_len=9,
                 long_max_len=12)
    m = random_model(cfg, torch.float32)
    for k in ("blocks.0.attn.W_Q", "blocks.0.attn.W_K"):
        m.weights[k] = m.weights[k] * 12.0
    batch = training_batch(cfg, [3], 1, tokens=True)
    tokens, eos = batch.tokens[0].expand(2, -1, -1), batch.eos_pos[0].expand(2, -1)
    t = m.pos_tables(tokens.shape[-1])
    rows = (torch.arange(2 * cfg.heads).view(2, cfg.heads, 1) * tokens.shape[-1]
            + eos[:, None]).view(-1)
    A = t["A"].reshape(-1, 5)[rows].view(2, cfg.heads, -1, 5)
    Bt = t["Bt"].reshape(-1, tokens.shape[-1])[rows].view(2, cfg.heads, -1, tokens.shape[-1])
    product = torch.gather(A, 3, tokens[:, None].expand(-1, cfg.heads, -1, -1)) * Bt
    assert product.sum(-1).min() < torch.finfo(torch.float32).tiny * 1e8  # the case at hand
    names = [k for k in m.weights if trainable(cfg, k)]
    leaves = {k: m.weights[k].double().clone().requires_grad_() for k in names}
    ref = textbook(Model(cfg, m.to(torch.float64).weights | leaves, m.seeds), tokens[0], eos[0])
    ce = torch.nn.functional.cross_entropy(ref["logits"].transpose(1, 2),
                                           batch.y.expand(2, -1), reduction="none").mean(1)
    want = torch.autograd.grad(ce.sum(), [leaves[k] for k in names])
    loss, grads = m.pos_loss_grad(tokens[0], eos[0], batch.y[0])
    torch.testing.assert_close(loss.double(), ce.detach(), atol=1e-4, rtol=1e-4)
    for k, g in zip(names, want):
        torch.testing.assert_close(grads[k].double(), g, atol=1e-4, rtol=1e-3, msg=k)


@pytest.mark.parametrize("pos_embed", ["learned", "sinusoidal"])
def test_fast_token_forward_equals_the_cache_forward(pos_embed):
    cfg = fc.SMALL.replace(pos_embed=pos_embed)
    m = fc.noisy_model(cfg)
    tok = from_digits(fc.random_strings(300, 16, seed=1), True)
    torch.testing.assert_close(m(tok), m.run(tok).logits, atol=1e-5, rtol=0)


def test_numba_is_imported_only_where_a_compiled_loop_runs():
    """numba (~0.5 s to import) is imported by the functions that run a compiled loop (the
    position path's gradient and forward, the ranking of unit-weight sets), never by importing
    the CLI, training or the analyses: it costs nothing to the count path or the CLI's start."""
    code = ("import sys, count01.cli, count01.train, count01.measure.analysis; "
            "print('numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pos_embed,bos", POSITION_OPTIONS)
def test_the_compiled_attention_rows_are_the_torch_ops_bit_for_bit(pos_embed, bos, dtype):
    """`pos_pattern`'s exp(score) and its sums per kind from the compiled loop
    (`kernels.pos_rows`, without autograd) equal its torch ops (taken when the tables need a
    gradient) bit for bit, at EOS and at the `sentence` ending's query (`query_tables`)."""
    cfg = Config(pos_embed=pos_embed, bos=bos, n_seeds=2, heads=3, max_len=9, noise_symbols=3,
                 eval_size=500, framing="sentence")
    m = random_model(cfg).to(dtype)
    batch = eval_set(cfg, "hard")
    for b in (batch, at_end(batch)):
        L = b.tokens.shape[-1]
        t = m.batch_tables(b)
        f = m._pos_pattern_rows(b.tokens, b.eos_pos, t, b.query)
        grad = t | {"A": t["A"].clone().requires_grad_()}
        want = m._pos_pattern_rows(b.tokens, b.eos_pos, grad, b.query)
        assert L == f["u"].shape[-1]
        for k in ("u", "mass", "D"):
            assert torch.equal(f[k], want[k].detach()), k
