import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from count01.config import Config
from count01.language import eval_set, exhaustive
from count01.measure import activations, metrics
from count01.measure.controls import COUNTER, SILENT, build
from count01.measure.metrics import (
    evaluate_logits,
    fit_threshold,
    head_table,
    roc_auc_rows,
    threshold_acc,
)
from count01.model import Model

A = "blocks.0.attn."


def counting_model(heads: int = 1, others: str = "copy", **cfg) -> Model:
    """One seed of `controls`' ideal counter as head 0; the other heads copy it (others="copy")
    or attend alike but write nothing (others="silent"). Small evaluation sets."""
    rest = COUNTER if others == "copy" else SILENT
    small = {"max_len": 10, "exhaustive_len": 10, "long_max_len": 12, "eval_size": 512}
    return build([COUNTER] + [rest] * (heads - 1), seeds=1, **small | cfg)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_rows_equals_scikit_learn_with_ties_and_weights(seed):
    g = torch.Generator().manual_seed(seed)
    score = torch.randint(0, 6, (7, 300), generator=g).double() * 0.1  # many ties
    score[0] = torch.randn(300, generator=g, dtype=torch.float64)  # none
    y = torch.randint(0, 2, (300,), generator=g)
    w = torch.rand(300, generator=g, dtype=torch.float64) * 5
    ours = roc_auc_rows(score, y, w)
    ref = np.array([roc_auc_score(y.numpy(), r.numpy(), sample_weight=w.numpy()) for r in score])
    assert np.abs(ours.numpy() - ref).max() < 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_unit_weights_count_the_general_paths_auc_and_threshold_bit_for_bit(seed, monkeypatch):
    """Every weight 1 (every set of the position path): AUC and thresholds by counting, ties,
    nan and inf included, give the general path's numbers exactly."""
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(40, 500, generator=g, dtype=torch.float64)
    score[:10] = torch.randint(0, 6, (10, 500), generator=g).double() * 0.1  # many ties
    score[10:20, :250] = score[10:20, 250:]  # every score twice
    score[20, 7], score[21, 3], score[22, 0] = float("nan"), float("inf"), -float("inf")
    score[23] = 0.0
    score[24, ::3], score[25] = float("nan"), float("nan")  # nans among ties; all nan
    score[26, :200], score[27, ::2] = float("inf"), -float("inf")
    y, w = torch.randint(0, 2, (500,), generator=g), torch.ones(500, dtype=torch.float64)
    one_class = torch.ones(500, dtype=torch.long)
    fast = roc_auc_rows(score, y, w), fit_threshold(score, y, w), fit_threshold(score, one_class, w)
    monkeypatch.setattr(metrics, "_ranked", lambda *args: None)  # the general path
    for got, want in zip(fast, (roc_auc_rows(score, y, w), fit_threshold(score, y, w),
                                fit_threshold(score, one_class, w))):
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got[~got.isnan()], want[~want.isnan()])
    ref = [roc_auc_score(y.numpy(), r.numpy()) for r in score[:20]]
    assert np.abs(fast[0][:20].numpy() - ref).max() < 1e-12


def test_a_probes_prediction_is_scikit_learns_bit_for_bit():
    """`probe_predict` skips sklearn's checks of its input and must predict what
    clf.predict(scaler.transform(x)) does, on the strided (B, d) view of one seed and head
    that `probe_hits` passes; scores near the boundary included."""
    g = torch.Generator().manual_seed(0)
    fit = eval_set(Config(eval_size=600), "fit")
    result = torch.randn(2, len(fit), 3, 8, generator=g, dtype=torch.float64)
    result[..., 0] += 3 * fit.y.double()[None, :, None]  # a direction that separates them
    probes = metrics.fit_probes(result, fit)
    x = torch.randn(2, 5000, 3, 8, generator=g, dtype=torch.float64).numpy()
    x[:, :, :, 0] *= 1e-3  # many near the boundary
    for s, row in enumerate(probes):
        for h, (scaler, clf) in enumerate(row):
            want = clf.predict(scaler.transform(x[:, :, h][s]))
            assert np.array_equal(metrics.probe_predict((scaler, clf), x[s, :, h]), want)
    x[0, 7, 0, 2] = np.nan  # refused, as scikit-learn's input check refuses it
    for predict in (lambda p, v: p[1].predict(p[0].transform(v)), metrics.probe_predict):
        with pytest.raises(ValueError, match="NaN"):
            predict(probes[0][0], x[0, :, 0])


def _child_auc(queue) -> None:
    queue.put(float(roc_auc_rows(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0, 1, 1]),
                                 torch.ones(3))[0]))


