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
    eval_set,
    exhaustive,
    from_digits,
    parse,
    tokens_to_counts,
    training_batch,
    triple_law,
    uniform,
)

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
