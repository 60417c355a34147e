"""The position path's training token batch made by compiled loops (`kernels.uniforms`,
`kernels.arrange`): the same tokens and EOS positions as `language.training_batch`, whose numpy
definition (the law, and what the evaluation sets use) tests/test_fast_tokens.py holds it to.
In numpy the hash and the arrangement are a dozen passes over (S, B, width) arrays (a sort per
row among them); here each example is hashed and dealt in one loop. Imports numba."""

from __future__ import annotations

import numpy as np
import torch

from ..config import BOS, EOS, Config
from ..language import (
    GOLDEN,
    MIX,
    PAD,
    STEP_MIX,
    TRAIN_STREAM,
    Batch,
    answer,
    bursts_left,
    kind_ids,
    to_noise,
    training_counts,
    training_law,
)
from .kernels import arrange, uniforms

HASH = np.array([*MIX, GOLDEN, STEP_MIX], dtype=np.uint64)  # `language.uniform`'s constants


def marks(bos: bool) -> np.ndarray:
    """The ids `kernels.arrange` writes besides the digits: padding, BOS (-1 without), EOS."""
    return np.array([PAD, BOS if bos else -1, EOS], dtype=np.int64)


def training_token_batch(cfg: Config, seeds: list[int], step: int) -> Batch:
    """`language.training_batch(cfg, seeds, step, tokens=True)`, the tokens made compiled."""
    counts = training_counts(cfg, seeds, step)  # (S, B, K + 2)
    key = training_law(cfg)
    noise, burst_len, width = key[2], key[6], cfg.max_len
    S, B = counts.shape[:2]
    u = np.empty((S, B, 2 * width if burst_len else width))
    uniforms(np.asarray(seeds, dtype=np.uint64), TRAIN_STREAM, 2 * step + 1, HASH, u)
    g = bursts_left(width, noise, burst_len) if burst_len else np.zeros((3, 1, 1))
    chain = to_noise(noise, burst_len) if burst_len else np.zeros(3)
    framed = cfg.framing == "sentence"
    tokens = np.empty((S, B, width + 1 + int(cfg.bos) + 2 * framed), dtype=np.int64)
    eos = np.empty((S, B), dtype=np.int64)
    arrange(counts, u, marks(cfg.bos), np.asarray(kind_ids(cfg.noise_symbols), dtype=np.int64), chain,
            g, framed, tokens, eos)
    ct = torch.from_numpy(counts)
    return Batch(ct, answer(ct), torch.ones((S, B), dtype=torch.float64),
                 torch.from_numpy(tokens), torch.from_numpy(eos))
