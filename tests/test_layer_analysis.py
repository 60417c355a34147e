"""Every analysis on every head of every layer, and with an MLP (issue 17): a hand-built
two-layer model with a known mechanism, mean ablation against leave-one-out, alpha through the
later layers, interventions and value swaps against real forwards, and the CLI end to end."""

import pandas as pd
import pytest
import torch
from test_layers import SMALL, hidden_channel, random_model

from count01.config import Config
from count01.language import EOS, eval_set, exhaustive
from count01.measure.activations import (
    Shared,
    head_ids,
    kind_weights,
    layered_logits,
    merged_run,
)
from count01.measure.aggregation import Means, _fit_deep, aggregate, fit_alpha, scheme_metrics
from count01.measure.interventions import attention_sweep, grid_weights, intervened_run, value_swap
from count01.measure.metrics import head_table, l_acc, logit_metrics, roc_auc_rows
from count01.train import torch_threads

TINY = SMALL | {"eval_size": 192}  # every analysis of a deep model runs forwards: small sets


def test_direct_score_and_total_effect_tell_the_layers_of_the_hidden_channel_apart():
    """`hidden_channel`, with layer 0's second counter folded into its first (twice the first's
    W_O, the second silent: the same logits): layer 0's counter writes into a channel W_U does
    not read, so its direct score is 0 (head AUC 0.5), yet ablating it loses the answer; layer
    1's reader copies that channel into the answer: a perfect direct score, and ablating it
    loses the answer too. The silent heads have no score and no effect."""
    from count01.cache import ATTN

    model, _ = hidden_channel()
    batch = exhaustive(model.cfg, tokens=True, max_len=6)
    want = model.run_layers(batch)[-1].logits
    model.weights[ATTN + "W_O"][:, 0] *= 2.0
    model.weights[ATTN + "W_O"][:, 1] = 0.0
    torch.testing.assert_close(model.run_layers(batch)[-1].logits, want, rtol=0, atol=1e-9)
    rows = pd.DataFrame(head_table(model, {"exhaustive": batch}, fit=batch))
    assert list(rows["layer"]) == [0, 0, 1, 1] * 2 and list(rows["head"]) == [0, 1, 2, 3] * 2
    by = rows.groupby("head")
    counter, reader = by.get_group(0), by.get_group(2)
    assert (counter["head_auc"] == 0.5).all() and (counter["probe_s_acc"] == 1.0).all()
    assert (counter["total_effect"] < -0.3).all()  # the answer is lost without it
    assert (reader["head_auc"] == 1.0).all() and (reader["s_acc"] == 1.0).all()
    assert (reader["total_effect"] < -0.3).all()
    for silent in (1, 3):
        g = by.get_group(silent)
        assert (g["head_auc"] == 0.5).all() and (g["total_effect"] == 0.0).all()
    # aggregation over all four heads: the learned model is right everywhere; the reader kept
    # alone (layer 0 mean-ablated, alpha 1) is not
    rows = pd.DataFrame(aggregate(model, {"exhaustive": batch}, batch, shared=Shared(model)))
    assert (rows[rows["scheme"] == "learned"]["l_acc"] == 1.0).all()
    single = rows[(rows["scheme"] == "single")].set_index(["head", "seed"])["l_acc"]
    assert (single.loc[2] < 0.7).all()


@pytest.mark.parametrize("pos_embed, framing", [("none", "classify"), ("learned", "sentence")])
def test_total_effect_at_one_layer_is_leave_one_out(pos_embed, framing):
    cfg = Config(heads=3, d_model=12, pos_embed=pos_embed, framing=framing, **TINY)
    model = random_model(cfg)
    fit, hard = eval_set(cfg, "fit"), eval_set(cfg, "hard")
    shared = Shared(model)
    heads = pd.DataFrame(head_table(model, {"hard": hard}, fit, shared))
    agg = pd.DataFrame(aggregate(model, {"hard": hard}, fit, shared=shared))
    learned = agg[agg["scheme"] == "learned"].set_index("seed")["l_acc"]
    loo = agg[agg["scheme"] == "leave_one_out"]
    change = loo["l_acc"].to_numpy() - learned.loc[loo["seed"]].to_numpy()
    got = heads.set_index(["seed", "head"]).loc[list(zip(loo["seed"], loo["head"])),
                                                   "total_effect"]
    assert (got.to_numpy() == change).all()
    assert (change != 0).any()  # random heads matter: the comparison is not of zeros


DEEP = [dict(layers=2, d_mlp=0), dict(layers=2, d_mlp=6, layernorm=True),
        dict(layers=1, d_mlp=6), dict(layers=3, d_mlp=4, pos_embed="learned")]


