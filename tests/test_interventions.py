import numpy as np
import pytest
import torch
from test_metrics import counting_model

from count01.config import Config
from count01.language import ONE, ZERO, eval_set
from count01.measure import activations, metrics
from count01.measure.interventions import (
    InterventionError,
    attention_sweep,
    default_grid,
    grid_weights,
    head_outputs,
    intervened_run,
    sweep_columns,
    value_swap,
)
from count01.measure.metrics import evaluate_logits, head_table
from count01.model import Model

SMALL = dict(n_seeds=2, eval_size=256, max_len=8, long_max_len=12, exhaustive_len=6)


def random_model(**kw) -> Model:
    cfg = Config(**SMALL | kw)
    model = Model.init(cfg).to(torch.float64)
    if cfg.pos_embed == "learned":  # a real positional signal, so positions matter
        model.weights["pos_embed.W_pos"] = model.weights["pos_embed.W_pos"] * 3
    return model


def readout(model: Model, result: torch.Tensor) -> torch.Tensor:
    """Head outputs (S, B, H, d) in the space kind_parts works in. -> (S, H, B, R)."""
    if model.cfg.layernorm:
        return result.transpose(1, 2)
    return torch.einsum("sbhd,sdv->shbv", result, model.weights["unembed.W_U"])


def test_default_grid_is_25_log_points_and_w02_also_at_zero():
    w01, w02 = default_grid()
    assert len(w01) == 25 and len(w02) == 26 and w02[0] == 0.0
    assert w01[0] == pytest.approx(1e-3) and w01[-1] == pytest.approx(1e3)
    assert np.any(np.isclose(w01, 1.0))


@pytest.mark.parametrize("kw", [{}, {"layernorm": True}, {"bos": False}, {"noise_symbols": 3}])
def test_intervention_at_the_measured_weights_reproduces_the_head_outputs(kw):
    model = random_model(**kw)
    batch = eval_set(model.cfg, "iid")
    parts = activations.Activations(model, batch).kind_parts
    score, out = head_outputs(parts, parts.weights.nan_to_num(0.0)[None])
    torch.testing.assert_close(out[0], parts.orig, atol=1e-6, rtol=0)
    W_U = model.weights["unembed.W_U"]
    direct = torch.einsum("sbhd,sd->shb", model.run(batch).result, W_U[..., 1] - W_U[..., 0])
    torch.testing.assert_close(score[0], direct, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kw", [{}, {"layernorm": True}, {"pos_embed": "learned"},
                                {"noise_symbols": 3}, {"noise_symbols": 3, "pos_embed": "learned"}])
@pytest.mark.parametrize("w01, w02", [(3.0, 0.0), (0.01, 50.0)])
def test_fast_sweep_matches_a_real_forward_pass_with_the_attention_overridden(kw, w01, w02):
    model = random_model(**kw)
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    parts = activations.Activations(model, batch).kind_parts
    grid = torch.tensor([w01], dtype=torch.float64), torch.tensor([w02], dtype=torch.float64)
    _, out = head_outputs(parts, grid_weights(parts, *grid))
    slow_all = intervened_run(model, batch, w01, w02)
    torch.testing.assert_close(out[0], readout(model, slow_all.result), atol=1e-9, rtol=1e-9)
    rows = attention_sweep(model, batch, fit, [w01], [w02], heads="both")
    refs = {"all": evaluate_logits(slow_all.logits, batch)}
    for h in range(model.cfg.heads):
        refs[h] = evaluate_logits(intervened_run(model, batch, w01, w02, h).logits, batch)
    for r in rows:
        i = model.seeds.index(r["seed"])
        ref = refs["all" if r["intervened"] == "all" else r["head"]]
        assert r["l_acc"] == pytest.approx(ref["l_acc"][i], abs=1e-12)
        assert r["valid"] == pytest.approx(ref["valid"][i], abs=1e-12)
        assert r["auc"] == pytest.approx(ref["auc"][i], abs=1e-9)


