"""L layers and an MLP (SPEC 3, question 6): the reference forward against a textbook one, a
hand-built two-layer model, training, save/load and the CLI's refusals."""

import math

import pytest
import torch
from conftest import refused
from test_train import trains_alone_and_resumes_bit_for_bit

from count01.cache import ATTN, attn
from count01.config import Config
from count01.language import at_end, exhaustive
from count01.measure.controls import ideal
from count01.measure.metrics import evaluate
from count01.model import Model, init_weights, weight_shapes
from count01.runs import load
from count01.train import train

SMALL = dict(n_seeds=2, max_len=8, long_max_len=12, exhaustive_len=5)


def random_model(cfg: Config, scale: float = 0.7) -> Model:
    """Every weight random, biases and LayerNorm gains included, in float64."""
    gen = torch.Generator().manual_seed(7)
    w = {k: torch.randn((cfg.n_seeds,) + s, generator=gen, dtype=torch.float64) * scale
         for k, s in weight_shapes(cfg).items()}
    return Model(cfg, w, cfg.seeds)


def textbook(w: dict[str, torch.Tensor], cfg: Config, tokens: torch.Tensor, q: int):
    """One seed's logits at position q and residual at q after each layer, by the textbook:
    every query row of every layer, full P x P causal attention, head by head, float64."""
    P, e = len(tokens), cfg.d_head_
    x = w["embed.W_E"][tokens]
    if cfg.pos_embed != "none":
        x = x + w["pos_embed.W_pos"][:P]

    def ln(x, name):
        if not cfg.layernorm:
            return x
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), w[name + ".w"], w[name + ".b"],
                                              eps=1e-5)

    resids = []
    for n in range(cfg.layers):
        a, h = attn(n), ln(x, f"blocks.{n}.ln1")
        out = torch.zeros_like(x)
        for head in range(cfg.heads):
            qh = h @ w[a + "W_Q"][head] + w[a + "b_Q"][head]
            kh = h @ w[a + "W_K"][head] + w[a + "b_K"][head]
            vh = h @ w[a + "W_V"][head] + w[a + "b_V"][head]
            s = (qh @ kh.T) / math.sqrt(e)
            s = s.masked_fill(torch.ones(P, P, dtype=torch.bool).triu(1), -math.inf)
            out = out + torch.softmax(s, -1) @ vh @ w[a + "W_O"][head]
        x = x + out + w[a + "b_O"]
        if cfg.d_mlp:
            b = f"blocks.{n}."
            hidden = ln(x, b + "ln2") @ w[b + "mlp.W_in"] + w[b + "mlp.b_in"]
            x = x + torch.nn.functional.gelu(hidden) @ w[b + "mlp.W_out"] + w[b + "mlp.b_out"]
        resids.append(x[q])
    return ln(x, "ln_final")[q] @ w["unembed.W_U"] + w["unembed.b_U"], resids


OPTIONS = [  # layers, d_mlp, pos_embed, layernorm, bos, framing
    (1, 0, "none", False, True, "classify"),
    (1, 6, "none", False, True, "classify"),
    (1, 6, "learned", True, False, "classify"),
    (1, 6, "none", True, True, "sentence"),
    (2, 0, "none", False, True, "classify"),
    (2, 6, "learned", True, True, "classify"),
    (2, 4, "none", True, False, "sentence"),
    (3, 5, "sinusoidal", False, True, "classify"),
    (3, 0, "learned", True, True, "sentence"),
]


