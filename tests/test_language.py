import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from count01 import language
from count01.config import Config, Count01Error
from count01.language import (
    BOS,
    EOS,
    arrange,
    draw_index,
    draw_triples,
    eval_set,
    exhaustive,
    from_digits,
    parse,
    tokens_to_counts,
    training_batch,
    training_law,
    triple_law,
    uniform,
)
from count01.measure.metrics import evaluate_logits
from count01.model import Model

strings = st.lists(st.integers(0, 2), min_size=1, max_size=40)


@given(st.lists(strings, min_size=1, max_size=20))
@settings(max_examples=60, deadline=None)
def test_answer_rule_matches_a_brute_force_count(rows):
    width = max(map(len, rows))
    digits = np.array([r + [-1] * (width - len(r)) for r in rows])
    batch = from_digits(digits, bos=True)
    expected = [int(r.count(1) > r.count(0)) for r in rows]
    assert batch.y.tolist() == expected
    assert batch.counts.tolist() == [[r.count(0), r.count(1), r.count(2)] for r in rows]


@given(strings, st.booleans())
@settings(max_examples=40, deadline=None)
def test_tokens_are_bos_digits_eos(row, bos):
    batch = from_digits(np.array([row]), bos)
    tokens = batch.tokens[0].tolist()
    n = len(row)
    assert tokens[: n + 1 + bos] == ([BOS] if bos else []) + row + [EOS]
    assert int(batch.eos_pos[0]) == n + bos


@given(st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).filter(
    lambda t: sum(t) > 0), st.integers(0, 2**32))
@settings(max_examples=50, deadline=None)
def test_arrange_is_a_permutation_of_the_counted_digits(triple, seed):
    counts = np.array([triple])
    u = uniform(seed, 1, 0, np.arange(30))[None]
    tokens, eos = arrange(counts, u, bos=True)
    t = torch.from_numpy(tokens)
    assert tokens_to_counts(t, torch.from_numpy(eos)).tolist() == [list(triple)]
    assert tokens[0, 0] == BOS and tokens[0, eos[0]] == EOS


def _deal_by_argsort(keys, counts, ids):
    """language._deal's definition: the position of rank r (argsort of the keys) gets the
    symbol whose cumulative count r falls in."""
    rank = np.argsort(np.argsort(keys, -1, kind="stable"), -1)
    by_rank = (rank[..., None] >= np.cumsum(counts, -1)[..., None, :-1]).sum(-1)
    return np.asarray(ids)[by_rank]


@pytest.mark.parametrize("k", [1, 3])
def test_dealing_by_thresholds_gives_the_argsort_arrangement(k):
    cfg = Config(noise_symbols=k)
    counts = language.training_counts(cfg, list(range(8)), 3)  # (8, 256, k + 2)
    u = uniform(np.arange(8, dtype=np.uint64)[:, None, None], 1, 0,
                np.arange(256)[:, None] * 32 + np.arange(32))
    keys = np.where(np.arange(32) < counts.sum(-1)[..., None], u, np.inf)
    ids = language.kind_ids(k)
    assert np.array_equal(language._deal(keys, counts, ids), _deal_by_argsort(keys, counts, ids))


def test_dealing_keeps_the_counts_when_keys_tie():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 3, (500, 9)).astype(float)  # ties everywhere
    keys[:, 7:] = np.inf  # padding
    counts = rng.multinomial(7, [0.3, 0.3, 0.4], 500)
    got = language._deal(keys, counts, (0, 1, 2))[:, :7]
    assert np.array_equal(np.stack([(got == c).sum(1) for c in range(3)], 1), counts)
    assert np.array_equal(got, _deal_by_argsort(keys, counts, (0, 1, 2))[:, :7])


def test_uniforms_are_deterministic_in_range_and_differ_by_stream():
    a = uniform(3, 1, 7, np.arange(10000))
    assert np.array_equal(a, uniform(3, 1, 7, np.arange(10000)))
    assert 0.0 <= a.min() and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.01
    assert not np.allclose(a, uniform(3, 2, 7, np.arange(10000)))
    assert not np.allclose(a, uniform(4, 1, 7, np.arange(10000)))