def test_w02_applies_to_every_noise_symbol():
    """At w02 = 0 no noise symbol is attended: the heads compute what they compute on the same
    strings with every noise symbol taken out; at w02 = 1 the symbols count like a 0 again."""
    from count01.language import Batch

    model = random_model(noise_symbols=3)
    batch = eval_set(model.cfg, "iid")
    clean = batch.counts.clone()
    clean[:, 2:] = 0
    stripped = Batch(clean, batch.y, batch.weight)
    assert (batch.counts[:, 3:].sum(0) > 0).all()  # symbols 5 and 6 do occur
    a, b = intervened_run(model, batch, 2.0, 0.0), intervened_run(model, stripped, 2.0, 0.0)
    torch.testing.assert_close(a.result, b.result, atol=1e-12, rtol=0)
    c = intervened_run(model, batch, 2.0, 1.0)
    assert (c.result - a.result).abs().max() > 1e-3


def test_sweep_at_the_measured_point_gives_the_unintervened_head_and_model():
    model = random_model(heads=1, d_model=8)
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    heads = {r["seed"]: r for r in head_table(model, {"hard": batch}, fit)}
    base = evaluate_logits(model(batch), batch)
    for i, seed in enumerate(model.seeds):
        h = heads[seed]
        (row,) = [r for r in attention_sweep(model, batch, fit, [h["w01"]], [h["w02"]])
                  if r["seed"] == seed]
        assert row["s_acc_fixed"] == pytest.approx(h["s_acc"], abs=1e-12)
        assert row["s_acc_refit"] == pytest.approx(h["s_acc"], abs=1e-12)
        assert row["head_auc"] == pytest.approx(h["head_auc"], abs=1e-9)
        assert row["l_acc"] == pytest.approx(base["l_acc"][i], abs=1e-12)


def test_sweep_has_a_row_per_grid_point_seed_and_head():
    model = random_model(heads=2)
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    rows = attention_sweep(model, batch, fit, [0.1, 1, 10], [0, 1], heads="both")
    assert len(rows) == 2 * 3 * 2 * 2 * 2
    for mode in ("each", "all"):
        got = {(r["w01"], r["w02"], r["seed"], r["head"]) for r in rows if r["intervened"] == mode}
        assert len(got) == 3 * 2 * 2 * 2
    alls = [r for r in rows if r["intervened"] == "all"]
    for r in alls:  # every head of a seed intervened at once: one model per (grid point, seed)
        twin = [q for q in alls if (q["w01"], q["w02"], q["seed"]) == (r["w01"], r["w02"],
                                                                        r["seed"])]
        assert {q["l_acc"] for q in twin} == {r["l_acc"]}
    with pytest.raises(InterventionError, match="heads must be"):
        attention_sweep(model, batch, fit, [1], [1], heads="some")
    with pytest.raises(InterventionError, match="w02 grid"):
        attention_sweep(model, batch, fit, [1], [-1.0])


def test_pushing_w01_to_an_extreme_breaks_the_counting_head():
    model = counting_model()
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    rows = {r["w01"]: r for r in attention_sweep(model, batch, fit, [1.0, 1000.0], [0.0])}
    assert rows[1.0]["s_acc_refit"] == 1.0 and rows[1.0]["l_acc"] == 1.0
    assert rows[1000.0]["s_acc_fixed"] < 0.8 and rows[1000.0]["l_acc"] < 0.8


def test_value_swap_follows_the_values_of_a_silent_head():
    model = counting_model(heads=2, others="silent")  # same attention, head 1 writes nothing
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    rows = {(r["attn_head"], r["ov_head"]): r for r in value_swap(model, batch, fit)}
    assert len(rows) == 4 and not rows[0, 0]["swapped"] and rows[0, 1]["swapped"]
    assert rows[0, 0]["s_acc"] == 1.0 and rows[1, 0]["s_acc"] == 1.0  # values carry it
    assert rows[0, 1]["s_acc"] < 0.9 and rows[1, 1]["s_acc"] < 0.9
    # in the model: the counter given silent values leaves nothing that counts
    assert rows[0, 1]["l_acc"] < 0.6 and rows[1, 0]["l_acc"] == rows[0, 0]["l_acc"] == 1.0


@pytest.mark.parametrize("pos_embed", ["none", "learned"])
def test_value_swap_l_acc_of_a_head_with_itself_is_the_model_s(pos_embed):
    model = random_model(heads=3, pos_embed=pos_embed)
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    own = metrics.evaluate_logits(metrics.chunked_logits(model, batch), batch)["l_acc"]
    rows = value_swap(model, batch, fit)
    for r in rows:
        if not r["swapped"]:
            assert r["l_acc"] == pytest.approx(float(own[model.seeds.index(r["seed"])]),
                                               abs=1e-12)
    assert len({round(r["l_acc"], 9) for r in rows}) > 1  # the swaps do change the answers


