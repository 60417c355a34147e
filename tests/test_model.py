import pytest
import torch

from count01.config import Config
from count01.language import eval_set, training_batch
from count01.model import Model, init_weights, weight_shapes

TL_NAMES = {"embed.W_E", "blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V",
            "blocks.0.attn.W_O", "blocks.0.attn.b_Q", "blocks.0.attn.b_K", "blocks.0.attn.b_V",
            "blocks.0.attn.b_O", "unembed.W_U", "unembed.b_U"}


def test_weights_have_transformer_lens_names_and_shapes_with_a_seed_axis():
    cfg = Config(heads=2, d_model=8, d_head=3)
    m = Model.init(cfg, [0, 1, 2])
    assert set(m.weights) == TL_NAMES
    w = m.weights
    assert w["embed.W_E"].shape == (3, Config().d_vocab, 8)
    assert w["blocks.0.attn.W_Q"].shape == (3, 2, 8, 3)
    assert w["blocks.0.attn.W_O"].shape == (3, 2, 3, 8)
    assert w["blocks.0.attn.b_V"].shape == (3, 2, 3)
    assert w["blocks.0.attn.b_O"].shape == (3, 8)
    assert w["unembed.W_U"].shape == (3, 8, Config().d_vocab)


def test_options_add_positional_embedding_and_layernorm_weights():
    shapes = weight_shapes(Config(pos_embed="learned", layernorm=True))
    assert shapes["pos_embed.W_pos"] == (Config().n_ctx, 16)
    assert {"blocks.0.ln1.w", "blocks.0.ln1.b", "ln_final.w", "ln_final.b"} <= set(shapes)


def test_a_seeds_initial_weights_do_not_depend_on_its_companions():
    cfg = Config()
    batched = Model.init(cfg, [4, 5, 6])
    alone = init_weights(cfg, 6)
    for k, v in alone.items():
        assert torch.equal(batched.weights[k][2], v)
    assert not torch.equal(batched.weights["embed.W_E"][0], batched.weights["embed.W_E"][1])


@pytest.mark.parametrize("pos_embed", ["none", "learned", "sinusoidal"])
def test_cache_shapes_and_attention_sums_to_one(pos_embed):
    cfg = Config(pos_embed=pos_embed, eval_size=64)
    m = Model.init(cfg, [0, 1])
    batch = eval_set(cfg, "iid")
    cache = m.run(batch)
    S, B, H = 2, len(batch), cfg.heads
    assert cache.logits.shape == (S, B, Config().d_vocab)
    assert cache.result.shape == (S, B, H, cfg.d_model)
    assert cache.z.shape == (S, B, H, cfg.d_head_)
    mass = cache.mass()
    assert mass.shape == (S, B, H, 5)
    torch.testing.assert_close(mass.sum(-1), torch.ones(S, B, H))
    torch.testing.assert_close(m(batch), cache.logits)


def test_logits_follow_the_spec_formula():
    cfg = Config(eval_size=128)
    m = Model.init(cfg, [0])
    batch = eval_set(cfg, "iid")
    c = m.run(batch)
    w = m.weights
    resid = w["embed.W_E"][:, 3][:, None] + c.result.sum(2) + w["blocks.0.attn.b_O"][:, None]
    logits = resid @ w["unembed.W_U"] + w["unembed.b_U"][:, None]
    torch.testing.assert_close(c.logits, logits)


def test_causal_mask_ignores_padding_after_eos():
    cfg = Config(pos_embed="learned")
    m = Model.init(cfg, [0])
    batch = eval_set(cfg.replace(eval_size=32), "iid")
    changed = batch.tokens.clone()
    after = torch.arange(changed.shape[1]) > batch.eos_pos[:, None]
    changed[after] = 2
    out = m(type(batch)(batch.counts, batch.y, batch.weight, changed, batch.eos_pos))
    torch.testing.assert_close(out, m(batch))