def test_a_seeds_batch_does_not_depend_on_the_other_seeds():
    cfg = Config()
    together = training_batch(cfg, [0, 1, 2], step=5, tokens=True)
    alone = training_batch(cfg, [2], step=5, tokens=True)
    assert torch.equal(together.tokens[2], alone.tokens[0])
    assert torch.equal(together.counts[2], alone.counts[0])
    assert not torch.equal(together.counts[0], together.counts[1])
    assert not torch.equal(alone.counts, training_batch(cfg, [2], step=6).counts)


def test_training_draws_follow_the_default_distribution():
    cfg = Config(batch_size=4096)
    c = training_batch(cfg, [0], step=0).counts[0].double()
    n = c.sum(1)
    assert n.min() >= 1 and n.max() <= 32
    assert abs(n.mean() - 16.5) < 0.5
    assert abs(c[:, 2].sum() / n.sum() - 0.25) < 0.01


def test_exact_triple_law_sums_to_one_and_balances_on_request():
    t, p = triple_law(1, 32, 0.25, True, False)
    y = t[:, 1] > t[:, 0]
    assert abs(p.sum() - 1) < 1e-12 and abs(p[y].sum() - 0.5) < 1e-12


def test_evaluation_sets_are_as_documented():
    cfg = Config(eval_size=4096)
    hard = eval_set(cfg, "hard")
    assert (hard.counts[:, 1] - hard.counts[:, 0]).abs().max() <= 1
    for name in ("hard", "long", "noisy"):
        b = eval_set(cfg, name)
        share = float((b.y * b.weight).sum() / b.weight.sum())
        assert abs(share - 0.5) < 0.03, name
        assert b.weight.sum() == cfg.eval_size
    long = eval_set(cfg, "long")
    n = long.counts.sum(1)
    assert n.min() > cfg.max_len and n.max() <= cfg.long_max_len
    noisy = eval_set(cfg, "noisy")
    share2 = float((noisy.counts[:, 2] * noisy.weight).sum() / (noisy.counts.sum(1) * noisy.weight).sum())
    assert abs(share2 - cfg.noisy_noise) < 0.02


def test_evaluation_sets_are_reproducible_and_drawn_apart_from_training():
    cfg = Config(eval_size=1024)
    a, b = eval_set(cfg, "iid", tokens=True), eval_set(cfg, "iid", tokens=True)
    assert torch.equal(a.tokens, b.tokens)
    fit = eval_set(cfg, "fit", tokens=True)
    assert not torch.equal(a.tokens, fit.tokens)
    train = training_batch(cfg.replace(batch_size=1024), [cfg.eval_seed], 0, tokens=True)
    assert not torch.equal(a.counts, train.counts[0])
    other = eval_set(cfg.replace(eval_seed=7), "iid", tokens=True)
    assert not torch.equal(a.tokens, other.tokens)


def test_training_and_every_evaluation_set_draw_from_disjoint_streams():
    """A stream is keyed by seed * golden + stream id (mod 2^64), then a bijective mix: two
    (seed, stream) pairs share a key only if their seeds differ by (id difference) / golden
    mod 2^64. For every pair of streams that distance is astronomically large, so no seed of a
    real run can make an evaluation set replay training draws (or another set's)."""
    golden, mod = 0x9E3779B97F4A7C15, 2**64
    ids = [language.TRAIN_STREAM, *language.EVAL_STREAMS.values()]
    assert len(set(ids)) == len(ids)
    for a in ids:
        for b in ids:
            if a != b:
                d = (b - a) * pow(golden, -1, mod) % mod
                assert min(d, mod - d) > 2**40, (a, b)
    # and empirically: no uniform of any evaluation set appears in 200 steps of 8 training seeds
    seeds = np.arange(8, dtype=np.uint64)[:, None, None]
    train = uniform(seeds, language.TRAIN_STREAM, np.arange(200)[None, :, None],
                    np.arange(256)[None, None, :])
    for name, stream in language.EVAL_STREAMS.items():
        drawn = uniform(0, stream, np.arange(2)[:, None], np.arange(4096)[None, :])
        assert not np.isin(drawn, train).any(), name