def test_value_swap_diagonal_is_the_head_itself():
    model = random_model(heads=2)
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    heads = {(r["seed"], r["head"]): r for r in head_table(model, {"hard": batch}, fit)}
    for r in value_swap(model, batch, fit):
        if not r["swapped"]:
            assert r["s_acc"] == pytest.approx(heads[r["seed"], r["attn_head"]]["s_acc"],
                                               abs=1e-12)


def test_the_sweep_is_deterministic_bit_for_bit():
    model = random_model(heads=2)
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    first = attention_sweep(model, batch, fit, [0.1, 1, 10], [0, 1], heads="both")
    assert attention_sweep(model, batch, fit, [0.1, 1, 10], [0, 1], heads="both") == first


def test_slicing_sets_into_forward_chunks_changes_no_number(monkeypatch):
    model = random_model(heads=2, pos_embed="learned")
    batch, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    whole = (attention_sweep(model, batch, fit, [0.1, 10], [0, 1], heads="both"),
             value_swap(model, batch, fit))
    monkeypatch.setattr(activations, "CACHE_ELEMENTS", 5000)
    sliced = (attention_sweep(model, batch, fit, [0.1, 10], [0, 1], heads="both"),
              value_swap(model, batch, fit))
    for rows_a, rows_b in zip(whole, sliced):
        for a, b in zip(rows_a, rows_b):
            assert a == pytest.approx(b, abs=1e-12)


def test_the_sentence_framing_reports_end_and_sentence_accuracy_under_the_intervention():
    """The intervention acts at the answer's query; the ending's, left alone, ends the sentence
    after the true answer or not: end accuracy is the model's at every grid point, and the
    greedy sentence is right where the intervened answer is and the model ends."""
    from count01.measure import controls as C

    for name, ends in (("sentence_counter", 1.0), ("never_ends", 0.0)):
        model = C.LIBRARY[name](**C.SET_CONFIG)
        hard, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
        cols = sweep_columns(model, hard, fit, [1e-3, 1.0], [0.0, 1.0], heads="both")
        assert (cols["end"] == ends).all() and cols["l_acc"].min() < 0.9  # the answer breaks
        np.testing.assert_array_equal(cols["sentence"], cols["l_acc"] * ends)
    ideal = C.ideal(2, seeds=2, **C.SET_CONFIG)
    hard, fit = eval_set(ideal.cfg, "hard"), eval_set(ideal.cfg, "fit")
    classify = sweep_columns(ideal, hard, fit, [1.0], [0.0])
    assert "end" not in classify and "sentence" not in classify


def test_value_swap_in_the_sentence_framing_reads_the_ending_with_the_hybrid_in_place():
    """A head swapped with itself is the model: its rows give the model's end and sentence
    accuracy; counters that always (never) end keep ending (not ending) whatever is swapped."""
    from count01.measure import controls as C
    from count01.measure.metrics import set_metrics

    for name in ("sentence_counter", "never_ends", "ending_bias", "answer_bias"):
        model = C.LIBRARY[name](**C.SET_CONFIG)
        hard, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
        rows = value_swap(model, hard, fit)
        want = set_metrics(model, hard)
        for r in rows:
            i = model.seeds.index(r["seed"])
            if not r["swapped"]:
                for k in ("l_acc", "end", "sentence"):
                    assert r[k] == pytest.approx(want[k][i], abs=1e-12), (name, k)
            if name in ("sentence_counter", "never_ends"):
                ends = float(name == "sentence_counter")
                assert r["end"] == ends and r["sentence"] == pytest.approx(r["l_acc"] * ends)


