"""The one-layer attention-only transformer of SPEC 3, S seeds at once, read at the EOS position.

Weights carry TransformerLens names and shapes with a leading seed axis: `blocks.0.attn.W_Q` is
(S, H, d_model, d_head). Only the EOS query's attention row is ever computed: the answer is read
there and nowhere else. The keys the EOS query sees are "slots": on the count path (no positional
embedding) the five token kinds with their multiplicities (n0, n1, n2, EOS = 1, BOS = 0 or 1); on
the token path, the L positions with multiplicity 1 up to EOS and 0 after. Attention over slots
with multiplicity m is softmax(score + log m), which is exactly attention over the tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import Config
from .language import BOS, D_VOCAB, EOS, Batch

ATTN = "blocks.0.attn."


def weight_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """TransformerLens names and per-seed shapes of every weight of a config."""
    d, h, dh, v = cfg.d_model, cfg.heads, cfg.d_head_, D_VOCAB
    shapes = {"embed.W_E": (v, d)}
    if cfg.pos_embed != "none":
        shapes["pos_embed.W_pos"] = (cfg.n_ctx, d)
    if cfg.layernorm:
        shapes |= {"blocks.0.ln1.w": (d,), "blocks.0.ln1.b": (d,)}
    shapes |= {ATTN + "W_Q": (h, d, dh), ATTN + "W_K": (h, d, dh), ATTN + "W_V": (h, d, dh),
               ATTN + "W_O": (h, dh, d), ATTN + "b_Q": (h, dh), ATTN + "b_K": (h, dh),
               ATTN + "b_V": (h, dh), ATTN + "b_O": (d,)}
    if cfg.layernorm:
        shapes |= {"ln_final.w": (d,), "ln_final.b": (d,)}
    return shapes | {"unembed.W_U": (d, v), "unembed.b_U": (v,)}


def trainable(cfg: Config, name: str) -> bool:
    """Sinusoidal W_pos is fixed. b_K stays zero: it shifts all of a query's scores equally, so
    softmax ignores it, its gradient is pure rounding noise, and Adam would turn that noise into
    full-size steps that make a seed's weights depend on its batch companions."""
    if name == ATTN + "b_K":
        return False
    return not (name == "pos_embed.W_pos" and cfg.pos_embed == "sinusoidal")