def test_exhaustive_covers_every_string_once():
    cfg = Config(exhaustive_len=7)
    tok = exhaustive(cfg, tokens=True)
    assert len(tok) == sum(3**n for n in range(1, 8))
    assert len({tuple(r) for r in tok.tokens.tolist()}) == len(tok)
    exact = exhaustive(cfg)
    assert float(exact.weight.sum()) == pytest.approx(len(tok))
    share = float((exact.y * exact.weight).sum() / exact.weight.sum())
    assert share == pytest.approx(float(tok.y.double().mean()), abs=1e-12)


def test_exhaustive_weights_stay_finite_at_length_64():
    b = exhaustive(Config(), max_len=64)
    assert torch.isfinite(b.weight).all()
    assert float(b.weight.sum()) == pytest.approx((3**65 - 3) / 2, rel=1e-9)


@pytest.mark.parametrize("text", ["", "   ", "01a", "0 1", "3", "01EOS"])
def test_malformed_strings_are_rejected(text):
    with pytest.raises(Count01Error):
        parse(text, bos=True)


def _string_probability(s: tuple[int, ...], noise: float, p_one: float, burst_len: float,
                        k: int = 1) -> float:
    """P(one string of digits) symbol by symbol: the definition the laws must agree with. A
    noise symbol (2, 5, ..., k + 3) is noise, then one of the k symbols uniformly."""
    digit = {0: 1 - p_one, 1: p_one}
    if burst_len:
        stay, enter = language.burst_chain(noise, burst_len)
    p, was_noise = 1.0, None
    for x in s:
        to_noise = noise if not burst_len or was_noise is None else (stay if was_noise else enter)
        p *= to_noise / k if x not in digit else (1 - to_noise) * digit[x]
        was_noise = x not in digit
    return p


def _brute_force_law(max_len: int, noise: float, p_one: float, burst_len: float,
                     k: int = 1) -> dict:
    import itertools

    law: dict[tuple, float] = {}
    ids = language.kind_ids(k)
    for n in range(1, max_len + 1):
        for s in itertools.product(ids, repeat=n):
            key = tuple(s.count(i) for i in ids)
            p = _string_probability(s, noise, p_one, burst_len, k) / max_len
            law[key] = law.get(key, 0.0) + p
    return law


@pytest.mark.parametrize("noise, p_one, burst_len", [(0.25, 0.5, 0.0), (0.3, 0.7, 0.0),
                                                     (0.0, 0.3, 0.0), (0.25, 0.5, 4.0),
                                                     (0.5, 0.7, 2.0), (0.2, 0.5, 1.0)])
def test_every_noise_condition_gives_the_exact_law_of_its_strings(noise, p_one, burst_len):
    t, p = triple_law(1, 6, noise, False, False, p_one, burst_len)
    expected = _brute_force_law(6, noise, p_one, burst_len)
    got = {tuple(k): v for k, v in zip(t.tolist(), p) if v > 0}
    assert got.keys() == {k for k, v in expected.items() if v > 0}
    for k, v in expected.items():
        assert got.get(k, 0.0) == pytest.approx(v, rel=1e-9, abs=1e-15), k


@pytest.mark.parametrize("noise, p_one, burst_len", [(0.3, 0.7, 0.0), (0.5, 0.5, 2.0),
                                                     (0.25, 0.3, 4.0)])
def test_with_three_noise_symbols_the_count_law_is_the_exact_law_of_its_strings(noise, p_one,
                                                                                burst_len):
    key = (1, 4, noise, False, False, p_one, burst_len)
    t, p = language.count_law(key, 3)
    assert t.shape[1] == 5 and p.sum() == pytest.approx(1.0, abs=1e-12)
    expected = _brute_force_law(4, noise, p_one, burst_len, k=3)
    got = {tuple(r): v for r, v in zip(t.tolist(), p)}
    assert len(got) == len(t) == len(expected)  # every count tuple once
    for r, v in expected.items():
        assert got[r] == pytest.approx(v, rel=1e-9, abs=1e-15), r