@pytest.mark.parametrize("options", DEEP)
def test_alpha_one_reproduces_the_logits_and_mean_ablation_changes_them(options):
    cfg = Config(heads=2, d_model=8, **TINY | options)
    model = random_model(cfg)
    batch = eval_set(cfg, "hard")
    want = model.run_layers(batch)[-1].logits
    assert torch.equal(layered_logits(model, batch, lambda n, o: 1.0 * o), want)
    shared = Shared(model)
    S, H = model.n_seeds, len(head_ids(model))
    ones, keep = torch.ones(1, S, H, dtype=torch.float64), torch.ones(1, S, H, dtype=torch.bool)
    fa = shared.of(eval_set(cfg, "fit"))
    got = scheme_metrics(shared.of(batch), Means.of(fa), ones, keep)
    for k, v in logit_metrics(want, batch).items():
        assert torch.equal(got[k][0], v), k
    # alpha = 0 on one head with keep: the head's output is zero at every position (not its
    # mean), and the forward sees it: the same as replacing it by zeros in run_layers
    alpha = torch.ones(S, H, dtype=torch.float64)
    alpha[:, 0] = 0.0
    zero = layered_logits(model, batch, lambda n, o: o * alpha[:, n * cfg.heads:(n + 1)
                                                            * cfg.heads, None, None]
                          .view(S, 1, cfg.heads, *(1,) * (o.dim() - 3)))
    d = cfg.d_model
    plain = model.run(batch, replace={(0, 0): torch.zeros(S, 1, d, dtype=torch.float64)}).logits
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-12)
    assert not torch.allclose(zero, want)


def test_fitted_alpha_through_the_later_layers_never_loses_and_is_a_seed_alone():
    cfg = Config(layers=2, d_mlp=4, heads=2, d_model=8, **TINY | {"n_seeds": 2})
    model = random_model(cfg)
    fit = eval_set(cfg, "fit")
    shared = Shared(model)
    with torch_threads(1):  # as `analyze` runs: two threads split batched solves by size
        alpha = fit_alpha(model, fit, shared=shared)  # (S, L * H)
    assert alpha.shape == (2, 4) and not torch.equal(alpha, torch.ones_like(alpha))
    keep = torch.ones(1, 2, 4, dtype=torch.bool)
    fa = shared.of(fit)

    def loss(a):
        logits = layered_logits(shared.model, fit, lambda n, o: o * a[:, 2 * n:2 * n + 2]
                                .view(2, 1, 2, *(1,) * (o.dim() - 3)))
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), fit.y.repeat(2),
                                               reduction="none").view(2, -1)
        return (ce * fit.weight).sum(1) / fit.weight.sum()
    assert (loss(alpha) < loss(torch.ones_like(alpha)) - 1e-6).all()
    # the seed alone fits the same alpha, to the last bit
    one = Shared(model.select(1))
    with torch_threads(1):
        assert torch.equal(_fit_deep(one, fit, keep[:, 1:])[0, 0], alpha[1])
    assert Means.of(fa).at_query.shape == (2, 4, cfg.d_model)


@pytest.mark.parametrize("options", [dict(layers=2, d_mlp=0), dict(layers=1, d_mlp=6),
                                     dict(layers=2, d_mlp=4, pos_embed="learned",
                                          framing="sentence")])
def test_the_sweep_of_a_deep_model_is_real_forwards(options):
    cfg = Config(heads=2, d_model=8, **TINY | options)
    model = random_model(cfg)
    model.weights = {k: 0.4 * w for k, w in model.weights.items()}  # finite attention ratios
    fit, hard = eval_set(cfg, "fit"), eval_set(cfg, "hard")
    rows = pd.DataFrame(attention_sweep(model, hard, fit, [0.1, 3.0], [0.0, 2.0], heads="both"))
    H = len(head_ids(model))
    assert len(rows) == 2 * 2 * 2 * cfg.n_seeds * H
    for (w01, w02, head), g in rows[rows["intervened"] == "each"].groupby(
            ["w01", "w02", "head"]):
        c = intervened_run(model, hard, w01, w02, head=head)
        got = logit_metrics(c.logits, hard)
        assert g["l_acc"].tolist() == got["l_acc"].tolist()
        assert g["auc"].tolist() == pytest.approx(got["auc"].tolist(), abs=1e-12, nan_ok=True)
        # the head's own output under the intervention: its direct score's AUC
        direct = (c.result[:, :, head % cfg.heads] @ (model.weights["unembed.W_U"][..., 1]
                                                       - model.weights["unembed.W_U"][..., 0])
                  [:, :, None])[..., 0]
        assert g["head_auc"].tolist() == pytest.approx(
            roc_auc_rows(direct, hard.y, hard.weight).tolist(), abs=1e-9)