@pytest.mark.parametrize("layers, d_mlp, pos_embed, layernorm, bos, framing", OPTIONS)
def test_the_forward_of_l_layers_is_the_textbook_one(layers, d_mlp, pos_embed, layernorm, bos,
                                                       framing):
    cfg = Config(layers=layers, d_mlp=d_mlp, pos_embed=pos_embed, layernorm=layernorm, bos=bos,
                 framing=framing, heads=2, d_model=8, **SMALL)
    model = random_model(cfg)
    batch = exhaustive(cfg, tokens=True, max_len=4)
    pick = torch.linspace(0, len(batch) - 1, 25).long()  # short and long strings
    queries = [batch] + ([at_end(batch)] if framing == "sentence" else [])
    for b in queries:
        caches = model.run_layers(b)
        logits = model(b)
        torch.testing.assert_close(logits, caches[-1].logits, rtol=1e-12, atol=1e-12)
        for s in range(cfg.n_seeds):
            w = {k: t[s] for k, t in model.weights.items()}
            for i in pick.tolist():
                q = int(b.eos_pos[i]) + (b.query is not None)
                want, resids = textbook(w, cfg, b.tokens[i], q)
                torch.testing.assert_close(logits[s, i], want, rtol=1e-9, atol=1e-9)
                for n, c in enumerate(caches):
                    torch.testing.assert_close(c.resid[s, i], resids[n], rtol=1e-9, atol=1e-9)
                    assert torch.allclose(c.pattern[s, i].sum(-1), torch.ones(cfg.heads,
                                          dtype=torch.float64))
    if layers == 1:  # one layer: the count path (an MLP at the query) is the token path
        counts = exhaustive(cfg, max_len=4)  # count tuples, no tokens
        if cfg.count_path:
            ours = model(at_end(counts) if framing == "sentence" else counts)
            by_tokens = model.run(queries[-1], force_tokens=True).logits
            assert ours.shape[1] == len(counts)
            # the same strings: compare each string's logits with its count tuple's
            index = {tuple(c.tolist()): j for j, c in enumerate(counts.counts)}
            rows = torch.tensor([index[tuple(c.tolist())] for c in batch.counts])
            torch.testing.assert_close(ours[:, rows], by_tokens, rtol=1e-9, atol=1e-9)


def test_default_weights_and_identity_are_those_of_one_attention_only_layer():
    old = ["embed.W_E"] + [ATTN + k for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V",
                                              "b_O")] + ["unembed.W_U", "unembed.b_U"]
    assert list(weight_shapes(Config())) == old
    assert "layers" not in Config().identity() and "d_mlp" not in Config().identity()
    assert "layers" not in Config().model_dict() and "d_mlp" not in Config().model_dict()
    assert Config(layers=2).identity()["layers"] == 2
    # a deeper model draws the first layer's weights first, then the rest
    one, two = init_weights(Config(), 3), init_weights(Config(layers=2, d_mlp=8), 3)
    for k in ("embed.W_E", ATTN + "W_Q", ATTN + "W_V"):
        assert torch.equal(one[k], two[k]), k
    assert two["blocks.1.mlp.W_out"].shape == (8, 16) and not two["blocks.1.attn.b_O"].any()


def test_a_two_layer_model_with_a_silent_first_layer_is_the_ideal_counter():
    """Layer 0 (random attention) writes nothing (W_O = 0, b_O = 0); layer 1 is the ideal
    counter of controls.py: the logits are the one-layer ideal counter's, every answer right."""
    one = ideal(2, seeds=2)
    cfg = one.cfg.replace(layers=2, n_seeds=2, max_len=8, long_max_len=12, exhaustive_len=6)
    gen = torch.Generator().manual_seed(0)
    w = {k: torch.randn((2,) + s, generator=gen, dtype=torch.float64)
         for k, s in weight_shapes(cfg).items()}
    w |= {k: v.clone() for k, v in one.weights.items() if not k.startswith("blocks.")}
    w |= {k.replace("blocks.0.", "blocks.1."): v.clone() for k, v in one.weights.items()
          if k.startswith("blocks.0.")}
    w[ATTN + "W_O"].zero_()
    w[ATTN + "b_O"].zero_()
    two = Model(cfg, w, [0, 1])
    batch = exhaustive(cfg, tokens=True, max_len=6)
    want = Model(one.cfg, {k: v[:2] for k, v in one.weights.items()}, [0, 1]).run(
        batch, force_tokens=True)
    got = two(batch)
    torch.testing.assert_close(got, want.logits, rtol=0, atol=1e-9)
    assert torch.equal(got.argmax(-1), batch.y.expand(2, -1))
    caches = two.run_layers(batch)
    assert not caches[0].result.any()  # layer 0 is silent
    torch.testing.assert_close(caches[1].pattern, want.pattern, rtol=0, atol=1e-12)