def _tally(tokens: torch.Tensor, eos: torch.Tensor, bos: bool) -> dict:
    """How often each string (digits between BOS and EOS) occurs among token rows."""
    out: dict[tuple, int] = {}
    for row, e in zip(tokens.reshape(-1, tokens.shape[-1]).tolist(), eos.reshape(-1).tolist()):
        key = tuple(row[int(bos):e])
        out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.parametrize("pattern", ["iid", "bursty"])
def test_drawn_strings_with_three_noise_symbols_follow_the_exact_law_of_strings(pattern):
    import itertools

    cfg = Config(max_len=3, long_max_len=4, exhaustive_len=3, batch_size=4096, noise=0.4,
                 p_one=0.7, noise_symbols=3, noise_pattern=pattern, burst_len=2.5)
    batch = training_batch(cfg, list(range(40)), 0, tokens=True)
    assert torch.equal(batch.counts, training_batch(cfg, list(range(40)), 0).counts)
    assert (tokens_to_counts(batch.tokens, batch.eos_pos, 3) == batch.counts).all()
    seen = _tally(batch.tokens, batch.eos_pos, cfg.bos)
    draws = batch.tokens.shape[0] * batch.tokens.shape[1]
    burst = cfg.burst_len if pattern == "bursty" else 0.0
    strings = [s for n in range(1, 4) for s in itertools.product(language.kind_ids(3), repeat=n)]
    exact = np.array([_string_probability(s, cfg.noise, cfg.p_one, burst, 3) / 3 for s in strings])
    assert exact.sum() == pytest.approx(1.0)
    assert set(seen) <= set(strings)
    freq = np.array([seen.get(s, 0) for s in strings]) / draws
    assert 0.5 * np.abs(freq - exact).sum() < 0.03  # 155 strings, 163,840 draws: noise ~0.012
    other = np.array([_string_probability(s, cfg.noise, cfg.p_one, 2.5 - burst, 3) / 3
                      for s in strings])  # the other noise pattern's law
    assert 0.5 * np.abs(freq - other).sum() > 0.05


def test_bursty_noise_is_placed_as_the_chain_would_place_it():
    import itertools

    noise, burst_len, counts = 0.3, 3.0, (2, 1, 3)  # n0, n1, n2
    n = sum(counts)
    strings = [s for s in itertools.product((0, 1, 2), repeat=n)
               if (s.count(0), s.count(1), s.count(2)) == counts]
    exact = np.array([_string_probability(s, noise, 0.5, burst_len) for s in strings])
    exact /= exact.sum()
    draws = 40_000
    u = uniform(7, 99, 0, np.arange(draws * 2 * n)).reshape(draws, 2 * n)
    c = np.tile(np.array(counts), (draws, 1))
    at = language.noise_positions(c, u[:, n:], noise, burst_len)
    tokens, _ = arrange(c, u[:, :n], bos=False, noise_at=at)
    assert (tokens_to_counts(torch.from_numpy(tokens), torch.full((draws,), n)).numpy() == c).all()
    index = {s: i for i, s in enumerate(strings)}
    seen = np.bincount([index[tuple(r)] for r in tokens[:, :n].tolist()], minlength=len(strings))
    total_variation = 0.5 * np.abs(seen / draws - exact).sum()
    assert total_variation < 0.02, total_variation  # 60 strings, 40,000 draws: noise ~0.01
    runs_iid = np.bincount([index[tuple(r)] for r in arrange(c, u[:, :n], bos=False)[0][:, :n]
                            .tolist()], minlength=len(strings))
    assert 0.5 * np.abs(runs_iid / draws - exact).sum() > 0.05  # i.i.d. placement is not this


@pytest.mark.parametrize("change", [{"p_one": 0.7}, {"noise_pattern": "bursty", "burst_len": 3.0},
                                    {"noise_pattern": "bursty", "p_one": 0.3, "noise": 0.5},
                                    {"noise_symbols": 3},
                                    {"noise_symbols": 3, "noise_pattern": "bursty",
                                     "burst_len": 3.0}])