def test_value_swap_of_a_deep_model_puts_the_hybrid_in_the_heads_place():
    cfg = Config(layers=2, d_mlp=4, heads=2, d_model=8, **TINY)
    model = random_model(cfg)
    fit, hard = eval_set(cfg, "fit"), eval_set(cfg, "hard")
    rows = pd.DataFrame(value_swap(model, hard, fit))
    assert len(rows) == cfg.n_seeds * 4 * 4
    own = rows[~rows["swapped"]]
    trained = l_acc(model.run_layers(hard)[-1].logits, hard.y, hard.weight)
    for s, seed in enumerate(model.seeds):  # the head itself in its own place: the model
        assert (own[own["seed"] == seed]["l_acc"] == float(trained[s])).all()
    assert rows[rows["swapped"]]["l_acc"].nunique() > 1
    # every pair against a real forward: the hybrid in head i's place at its query row
    from count01.measure.activations import query_rows, stacked

    c, caches = merged_run(model, hard), model.run_layers(hard, positions=True)
    hybrid = torch.einsum("sbik,sbjke,sjed->ijsbd", c.pattern, c.v, stacked(model, "W_O"))
    row = (torch.arange(hard.tokens.shape[-1]) == query_rows(hard)[..., None])[..., None]
    got = rows.set_index(["seed", "attn_head", "ov_head"])["l_acc"]
    for i, (n, h) in enumerate(head_ids(model)):
        for j in range(4):
            value = hybrid[i, j] if n == 1 else torch.where(
                row, hybrid[i, j][:, :, None], caches[n].positions[:, :, h])
            want = l_acc(model.run(hard, replace={(n, h): value}).logits, hard.y, hard.weight)
            assert [got[(seed, i, j)] for seed in model.seeds] == want.tolist()


def test_merged_run_holds_every_layers_heads_in_order():
    cfg = Config(layers=3, heads=2, d_model=8, **TINY)
    model = random_model(cfg)
    batch = eval_set(cfg, "hard")
    c, caches = merged_run(model, batch), model.run_layers(batch)
    for n in range(3):
        assert torch.equal(c.result[:, :, 2 * n:2 * n + 2], caches[n].result)
        assert torch.equal(c.pattern[:, :, 2 * n:2 * n + 2], caches[n].pattern)
    assert head_ids(model) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def _all_intervened_scores(model, batch, w01, w02):
    """The reference for "all": every layer's query row overridden at once, layer by layer by
    real forwards (a layer's other positions as they were, the lower layers' query rows
    intervened), and every head's direct score at its query (S, L * H, B)."""
    from count01.language import noise_ids
    from count01.measure.activations import query_rows, readout_direction

    L, H = model.cfg.layers, model.cfg.heads
    replace, scores = {}, []
    for n in range(L):
        c = model.run(batch, layer=n)
        e = kind_weights(model, c, batch).clone()
        e[..., 0], e[..., 1] = 1.0, w01
        e[..., list(noise_ids(model.cfg.noise_symbols))] = w02
        onehot = torch.nn.functional.one_hot(c.kinds, model.cfg.d_vocab).to(e.dtype)
        over = torch.einsum("sbkt,sht->sbhk", onehot, torch.nan_to_num(e, nan=0.0))
        cs = model.run_layers(batch, attn_override=over, layer=n, replace=replace,
                              positions=True)
        scores.append(torch.einsum("sbhd,sd->shb", cs[n].result, readout_direction(model)))
        if n < L - 1:  # its outputs: as they were, but at the query row the intervened one
            row = (torch.arange(batch.tokens.shape[-1]) == query_rows(batch)[..., None])
            replace |= {(n, h): torch.where(row[..., None], cs[n].result[:, :, h, None],
                                            model.run_layers(batch, replace=replace,
                                                             positions=True)[n]
                                            .positions[:, :, h]) for h in range(H)}
    return torch.cat(scores, 1)


