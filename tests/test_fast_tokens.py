"""count01.fast.tokens: the position path's training token batch made by compiled loops, against
the numpy definition in count01.language (`training_batch`, `uniform`, `arrange`)."""

import itertools

import numpy as np
import pytest
import torch

from count01.config import Config
from count01.fast.kernels import arrange, uniforms
from count01.fast.tokens import HASH, marks, training_token_batch
from count01.language import (
    arrange as numpy_arrange,
)
from count01.language import (
    bursts_left,
    kind_ids,
    noise_positions,
    sentence,
    to_noise,
    training_batch,
    uniform,
)

CONFIGS = [dict(noise_pattern=pattern, noise_symbols=k, bos=bos, framing=framing)
           for pattern, k, bos, framing in itertools.product(
               ("iid", "bursty"), (1, 3), (True, False), ("classify", "sentence"))]


@pytest.mark.parametrize("change", CONFIGS)
def test_compiled_token_batch_equals_training_batch(change):
    """Every configuration (i.i.d. and bursty noise, 1 and 3 noise symbols, BOS on and off, the
    sentence framing, p_one, min_len, a width past 64): the same tokens, EOS positions, counts
    and answers as `training_batch`, bit for bit, over seeds and steps."""
    base = Config(pos_embed="learned", batch_size=50, exhaustive_len=4, noise=0.3, **change)
    for extra in ({}, {"p_one": 0.8, "min_len": 5}, {"max_len": 80, "long_max_len": 90}):
        cfg = base.replace(**extra)
        for step in (0, 1, 7):
            seeds = [0, 3, 2**40 + step]
            want, got = training_batch(cfg, seeds, step, tokens=True), training_token_batch(
                cfg, seeds, step)
            for k in ("tokens", "eos_pos", "counts", "y", "weight"):
                assert torch.equal(getattr(got, k), getattr(want, k)), (extra, step, k)


def test_compiled_uniforms_equal_the_hash():
    """`kernels.uniforms` is `language.uniform` at index b * per + i, for any uint64 seed."""
    seeds = np.array([0, 1, 12345, 2**63 + 7, 2**64 - 1], dtype=np.uint64)
    out = np.empty((5, 6, 7))
    uniforms(seeds, 15, 2**33 + 1, HASH, out)
    index = np.arange(6)[:, None] * 7 + np.arange(7)
    assert np.array_equal(out, uniform(seeds[:, None, None], 15, 2**33 + 1, index))


@pytest.mark.parametrize("bursty,k", [(False, 1), (False, 3), (True, 1), (True, 3)])
def test_compiled_arrangement_keeps_the_tie_rule(bursty, k):
    """Tied uniforms (forced: a few distinct values per row) are dealt by stable ranks, as in
    `language._deal`: the compiled arrangement equals `arrange` (and `noise_positions`)."""
    cfg = Config(pos_embed="learned", batch_size=300, max_len=12, exhaustive_len=4, noise=0.4,
                 noise_symbols=k, noise_pattern="bursty" if bursty else "iid")
    counts = training_batch(cfg, [1, 2], 0).counts.numpy()
    width = 2 * cfg.max_len if bursty else cfg.max_len
    u = np.floor(uniform(np.uint64(9), 3, 0, np.arange(2 * 300 * width)) * 3).reshape(
        2, 300, width) / 3  # values 0, 1/3, 2/3: ties in every row
    chain, g = (to_noise(cfg.noise, cfg.burst_len), bursts_left(cfg.max_len, cfg.noise,
                                                                 cfg.burst_len)) if bursty else (
        np.zeros(3), np.zeros((3, 1, 1)))
    noise_at = (noise_positions(counts, u[..., cfg.max_len:], cfg.noise, cfg.burst_len)
                if bursty else None)
    want, want_eos = numpy_arrange(counts, u[..., :cfg.max_len], True, noise_at)
    for framed in (False, True):
        tokens = np.empty((2, 300, want.shape[-1] + 2 * framed), dtype=np.int64)
        eos = np.empty((2, 300), dtype=np.int64)
        arrange(counts, u, marks(True), np.asarray(kind_ids(k), dtype=np.int64), chain, g, framed,
                tokens, eos)
        y = (counts[..., 1] > counts[..., 0]).astype(np.int64)
        assert np.array_equal(tokens, sentence(want, want_eos, y) if framed else want)
        assert np.array_equal(eos, want_eos)


def test_the_kernels_read_no_constant_from_another_module():
    """numba's cache is invalidated by kernels.py's own stamp only: a constant a kernel read
    from another module would be frozen stale into the cache once it changed there, so what
    the law fixes (the hash, the special tokens) comes in as arguments."""
    import types

    from count01.fast import kernels
    compiled = {k: f for k, f in vars(kernels).items() if hasattr(f, "py_func")}
    assert {"pos_examples_grad", "uniforms", "arrange", "_mix"} <= set(compiled)
    for name, f in compiled.items():
        for g in f.py_func.__code__.co_names:
            v = vars(kernels).get(g)
            assert v is None or isinstance(v, types.ModuleType) or hasattr(v, "py_func"), (name, g)


def test_a_kernel_whose_cache_cannot_be_written_still_runs(tmp_path, monkeypatch):
    """A full disk at the first call's cache write costs the cache, not the analysis."""
    import errno

    import numba
    from numba.core.caching import IndexDataCacheFile

    from count01.fast import kernels
    tried = []

    def full(self, key, data):
        tried.append(key)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))  # nothing cached: it compiles
    monkeypatch.setattr(IndexDataCacheFile, "save", full)

    def twice(x):
        return 2 * x
    assert kernels._compile(twice)(21) == 42
    assert tried  # the write was tried, and failed