def hidden_channel() -> tuple[Model, Model]:
    """Layer 0: the ideal counter of controls.py, writing its answer into a channel W_U does not
    read; layer 1, head 0: attends to EOS alone (its own position) and copies that channel into
    the answer channel; head 1 is silent. Returns (the two-layer model, the ideal counter)."""
    one = ideal(2, seeds=2)
    w1, d1, answer = one.weights, one.cfg.d_model, one.cfg.d_vocab  # answer channel: d_vocab
    hidden = d = d1
    cfg = Config(layers=2, heads=2, d_model=d + 1, d_head=d + 1, max_len=8, long_max_len=12,
                 exhaustive_len=6, n_seeds=2)
    w = {k: torch.zeros((2,) + s, dtype=torch.float64) for k, s in weight_shapes(cfg).items()}
    w["embed.W_E"][..., :d] = w1["embed.W_E"][:2]
    w["unembed.W_U"][:, :d] = w1["unembed.W_U"][:2]
    w["unembed.b_U"][:] = w1["unembed.b_U"][:2]
    for k in ("W_Q", "W_K", "W_V", "W_O"):
        w[ATTN + k][..., :d, :d] = w1[ATTN + k][:2]
    w[ATTN + "b_Q"][..., :d] = w1[ATTN + "b_Q"][:2]
    w[ATTN + "W_O"][..., hidden] = w[ATTN + "W_O"][..., answer]  # count into the hidden channel
    w[ATTN + "W_O"][..., answer] = 0.0
    reader = attn(1)
    w[reader + "b_Q"][:, 0, 0] = 1.0
    w[reader + "W_K"][:, 0, :cfg.d_vocab, 0] = -1000.0 * math.sqrt(d + 1)  # every kind but EOS
    w[reader + "W_K"][:, 0, 3, 0] = 0.0  # EOS = 3
    w[reader + "W_V"][:, 0, hidden, 0] = 1.0
    w[reader + "W_O"][:, 0, 0, answer] = 1.0
    return Model(cfg, w, [0, 1]), one


def test_layer_0_counts_into_a_hidden_channel_and_layer_1_reads_it_out():
    """`hidden_channel`: the logits are the ideal counter's; replacing layer 1's reader (or
    layer 0's counters) by zeros leaves the answer channel empty: every logit of 0 and 1 equal,
    so every answer is the tie's, 0."""
    model, one = hidden_channel()
    cfg, w1, d, answer = model.cfg, one.weights, one.cfg.d_model, one.cfg.d_vocab
    batch = exhaustive(cfg, tokens=True, max_len=6)
    want = Model(one.cfg, {k: v[:2] for k, v in w1.items()}, [0, 1]).run(batch, force_tokens=True)
    caches = model.run_layers(batch)
    torch.testing.assert_close(caches[-1].logits, want.logits, rtol=0, atol=1e-9)
    assert torch.equal(caches[-1].logits.argmax(-1), batch.y.expand(2, -1))
    assert not caches[0].resid[..., answer].any()  # after layer 0 the readout sees nothing
    eos = batch.eos_pos.expand(2, -1)[..., None].expand(-1, -1, 2)
    assert torch.equal(caches[1].pattern.gather(3, eos[..., None])[..., 0, 0], torch.ones(2, len(
        batch), dtype=torch.float64))  # the reader attends to EOS alone
    zero = torch.zeros(2, 1, d + 1, dtype=torch.float64)
    for ablate in ({(1, 0): zero}, {(0, 0): zero, (0, 1): zero}):
        logits = model.run(batch, replace=ablate).logits
        assert torch.equal(logits[..., 0], logits[..., 1])
        assert torch.equal(logits.argmax(-1), torch.zeros_like(logits.argmax(-1)))