@pytest.mark.parametrize("options", [dict(layers=2), dict(layers=3, d_mlp=4)])
def test_all_rows_measure_every_head_through_the_intervened_lower_layers(options):
    """Under "all" a layer-0 head reads what it reads unintervened (as "each"); a later head
    reads the intervened lower layers' query row: its s-acc and AUC are those of its direct
    score in a real forward with every layer intervened."""
    from count01.measure.metrics import fit_threshold, fit_thresholds, threshold_acc

    cfg = Config(heads=2, d_model=8, **TINY | options)
    model = random_model(cfg)
    model.weights = {k: 0.4 * w for k, w in model.weights.items()}
    fit, hard = eval_set(cfg, "fit"), eval_set(cfg, "hard")
    rows = pd.DataFrame(attention_sweep(model, hard, fit, [0.1, 3.0], [2.0], heads="both"))
    each, every = (rows[rows["intervened"] == m].reset_index(drop=True) for m in ("each", "all"))
    head_cols = ["s_acc_fixed", "s_acc_refit", "head_auc"]
    later = every["head"] >= cfg.heads
    assert every.loc[~later, head_cols].equals(each.loc[~later, head_cols])
    assert every[head_cols].notna().all().all() and each[head_cols].notna().all().all()
    assert not every.loc[later, head_cols].equals(each.loc[later, head_cols])
    t0 = fit_thresholds(Shared(model), fit)
    for w01 in (0.1, 3.0):
        s = _all_intervened_scores(model, hard, w01, 2.0)
        t = fit_threshold(_all_intervened_scores(model, fit, w01, 2.0), fit.y, fit.weight)
        want = {"head_auc": roc_auc_rows(s, hard.y, hard.weight),
                "s_acc_fixed": threshold_acc(s, t0, hard.y, hard.weight),
                "s_acc_refit": threshold_acc(s, t, hard.y, hard.weight)}
        got = every[every["w01"] == w01]
        for k, v in want.items():
            assert got[k].tolist() == pytest.approx(v.flatten().tolist(), abs=1e-9), k
    with pytest.raises(ValueError, match="one-layer"):
        intervened_run(model, hard, 0.1, 2.0)


def test_attention_that_underflows_on_the_0s_gives_no_inf_or_nan_weights():
    """At init scale 3 the attention of some heads on the 0s underflows in some examples (all
    of seed 0's): those examples are left out of the ratios, not averaged in as inf or nan."""
    cfg = Config(layers=2, heads=2, d_model=8, **TINY)
    model = random_model(cfg, scale=3.0)
    fit, hard = eval_set(cfg, "fit"), eval_set(cfg, "hard")
    w = Shared(model).of(hard).kind_parts.weights  # (S, L * H, V)
    assert not torch.isinf(w).any()
    measured = ~torch.isnan(w[..., 0])
    assert not measured[0].any() and measured[1].all()  # seed 0: no usable example
    assert (w[..., 0][measured] == 1.0).all()
    w01, w02 = torch.tensor([0.1, 3.0]), torch.tensor([2.0, 2.0])
    e = grid_weights(Shared(model).of(hard).kind_parts, w01, w02)
    assert torch.isfinite(e).all() and (e[:, 0, :, EOS] == 0).all()  # unmeasured: no weight
    rows = pd.DataFrame(attention_sweep(model, hard, fit, [0.1, 3.0], [2.0], heads="each"))
    assert rows["head_auc"].notna().all()


@pytest.mark.parametrize("options", [dict(layers=2, d_mlp=4), dict(layers=1, d_mlp=6),
                                     dict(layers=2, layernorm=True)])
def test_the_fit_runs_only_the_pairs_still_moving_and_gets_the_same_alpha(options, monkeypatch):
    """`_newton` asks a deep model's fit for the logits of the (mask, seed) pairs not yet
    converged and the derivatives of those whose alpha moved; asking for every pair at every
    step (the plain damped Newton) gives the same alpha to the last bit."""
    from count01.measure import aggregation

    cfg = Config(heads=2, d_model=8, **TINY | options)
    model = random_model(cfg, 0.4)
    fit = eval_set(cfg, "fit")
    H = len(head_ids(model))
    keep = torch.tensor([[h in s for h in range(H)] for s in ((0,), (1,), (0, H - 1), (1, 2))]
                        )[:, None].expand(-1, cfg.n_seeds, -1)
    asked = []
    newton = aggregation._newton

    def spy(model, keep, y, weight, logits_of, jacobian):
        def logits(alpha, rows):
            asked.append(rows.clone())
            return logits_of(alpha, rows)
        return newton(model, keep, y, weight, logits, jacobian)

    def every_pair(model, keep, y, weight, logits_of, jacobian):
        return newton(model, keep, y, weight, lambda a, rows: logits_of(a, rows | True),
                      lambda a, rows: jacobian(a, rows | True))
    with torch_threads(1):  # as `analyze` runs
        monkeypatch.setattr(aggregation, "_newton", spy)
        fast = _fit_deep(Shared(model), fit, keep)
        monkeypatch.setattr(aggregation, "_newton", every_pair)
        slow = _fit_deep(Shared(model), fit, keep)
    assert any(not rows.all() for rows in asked)  # some pairs converged before the others
    assert torch.equal(slow, fast)