def test_every_evaluation_set_follows_the_configured_noise_condition(change):
    cfg = Config(max_len=8, long_max_len=12, exhaustive_len=4, eval_size=4096,
                 pos_embed="learned", **change)
    base = Config(max_len=8, long_max_len=12, exhaustive_len=4, eval_size=4096, pos_embed="learned",
                  noise_symbols=cfg.noise_symbols)
    k = cfg.noise_symbols
    for name in ("iid", "hard", "long", "noisy", "fit"):
        batch = eval_set(cfg, name)
        c = batch.counts.double()
        assert c.shape[1] == k + 2
        assert (tokens_to_counts(batch.tokens, batch.eos_pos, k) == batch.counts).all()
        if name == "hard":
            assert ((c[:, 1] - c[:, 0]).abs() <= 1).all()
        if name == "iid":
            share_one = (c[:, 1].sum() / c[:, :2].sum()).item()
            assert share_one == pytest.approx(cfg.p_one, abs=0.03)
            for j in range(2, k + 2):  # each noise symbol holds 1/k of the noise
                assert (c[:, j].sum() / c.sum()).item() == pytest.approx(cfg.noise / k, abs=0.03)
        if name == "noisy":  # a higher rate of the same symbols
            for j in range(2, k + 2):
                share = (c[:, j].sum() / c.sum()).item()
                assert share == pytest.approx(cfg.noisy_noise / k, abs=0.05)
        if cfg.noise_pattern == "bursty" and name == "iid":  # runs of noise are longer
            def mean_run(b):
                t = b.tokens.numpy()
                twos = np.isin(t, language.noise_ids(k))
                starts = twos[:, 1:] & ~twos[:, :-1]
                return twos.sum() / max(1, starts.sum() + twos[:, 0].sum())
            assert mean_run(batch) > mean_run(eval_set(base, name)) + 0.5
    every = eval_set(cfg, "exhaustive")
    assert len(every) == sum((k + 2) ** n for n in range(1, 5))  # every string, whole vocabulary
    assert set(np.unique(every.tokens.numpy())) == set(range(cfg.d_vocab))


def test_exhaustive_counts_with_three_noise_symbols_weigh_the_strings_they_stand_for():
    cfg = Config(exhaustive_len=5, noise_symbols=3)
    tok, exact = exhaustive(cfg, tokens=True), exhaustive(cfg)
    assert len({tuple(r) for r in tok.tokens.tolist()}) == len(tok) == sum(5**n for n in range(1, 6))
    rows, n = np.unique(tok.counts.numpy(), axis=0, return_counts=True)
    order = np.lexsort(exact.counts.numpy().T[::-1])
    assert np.array_equal(exact.counts.numpy()[order], rows)
    np.testing.assert_allclose(exact.weight.numpy()[order], n, rtol=1e-12)


def test_parse_reads_the_noise_symbols_of_the_vocabulary():
    b = parse("0125601", bos=True, k=3)
    assert b.counts.tolist() == [[2, 2, 1, 1, 1]]
    with pytest.raises(Count01Error, match="only digits 0, 1, 2, 5, 6"):
        parse("017", bos=True, k=3)
    with pytest.raises(Count01Error, match="only digits 0, 1, 2"):
        parse("015", bos=True)


@pytest.mark.parametrize("change, message", [({"p_one": 0.0}, "p_one must be in (0, 1)"),
                                             ({"noise_pattern": "poisson"}, "noise_pattern must"),
                                             ({"noise_pattern": "bursty", "burst_len": 0.5},
                                              "burst_len must be >= 1"),
                                             ({"noise_pattern": "bursty", "burst_len": 1.5,
                                               "noise": 0.7}, "burst_len must be")])
def test_bad_noise_conditions_are_refused(change, message):
    with pytest.raises(Count01Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config().replace(**change)


@pytest.mark.parametrize("change", [{"p_one": 0.7}, {"noise_pattern": "bursty", "burst_len": 3.0},
                                    {"noise_symbols": 3},
                                    {"noise_symbols": 3, "noise_pattern": "bursty",
                                     "burst_len": 3.0}])
def test_the_count_path_equals_the_token_path_in_every_noise_condition(change):
    cfg = Config(max_len=8, long_max_len=12, exhaustive_len=4, eval_size=2048, n_seeds=2, **change)
    model = Model.init(cfg).to(torch.float64)
    for name in ("iid", "hard", "noisy"):
        by_counts, by_tokens = eval_set(cfg, name), eval_set(cfg, name, tokens=True)
        a = evaluate_logits(model(by_counts), by_counts)
        b = evaluate_logits(model.run(by_tokens, force_tokens=True).logits, by_tokens)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-9, rtol=0, msg=f"{name} {k}")
    batch = training_batch(cfg, model.seeds, 3, tokens=True)
    assert torch.equal(batch.counts, training_batch(cfg, model.seeds, 3).counts)