def test_replacing_heads_and_overriding_a_layers_query_row():
    cfg = Config(layers=2, d_mlp=4, pos_embed="learned", heads=2, d_model=8, **SMALL)
    model = random_model(cfg)
    batch = exhaustive(cfg, tokens=True, max_len=4)
    caches = model.run_layers(batch, positions=True)
    logits = caches[-1].logits
    # a head replaced by its own outputs (per position, or at the query of the last layer)
    same = model.run_layers(batch, replace={(0, 1): caches[0].positions[:, :, 1],
                                            (1, 0): caches[1].result[:, :, 0]})
    torch.testing.assert_close(same[-1].logits, logits, rtol=1e-12, atol=1e-12)
    # a layer-0 head mean-ablated at every position changes the answer's logits
    mean = caches[0].positions[:, :, 0].mean(1, keepdim=True)  # (S, 1, P, d)
    ablated = model.run(batch, replace={(0, 0): mean})
    assert not torch.allclose(ablated.logits, logits)
    # overriding layer 0's query row with its own exp(score) is the same forward ...
    for layer in (0, 1):
        own = torch.exp(caches[layer].scores - caches[layer].scores.amax(-1, keepdim=True))
        over = model.run(batch, attn_override=own, layer=layer)
        torch.testing.assert_close(over.logits, logits, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(over.pattern, caches[layer].pattern, rtol=1e-10, atol=1e-12)
    # ... and a uniform row at layer 0 changes only what comes after layer 0 at the query
    flat = model.run_layers(batch, attn_override=torch.ones_like(own), layer=0)
    mult = caches[0].mult[:, :, None].expand_as(flat[0].pattern)
    torch.testing.assert_close(flat[0].pattern, mult / mult.sum(-1, keepdim=True))
    assert not torch.allclose(flat[-1].logits, logits)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        model.run(batch, layer=2)
    one = random_model(cfg.replace(layers=1, d_mlp=0))  # the position path checks it too
    with pytest.raises(ValueError, match="layer 1 out of range"):
        one.run(batch, layer=1)


def test_deep_training_batches_resumes_learns_and_loads(tiny, tmp_path, monkeypatch):
    cfg = tiny.replace(layers=2, d_mlp=8, d_model=16, lr=0.02, steps=60)
    model = trains_alone_and_resumes_bit_for_bit(cfg, tmp_path, monkeypatch)
    loaded = load(tmp_path / "straight")
    assert loaded.cfg == cfg
    for k, w in model.weights.items():
        assert torch.equal(loaded.weights[k], w), k
    assert set(loaded.weights) == set(weight_shapes(cfg))
    # the prefix path with every option: three layers, LayerNorm, no BOS, the sentence framing
    deep = tiny.replace(layers=3, layernorm=True, bos=False, framing="sentence", d_model=8,
                        steps=40, checkpoint_every=20)
    trains_alone_and_resumes_bit_for_bit(deep, tmp_path / "deep", monkeypatch)
    # an MLP on one layer, in the sentence framing: the count path, by autograd
    one = tiny.replace(d_mlp=8, framing="sentence", steps=40, checkpoint_every=40)
    trains_alone_and_resumes_bit_for_bit(one, tmp_path / "one", monkeypatch)


def test_a_two_layer_model_learns_count01(tmp_path):
    cfg = Config(layers=2, d_mlp=16, heads=2, steps=400, n_seeds=1, max_len=8, long_max_len=12,
                 exhaustive_len=6, eval_size=512, batch_size=128, checkpoint_every=400)
    model = train(cfg, tmp_path / "run", progress=False)
    got = {row["set"]: row["l_acc"] for row in evaluate(model, sets=("iid", "hard"))}
    assert got["iid"] >= 0.95 and got["hard"] >= 0.9, got


@pytest.mark.parametrize("flags, match", [
    (["--layers", "0"], "layers must be positive"),
    (["--layers", "-1"], "layers must be positive"),
    (["--layers", "1.5"], "layers expects int"),
    (["--layers", "x"], "layers expects int"),
    (["--d-mlp", "-1"], "d_mlp must be >= 0"),
    (["--d-mlp", "x"], "d_mlp expects int"),
    (["--d-mlp", "0.5"], "d_mlp expects int"),
    (["--d-mlp", "100000000000"], "memory"),
    (["--layers", "100000000000"], "memory"),
    (["--layers", "2", "--framing", "sentence", "--lm-loss", "true", "--pos-embed", "learned"],
     "lm_loss with layers > 1 or an MLP"),
])
def test_the_cli_refuses_bad_layers_and_mlps(flags, match, capsys, tmp_path):
    refused(["train", "--out", tmp_path / "run", "--quiet", *flags], capsys, match, tmp_path)


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep") / "run"
    train(Config(layers=2, d_mlp=8, heads=2, d_model=8, steps=20, checkpoint_every=20,
                 batch_size=64, eval_size=128, **SMALL | {"exhaustive_len": 5}), out,
          progress=False)
    return out


def test_a_deep_run_is_evaluated_analysed_intervened_and_reported(deep_run, capsys):
    """Every command on a trained run of two layers with an MLP, end to end through the CLI:
    the tables hold every head of both layers (global index, a layer column), the intervention
    its small grid, and `report` reads them."""
    import json

    import pandas as pd

    from count01.cli import main
    from count01.measure.interventions import DEEP_GRID_SIZE

    assert main(["evaluate", str(deep_run), "--sets", "hard,long"]) == 0
    assert "long" in capsys.readouterr().out
    long = "01" * 40  # longer than n_ctx: no positional embedding, so no limit
    assert main(["predict", str(deep_run), long]) == 0
    assert "n0=40 n1=40" in capsys.readouterr().out
    assert main(["analyze", str(deep_run), "--quiet"]) == 0
    out = deep_run / "analysis"
    heads = pd.read_csv(out / "heads.csv")
    assert set(zip(heads["layer"], heads["head"])) == {(0, 0), (0, 1), (1, 2), (1, 3)}
    assert heads["total_effect"].notna().all() and heads["head_auc"].notna().all()
    for table, cols in (("intervention", ["layer"]), ("alpha", ["layer"]),
                        ("value_swap", ["attn_layer", "ov_layer"])):
        got = pd.read_csv(out / f"{table}.csv")
        assert all(set(got[c]) == {0, 1} for c in cols), table
    grid = json.loads((out / "metrics.json").read_text())["grid"]
    assert len(grid["w01"]) == DEEP_GRID_SIZE and len(grid["w02"]) == DEEP_GRID_SIZE + 1
    assert sorted(p.name for p in (out / "figures").glob("*.png"))  # the figures were drawn
    assert main(["intervene", str(deep_run), "--w01", "1", "--w02", "0"]) == 0
    assert "l_acc" in capsys.readouterr().out
    assert main(["report", str(deep_run)]) == 0
    assert (deep_run / "report.md").read_text()


def test_a_sweep_over_layers_and_mlps_is_a_sweep(tmp_path):
    from count01.sweeps.grid import Sweep

    sweep = tmp_path / "deep.toml"
    sweep.write_text("seeds = 2\n[base]\nsteps = 10\n[grid]\nd_mlp = [0, 8]\nlayers = [1, 2]\n")
    assert len(Sweep.from_toml(sweep).points()) == 4