@pytest.mark.parametrize("pos_embed", ["learned", "sinusoidal"])
def test_value_swap_on_the_position_tables_matches_the_reference_slots_forward(pos_embed):
    """The hybrid logits of the position path (`_hybrid_pos_parts`, from the tables) are the
    reference forward's: head i's pattern on head j's values, the rest of the model as is; and
    the compiled loop's answers (`kernels.hybrid_answers`) are the argmax of those logits as
    torch sums them, bit for bit; the hybrids' direct scores read from those parts are the
    reference's, pattern times values through W_O and the readout direction."""
    from count01.cache import ATTN
    from count01.fast.position import PosCache
    from count01.measure.aggregation import unembed
    from count01.measure.interventions import _hybrid_pos_parts, _hybrid_pred, _hybrid_scores

    model = random_model(heads=3, pos_embed=pos_embed, bos=True)
    gen = torch.Generator().manual_seed(0)
    for name in ("b_Q", "b_K", "b_V", "b_O"):  # init leaves the biases at 0
        b = model.weights[ATTN + name]
        model.weights[ATTN + name] = torch.randn(b.shape, generator=gen, dtype=b.dtype)
    batch = eval_set(model.cfg, "noisy")
    fast, ref = model.run(batch), model.reference_run(batch)
    assert isinstance(fast, PosCache)
    W_O = model.weights[ATTN + "W_O"]
    hybrid = torch.einsum("sbik,sbjke,sjed->ijsbd", ref.pattern, ref.v, W_O)
    resid = ref.resid - ref.result.permute(2, 0, 1, 3)
    want = unembed(model, resid[:, None] + hybrid)  # (H, H, S, B, V)
    W_U = model.weights["unembed.W_U"]
    own, hyb, bias = _hybrid_pos_parts(model, fast)
    got = fast.logits[:, None, :, None] - own[:, :, :, None] + (hyb + bias[:, None, None])
    got = got.permute(1, 3, 0, 2, 4)  # (H, H, S, B, V)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    assert torch.equal(_hybrid_pred(model, fast, batch), got.argmax(-1))
    scores = _hybrid_scores(model, fast, (own, hyb, bias))  # (S, H_attn, H_ov, B)
    direct = torch.einsum("ijsbd,sd->sijb", hybrid, W_U[..., ONE] - W_U[..., ZERO])
    assert torch.allclose(scores, direct, atol=1e-10, rtol=0)
    assert torch.allclose(scores, _hybrid_scores(model, ref), atol=1e-10, rtol=0)


@pytest.mark.parametrize("kw", [{"pos_embed": "learned"},
                                {"pos_embed": "sinusoidal", "bos": False, "noise_symbols": 3},
                                {"pos_embed": "learned", "framing": "sentence"}])
def test_the_compiled_grid_answers_are_the_torch_ops_bit_for_bit(kw, monkeypatch):
    """The position path's model metrics on the grid come from one compiled loop
    (`kernels.grid_answers`); they must be the torch code's (`head_outputs`, then the logits'
    argmax and score) bit for bit, for one head and every head intervened."""
    from count01.fast import kernels
    from count01.measure import interventions

    model = random_model(**kw)
    hard, fit = eval_set(model.cfg, "hard"), eval_set(model.cfg, "fit")
    grid = (np.array([1e-3, 0.7, 1.0, 1e3]), np.array([0.0, 1.0, 30.0]))
    assert interventions._compiled(model)
    compiled = sweep_columns(model, hard, fit, *grid, heads="both")
    parts = activations.Shared(model).of(hard).kind_parts
    e = grid_weights(parts, torch.tensor([0.3, 5.0]), torch.tensor([0.0, 2.0]))
    score, out = head_outputs(parts, e)
    G, S, H, B, V = out.shape
    got = [torch.empty(G, S, H, B, dtype=torch.int64), torch.empty(G, S, H, B).double(),
           torch.empty(G, S, B, dtype=torch.int64), torch.empty(G, S, B).double()]
    _, sums, den = interventions._head_sums(parts, e, readout=True)
    full = parts.rest + parts.orig.sum(1)
    kernels.grid_answers(sums.numpy(), den.numpy(), full.numpy(), parts.orig.numpy(),
                         parts.rest.numpy(), ONE, ZERO, *(t.numpy() for t in got))
    each = full[None, :, None] - parts.orig[None] + out  # the torch code it replaces
    every = parts.rest[None] + out.sum(2)
    for logits, pred, s in ((each, *got[:2]), (every, *got[2:])):
        assert torch.equal(logits.argmax(-1), pred)
        assert torch.equal(metrics.score(logits), s)
    monkeypatch.setattr(interventions, "_compiled", lambda m: False)
    torch_ops = sweep_columns(model, hard, fit, *grid, heads="both")
    assert compiled.keys() == torch_ops.keys()
    for k, v in compiled.items():
        assert np.array_equal(v, torch_ops[k], equal_nan=v.dtype.kind == "f"), k