def test_a_forked_child_ranks_with_threads_of_its_own():
    """The ranking's threads are started once per process; a child forked after its parent
    ranked (a sweep's worker) must not wait on the parent's threads, which it does not have."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    roc_auc_rows(torch.randn(2, 50), torch.arange(50) % 2, torch.ones(50))  # the parent's pool
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_auc, args=(queue,))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and queue.get(timeout=5) == 1.0


def test_roc_auc_rows_is_nan_without_both_classes():
    assert torch.isnan(roc_auc_rows(torch.randn(2, 5), torch.ones(5, dtype=torch.long),
                                    torch.ones(5))).all()


def test_a_non_finite_row_gets_nan_auc_and_leaves_the_other_rows_alone():
    g = torch.Generator().manual_seed(0)
    score = torch.randn(3, 50, generator=g, dtype=torch.float64)
    y, w = torch.arange(50) % 2, torch.ones(50)
    clean = roc_auc_rows(score, y, w)
    score[1, 7], score[2, 3] = float("nan"), float("inf")
    dirty = roc_auc_rows(score, y, w)
    assert float(dirty[0]) == float(clean[0]) and torch.isnan(dirty[1:]).all()


def test_evaluate_scores_the_healthy_seeds_of_a_model_with_a_diverged_one(tiny):
    model = Model.init(tiny, [0, 1])
    model.weights["unembed.W_U"][1, 0, 0] = float("nan")
    rows = {(r["set"], r["seed"]): r for r in metrics.evaluate(model, ("hard", "exhaustive"))}
    assert all(math.isfinite(rows[s, 0]["auc"]) for s in ("hard", "exhaustive"))
    assert all(math.isnan(rows[s, 1]["auc"]) for s in ("hard", "exhaustive"))


@pytest.mark.parametrize("seed", range(5))
def test_fitted_threshold_is_the_best_cut_of_all(seed):
    g = torch.Generator().manual_seed(seed)
    score = torch.randint(0, 8, (4, 60), generator=g).double()
    y = torch.randint(0, 2, (60,), generator=g)
    w = torch.rand(60, generator=g, dtype=torch.float64)
    t = fit_threshold(score, y, w)
    got = threshold_acc(score, t, y, w)
    for r in range(4):  # brute force over every candidate threshold
        cands = torch.cat([score[r].unique() - 0.5, score[r].unique() + 0.5])
        best = max(float(threshold_acc(score[r:r + 1], c.view(1), y, w)) for c in cands)
        assert float(got[r]) == pytest.approx(best, abs=1e-12)


def test_threshold_falls_between_the_classes_it_separates():
    score = torch.tensor([[0.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    t = fit_threshold(score, torch.tensor([0, 0, 0, 1]), torch.ones(4, dtype=torch.float64))
    assert float(t[0]) == 2.0


def test_hand_built_counting_head_is_exact_on_exhaustive_strings_up_to_10():
    model = counting_model()
    batch = exhaustive(model.cfg, max_len=10)
    assert evaluate_logits(model(batch), batch)["l_acc"][0] == 1.0
    rows = head_table(model, {"exhaustive": batch})
    (row,) = rows
    assert row["s_acc"] == 1.0 and row["head_auc"] == 1.0 and row["probe_s_acc"] == 1.0
    assert row["w01"] == 1.0 and row["w02"] == 0.0 and row["w_bos"] == 0.0
    assert row["w_eos"] == 1.0 and row["mass_2"] == 0.0


def test_hand_built_head_on_the_token_path_gives_the_same_numbers():
    model = counting_model(pos_embed="learned", exhaustive_len=7)  # W_pos = 0
    batch = exhaustive(model.cfg, tokens=True, max_len=7)
    (row,) = head_table(model, {"exhaustive": batch}, fit=eval_set(model.cfg, "fit"))
    assert row["s_acc"] == 1.0 and row["head_auc"] == 1.0
    assert row["w01"] == pytest.approx(1.0, abs=1e-12) and row["w02"] == 0.0


def ratios(model: Model, batch) -> dict[str, np.ndarray]:
    """w01, w02, w_eos, w_bos per seed and head (S, H), as the head table measures them."""
    w = activations.Activations(model, batch).kind_parts.weights
    return metrics.ratio_columns(w.double().numpy(), model.cfg.noise_symbols)


def test_token_path_ratios_agree_with_the_exact_count_path_ratios():
    cfg = Config(heads=2, n_seeds=2, eval_size=256, max_len=8, long_max_len=12)
    model = Model.init(cfg).to(torch.float64)
    exact = ratios(model, eval_set(cfg, "fit"))
    tok = Model(cfg.replace(pos_embed="learned"),
                model.weights | {"pos_embed.W_pos": torch.zeros(2, cfg.n_ctx, 16,
                                                                dtype=torch.float64)},
                model.seeds)
    measured = ratios(tok, eval_set(tok.cfg, "iid"))
    for k in ("w01", "w02", "w_eos", "w_bos"):
        assert exact[k].shape == (2, 2)
        np.testing.assert_allclose(measured[k], exact[k], rtol=1e-9)


def test_head_table_has_one_row_per_set_seed_and_head_with_unit_mass():
    cfg = Config(heads=2, n_seeds=3, eval_size=256, max_len=8, long_max_len=12,
                 exhaustive_len=6)
    rows = head_table(Model.init(cfg), ("iid", "hard"))
    assert len(rows) == 2 * 3 * 2
    assert {(r["set"], r["seed"], r["head"]) for r in rows} == {
        (s, k, h) for s in ("iid", "hard") for k in range(3) for h in range(2)}
    for r in rows:
        total = r["mass_0"] + r["mass_1"] + r["mass_2"] + r["mass_eos"] + r["mass_bos"]
        assert total == pytest.approx(1.0, abs=1e-9)
        assert 0.0 <= r["s_acc"] <= 1.0 and 0.0 <= r["probe_s_acc"] <= 1.0


def test_a_head_that_writes_nothing_separates_nothing():
    model = counting_model(heads=2, others="silent")
    rows = {r["head"]: r for r in head_table(model, ("hard",))}
    assert rows[0]["s_acc"] == 1.0
    assert rows[1]["head_auc"] == 0.5  # constant score: every pair tied
    batch = eval_set(model.cfg, "hard")
    majority = float(max((batch.weight * (batch.y == k)).sum() for k in (0, 1)) /
                     batch.weight.sum())
    assert rows[1]["s_acc"] <= majority + 1e-12


def test_slicing_a_set_into_forward_chunks_changes_no_number(monkeypatch):
    model = Model.init(Config(heads=2, n_seeds=2, eval_size=300, max_len=8, long_max_len=12,
                              pos_embed="learned")).to(torch.float64)
    sets = ("iid", "hard")
    whole = head_table(model, sets)
    monkeypatch.setattr(activations, "CACHE_ELEMENTS", 5000)  # slices of a few examples
    assert len(list(activations.run_chunks(model, eval_set(model.cfg, "iid")))) > 10
    sliced = head_table(model, sets)
    for a, b in zip(whole, sliced):
        assert a.keys() == b.keys()
        for k in a:  # approx only on numbers: pytest >= 9.2 refuses it on strings
            same = a[k] == b[k] if isinstance(a[k], str) else a[k] == pytest.approx(b[k], abs=1e-12,
                                                                                    rel=1e-12)
            assert same, k


def test_w02_is_the_mean_over_the_noise_symbols_that_were_measured():
    """A symbol no example of a token-path set holds has no ratio (nan): w02 is the mean of the
    others', and nan only where no noise symbol was measured."""
    from count01.measure.metrics import ratio_columns

    nan = float("nan")
    w = np.array([[1.0, 2.0, 0.5, 3.0, nan, 0.1, nan],   # ids 0, 1, 2, EOS, BOS, 5, 6
                  [1.0, 2.0, nan, 3.0, nan, nan, nan]])
    got = ratio_columns(w, 3)
    assert got["w02"][0] == pytest.approx(0.3) and np.isnan(got["w02"][1])
    assert got["w02_5"][0] == 0.1 and np.isnan(got["w02_6"][0])
    assert ratio_columns(w[:, :5], 1)["w02"][0] == 0.5


def test_a_seed_alone_sums_its_slices_as_in_a_batch_of_seeds(monkeypatch):
    """Slices are sized without the number of seeds: every sum over slices runs in one order."""
    from dataclasses import replace

    cfg = Config(heads=2, n_seeds=3, eval_size=300, max_len=8, long_max_len=12,
                 pos_embed="learned")
    model = Model.init(cfg).to(torch.float64)
    alone = Model(replace(cfg, seed=cfg.seed + 1, n_seeds=1),
                  {k: w[1:2] for k, w in model.weights.items()}, [cfg.seed + 1])
    monkeypatch.setattr(activations, "CACHE_ELEMENTS", 20000)
    assert len(list(activations.slices(model, eval_set(cfg, "iid")))) > 3
    assert torch.equal(eval_set(cfg, "iid").tokens, eval_set(alone.cfg, "iid").tokens)
    batched = [r for r in head_table(model, ("iid",)) if r["seed"] == cfg.seed + 1]
    single = head_table(alone, ("iid",))
    assert len(batched) == len(single) == 2
    for a, b in zip(batched, single):
        for k in [k for k in a if k.startswith(("w01", "w02", "mass", "head_auc", "s_acc"))]:
            assert a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]), k