def sinusoidal(n_ctx: int, d: int) -> torch.Tensor:
    pos = torch.arange(n_ctx, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float64) / d)
    table = torch.zeros(n_ctx, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table.float()


def init_weights(cfg: Config, seed: int) -> dict[str, torch.Tensor]:
    """One seed's initial weights: N(0, (init_scale / sqrt(fan_in))^2), biases 0, LN gains 1.

    Each seed draws from its own generator, in a fixed order, so a seed's initial weights do not
    depend on which other seeds train beside it.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in weight_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[1]
        if leaf.startswith("b_") or leaf == "b":
            out[name] = torch.zeros(shape)
        elif leaf == "w":
            out[name] = torch.ones(shape)
        elif name == "pos_embed.W_pos" and cfg.pos_embed == "sinusoidal":
            out[name] = sinusoidal(cfg.n_ctx, cfg.d_model)
        else:
            fan_in = shape[-2]  # d_model for W_E (rows are tokens), W_pos, W_Q/K/V, W_U; d_head for W_O
            if name in ("embed.W_E", "pos_embed.W_pos"):
                fan_in = cfg.d_model
            out[name] = torch.randn(shape, generator=gen) * (cfg.init_scale / math.sqrt(fan_in))
    return out


@dataclass
class Cache:
    """What the EOS query computed (TransformerLens vocabulary). K = number of slots."""

    pattern: torch.Tensor  # (S, B, H, K) attention of the EOS query on each slot, in total
    kinds: torch.Tensor  # (S or 1, B or 1, K) token id of each slot
    mult: torch.Tensor  # (S or 1, B, K) multiplicity of each slot
    scores: torch.Tensor  # (S, B or 1, H, K) attention score (q.k / sqrt(d_head)) per occurrence
    v: torch.Tensor  # (S, B or 1, H, K, d_head) value vector of each slot
    z: torch.Tensor  # (S, B, H, d_head) hook_z at EOS
    result: torch.Tensor  # (S, B, H, d_model) hook_result: head outputs o_h at EOS
    resid: torch.Tensor  # (S, B, d_model) residual stream at EOS, before ln_final
    logits: torch.Tensor  # (S, B, d_vocab)

    def mass(self) -> torch.Tensor:
        """Attention mass of the EOS query on each token kind 0, 1, 2, EOS, BOS. (S, B, H, 5)."""
        onehot = torch.nn.functional.one_hot(self.kinds, D_VOCAB).to(self.pattern.dtype)
        return self.pattern @ onehot


class Model:
    """S seeds of one config, as one batched model. `weights` maps TL names to (S, ...) tensors."""

    def __init__(self, cfg: Config, weights: dict[str, torch.Tensor], seeds: list[int]):
        self.cfg = cfg
        self.weights = weights
        self.seeds = list(seeds)

    @classmethod
    def init(cls, cfg: Config, seeds: list[int] | None = None) -> Model:
        seeds = cfg.seeds if seeds is None else list(seeds)
        per_seed = [init_weights(cfg, s) for s in seeds]
        weights = {k: torch.stack([w[k] for w in per_seed]) for k in per_seed[0]}
        return cls(cfg, weights, seeds)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def parameters(self) -> list[torch.Tensor]:
        return [w for k, w in self.weights.items() if trainable(self.cfg, k)]

    def select(self, index: int | list[int]) -> Model:
        """The sub-model of some seeds (by position), sharing no storage."""
        index = [index] if isinstance(index, int) else list(index)
        return Model(self.cfg, {k: w[index].detach().clone() for k, w in self.weights.items()},
                     [self.seeds[i] for i in index])

    def to(self, dtype: torch.dtype) -> Model:
        return Model(self.cfg, {k: w.detach().to(dtype) for k, w in self.weights.items()},
                     self.seeds)

    # --- the forward pass, in stages that analyses can enter ---------------------------------

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.cfg.layernorm:
            return x
        w, b = self.weights[name + ".w"], self.weights[name + ".b"]
        shape = (w.shape[0],) + (1,) * (x.dim() - 2) + (w.shape[1],)
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
        return x * w.view(shape) + b.view(shape)

    def slots(self, batch: Batch, force_tokens: bool = False):
        """Residual inputs of the slots the EOS query sees.

        Returns x_eos (S, B or 1, d), x (S, B or 1, K, d), mult (S or 1, B, K) and
        kinds (S or 1, B or 1, K), the token id of each slot.
        """
        W_E = self.weights["embed.W_E"]
        S = W_E.shape[0]
        if self.cfg.count_path and not force_tokens:
            counts = batch.counts.to(W_E.dtype)
            counts = counts if counts.dim() == 3 else counts[None]
            ones = torch.ones(counts.shape[:-1] + (1,), dtype=W_E.dtype)
            mult = torch.cat([counts, ones, ones * float(self.cfg.bos)], -1)  # kinds 0,1,2,EOS,BOS
            return W_E[:, None, EOS], W_E[:, None], mult, torch.arange(5).view(1, 1, 5)
        if batch.tokens is None:
            raise ValueError("this model has a positional embedding: it needs token batches")
        tokens = batch.tokens if batch.tokens.dim() == 3 else batch.tokens[None]
        eos = batch.eos_pos if batch.eos_pos.dim() == 2 else batch.eos_pos[None]
        L = tokens.shape[-1]
        x = W_E[torch.arange(S).view(S, 1, 1), tokens]  # (S, B, L, d)
        if self.cfg.pos_embed != "none":
            if L > self.cfg.n_ctx:
                raise ValueError(f"strings longer than n_ctx = {self.cfg.n_ctx} positions")
            x = x + self.weights["pos_embed.W_pos"][:, None, :L]
        mult = (torch.arange(L) <= eos[..., None]).to(W_E.dtype)  # causal mask at the EOS query
        idx = eos.expand(S, -1)[..., None, None].expand(-1, -1, 1, x.shape[-1])
        x_eos = torch.gather(x, 2, idx).squeeze(2)
        return x_eos, x, mult, tokens

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Logits at the EOS position. (S, B, d_vocab)."""
        if self.cfg.count_path:
            return self._count_logits(batch)
        return self.run(batch).logits

    def _qkv(self, h_eos: torch.Tensor, h: torch.Tensor):
        """Queries (S, B', H, e), keys and values (S, B', H, K, e), scores (S, B', H, K)."""
        w = self.weights
        q = torch.einsum("sbd,shde->sbhe", h_eos, w[ATTN + "W_Q"]) + w[ATTN + "b_Q"][:, None]
        k = torch.einsum("sbkd,shde->sbhke", h, w[ATTN + "W_K"]) + w[ATTN + "b_K"][:, None, :, None]
        v = torch.einsum("sbkd,shde->sbhke", h, w[ATTN + "W_V"]) + w[ATTN + "b_V"][:, None, :, None]
        scores = torch.einsum("sbhe,sbhke->sbhk", q, k) / math.sqrt(self.cfg.d_head_)
        return v, scores

    def _count_logits(self, batch: Batch) -> torch.Tensor:
        """The count path without materialising the pattern: keys and values exist once per kind,
        so head h's output is sum_t n_t e_t u_t / sum_t n_t e_t, two small matmuls per seed."""
        x_eos, x, mult, _ = self.slots(batch)
        v, scores = self._qkv(self._ln(x_eos, "blocks.0.ln1"), self._ln(x, "blocks.0.ln1"))
        e = torch.exp(scores[:, 0] - scores[:, 0, :, EOS:EOS + 1])  # (S, H, 5); EOS weight 1
        u = torch.einsum("shk,shke,shed->shkd", e, v[:, 0], self.weights[ATTN + "W_O"])
        S, H, K, d = u.shape
        m = mult.expand(S, -1, -1)  # (S, B, 5)
        num = torch.bmm(m, u.transpose(1, 2).reshape(S, K, H * d)).view(S, -1, H, d)
        den = torch.bmm(m, e.transpose(1, 2))  # (S, B, H), >= 1 since EOS is always there
        resid = x_eos + (num / den[..., None]).sum(2) + self.weights[ATTN + "b_O"][:, None]
        return self.unembed(resid)

    def run(self, batch: Batch, force_tokens: bool = False,
            attn_override: torch.Tensor | None = None) -> Cache:
        """Forward pass at EOS with everything the analyses read.

        attn_override (S, B or 1, H, K), if given, replaces exp(score) per occurrence: the
        pattern becomes mult * override / sum (the intervention of SPEC 5).
        """
        x_eos, x, mult, kinds = self.slots(batch, force_tokens)
        w = self.weights
        v, scores = self._qkv(self._ln(x_eos, "blocks.0.ln1"), self._ln(x, "blocks.0.ln1"))
        m = mult[:, :, None, :]  # (S or 1, B, 1, K)
        if attn_override is not None:
            weighted = attn_override * m
        elif scores.shape[1] == 1:  # count path: shift by the EOS score, which is always present
            weighted = torch.exp(scores - scores[..., EOS:EOS + 1]) * m
        else:
            weighted = torch.softmax(scores + torch.log(m), dim=-1)
        pattern = weighted / weighted.sum(-1, keepdim=True)
        if v.shape[1] == 1:
            z = torch.einsum("sbhk,shke->sbhe", pattern, v[:, 0])
        else:
            z = torch.einsum("sbhk,sbhke->sbhe", pattern, v)
        result = torch.einsum("sbhe,shed->sbhd", z, w[ATTN + "W_O"])
        resid = x_eos + result.sum(2) + w[ATTN + "b_O"][:, None]
        return Cache(pattern, kinds, mult, scores, v, z, result, resid, self.unembed(resid))

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """ln_final (if any), then W_U and b_U. resid (S, B, d_model) -> (S, B, d_vocab)."""
        w = self.weights
        return (torch.einsum("sbd,sdv->sbv", self._ln(resid, "ln_final"), w["unembed.W_U"])
                + w["unembed.b_U"][:, None])


__all__ = ["Model", "Cache", "weight_shapes", "init_weights", "BOS", "EOS"]