def test_sentence_tokens_and_their_queries_by_brute_force_on_short_strings():
    """Every string up to length 4 as a sentence `[BOS] x EOS y EOS`, its ending's query (the
    answer fed after the first EOS, seeing what comes before it and itself) and its `lm_loss`
    rows, against a count written out per string."""
    from count01.language import at_end, string_rows

    for bos in (True, False):
        cfg = Config(bos=bos, framing="sentence", exhaustive_len=4)
        batch = language.exhaustive(cfg, tokens=True)
        end = at_end(batch)
        rows = string_rows(batch.tokens, batch.eos_pos, 5)
        for b in range(len(batch)):
            toks = batch.tokens[b].tolist()
            p = int(batch.eos_pos[b])
            x = toks[int(bos):p]
            y = int(x.count(1) > x.count(0))
            assert toks[:p + 3] == [4] * bos + x + [3, y, 3]  # BOS x EOS y EOS
            assert batch.y[b] == y and end.y[b] == 3 and end.query[b] == y
            seen = toks[:p + 2]  # the ending's query at p + 1 sees itself
            want = [seen.count(k) for k in range(5)]
            assert end.mult(bos, torch.float64)[b].tolist() == want
            assert batch.mult(bos, torch.float64)[b].tolist() == [toks[:p + 1].count(k)
                                                                  for k in range(5)]
            assert end.tokens[b, p + 1] == y
            mult, q, target, ok = (r[b] for r in rows)
            for i in range(mult.shape[0]):
                assert bool(ok[i]) == (i < p)
                if i < p:
                    assert mult[i].tolist() == [toks[:i + 1].count(k) for k in range(5)]
                    assert (int(q[i]), int(target[i])) == (toks[i], toks[i + 1])
        fed = at_end(batch, torch.ones_like(batch.y))  # a fed answer replaces the true one
        assert (fed.tokens[torch.arange(len(batch)), batch.eos_pos + 1] == 1).all()


def test_sentence_batches_keep_the_classify_strings_and_counts():
    cfg = Config(max_len=8, long_max_len=12, eval_size=64)
    sent = cfg.replace(framing="sentence")
    a = training_batch(cfg, [0, 1], 3, tokens=True)
    b = training_batch(sent, [0, 1], 3, tokens=True)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.eos_pos, b.eos_pos)
    upto = torch.arange(a.tokens.shape[-1]) <= a.eos_pos[..., None]  # the string and EOS
    assert torch.equal(torch.where(upto, b.tokens[..., :a.tokens.shape[-1]], -1),
                       torch.where(upto, a.tokens, -1))
    assert b.tokens.shape[-1] == a.tokens.shape[-1] + 2
    for name in ("iid", "long"):
        e = language.eval_set(sent, name, tokens=True)
        assert torch.equal(e.counts, language.eval_set(cfg, name, tokens=True).counts)
    assert language.parse("0112", True, as_sentence=True).tokens.tolist() == [[4, 0, 1, 1, 2, 3,
                                                                               1, 3]]


@pytest.mark.parametrize("law", [training_law(Config()), (1, 32, 0.25, True, True),
                                 (33, 64, 0.25, True, False), (1, 8, 0.0, False, False)])
def test_fast_sampler_draws_exactly_what_the_inverse_cdf_draws(law):
    t, p = triple_law(*law)
    cdf = np.cumsum(p)
    u = np.concatenate([uniform(7, 1, 0, np.arange(20000)), [0.0, 1.0 - 2**-53],
                        np.arange(1000) / 1000.0, cdf[:200] / cdf[-1]])  # and CDF steps
    assert np.array_equal(t[draw_index(law, u)], draw_triples((t, p), u))
    assert (p[draw_index(law, u[:20000])] > 0).all()
