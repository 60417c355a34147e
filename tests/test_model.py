"""count01.model: TransformerLens names and shapes, initialisation, and the reference forward
(Model.run over token slots) against the SPEC 3 formula and the causal mask."""

import pytest
import torch

from count01.config import Config
from count01.language import eval_set
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




@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m, k, n", [(10, 16, 5), (63, 16, 5), (65, 16, 5), (66, 16, 5),
                                     (250, 16, 5), (9, 16, 5), (13, 16, 20), (7, 3, 7)])
def test_a_seeds_product_does_not_depend_on_its_place_in_the_batch(m, k, n, dtype):
    """`cache.seed_bmm`: each entry of a batch of 8 (odd entries' outputs off a 16-byte
    boundary in a plain bmm) bit for bit as alone, and the product itself."""
    from count01.cache import seed_bmm

    g = torch.Generator().manual_seed(m * 100 + n)
    a, b = (torch.randn(8, *shape, generator=g, dtype=dtype) for shape in ((m, k), (k, n)))
    batched = seed_bmm(a, b)
    assert batched.shape == (8, m, n) and batched.is_contiguous()
    for s in range(8):
        assert torch.equal(batched[s], seed_bmm(a[s:s + 1].clone(), b[s:s + 1].clone())[0])
    torch.testing.assert_close(batched, a @ b, rtol=1e-5, atol=1e-5)