@pytest.mark.parametrize("options", [dict(layers=2, d_mlp=4), dict(layers=1, d_mlp=6),
                                     dict(layers=2, pos_embed="learned")])
def test_the_batched_head_set_search_is_each_subset_fitted_alone(options):
    """The minimal head search fits every subset of a size in one pass (`Prefixes`: all
    masks at once); each subset fitted and scored alone gives the same alpha and l-acc, and
    the prefix path the same logits as a forward per mask and layer (`layered_logits`)."""
    from itertools import combinations

    from count01.measure.aggregation import Prefixes, _edit, _parts, _subset_l_acc

    cfg = Config(heads=2, d_model=8, **TINY | options)
    model = random_model(cfg, 0.4)
    fit, hard = eval_set(cfg, "fit"), eval_set(cfg, "hard")
    shared = Shared(model)
    parts = _parts(model, fit, shared)
    H = len(head_ids(model))
    subsets = [s for k in (1, H - 1) for s in combinations(range(H), k)] + [(0, H - 1)]
    keep = torch.zeros(len(subsets), cfg.n_seeds, H, dtype=torch.bool)
    for j, s in enumerate(subsets):
        keep[j, :, list(s)] = True
    with torch_threads(1):  # as `analyze` runs
        together = parts[0](keep)
        alone = torch.cat([parts[0](keep[j:j + 1]) for j in range(len(subsets))])
    assert torch.equal(together, alone)  # every (mask, seed) pair is run alone
    acts = shared.of(hard)
    assert torch.equal(_subset_l_acc(shared.model, acts, subsets, parts),
                       torch.cat([_subset_l_acc(shared.model, acts, [s], parts)
                                  for s in subsets]))
    if cfg.pos_embed == "none":
        m, means = shared.model, parts[1]
        want = torch.stack([layered_logits(m, hard, _edit(m, hard, together[j], keep[j], *means))
                            for j in range(len(subsets))])
        torch.testing.assert_close(Prefixes.of(m, hard).logits(together, keep, means), want,
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("options", [dict(layers=2), dict(layers=2, d_mlp=4),
                                     dict(layers=2, d_mlp=4, layernorm=True),
                                     dict(layers=1, d_mlp=6, layernorm=True)])
def test_the_deep_fits_dual_numbers_are_forward_mode_autograds_derivative(options):
    """The deep fit's Jacobian on the prefix path is written out by hand (`Prefixes.tangent`:
    dual numbers through attention's softmax, LayerNorm, GELU): it is forward-mode autograd's
    derivative of the same logits, and the finite differences'."""
    import torch.autograd.forward_ad as fwad

    from count01.measure.aggregation import Prefixes

    cfg = Config(heads=2, d_model=8, **TINY | options | {"n_seeds": 2})
    shared = Shared(random_model(cfg, 0.4))
    m, fit = shared.model, eval_set(cfg, "fit")
    means, state = Means.of(shared.of(fit)), Prefixes.of(m, fit)
    LH = len(head_ids(m))
    gen = torch.Generator().manual_seed(3)
    for seed, ablated in [(0, 0), (1, LH - 1)]:  # a head of the first, then the last layer
        alpha = 1 + 0.5 * torch.randn(LH, generator=gen, dtype=torch.float64)
        keep = torch.arange(LH) != ablated  # one head mean-ablated
        eye = torch.eye(LH, dtype=torch.float64)
        ours = state.tangent(seed, alpha, keep, means, eye)  # (LH, b, V)
        with fwad.dual_level():
            dual = fwad.make_dual(alpha.repeat(LH, 1), eye)
            want = fwad.unpack_dual(state.alone(seed, dual, keep.repeat(LH, 1), means)).tangent
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
        assert (ours[ablated] == 0).all() and ours.abs().amax() > 0.1  # the ablated head: none
        h = 1e-5
        steps = torch.stack([alpha + h * eye, alpha - h * eye], 1)  # (LH, 2, LH)
        got = state.alone(seed, steps.reshape(-1, LH), keep.repeat(2 * LH, 1), means)
        got = got.view(LH, 2, *got.shape[1:])
        torch.testing.assert_close(ours, (got[:, 0] - got[:, 1]) / (2 * h), rtol=0, atol=1e-6)