def textbook(model: Model, tokens: torch.Tensor, eos: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference forward written out: every query position attends (causal L x L pattern)
    to x = W_E[tokens] + W_pos, then the EOS row is read off. tokens (B, L), eos (B,)."""
    w, a = model.weights, "blocks.0.attn."
    L = tokens.shape[-1]
    x = w["embed.W_E"][:, tokens]  # (S, B, L, d)
    if "pos_embed.W_pos" in w:
        x = x + w["pos_embed.W_pos"][:, None, :L]
    q = torch.einsum("sbld,shde->sbhle", x, w[a + "W_Q"]) + w[a + "b_Q"][:, None, :, None]
    k = torch.einsum("sbld,shde->sbhle", x, w[a + "W_K"]) + w[a + "b_K"][:, None, :, None]
    v = torch.einsum("sbld,shde->sbhle", x, w[a + "W_V"]) + w[a + "b_V"][:, None, :, None]
    scores = q @ k.transpose(-1, -2) / model.cfg.d_head_**0.5  # (S, B, H, L, L)
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    pattern = scores.softmax(-1)
    z = pattern @ v  # (S, B, H, L, e)
    result = torch.einsum("sbhle,shed->sbhld", z, w[a + "W_O"])
    resid = x + result.sum(2) + w[a + "b_O"][:, None, None]
    rows = torch.arange(tokens.shape[0])
    resid_eos = resid[:, rows, eos]  # (S, B, d)
    logits = torch.einsum("sbd,sdv->sbv", resid_eos, w["unembed.W_U"]) + w["unembed.b_U"][:, None]
    # (split advanced indices put the example axis first)
    every = torch.einsum("sbld,sdv->sblv", resid, w["unembed.W_U"]) + w["unembed.b_U"][:, None, None]
    return {"logits": logits, "every_row": every, "pattern": pattern[:, rows, :, eos].transpose(0, 1),
            "result": result[:, rows, :, eos].transpose(0, 1)}


def random_model(cfg, dtype=torch.float64) -> Model:
    """Random weights, every bias nonzero (b_K too: the forward must not assume it is 0)."""
    m = Model.init(cfg, [3, 4]).to(dtype)
    gen = torch.Generator().manual_seed(7)
    m.weights = {k: w + 0.3 * torch.randn(w.shape, generator=gen, dtype=dtype)
                 if k != "pos_embed.W_pos" or cfg.pos_embed == "learned" else w
                 for k, w in m.weights.items()}
    return m


POSITION_OPTIONS = [(p, bos) for p in ("learned", "sinusoidal") for bos in (True, False)]


@pytest.mark.parametrize("pos_embed,bos,noise_symbols",
                         [o + (1,) for o in POSITION_OPTIONS] + [("learned", True, 3)])
def test_position_path_matches_the_textbook_forward_and_autograd(pos_embed, bos, noise_symbols):
    """Model.pos_loss_grad, and the position path's logits (Model.__call__, Model.run), pattern
    and head outputs, against the full L x L forward and autograd, float64, random weights
    (with three noise symbols too: kinds and logits are the config's vocabulary)."""
    from count01.language import training_batch
    from count01.model import trainable

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
    for buckets in (1, 3):  # examples in one run, or sorted by length in three
        loss, grads = m.pos_loss_grad(tokens, eos, batch.y[0], buckets=buckets)
        torch.testing.assert_close(loss, ce.detach(), atol=1e-10, rtol=0)
        for k, g in zip(names, want):
            torch.testing.assert_close(grads[k], g, atol=1e-10, rtol=1e-10, msg=k)
    one = type(batch)(batch.counts[0], batch.y[0], batch.weight[0], tokens, eos)
    cache = m.run(one)
    for k in ("logits", "pattern", "result"):
        torch.testing.assert_close(getattr(cache, k), ref[k].detach(), atol=1e-10, rtol=0,
                                   msg=k)
    torch.testing.assert_close(m(one), ref["logits"].detach(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("pos_embed,bos", POSITION_OPTIONS)
def test_position_paths_run_matches_the_reference_slots_forward(pos_embed, bos):
    """Model.run on the position path (a PosCache, from the tables) against the reference
    forward over slots (Model.run with an attention override of exp(score)): every field,
    the mass per kind and each slot's value read out through W_O."""
    cfg = Config(pos_embed=pos_embed, bos=bos, heads=3, d_model=12, d_head=5, eval_size=50,
                 max_len=9, long_max_len=12)
    m = random_model(cfg)
    batch = eval_set(cfg, "long")
    fast = m.run(batch)
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
    from count01.model import trainable

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sums_per_eos_position_add_what_index_add_adds_in_the_same_order(dtype):
    """The position path's gradient sums over the examples of each EOS position (bags of
    consecutive examples, each seed's sorted by length, rows from `lo` on) equal index_add
    over (seed, head, EOS position) rows bit for bit: the trained weights did not change."""
    from count01.model import _per_row

    gen = torch.Generator().manual_seed(0)
    S, H, B, L, lo = 3, 2, 50, 12, 4
    eos = torch.sort(torch.randint(lo, L, (S, B), generator=gen), 1).values
    x = torch.randn(S, H, B, 7, generator=gen, dtype=dtype)
    rows = (torch.arange(S * H).view(S, H, 1) * (L - lo) + (eos - lo)[:, None]).view(-1)
    want = torch.zeros(S * H * (L - lo), 7, dtype=dtype).index_add_(0, rows, x.view(-1, 7))
    assert torch.equal(_per_row(x, eos, lo, L), want)


def test_position_path_redoes_underflowing_rows_in_the_log_domain():
    """Scores hundreds apart: A[p, t_j] Bt[p, j] underflows for some example (every factor is
    shifted by its own table row's maximum, not the example's), and those rows are redone in the
    log domain; logits and gradients still match the textbook forward (float32 here, where the
    shift-by-row-maximum products underflow at score gaps near 70)."""
    from count01.language import training_batch
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


def sentence_loss(every: torch.Tensor, tokens: torch.Tensor, eos: torch.Tensor,
                  lm: bool) -> torch.Tensor:
    """The sentence framing's loss per seed written out from every row's logits (S, B, L, V):
    the mean of the answer's, the ending's and (lm) the string's mean cross-entropies."""
    from count01.language import answer, tokens_to_counts

    rows = torch.arange(tokens.shape[0])
    y = answer(tokens_to_counts(tokens, eos))

    def ce(logits, target):  # (S, B, V), (B,) -> (S, B)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2),
                                                 target.expand(logits.shape[0], -1),
                                                 reduction="none")

    parts = [ce(every[:, rows, eos], y).mean(1), ce(every[:, rows, eos + 1], torch.full_like(y, 3))
             .mean(1)]
    if lm:
        per = [ce(every[:, b, :int(eos[b])], tokens[b, 1:int(eos[b]) + 1]) for b in rows]
        parts.append(torch.cat(per, 1).mean(1))
    return torch.stack(parts).mean(0)


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
    m = random_model(cfg)
    table = _sentence_table(cfg.min_len, cfg.max_len, bos, torch.float64) if k == 1 else None
    rows = [r.expand(2, *r.shape[1:]) for r in sentence_rows(cfg, [3], 5, torch.float64, table)]
    loss, grads = m.count_rows_loss_grad(*rows)
    batch = training_batch(cfg, [3], 5, tokens=True)
    names = [k for k in m.weights if trainable(cfg, k)]
    leaves = {k: m.weights[k].clone().requires_grad_() for k in names}
    every = textbook(Model(cfg, m.weights | leaves, m.seeds), batch.tokens[0],
                     batch.eos_pos[0])["every_row"]
    want = sentence_loss(every, batch.tokens[0], batch.eos_pos[0], lm)
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
    from count01.train import loss_per_seed

    cfg = Config(pos_embed=pos_embed, heads=3, d_model=12, d_head=5, eval_size=60, max_len=9,
                 long_max_len=12, framing="sentence", lm_loss=pos_embed != "none",
                 noise_symbols=k)
    m = random_model(cfg)
    batch = eval_set(cfg, "iid", tokens=True)
    rows = torch.arange(len(batch))
    for fed in (batch.y, 1 - batch.y):
        end = at_end(batch, fed)
        ref = textbook(m, end.tokens, batch.eos_pos)
        want = ref["every_row"][:, rows, batch.eos_pos + 1]
        counts = type(batch)(batch.counts, end.y, batch.weight, query=fed)
        for b in ([end, counts] if pos_embed == "none" else [end]):
            torch.testing.assert_close(m(b), want, atol=1e-10, rtol=0)
        torch.testing.assert_close(m(batch), ref["logits"], atol=1e-10, rtol=0)
    if pos_embed != "none":  # autograd's sentence loss (the Trainer's path with positions)
        train_batch = training_batch(cfg, m.seeds, 2)
        per_seed = [sentence_loss(textbook(m.select(i), train_batch.tokens[i],
                                           train_batch.eos_pos[i])["every_row"],
                                  train_batch.tokens[i], train_batch.eos_pos[i], True)
                    for i in range(2)]
        torch.testing.assert_close(loss_per_seed(m, cfg, 2), torch.cat(per_seed), atol=1e-10,
                                   rtol=0)
