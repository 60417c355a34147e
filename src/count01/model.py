"""The transformer of SPEC 3, S seeds at once, read at the EOS position: one attention-only layer
by default (every fast path below is for that model); L layers and an MLP (`run_layers`) for
question 6, without positional embedding on the prefix path (`_kinds_layer`: layer 0 over token
kinds with each prefix's counts, no P x P product; `_query_row`: the last layer at the query).

Weights carry TransformerLens names and shapes with a leading seed axis: `blocks.0.attn.W_Q` is
(S, H, d_model, d_head). Only the EOS query's attention row is computed (the answer is read
there and nowhere else), except by `causal_logits`, every row, for a later `lm_loss`. The keys
the EOS query sees are "slots": on the count path (no positional embedding) the d_vocab token
kinds with their multiplicities (n0, n1, n2, EOS = 1, BOS = 0 or 1, then any further noise
symbols' counts); on the token path, the L positions
with multiplicity 1 up to EOS and 0 after. Attention over slots with multiplicity m is
softmax(score + log m), which is exactly attention over the tokens.

With a positional embedding and no LayerNorm, the position path (`pos_tables`, `pos_loss_grad`,
`PosCache`) computes the same function without any per-position product with a weight matrix:
inputs are W_E[t_j] + W_pos[j], so the EOS query's score of position j is tok[p, t_j] +
pos[p, j] (p the EOS position) and the value it reads into the logits is r_E[t_j] + r_P[j],
tables per seed of (L, d_vocab) and (L, L) entries per head; per example there remain two row lookups
and a product per position and head. LayerNorm stays on the reference forward (`run` over
slots): ln1 normalises W_E[t] + W_pos[j] as a whole, so keys and values are functions of the
pair (t, j), not a token part plus a position part, and ln_final acts on the residual after the
heads, so W_U cannot be folded into the values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import Config
from .language import BOS, EOS, Batch

# columns of the prefix path's position list: a multiple of this (MKL's products then see a
# seed's columns alike whatever its companions' lengths; train.ROW_BLOCK's reason)
ROW_BLOCK = 64
ATTN = "blocks.0.attn."  # layer 0's attention weights (the fast paths' only layer); `attn(l)`


def attn(layer: int) -> str:
    """The prefix of a layer's attention weights (ATTN is layer 0's)."""
    return f"blocks.{layer}.attn."


def weight_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """TransformerLens names and per-seed shapes of every weight of a config, in the order
    `init_weights` draws them (one layer, attention-only: the order of the first runs)."""
    d, h, dh, v, m = cfg.d_model, cfg.heads, cfg.d_head_, cfg.d_vocab, cfg.d_mlp
    shapes = {"embed.W_E": (v, d)}
    if cfg.pos_embed != "none":
        shapes["pos_embed.W_pos"] = (cfg.n_ctx, d)
    for layer in range(cfg.layers):
        block, a = f"blocks.{layer}.", attn(layer)
        if cfg.layernorm:
            shapes |= {block + "ln1.w": (d,), block + "ln1.b": (d,)}
        shapes |= {a + "W_Q": (h, d, dh), a + "W_K": (h, d, dh), a + "W_V": (h, d, dh),
                   a + "W_O": (h, dh, d), a + "b_Q": (h, dh), a + "b_K": (h, dh),
                   a + "b_V": (h, dh), a + "b_O": (d,)}
        if m and cfg.layernorm:
            shapes |= {block + "ln2.w": (d,), block + "ln2.b": (d,)}
        if m:
            shapes |= {block + "mlp.W_in": (d, m), block + "mlp.b_in": (m,),
                       block + "mlp.W_out": (m, d), block + "mlp.b_out": (d,)}
    if cfg.layernorm:
        shapes |= {"ln_final.w": (d,), "ln_final.b": (d,)}
    return shapes | {"unembed.W_U": (d, v), "unembed.b_U": (v,)}


def trainable(cfg: Config, name: str) -> bool:
    """Sinusoidal W_pos is fixed. b_K stays zero: it shifts all of a query's scores equally, so
    softmax ignores it, its gradient is pure rounding noise, and Adam would turn that noise into
    full-size steps that make a seed's weights depend on its batch companions."""
    if name.startswith("blocks.") and name.endswith(".attn.b_K"):
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
            fan_in = shape[-2]  # d_model for W_Q/K/V, W_in, W_U; d_head for W_O; d_mlp for W_out
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
    resid: torch.Tensor  # (S, B, d_model) residual stream at EOS after the layer (and its MLP)
    logits: torch.Tensor  # (S, B, d_vocab) the model's (in every layer's Cache)
    positions: torch.Tensor | None = None  # (S, B, H, P, d_model) a lower layer's head outputs
    # at every position, when `run_layers` is asked for them (means for mean ablation)

    def mass(self) -> torch.Tensor:
        """Attention mass of the EOS query on each token kind, in id order. (S, B, H, d_vocab)."""
        onehot = torch.nn.functional.one_hot(self.kinds, self.logits.shape[-1])
        onehot = onehot.to(self.pattern.dtype)
        return self.pattern @ onehot

    def slot_readout(self, W_O: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Each slot's value through each head's W_O (S, H, e, d), read along r (S, d): the
        direct score one occurrence would add at full attention. (S, B|1, H, K)."""
        return torch.einsum("sbhke,shed,sd->sbhk", self.v, W_O, r)


class PosCache:
    """The Cache of the position path (same fields and methods), from the tables of
    `Model.pos_tables`: z, head outputs, residual and logits are computed at once; the
    per-position tensors (pattern, scores, values) only when an analysis reads them, and
    `mass` and `slot_readout` need no per-position product with a weight matrix. Held to the
    reference forward by tests/test_model.py::
    test_position_paths_run_matches_the_reference_slots_forward."""

    def __init__(self, model: Model, batch: Batch):
        w = model.weights
        f = model._pos_forward(batch.tokens, batch.eos_pos)
        self._f, self._t = f, f["t"]
        t, u, D = f["t"], f["u"], f["D"]
        S, H, B, L = u.shape
        b_V = w[ATTN + "b_V"][:, :, None]  # (S, H, 1, e)
        z = (f["mass"] @ t["vE"] + u @ t["vP"]) / D + b_V  # (S, H, B, e): sum_j a_j v_j
        self.z = z.transpose(1, 2)
        self.result = torch.einsum("shbe,shed->sbhd", z, w[ATTN + "W_O"])
        x_eos = _rows(t["xq"], f["rows0"], (S, B, w["embed.W_E"].shape[-1]))
        self.resid = x_eos + self.result.sum(2) + w[ATTN + "b_O"][:, None]
        self.logits = model.unembed(self.resid)
        self.kinds = batch.tokens if batch.tokens.dim() == 3 else batch.tokens[None]
        eos = batch.eos_pos if batch.eos_pos.dim() == 2 else batch.eos_pos[None]
        self.mult = (torch.arange(L) <= eos[..., None]).to(u.dtype)
        self._b_V = b_V

    @property
    def pattern(self) -> torch.Tensor:  # (S, B, H, L)
        return (self._f["u"] / self._f["D"]).transpose(1, 2)

    @property
    def scores(self) -> torch.Tensor:  # (S, B, H, L) tok[p, t_j] + pos[p, j]
        S, H, B, L = self._f["u"].shape
        V = self._t["tok"].shape[-1]
        tok = torch.gather(_rows(self._t["tok"], self._f["rows"], (S, H, B, V)), 3,
                           self._f["tok"])
        return (tok + _rows(self._t["pos_all"], self._f["rows"], (S, H, B, L))).transpose(1, 2)

    @property
    def v(self) -> torch.Tensor:  # (S, B, H, L, e) W_E[t_j] W_V + W_pos[j] W_V + b_V
        tok, vE = self._f["tok"], self._t["vE"]
        e = vE.shape[-1]
        v = torch.gather(vE[:, :, None].expand(-1, -1, tok.shape[2], -1, -1), 3,
                         tok[..., None].expand(-1, -1, -1, -1, e))
        return (v + self._t["vP"][:, :, None] + self._b_V[:, :, None]).transpose(1, 2)

    def mass(self) -> torch.Tensor:
        return (self._f["mass"] / self._f["D"]).transpose(1, 2)

    def slot_readout(self, W_O: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        o = W_O @ r[:, None, :, None]  # (S, H, e, 1)
        kind = (self._t["vE"] + self._b_V) @ o  # (S, H, V, 1)
        S, H, B, L = self._f["u"].shape
        per = torch.gather(kind[:, :, None, :, 0].expand(-1, -1, B, -1), 3, self._f["tok"])
        return (per + (self._t["vP"] @ o)[:, :, None, :, 0]).transpose(1, 2)


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
        """Residual inputs of the slots the query sees (EOS, or the `sentence` ending's fed
        answer when batch.query is set).

        Returns x_eos (S, B or 1, d) the query's, x (S, B or 1, K, d), mult (S or 1, B, K) and
        kinds (S or 1, B or 1, K), the token id of each slot.
        """
        W_E = self.weights["embed.W_E"]
        S = W_E.shape[0]
        if self.cfg.count_path and not force_tokens:
            if batch.query is None:
                x_q = W_E[:, None, EOS]
            else:  # the ending's query: the fed answer's embedding, per example
                query = batch.query if batch.query.dim() == 2 else batch.query[None]
                x_q = W_E[torch.arange(S)[:, None], query.expand(S, -1)]
            V = W_E.shape[1]
            return x_q, W_E[:, None], self._mult(batch), torch.arange(V).view(1, 1, V)
        if batch.tokens is None:
            raise ValueError("this model has a positional embedding: it needs token batches")
        tokens = batch.tokens if batch.tokens.dim() == 3 else batch.tokens[None]
        eos = batch.eos_pos if batch.eos_pos.dim() == 2 else batch.eos_pos[None]
        eos = eos + (batch.query is not None)  # the query's position: EOS, or the fed answer
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
        """Logits at the EOS position, or at the `sentence` ending with batch.query. (S, B, V)."""
        if self.cfg.layers > 1:  # the prefix path without positional embedding (`_layers`)
            return self._layers(batch, caches=False)[-1].logits
        if self.cfg.d_mlp:  # no fast path: the reference forward
            return self.run(batch).logits
        if batch.query is not None:  # the ending's query: the reference forward over slots
            return self.reference_run(batch).logits
        if self.cfg.count_path:
            return self._count_logits(batch)
        if self.cfg.layernorm:
            return self.run(batch).logits
        if batch.tokens is None:
            raise ValueError("this model has a positional embedding: it needs token batches")
        return self._pos_forward(batch.tokens, batch.eos_pos)["logits"]

    def _qkv(self, h_eos: torch.Tensor, h: torch.Tensor):
        """Queries (S, B', H, e), keys and values (S, B', H, K, e), scores (S, B', H, K)."""
        w = self.weights
        q = torch.einsum("sbd,shde->sbhe", h_eos, w[ATTN + "W_Q"]) + w[ATTN + "b_Q"][:, None]
        k = torch.einsum("sbkd,shde->sbhke", h, w[ATTN + "W_K"]) + w[ATTN + "b_K"][:, None, :, None]
        v = torch.einsum("sbkd,shde->sbhke", h, w[ATTN + "W_V"]) + w[ATTN + "b_V"][:, None, :, None]
        if self.cfg.d_mlp:  # trained through this forward: a seed's numbers must not depend on
            # its batch companions, and einsum picks its bmm's layout by the sizes (S among
            # them); a product and a sum per seed do not (LayerNorm runs keep the einsum, and
            # their weights, as they were)
            scores = (q[:, :, :, None] * k).sum(-1) / math.sqrt(self.cfg.d_head_)
        else:
            scores = torch.einsum("sbhe,sbhke->sbhk", q, k) / math.sqrt(self.cfg.d_head_)
        return v, scores

    # --- the count path: every key and value exists once per token kind ----------------------

    def _mult(self, batch: Batch) -> torch.Tensor:
        """Multiplicities of every token id the query sees. (S or 1, B, d_vocab)."""
        mult = batch.mult(self.cfg.bos, self.weights["embed.W_E"].dtype)
        return mult if mult.dim() == 3 else mult[None]

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_Q, W_K, W_V side by side (S, d, H*3*e) and their biases (S, 1, H*3*e): the queries,
        keys and values of every kind come out of one matmul."""
        w = self.weights
        W = torch.stack([w[ATTN + "W_Q"], w[ATTN + "W_K"], w[ATTN + "W_V"]], 3)  # (S, H, d, 3, e)
        S, H, d, _, e = W.shape
        b = torch.stack([w[ATTN + "b_Q"], w[ATTN + "b_K"], w[ATTN + "b_V"]], 2)  # (S, H, 3, e)
        return W.permute(0, 2, 1, 3, 4).reshape(S, d, H * 3 * e), b.view(S, 1, H * 3 * e)

    def _kinds(self, x: torch.Tensor, W_qkv: torch.Tensor, b_qkv: torch.Tensor):
        """Per kind: q (S, H, e) of EOS, k and v (S, K, H, e), and a (S, H, K), the attention
        weight per occurrence relative to EOS's (EOS's is 1, so the sum is >= 1: no overflow)."""
        S, K, _ = x.shape
        H, e = self.cfg.heads, self.cfg.d_head_
        qkv = torch.baddbmm(b_qkv, x, W_qkv).view(S, K, H, 3, e)
        q, k, v = qkv[:, EOS, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        scores = (k * q[:, None]).sum(-1).transpose(1, 2) * (1.0 / math.sqrt(e))  # (S, H, K)
        return q, k, v, torch.exp(scores - scores[..., EOS:EOS + 1])

    def _count_logits(self, batch: Batch) -> torch.Tensor:
        """The count path without materialising the pattern: head h's output is
        sum_t n_t a_t u_t / sum_t n_t a_t, with u_t = v_t W_O, for every kind t.
        Written as C @ U with C[b, (h, t)] = n_bt / D_bh, one matmul for all heads."""
        w = self.weights
        W_E = w["embed.W_E"]
        S, K, d = W_E.shape
        H = self.cfg.heads
        _, _, v, a = self._kinds(self._ln(W_E, "blocks.0.ln1"), *self._fused_qkv())
        u = (v.transpose(1, 2) @ w[ATTN + "W_O"]) * a[..., None]  # (S, H, K, d)
        m = self._mult(batch).expand(S, -1, -1)  # (S, B, K)
        D = torch.bmm(m, a.transpose(1, 2))  # (S, B, H), >= 1 since EOS is always there
        C = (m[:, :, None, :] / D[..., None]).reshape(S, -1, H * K)  # (S, B, H*K)
        resid = torch.baddbmm((W_E[:, EOS] + w[ATTN + "b_O"])[:, None], C, u.reshape(S, H * K, d))
        return self.unembed(resid)

    def count_loss_grad(self, mult: torch.Tensor, target: torch.Tensor
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy per seed (S,) and its gradient for every trainable weight, by hand.

        The count path without LayerNorm, for training: autograd would record a hundred tiny ops
        per step and spend more time on bookkeeping than on arithmetic. W_U is folded into the
        values (r_ht = v_ht W_O^h W_U), so per example only C (H*K numbers) and the logits are
        formed. Examples are the LAST axis: mult (S, K, B) multiplicities, target (S, V, B)
        one-hot answers, so the many reductions over 5 kinds or 5 logits run along contiguous
        examples (a softmax over a last axis of 5 is several times slower). Any number of kinds:
        K = d_vocab, in id order.
        """
        w = self.weights
        W_E, W_O, W_U = w["embed.W_E"], w[ATTN + "W_O"], w["unembed.W_U"]
        S, K, d = W_E.shape
        B, V = mult.shape[2], W_U.shape[-1]
        H, e = self.cfg.heads, self.cfg.d_head_
        mult, target = mult.contiguous(), target.contiguous()
        W_qkv, b_qkv = self._fused_qkv()
        q, k, v, a = self._kinds(W_E, W_qkv, b_qkv)
        vt = v.transpose(1, 2)[..., None]  # (S, H, K, e, 1)
        # tiny per-kind products as broadcasts: a bmm over S*H matrices of 4 x 5 costs more
        M = torch.bmm(W_O.view(S, H * e, d), W_U).view(S, H, 1, e, V)  # value -> logit map
        r = (vt * M).sum(3)  # (S, H, K, V)
        UU = (r * a[..., None]).view(S, H * K, V)
        xo = W_E[:, EOS] + w[ATTN + "b_O"]  # (S, d)
        c0 = torch.baddbmm(w["unembed.b_U"][:, :, None], W_U.transpose(1, 2), xo[:, :, None])
        # --- per example: C[(h, t), b] = n_bt / D_bh, logits = c0 + UU^T C
        inv = torch.bmm(a, mult).reciprocal_()  # (S, H, B) 1 / D, D >= 1 (EOS is always there)
        C = (inv[:, :, None] * mult[:, None]).view(S, H * K, B)
        logp = torch.log_softmax(torch.baddbmm(c0, UU.transpose(1, 2), C), 1)  # (S, V, B)
        loss = (logp * target).sum(1).mean(1).neg_()
        g = logp.exp_().sub_(target).mul_(1.0 / B)  # dloss / dlogits
        dC = torch.bmm(UU, g).view(S, H, K, B)
        dUU = torch.bmm(C, g.transpose(1, 2)).view(S, H, K, V)
        dD = (dC * mult[:, None]).sum(2).mul_(inv).mul_(inv).neg_()  # (S, H, B)
        dc0 = g.sum(2)  # (S, V)
        # --- per kind
        da = (dUU * r).sum(-1) + torch.bmm(dD, mult.transpose(1, 2))  # (S, H, K)
        dr = (dUU * a[..., None])[..., None, :]  # (S, H, K, 1, V)
        dv = (dr * M).sum(-1)  # (S, H, K, e)
        dM = (vt * dr).sum(2)  # (S, H, e, V)
        ds = da * a * (1.0 / math.sqrt(e))  # d loss / d (q.k) through a = exp(s - s_EOS)
        ds[..., EOS] -= ds.sum(-1)
        dq = (ds[..., None] * k.transpose(1, 2)).sum(2)  # (S, H, e)
        dk = ds[..., None] * q[:, :, None]  # (S, H, K, e)
        dqkv = torch.stack([torch.zeros_like(dk), dk, dv], 3)  # (S, H, K, 3, e)
        dqkv[:, :, EOS, 0] = dq
        dqkv = dqkv.transpose(1, 2).reshape(S, K, H * 3 * e)
        dW_qkv = torch.bmm(W_E.transpose(1, 2), dqkv).view(S, d, H, 3, e).permute(0, 2, 1, 3, 4)
        dxo = torch.bmm(dc0[:, None], W_U.transpose(1, 2)).squeeze(1)  # (S, d)
        dW_E = torch.bmm(dqkv, W_qkv.transpose(1, 2))
        dW_E[:, EOS] += dxo
        dM = dM.view(S, H * e, V)
        dW_U = torch.baddbmm(xo[:, :, None] * dc0[:, None], W_O.view(S, H * e, d).transpose(1, 2),
                             dM)
        grads = {"embed.W_E": dW_E,
                 ATTN + "W_Q": dW_qkv[..., 0, :], ATTN + "W_K": dW_qkv[..., 1, :],
                 ATTN + "W_V": dW_qkv[..., 2, :],
                 ATTN + "W_O": torch.bmm(dM, W_U.transpose(1, 2)).view(S, H, e, d),
                 ATTN + "b_Q": dq, ATTN + "b_V": dv.sum(2), ATTN + "b_O": dxo,
                 "unembed.W_U": dW_U, "unembed.b_U": dc0}
        return loss, grads

    def count_rows_loss_grad(self, mult: torch.Tensor, query: torch.Tensor, target: torch.Tensor,
                             weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`count_loss_grad` for queries of any kind (the `sentence` framing): the weighted sum
        of cross-entropies per seed (S,) and its gradient for every trainable weight, by hand.

        A row is one query: mult (S, K, R) the multiplicities of the kinds it sees, query
        (S, K, R) the one-hot kind of its own token, target (S, V, R) one-hot, weight (S, R).
        Without a positional embedding a query of kind t attends with a_t = exp(s(t, .) -
        s(t, t)) per occurrence (its own kind is always there, so the sum is >= 1), and its
        residual is W_E[t] + b_O + the heads: per kind of query one row of tables, per row
        the pattern P (H*K numbers, selected by one matmul with the one-hot query) and the
        logits. Held to autograd through the textbook forward by tests/test_model.py::
        test_count_rows_loss_grad_matches_autograd_through_every_query_row. A seed's numbers do
        not depend on the other seeds beside it (on one thread, R a multiple of 4, as
        `train.sentence_rows` gives): test_count_rows_loss_grad_of_a_seed_does_not_depend_on_its_batch."""
        w = self.weights
        W_E, W_O, W_U = w["embed.W_E"], w[ATTN + "W_O"], w["unembed.W_U"]
        S, K, d = W_E.shape
        R, V = mult.shape[2], W_U.shape[-1]
        H, e = self.cfg.heads, self.cfg.d_head_
        scale = 1.0 / math.sqrt(e)
        W_qkv, b_qkv = self._fused_qkv()
        qkv = torch.baddbmm(b_qkv, W_E, W_qkv).view(S, K, H, 3, e)
        # every product below is a bmm over the S*H (or S) matrices of one layout, so a seed's
        # numbers do not depend on how many seeds train beside it (einsum picks its bmm's
        # layout by the sizes, S = 1 among them)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).contiguous().view(3, S * H, K, e)  # (S*H, K, e)
        scores = torch.bmm(q, k.transpose(1, 2)).view(S, H, K, K) * scale  # (query, key kind)
        a = torch.exp(scores - scores.diagonal(dim1=2, dim2=3)[..., None])  # (S, H, K, K)
        M = torch.bmm(W_O.view(S, H * e, d), W_U).view(S, H, e, V)  # value -> logit map
        r = torch.bmm(v, M.view(S * H, e, V)).view(S, H, K, V)
        xo = W_E + w[ATTN + "b_O"][:, None]  # (S, K, d) a query's residual before the heads
        # (K, d) @ (d, V) as an MKL bmm gives 5 x 5 results that depend on the batch's size: a
        # broadcast, summed in a fixed order
        c0 = (xo[..., None] * W_U[:, None]).sum(2) + w["unembed.b_U"][:, None]  # (S, K, V)
        # --- per row: the query's row of a, the pattern P = m a / D, the logits
        P = torch.bmm(a.transpose(2, 3).reshape(S, H * K, K), query).view(S, H, K, R)
        P.mul_(mult[:, None])  # m a of the query's row
        inv = P.sum(2).reciprocal_()  # (S, H, R) 1 / D, D >= 1
        P.mul_(inv[:, :, None])
        logits = torch.bmm(c0.transpose(1, 2), query) + torch.bmm(
            r.reshape(S, H * K, V).transpose(1, 2), P.view(S, H * K, R))
        logp = torch.log_softmax(logits, 1)  # (S, V, R)
        loss = ((logp * target).sum(1) * weight).sum(1).neg_()
        g = logp.exp_().sub_(target).mul_(weight[:, None])  # d loss / d logits
        dP = torch.bmm(r.reshape(S, H * K, V), g).view(S, H, K, R)
        dr = torch.bmm(P.view(S, H * K, R), g.transpose(1, 2)).view(S, H, K, V)
        dc0 = torch.bmm(query, g.transpose(1, 2))  # (S, K, V); exact across S for R % 4 == 0
        # P_k = m_k a_k / D: d/da_k = (m_k / D) (dP_k - sum_j P_j dP_j)
        da_row = dP.sub_((P * dP).sum(2, keepdim=True)).mul_(mult[:, None]).mul_(inv[:, :, None])
        da = torch.bmm(da_row.view(S, H * K, R), query.transpose(1, 2))  # (S, H*K(key), K(q))
        ds = da.view(S, H, K, K).transpose(2, 3) * a  # d loss / d score, a = exp(s - s_own)
        ds.diagonal(dim1=2, dim2=3).sub_(ds.sum(-1))
        ds = ds * scale
        ds = ds.view(S * H, K, K)
        dq = torch.bmm(ds, k)  # (S*H, K, e)
        dk = torch.bmm(ds.transpose(1, 2), q)
        dr = dr.view(S * H, K, V)
        dv = torch.bmm(dr, M.view(S * H, e, V).transpose(1, 2))
        dM = torch.bmm(v.transpose(1, 2), dr)  # (S*H, e, V)
        dqkv = torch.stack([dq, dk, dv]).view(3, S, H, K, e).permute(1, 3, 2, 0, 4)
        dqkv = dqkv.reshape(S, K, H * 3 * e)
        dW_qkv = torch.bmm(W_E.transpose(1, 2), dqkv).view(S, d, H, 3, e).permute(0, 2, 1, 3, 4)
        db_qkv = dqkv.sum(1).view(S, H, 3, e)
        dxo = torch.bmm(dc0, W_U.transpose(1, 2))  # (S, K, d)
        dW_U = torch.baddbmm(torch.bmm(xo.transpose(1, 2), dc0),
                             W_O.view(S, H * e, d).transpose(1, 2), dM.view(S, H * e, V))
        dW_O = torch.bmm(dM.view(S, H * e, V), W_U.transpose(1, 2)).view(S, H, e, d)
        grads = {"embed.W_E": torch.bmm(dqkv, W_qkv.transpose(1, 2)) + dxo,
                 ATTN + "W_Q": dW_qkv[..., 0, :], ATTN + "W_K": dW_qkv[..., 1, :],
                 ATTN + "W_V": dW_qkv[..., 2, :], ATTN + "W_O": dW_O,
                 ATTN + "b_Q": db_qkv[..., 0, :], ATTN + "b_V": db_qkv[..., 2, :],
                 ATTN + "b_O": dxo.sum(1), "unembed.W_U": dW_U, "unembed.b_U": dc0.sum(1)}
        return loss, grads

    # --- the position path: one layer with a positional embedding, no LayerNorm ---------------

    def pos_tables(self, L: int) -> dict[str, torch.Tensor]:
        """What the EOS query computes on strings of width L before it sees an example.

        x_j = W_E[t_j] + W_pos[j], so with EOS (the query) at position p the score of position j
        splits as tok[p, t_j] + pos[p, j] (b_K adds the same to a whole row), and the value read
        into the logits as r_E[t_j] + r_P[j] + b_V W_O W_U (W_U folded in: 5 logits, not d_model
        numbers). The query depends on p alone, so every table is per (p, token) or (p, j):
        tok, A (S, H, L, V) and pos, Bt (S, H, L, L). A and Bt are exp of the scores shifted by
        their row's maximum (every factor <= 1: no overflow); Bt is 0 after p (the causal mask).
        """
        w = self.weights
        if L > self.cfg.n_ctx:
            raise ValueError(f"strings longer than n_ctx = {self.cfg.n_ctx} positions")
        E, P = w["embed.W_E"], w["pos_embed.W_pos"][:, :L]  # (S, V, d), (S, L, d)
        S, V, d = E.shape
        H, e = self.cfg.heads, self.cfg.d_head_
        W_O, W_U = w[ATTN + "W_O"], w["unembed.W_U"]
        # the products with a weight are one bmm per seed, heads side by side (a broadcast
        # matmul over heads copies its operands: 5x slower), and r one with a block-diagonal M
        xq = E[:, EOS, None] + P  # (S, L, d) the EOS query's input with EOS at position p
        W_Qs = w[ATTN + "W_Q"].permute(0, 2, 1, 3).reshape(S, d, H * e)
        q = torch.baddbmm(w[ATTN + "b_Q"].view(S, 1, H * e), xq, W_Qs).mul_(
            1.0 / math.sqrt(e))  # (S, L, H*e)
        X = torch.cat([E, P], 1)  # (S, V + L, d): token rows, then position rows
        W_kv = torch.cat([w[ATTN + "W_K"], w[ATTN + "W_V"]], 3).permute(0, 2, 1, 3).reshape(
            S, d, H * 2 * e)  # per head its key then its value columns
        kv = torch.bmm(X, W_kv).view(S, V + L, H, 2, e)  # one product for both parts
        k = kv[:, :, :, 0].clone()  # (S, V + L, H, e)
        k[:, :V] += w[ATTN + "b_K"][:, None]
        v = kv[:, :, :, 1]  # (S, V + L, H, e)
        # (S, H, L, V + L) [p, t] then [p, j]; a bmm per head here (no faster side by side)
        scores = q.view(S, L, H, e).transpose(1, 2) @ k.permute(0, 2, 3, 1)
        tok, pos_all = scores[..., :V], scores[..., V:]
        after = torch.ones(L, L, dtype=torch.bool).triu(1)  # j > p: the causal mask
        pos = pos_all.masked_fill(after, -math.inf)
        M = torch.bmm(W_O.view(S, H * e, d), W_U)  # (S, H*e, V): a value's map to the logits
        r = torch.bmm(v.reshape(S, V + L, H * e), _blocks(M.view(S, H, e, V)))
        r = r.view(S, V + L, H, V).transpose(1, 2).contiguous()  # (S, H, V + L, V)
        rb = torch.bmm(w[ATTN + "b_V"].view(S, 1, H * e), M)  # (S, 1, V): sum_j a_j = 1
        xo = E[:, EOS, None] + P + w[ATTN + "b_O"][:, None]  # (S, L, d) residual at EOS, no heads
        v = v.transpose(1, 2)  # (S, H, V + L, e)
        return {"X": X, "xq": xq, "q": q, "k": k, "W_kv": W_kv, "tok": tok, "pos": pos,
                "pos_all": pos_all, "M": M.view(S, H, e, V), "v": v, "vE": v[:, :, :V],
                "vP": v[:, :, V:], "rE": r[:, :, :V], "rP": r[:, :, V:], "xo": xo,
                "c0": torch.baddbmm(w["unembed.b_U"][:, None] + rb, xo, W_U),  # (S, L, V)
                "A": torch.exp(tok - tok.amax(-1, keepdim=True)),
                # exp of -inf (or of a large positive) takes torch's slow path: 0 put in after
                "Bt": torch.exp((pos_all - pos.amax(-1, keepdim=True)).masked_fill_(after, 0.0))
                .masked_fill(after, 0.0)}

    def pos_pattern(self, t: dict[str, torch.Tensor], tokens: torch.Tensor, eos: torch.Tensor):
        """exp(score) of the EOS query on tokens (S, B, L) with EOS at eos (S, B), from the
        tables: A[p, t_j] Bt[p, j], two row lookups and a product per position.

        Returns u (S, H, B, L), its sum per kind (S, H, B, V) and per row D (S, H, B, 1) (so
        the pattern is u / D), the table row index (s H + h) L + p (S*H*B,) and the token
        index (S, H, B, L). Should an example's largest product underflow (D below FLOAT_MIN
        * 1e8: only for extreme weights), the rows are redone in the log domain, shifted by
        each row's own maximum (torch.softmax), and D is 1."""
        S, B, L = tokens.shape
        H, V = self.cfg.heads, t["A"].shape[-1]
        rows = (torch.arange(S * H).view(S, H, 1) * L + eos[:, None]).view(-1)
        tok = tokens[:, None].expand(S, H, B, L).contiguous()  # gather is 2x faster so
        u = torch.gather(_rows(t["A"], rows, (S, H, B, V)), 3, tok)
        u.mul_(_rows(t["Bt"], rows, (S, H, B, L)))
        mass = torch.zeros(S, H, B, V, dtype=u.dtype).scatter_add_(3, tok, u)
        D = mass.sum(-1, keepdim=True)
        if D.min() < torch.finfo(D.dtype).tiny * 1e8:
            ls = torch.gather(_rows(t["tok"], rows, (S, H, B, V)), 3, tok)
            u = torch.softmax(ls + _rows(t["pos"], rows, (S, H, B, L)), -1)
            mass = torch.zeros_like(mass).scatter_add_(3, tok, u)
            D = torch.ones_like(D)
        return u, mass, D, rows, tok

    def _pos_forward(self, tokens: torch.Tensor, eos: torch.Tensor,
                     t: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The position path's forward: tables t, u, mass, D, rows, tok (`pos_pattern`), each
        head's share of the logits zl = (u r_P + mass r_E) / D (S, H, B, V), logits (S, B, V)."""
        S = self.n_seeds
        tokens = (tokens if tokens.dim() == 3 else tokens[None]).expand(S, -1, -1)
        eos = (eos if eos.dim() == 2 else eos[None]).expand(S, -1)
        B, L = tokens.shape[1:]
        t = self.pos_tables(L) if t is None else t
        u, mass, D, rows, tok = self.pos_pattern(t, tokens, eos)
        V = t["rE"].shape[-1]
        zl = torch.baddbmm((mass @ t["rE"]).view(-1, B, V), u.view(-1, B, L),
                           t["rP"].reshape(-1, L, V)).view(S, -1, B, V).div_(D)
        rows0 = (torch.arange(S)[:, None] * L + eos).view(-1)
        logits = _rows(t["c0"], rows0, (S, B, V)) + zl.sum(1)
        return {"t": t, "u": u, "mass": mass, "D": D, "rows": rows, "tok": tok, "rows0": rows0,
                "zl": zl, "logits": logits}

    def _pos_examples_grad(self, t: dict[str, torch.Tensor], tokens: torch.Tensor,
                           eos: torch.Tensor, y: torch.Tensor, scale: float):
        """Per-example part of `pos_loss_grad` on tokens (S, b, L) of width L <= the tables':
        the summed cross-entropy (S,) and the gradients of scale * that sum with respect to the
        tables c0, r_P, r_E and the scores tok and pos, each cut to the first L positions (and
        the scores' to the rows from "lo", the run's lowest EOS position, on).

        Laid out for speed (each choice timed at S = 64, one thread): the logits, their
        gradient and the per-example vectors of 5 have the examples last (S, ..., 5, b), so
        reductions over 5 run along the examples and every product with a table is a bmm with
        the examples on its long side; A[p, t_j] is read by one gather with an index shared by
        the heads ((p, t_j)), not a row lookup per head and example followed by a gather, and
        per_kind[t_j] by a gather along the kinds with the tokens as index; the sums per EOS
        position are bags of consecutive examples (`_per_row`).
        V = the vocabulary, read off the tables (the number of kinds and of logits)."""
        S, B, L = tokens.shape
        H, V = self.cfg.heads, t["rE"].shape[-1]
        cut = {"A": t["A"][:, :, :L], "Bt": t["Bt"][:, :, :L, :L], "tok": t["tok"][:, :, :L],
               "pos": t["pos"][:, :, :L, :L]}
        rows = (torch.arange(S * H).view(S, H, 1) * L + eos[:, None]).view(-1)
        tok = tokens[:, None].expand(S, H, B, L)
        pt = torch.add(tokens, eos[..., None], alpha=V).view(S, 1, B * L).expand(S, H, -1)
        u = torch.gather(cut["A"].reshape(S, H, L * V), 2, pt).view(S, H, B, L)
        u.mul_(_rows(cut["Bt"], rows, (S, H, B, L)))  # exp(score): A[p, t_j] Bt[p, j]
        mass = torch.zeros(S, H, B, V, dtype=u.dtype).scatter_add_(3, tok, u)
        D = mass.sum(-1)  # (S, H, b)
        if D.min() < torch.finfo(D.dtype).tiny * 1e8:  # redone in the log domain, D = 1
            u, mass, D = self.pos_pattern(cut, tokens, eos)[:3]
            D = D[..., 0]
        rPT = t["rPT"][..., :L].reshape(S * H, V, L)  # a view (`pos_loss_grad` makes rPT)
        rE = t["rE"].reshape(S * H, V, V)
        uv, massv, Dt = u.view(S * H, B, L), mass.view(S * H, B, V), D.view(S, H, 1, B)
        # head h's share of the logits, (u r_P + mass r_E) / D, as (S, H, V, b)
        zl = torch.baddbmm(torch.bmm(rE.transpose(1, 2), massv.transpose(1, 2)), rPT,
                           uv.transpose(1, 2)).view(S, H, V, B).div_(Dt)
        rows0 = (torch.arange(S)[:, None] * L + eos).view(-1)
        c0 = _rows(t["c0"][:, :L], rows0, (S, B, V)).transpose(1, 2)  # (S, V, b)
        logp = torch.log_softmax(c0 + zl.sum(1), 1)
        target = torch.zeros_like(logp).scatter_(1, y[:, None], 1.0)
        loss = (logp * target).sum(1).sum(1).neg_()
        g = logp.exp_().sub_(target).mul_(scale)  # (S, V, b) d loss / d logits
        # Head h's share is (u r_P + mass r_E) / D: with gh = g / D,
        # d/du_j = gh . (r_E[t_j] + r_P[j]) - gh . zl, and d/dscore_j = u_j d/du_j.
        dc0 = torch.zeros(S * L, V, dtype=g.dtype).index_add_(
            0, rows0, g.transpose(1, 2).reshape(S * B, V))
        gh = g[:, None] / Dt  # (S, H, V, b)
        ghv = gh.view(S * H, V, B)
        drP = torch.bmm(ghv, uv)  # (S*H, V, L)
        drE = torch.bmm(ghv, massv)  # (S*H, V, V)
        per_kind = torch.bmm(rE, ghv).view(S, H, V, B).sub_((gh * zl).sum(2, keepdim=True))
        ds = torch.gather(per_kind.transpose(2, 3), 3, tok).view(S * H, B, L)  # per_kind[t_j]
        ds = ds.baddbmm_(ghv.transpose(1, 2), rPT).mul_(uv).view(S, H, B, L)  # d / d score
        lo = int(eos.min())  # the rows of the score tables below it get nothing from this run
        dpos = _per_row(ds, eos, lo, L)
        dtok = _per_row(torch.zeros(S, H, B, V, dtype=g.dtype).scatter_add_(3, tok, ds), eos, lo,
                        L)
        return loss, {"c0": dc0.view(S, L, V), "rP": drP.view(S, H, V, L).transpose(2, 3),
                      "rE": drE.view(S, H, V, V).transpose(2, 3), "lo": lo,
                      "tok": dtok.view(S, H, L - lo, V), "pos": dpos.view(S, H, L - lo, L)}

    def pos_loss_grad(self, tokens: torch.Tensor, eos: torch.Tensor, y: torch.Tensor,
                      buckets: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy per seed (S,) and its gradient for every trainable weight, by hand,
        on the position path: tokens (S, B, L), EOS positions (S, B), answers y (S, B).

        Per example only exp(score) (H L numbers), a sum of it per kind and head and the logits are
        formed; the rest are tables per seed (`pos_tables`), differentiated once per step.
        Each seed's examples are sorted by length (`by_length`; the Trainer sorts them ahead, on
        its second thread) and cut into `buckets` runs of similar
        length, each computed only up to its longest EOS (the positions after EOS are half of
        a batch). By default 4 runs where the per-example tensors (S, H, B, L) hold a million
        numbers or more (measured 35% faster at S = 64), else 1 (the ops' fixed costs win).
        Autograd would record a hundred ops per step; this is what the Trainer runs with a
        positional embedding. Held to the textbook full L x L forward and to autograd by
        tests/test_model.py::test_position_path_matches_the_textbook_forward_and_autograd."""
        w = self.weights
        E, P, W_U = w["embed.W_E"], w["pos_embed.W_pos"], w["unembed.W_U"]
        W_Q, W_K, W_V, W_O = (w[ATTN + k] for k in ("W_Q", "W_K", "W_V", "W_O"))
        S = E.shape[0]
        tokens = (tokens if tokens.dim() == 3 else tokens[None]).expand(S, -1, -1)
        eos = (eos if eos.dim() == 2 else eos[None]).expand(S, -1)
        y = (y if y.dim() == 2 else y[None]).expand(S, -1)
        B, L = tokens.shape[1:]
        t = self.pos_tables(L)
        t["rPT"] = t["rP"].transpose(2, 3).contiguous()  # (S, H, V, L): each run takes a view
        if bool((eos[:, 1:] < eos[:, :-1]).any()):  # the Trainer sorts on its second thread
            tokens, eos, y = by_length(tokens, eos, y)
        loss = torch.zeros(S, dtype=E.dtype)
        H, V, e, d = self.cfg.heads, t["rE"].shape[-1], self.cfg.d_head_, E.shape[-1]
        # gradients of the tables, each in the layout of the product it enters: the scores
        # [tok, pos] (S, H, L, V + L) and the value read-outs [r_E; r_P] (S, H, V + L, V)
        dscores = torch.zeros(S, H, L, V + L, dtype=E.dtype)
        dr = torch.zeros(S, H, V + L, V, dtype=E.dtype)
        dc0 = torch.zeros_like(t["c0"])
        if buckets is None:
            buckets = 4 if S * H * B * L >= 1 << 20 else 1
        cuts = torch.linspace(0, B, max(1, min(buckets, B)) + 1).round().long().tolist()
        for a, b in zip(cuts[:-1], cuts[1:]):
            n = int(eos[:, a:b].max()) + 1  # positions this run needs
            got, dk = self._pos_examples_grad(t, tokens[:, a:b, :n], eos[:, a:b], y[:, a:b],
                                              1.0 / B)
            loss += got
            dc0[:, :n] += dk["c0"]
            dr[:, :, :V] += dk["rE"]
            dr[:, :, V:V + n] += dk["rP"]
            lo = dk["lo"]
            dscores[:, :, lo:n, :V] += dk["tok"]
            dscores[:, :, lo:n, V:V + n] += dk["pos"]
        loss /= B
        # --- per table: scores [tok, pos] = q k^T, k = [W_E; W_pos] W_K (+ b_K on tokens);
        # values r = v M, v = [W_E; W_pos] W_V, M = W_O W_U; c0 = xo W_U + b_U + b_V M.
        # Every head's gradients of a weight come out of one bmm per seed: heads side by side.
        # heads side by side, as in `pos_tables`: a product of two per-head operands is one bmm
        # per seed, through a block-diagonal operand or as every pair of heads (tiny) of which
        # the diagonal is kept
        M = t["M"].reshape(S, H * e, V)
        dsc = dscores.view(S, H * L, V + L)
        dq = torch.bmm(dsc, t["k"].view(S, V + L, H * e)).view(S, H, L, H, e)
        dqh = dq.diagonal(0, 1, 3).transpose(2, 3).reshape(S, L, H * e).mul_(1.0 / math.sqrt(e))
        dk = torch.bmm(dsc.transpose(1, 2), _blocks(t["q"].view(S, L, H, e).transpose(1, 2)))
        drs = dr.transpose(1, 2).reshape(S, V + L, H * V)
        dv = torch.bmm(drs, _blocks(t["M"].transpose(2, 3)))  # (S, V + L, H*e)
        dkv = torch.stack([dk.view(S, V + L, H, e), dv.view(S, V + L, H, e)], 3)
        dkv = dkv.view(S, V + L, H * 2 * e)  # key then value, per head
        X = t["X"]  # (S, V + L, d)
        dW_kv = torch.bmm(X.transpose(1, 2), dkv).view(S, d, H, 2, e).permute(0, 2, 3, 1, 4)
        dX = torch.bmm(dkv, t["W_kv"].transpose(1, 2))  # (S, V + L, d)
        dW_Q = torch.bmm(t["xq"].transpose(1, 2), dqh).view(S, d, H, e).transpose(1, 2)
        dxq = torch.bmm(dqh, W_Q.permute(0, 2, 1, 3).reshape(S, d, H * e).transpose(1, 2))
        drb = dc0.sum(1)[:, None]  # (S, 1, V)
        vs = t["v"].transpose(1, 2).reshape(S, V + L, H * e)
        dM = torch.bmm(vs.transpose(1, 2), drs).view(S, H, e, H, V).diagonal(0, 1, 3)
        dM = dM.permute(0, 3, 1, 2) + w[ATTN + "b_V"][..., None] * drb[:, None]  # (S, H, e, V)
        dE, dP = dX[:, :V], dX[:, V:]
        dxo = dc0 @ W_U.transpose(1, 2)  # (S, L, d)
        dW_U = torch.baddbmm(t["xo"].transpose(1, 2) @ dc0, W_O.reshape(S, H * e, d).transpose(1, 2),
                             dM.reshape(S, H * e, V))
        dW_K, dW_V = dW_kv[:, :, 0], dW_kv[:, :, 1]
        dx = dxq + dxo  # both enter as W_E[EOS] + W_pos[p]
        dP += dx
        dE[:, EOS] += dx.sum(1)
        dW_pos = torch.zeros_like(P)
        dW_pos[:, :L] = dP
        grads = {"embed.W_E": dE, "pos_embed.W_pos": dW_pos,
                 ATTN + "W_Q": dW_Q, ATTN + "W_K": dW_K, ATTN + "W_V": dW_V,
                 ATTN + "W_O": torch.bmm(dM.reshape(S, H * e, V), W_U.transpose(1, 2)).view(
                     S, H, e, d),
                 ATTN + "b_Q": dqh.sum(1).view(S, H, e),
                 ATTN + "b_V": torch.bmm(drb, M.transpose(1, 2)).view(S, H, e),
                 ATTN + "b_O": dxo.sum(1), "unembed.W_U": dW_U, "unembed.b_U": dc0.sum(1)}
        return loss, grads

    def causal_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits at every position (S, B, L, d_vocab) of tokens (B, L) or (S, B, L): every query
        row of the causal attention, for training on every position (SPEC 2's `lm_loss`).

        The position path for all rows: with q_i and k_j each a token part plus a position
        part, score(i, j) = TT[t_i, t_j] + TP[t_i, j] + PT[i, t_j] + PP[i, j], tables of (5, 5),
        (5, L), (L, 5) and (L, L) per head; the value read into the logits is r_E[t_j] + r_P[j]
        as on the EOS row. Per example: a row lookup, a gather and two sums per (i, j) and head,
        no product with a weight matrix. One layer with a positional embedding, no LayerNorm;
        autograd differentiates it. Held to the textbook full L x L forward and its autograd
        gradient by tests/test_model.py::test_every_query_row_matches_the_textbook_forward."""
        if self.cfg.layernorm or self.cfg.pos_embed == "none":
            raise ValueError("causal_logits needs a positional embedding and no LayerNorm")
        w = self.weights
        E = w["embed.W_E"]
        S, H, e, V = E.shape[0], self.cfg.heads, self.cfg.d_head_, E.shape[1]
        tokens = (tokens if tokens.dim() == 3 else tokens[None]).expand(S, -1, -1)
        B, L = tokens.shape[1:]
        if L > self.cfg.n_ctx:
            raise ValueError(f"strings longer than n_ctx = {self.cfg.n_ctx} positions")
        P = w["pos_embed.W_pos"][:, :L]
        W_Q, W_K, W_V = w[ATTN + "W_Q"], w[ATTN + "W_K"], w[ATTN + "W_V"]
        scale = 1.0 / math.sqrt(e)
        qE = (E[:, None] @ W_Q + w[ATTN + "b_Q"][:, :, None]) * scale  # (S, H, 5, e)
        qP = (P[:, None] @ W_Q) * scale  # (S, H, L, e)
        kE = E[:, None] @ W_K + w[ATTN + "b_K"][:, :, None]  # (S, H, 5, e)
        kP = P[:, None] @ W_K  # (S, H, L, e)
        TT, TP = qE @ kE.transpose(2, 3), qE @ kP.transpose(2, 3)  # (S, H, 5, 5), (S, H, 5, L)
        PT, PP = qP @ kE.transpose(2, 3), qP @ kP.transpose(2, 3)  # (S, H, L, 5), (S, H, L, L)
        ti = tokens[:, None]  # (S, 1, B, L): the query's token
        seeds, heads = torch.arange(S).view(S, 1, 1, 1), torch.arange(H).view(1, H, 1, 1)
        # per query i: its row over key kinds (PT[i] + TT[t_i]) and over key positions
        by_kind = PT[:, :, None] + TT[seeds, heads, ti]  # (S, H, B, L, 5)
        by_pos = PP[:, :, None] + TP[seeds, heads, ti]  # (S, H, B, L, L)
        tj = tokens[:, None, :, None, :].expand(S, H, B, L, L)  # the key's token
        scores = by_pos + torch.gather(by_kind, 4, tj)
        scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -math.inf)
        a = torch.softmax(scores, -1)  # (S, H, B, L(i), L(j))
        M = w[ATTN + "W_O"] @ w["unembed.W_U"][:, None]  # (S, H, e, V)
        rE = (E[:, None] @ W_V + w[ATTN + "b_V"][:, :, None]) @ M  # (S, H, 5, V); sum_j a = 1
        rP = (P[:, None] @ W_V) @ M  # (S, H, L, V)
        mass = torch.zeros(S, H, B, L, V, dtype=a.dtype).scatter_add(4, tj, a)
        heads_out = (mass.flatten(2, 3) @ rE + a.flatten(2, 3) @ rP).view(S, H, B, L, V).sum(1)
        x = E[torch.arange(S).view(S, 1, 1), tokens] + P[:, None]  # (S, B, L, d)
        base = (x + w[ATTN + "b_O"][:, None, None]) @ w["unembed.W_U"][:, None]
        return base + w["unembed.b_U"][:, None, None] + heads_out

    def _pos_run(self, batch: Batch) -> PosCache:
        """`run` on the position path: a PosCache, from the tables. Held to the slots forward
        by tests/test_model.py::test_position_paths_run_matches_the_reference_slots_forward."""
        return PosCache(self, batch)

    def run(self, batch: Batch, force_tokens: bool = False,
            attn_override: torch.Tensor | None = None, layer: int = -1,
            replace: dict[tuple[int, int], torch.Tensor] | None = None) -> Cache:
        """Forward pass at EOS with everything the analyses read: the Cache of `layer`'s query
        row (default the last layer's; its logits are the model's). See `run_layers` for
        attn_override (at `layer`) and replace."""
        self._layer(layer)
        one = self.cfg.layers == 1 and not self.cfg.d_mlp
        if (one and attn_override is None and not replace and self.cfg.pos_embed != "none"
                and not self.cfg.layernorm and batch.tokens is not None and batch.query is None):
            return self._pos_run(batch)
        if self.cfg.layers == 1:
            return self.reference_run(batch, force_tokens, attn_override, replace)
        return self.run_layers(batch, attn_override, layer, replace)[layer]  # tokens anyway

    def _layer(self, layer: int) -> int:
        if not -self.cfg.layers <= layer < self.cfg.layers:
            raise ValueError(f"layer {layer} out of range: the model has {self.cfg.layers}")
        return layer % self.cfg.layers

    def reference_run(self, batch: Batch, force_tokens: bool = False,
                      attn_override: torch.Tensor | None = None,
                      replace: dict[tuple[int, int], torch.Tensor] | None = None) -> Cache:
        """`run` of one layer over slots, keys and values computed from each slot's input: the
        reference forward every option of one layer shares (LayerNorm, the interventions'
        attn_override and an MLP, which acts on the query's residual alone, use it)."""
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
        if replace:
            rows = None if batch.tokens is None or (self.cfg.count_path and not force_tokens) \
                else (batch.eos_pos + (batch.query is not None))[..., None]
            result = _replaced(result[:, :, :, None], 0, replace, rows)[:, :, :, 0]
        resid = x_eos + result.sum(2) + w[ATTN + "b_O"][:, None]
        if self.cfg.d_mlp:
            resid = resid + self._mlp(resid, 0)
        return Cache(pattern, kinds, mult, scores, v, z, result, resid, self.unembed(resid))

    def _mlp(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s MLP output on residuals x (S, ..., d_model): ln2 (with LayerNorm),
        W_in, b_in, exact GELU (TransformerLens act_fn "gelu"), W_out, b_out."""
        w, b = self.weights, f"blocks.{layer}."
        h = self._ln(x, b + "ln2")
        S, d = h.shape[0], h.shape[-1]
        if h.dim() == 4 and not h.is_contiguous() and h.permute(0, 3, 1, 2).is_contiguous():
            # positions last (S, d, B, P), as `_kinds_layer` gives
            out = self._mlp_columns(h.permute(0, 3, 1, 2).reshape(S, d, -1), layer)
            return out.view(S, d, *h.shape[1:3]).permute(0, 2, 3, 1)
        pre = h.reshape(S, -1, d) @ w[b + "mlp.W_in"] + w[b + "mlp.b_in"][:, None]
        out = torch.nn.functional.gelu(pre) @ w[b + "mlp.W_out"] + w[b + "mlp.b_out"][:, None]
        return out.view(h.shape)

    def _mlp_columns(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """`_mlp` (after ln2) of positions as columns h (S, d, N): a product per seed."""
        w, b = self.weights, f"blocks.{layer}.mlp."
        pre = torch.baddbmm(w[b + "b_in"][..., None], w[b + "W_in"].transpose(1, 2), h)
        return torch.baddbmm(w[b + "b_out"][..., None], w[b + "W_out"].transpose(1, 2),
                             torch.nn.functional.gelu(pre))

    def _heads(self, h: torch.Tensor, prefix: str, which: str) -> torch.Tensor:
        """h (S, B, P, d) through the heads' W_which + b_which of a layer's attention prefix:
        (S, B, H, P, e), one bmm per seed (a seed's numbers do not depend on its companions)."""
        W, b = self.weights[prefix + "W_" + which], self.weights[prefix + "b_" + which]
        S, B, P, d = h.shape
        H, e = W.shape[1], W.shape[-1]
        out = torch.bmm(h.reshape(S, B * P, d), W.permute(0, 2, 1, 3).reshape(S, d, H * e))
        return (out.view(S, B, P, H, e) + b[:, None, None]).permute(0, 1, 3, 2, 4)

    def run_layers(self, batch: Batch, attn_override: torch.Tensor | None = None,
                   layer: int = -1, replace: dict[tuple[int, int], torch.Tensor] | None = None,
                   positions: bool = False, force_tokens: bool = False) -> list[Cache]:
        """The forward of every layer: one Cache per layer, of that layer's query row (EOS, or
        the ending's with batch.query): pattern, scores, v, z, result (the heads' outputs at the
        query), resid (the residual at the query after the layer, its MLP included) and the
        model's logits (the same in every Cache).

        With one layer this is `reference_run` (over slots unless force_tokens). With L >= 2
        it is the causal forward over tokens: every position of every layer but the last (later
        layers' keys depend on each prefix, so there is no count path), and of the last only
        the query row. Without positional embedding layer 0 is the prefix path (`_kinds_layer`:
        attention over token kinds with each prefix's counts, no P x P product); layers between
        the first and the last are the textbook causal attention.
        attn_override (S, B or 1, H, P) replaces exp(score) per occurrence in `layer`'s query
        row, as in `reference_run` (the intervention of SPEC 5 at any layer). replace maps
        (layer, head) to that head's output, (S|1, B|1, d_model) at every position or
        (S|1, B|1, P, d_model) per position (mean ablation passes a mean; `positions=True`
        keeps each layer's head outputs at every position, (S, B, H, P, d_model), in
        Cache.positions, to take means from)."""
        layer = self._layer(layer)
        if self.cfg.layers == 1:
            return [self.reference_run(batch, force_tokens, attn_override, replace)]
        return self._layers(batch, attn_override, layer, replace, positions)

    def _layers(self, batch: Batch, attn_override: torch.Tensor | None = None, layer: int = -1,
                replace: dict[tuple[int, int], torch.Tensor] | None = None,
                positions: bool = False, caches: bool = True) -> list[Cache]:
        """`run_layers` for L >= 2. caches=False (`__call__`, training) forms only what the
        logits need: the Caches then hold only the logits (the last) and None elsewhere."""
        layer = layer % self.cfg.layers
        if batch.tokens is None:
            raise ValueError("a model of several layers needs token batches")
        if not caches and self.cfg.layers == 2 and self.cfg.pos_embed == "none":
            x = self._two_layers(batch)
            if self.cfg.d_mlp:
                x = x + self._mlp(x, 1)
            return [None, Cache(*[None] * 8, self.unembed(x))]
        w = self.weights
        W_E = w["embed.W_E"]
        S, e = W_E.shape[0], self.cfg.d_head_
        tokens = batch.tokens if batch.tokens.dim() == 3 else batch.tokens[None]
        eos = batch.eos_pos if batch.eos_pos.dim() == 2 else batch.eos_pos[None]
        query = eos + (batch.query is not None)  # (S or 1, B): the query's position
        P = tokens.shape[-1]
        kinds = self.cfg.pos_embed == "none"
        x = None if kinds else W_E[torch.arange(S).view(S, 1, 1), tokens]  # (S, B, P, d)
        if not kinds:
            if P > self.cfg.n_ctx:
                raise ValueError(f"strings longer than n_ctx = {self.cfg.n_ctx} positions")
            x = x + w["pos_embed.W_pos"][:, None, :P]
        B, d = tokens.shape[1], W_E.shape[-1]
        mult = (torch.arange(P) <= query[..., None]).to(W_E.dtype)  # (S or 1, B, P)
        at_query = query.expand(S, B)[..., None, None]  # (S, B, 1, 1)
        row = torch.arange(P) == query[..., None]  # (S or 1, B, P): the query's row
        causal = torch.ones(P, P, dtype=torch.bool).tril()
        out = []
        for n in range(self.cfg.layers):
            a, last = attn(n), n == self.cfg.layers - 1
            over = attn_override if n == layer else None
            if n == 0 and kinds:
                x, c = self._kinds_layer(tokens, query, mult, over, replace, positions, caches)
            elif last and not caches:
                x, c = self._query_row(x, query, mult, n), None
            else:
                h = self._ln(x, f"blocks.{n}.ln1")
                hq = torch.gather(h, 2, at_query.expand(S, B, 1, d)) if last else h
                q = self._heads(hq, a, "Q")  # (S, B, H, Q, e), Q = 1 (last) or P
                k, v = self._heads(h, a, "K"), self._heads(h, a, "V")
                scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(e))  # (S, B, H, Q, P)
                mask = mult[:, :, None, None] > 0 if last else causal
                pattern = torch.softmax(scores.masked_fill(~mask, -math.inf), -1)
                if over is not None:
                    weighted = over * mult[:, :, None]
                    q_row = weighted / weighted.sum(-1, keepdim=True)
                    pattern = (q_row[..., None, :] if last else
                               torch.where(row[:, :, None, :, None], q_row[..., None, :], pattern))
                z = pattern @ v  # (S, B, H, Q, e)
                result = z @ w[a + "W_O"][:, None]  # (S, B, H, Q, d): a product per seed, head
                result = _replaced(result, n, replace, query[..., None] if last else None)
                if last:
                    x_q = torch.gather(x, 2, at_query.expand(S, B, 1, d))[:, :, 0]
                    x = x_q + result[:, :, :, 0].sum(2) + w[a + "b_O"][:, None]
                else:
                    x = x + result.sum(2) + w[a + "b_O"][:, None, None]
                c = None
                if caches:
                    c = Cache(pattern[..., 0, :] if last else _at_row(pattern, query), tokens,
                              mult, scores[..., 0, :] if last else _at_row(scores, query), v,
                              z[:, :, :, 0] if last else _at_row(z, query),
                              result[:, :, :, 0] if last else _at_row(result, query), None,
                              None, None if last or not positions else result)
            if self.cfg.d_mlp:
                x = x + self._mlp(x, n)
            if c is not None:
                c.resid = x if last else torch.gather(x, 2, at_query.expand(S, B, 1, d))[:, :, 0]
            out.append(c)
        logits = self.unembed(x)
        if not caches:
            return [None] * (self.cfg.layers - 1) + [Cache(*[None] * 8, logits)]
        for c in out:
            c.logits = logits
        return out

    def _two_layers(self, batch: Batch) -> torch.Tensor:
        """Two layers without positional embedding, for the logits (`_layers` without caches):
        the residual at the query after layer 1's attention (S, B, d). The prefix path on the
        positions up to each query only (about half of a padded batch): layer 0 (and its MLP)
        acts on each position alone given its prefix's counts, and so do layer 1's keys and
        values, so the positions are a list (each seed's in order, padded to a multiple of
        ROW_BLOCK columns: a seed's products do not depend on its companions' lengths); only
        the keys and values go back to the (B, P) grid, for the query's softmax and sum."""
        w = self.weights
        W_E = w["embed.W_E"]
        S, V, d = W_E.shape
        H, e = self.cfg.heads, self.cfg.d_head_
        tokens = batch.tokens if batch.tokens.dim() == 3 else batch.tokens[None]
        eos = batch.eos_pos if batch.eos_pos.dim() == 2 else batch.eos_pos[None]
        query = eos + (batch.query is not None)  # (T, B), T = S or 1
        T, B, P = tokens.shape
        valid = (torch.arange(P) <= query[..., None]).view(T, B * P)
        have = valid.sum(1, keepdim=True)  # (T, 1)
        n = -(-int(have.max()) // ROW_BLOCK) * ROW_BLOCK
        padded = torch.cat([valid, valid.new_zeros(T, n)], 1)
        order = torch.argsort((~padded).to(torch.int8), dim=1, stable=True)[:, :n]
        real = torch.arange(n) < have  # (T, n)
        idx = torch.where(real, order, B * P)  # each seed's positions, then a spare slot
        ends = valid.view(T, B, P).sum(2).cumsum(1) - 1  # (T, B): each query's column
        kinds = torch.arange(V)[:, None]
        onehot = (tokens.view(T, 1, B * P) == kinds).to(W_E.dtype)  # (T, V, B*P)
        m = torch.cat([onehot.view(T, V, B, P).cumsum(3).view(T, V, B * P),
                       onehot.new_ones(T, V, 1)], 2)  # a prefix's count of each kind
        log_m = m.gather(2, idx[:, None].expand(T, V, n)).log_().expand(S, V, n)
        tok = torch.cat([tokens.view(T, B * P), tokens.new_zeros(T, 1)], 1).gather(1, idx)
        onehot = (tok[:, None] == kinds).to(W_E.dtype).expand(S, V, n)
        idx, ends = idx.expand(S, n), ends.expand(S, B)
        scores, _, u, base = self._kind_tables()
        x = self._kinds_residual(scores, u, base, onehot, log_m)  # (S, d, n)
        if self.cfg.d_mlp:
            x = x + self._mlp_columns(self._ln(x.transpose(1, 2), "blocks.0.ln2")
                                      .transpose(1, 2), 0)
        # layer 1 at the query: keys and values per listed position, then on the grid
        a, ln = attn(1), "blocks.1.ln1"
        x_q = x.gather(2, ends[:, None].expand(S, d, B))  # (S, d, B)
        h = self._ln(x.transpose(1, 2), ln).transpose(1, 2)
        h_q = self._ln(x_q.transpose(1, 2), ln).transpose(1, 2)

        def heads(which: str, h: torch.Tensor) -> torch.Tensor:  # (S, H, e, columns)
            W = w[a + "W_" + which].transpose(2, 3).reshape(S, H * e, d)
            return torch.baddbmm(w[a + "b_" + which].view(S, H * e, 1), W, h).view(S, H, e, -1)

        def grid(t: torch.Tensor) -> torch.Tensor:  # (S, H, e, n) -> (S, H, e, B, P), 0 after
            # the query (a scatter: its gradient is a gather, not a scatter-add)
            out = t.new_zeros(S, H, e, B * P + 1).scatter(3, idx[:, None, None].expand_as(t), t)
            return out[..., :B * P].view(S, H, e, B, P)

        q, k, v = heads("Q", h_q), grid(heads("K", h)), grid(heads("V", h))
        scores = (k * q[..., None]).sum(2) * (1.0 / math.sqrt(e))  # (S, H, B, P)
        mask = (torch.arange(P) > query[..., None])[:, None]
        pattern = torch.softmax(scores.masked_fill(mask, -math.inf), -1)
        z = (pattern[:, :, None] * v).sum(-1)  # (S, H, e, B)
        out = torch.baddbmm(x_q + w[a + "b_O"][..., None],
                            w[a + "W_O"].reshape(S, H * e, d).transpose(1, 2), z.view(S, H * e, B))
        return out.transpose(1, 2)

    def _query_row(self, x: torch.Tensor, query: torch.Tensor, mult: torch.Tensor,
                   n: int) -> torch.Tensor:
        """Layer n's attention at the query alone, for the logits (`_layers` without caches):
        the residual at the query after it (S, B, d), O(P * d * H * e) per example. Positions
        are the last axis (x is best a view of (S, d, B, P), as `_kinds_layer` gives): keys and
        values in one product per seed, the query's scores and its sum of values products and
        sums along contiguous positions (a bmm over the S*B examples' matrices would give
        results that depend on how many seeds are batched)."""
        w, a = self.weights, attn(n)
        S, B, P, d = x.shape
        H, e = self.cfg.heads, self.cfg.d_head_
        ln = f"blocks.{n}.ln1"
        cols = self._ln(x, ln).permute(0, 3, 1, 2)  # (S, d, B, P)
        at = query.expand(S, B)[:, None, :, None].expand(S, d, B, 1)
        x_q = torch.gather(x.permute(0, 3, 1, 2), 3, at)[..., 0]  # (S, d, B)
        h_q = self._ln(x_q.transpose(1, 2), ln).transpose(1, 2)  # one gather: its gradient is
        # a tensor of zeros as large as x
        flat = cols.reshape(S, d, B * P)

        def heads(which: str, h: torch.Tensor) -> torch.Tensor:  # (S, H, e, B, P or 1)
            W = w[a + "W_" + which].transpose(2, 3).reshape(S, H * e, d)
            out = torch.baddbmm(w[a + "b_" + which].view(S, H * e, 1), W, h)
            return out.view(S, H, e, B, -1)

        q, k, v = heads("Q", h_q), heads("K", flat), heads("V", flat)  # separate: no cat back
        scores = (k * q).sum(2) * (1.0 / math.sqrt(e))  # (S, H, B, P)
        pattern = torch.softmax(scores.masked_fill(mult[:, None] == 0, -math.inf), -1)
        z = (pattern[:, :, None] * v).sum(-1)  # (S, H, e, B)
        out = torch.baddbmm(x_q + w[a + "b_O"][..., None],
                            w[a + "W_O"].reshape(S, H * e, d).transpose(1, 2), z.view(S, H * e, B))
        return out.transpose(1, 2)

    def _kind_tables(self) -> tuple[torch.Tensor, ...]:
        """Layer 0's tables per token kind (no positional embedding): scores (S, H, V (query),
        V (key)), values v (S, H, V, e), u = v W_O per head (S, H*V, d), and each kind's
        residual before the heads, base = W_E + b_O (S, V, d)."""
        w = self.weights
        h = self._ln(w["embed.W_E"], "blocks.0.ln1")[:, None]  # (S, 1, V, d)
        q, k, v = (self._heads(h, ATTN, which)[:, 0] for which in "QKV")  # (S, H, V, e)
        scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(self.cfg.d_head_))
        u = (v @ w[ATTN + "W_O"]).flatten(1, 2)
        return scores, v, u, w["embed.W_E"] + w[ATTN + "b_O"][:, None]

    def _kinds_residual(self, scores: torch.Tensor, u: torch.Tensor, base: torch.Tensor,
                        onehot: torch.Tensor, log_m: torch.Tensor, pattern: bool = False
                        ) -> torch.Tensor:
        """Layer 0 at positions given as columns: onehot (S, V, N) their kinds, log_m (S, V, N)
        the log of their prefixes' counts of each kind. The residual after the heads,
        transposed (S, d, N): base^T onehot + u^T p, p_hi = softmax_k(score_h(t_i, k) +
        log m_ik) (or p itself, (S, H*V, N), with `pattern`). Positions are the last axis: a
        softmax over 5 kinds along a last axis is several times slower than across contiguous
        positions, and the pattern's gradient comes out in the pattern's layout."""
        S, H, V, _ = scores.shape
        N = onehot.shape[-1]
        rows = torch.bmm(scores.transpose(2, 3).reshape(S, H * V, V), onehot)  # (S, H*V, N)
        p = torch.softmax(rows.view(S, H, V, N) + log_m[:, None], 2).view(S, H * V, N)
        if pattern:
            return p
        return torch.baddbmm(torch.bmm(base.transpose(1, 2), onehot), u.transpose(1, 2), p)

    def _kinds_layer(self, tokens: torch.Tensor, query: torch.Tensor, mult: torch.Tensor,
                     attn_override: torch.Tensor | None,
                     replace: dict[tuple[int, int], torch.Tensor] | None, positions: bool,
                     caches: bool) -> tuple[torch.Tensor, Cache | None]:
        """Layer 0 without positional embedding, at every position, by token kinds (the prefix
        path): a position's input, hence its query, key and value, depends on its token alone,
        so the query at i attends over the kinds of its prefix with their counts m_ik (a cumsum
        of one-hots): head h's output at i is sum_k p_hik u_hk, p_hi = softmax_k(score_h(t_i, k)
        + log m_ik) and u_hk = v_hk W_O^h (softmax with log m: attention over the tokens, as
        stable as the textbook's). Tables of (V, V) and (V, d) per head, per position
        O(V * H) numbers: no P x P product. Returns the residual after the attention at every
        position (S, B, P, d) and the query row's Cache (without resid and logits; None when
        not `caches`). Held to the textbook forward by
        tests/test_layers.py::test_the_prefix_path_is_the_textbook_forward."""
        w = self.weights
        W_E = w["embed.W_E"]
        S, V, d = W_E.shape
        H = self.cfg.heads
        B, P = tokens.shape[1:]
        scores, v, u, base = self._kind_tables()
        onehot = (tokens.view(-1, 1, B * P) == torch.arange(V)[:, None]).to(W_E.dtype)
        onehot = onehot.expand(S, V, B * P)  # (S, V, B*P): the kind of each position
        log_m = onehot.view(S, V, B, P).cumsum(3).log_().view(S, V, B * P)  # prefix counts
        per_head = caches or positions or attn_override is not None or any(
            n == 0 for n, _ in (replace or {}))
        if not per_head:
            x = self._kinds_residual(scores, u, base, onehot, log_m)
            return x.view(S, d, B, P).permute(0, 2, 3, 1), None
        kind_pattern = self._kinds_residual(scores, u, base, onehot, log_m, pattern=True)
        result = kind_pattern.view(S, H, V, B * P).transpose(2, 3) @ u.view(S, H, V, d)
        result = result.view(S, H, B, P, d).transpose(1, 2)  # (S, B, H, P, d)
        seeds = torch.arange(S).view(S, 1, 1)
        v_pos = v.transpose(1, 2)[seeds, tokens].permute(0, 1, 3, 2, 4)  # (S, B, H, P, e)
        key = tokens[:, :, None].expand(S, B, H, P)
        tq = torch.gather(tokens, 2, query[..., None]).expand(S, B, 1)[..., 0]  # (S, B)
        q_scores = torch.gather(scores.transpose(1, 2)[seeds[..., 0], tq], 3, key)  # (S,B,H,P)
        if attn_override is not None:
            q_a = attn_override * mult[:, :, None]
            pattern = q_a / q_a.sum(-1, keepdim=True)  # (S, B, H, P) the query's row
        else:
            pattern = torch.softmax(q_scores.masked_fill(mult[:, :, None] == 0, -math.inf), -1)
        z = (pattern[..., None] * v_pos).sum(3)  # (S, B, H, e)
        if attn_override is not None:  # only the query's row attends otherwise
            r_q = torch.einsum("sbhe,shed->sbhd", z, w[ATTN + "W_O"])
            at = (torch.arange(P) == query[..., None])[:, :, None, :, None]
            result = torch.where(at, r_q[:, :, :, None], result)
        result = _replaced(result, 0, replace, None)
        x = base[seeds, tokens] + result.sum(2)
        cache = Cache(pattern, tokens, mult, q_scores, v_pos, z, _at_row(result, query), None,
                      None, result if positions else None) if caches else None
        return x, cache

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """ln_final (if any), then W_U and b_U. resid (S, B, d_model) -> (S, B, d_vocab)."""
        w = self.weights
        return (torch.einsum("sbd,sdv->sbv", self._ln(resid, "ln_final"), w["unembed.W_U"])
                + w["unembed.b_U"][:, None])


def by_length(tokens: torch.Tensor, eos: torch.Tensor, y: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each seed's examples sorted by length (EOS position, stable): tokens (S, B, L), eos and
    y (S, B), in the order `Model.pos_loss_grad` computes them (a stable sort of them is the
    identity, so sorting ahead changes no number)."""
    S, B, L = tokens.shape
    order = torch.argsort(eos, dim=1, stable=True)
    flat = (order + torch.arange(S)[:, None] * B).view(-1)  # a row lookup: 10x a gather
    return _rows(tokens, flat, (S, B, L)), eos.gather(1, order), y.gather(1, order)


def _per_row(x: torch.Tensor, eos: torch.Tensor, lo: int, L: int) -> torch.Tensor:
    """Sum of x (S, H, b, m) over the examples of each EOS position lo <= p < L, each seed's
    examples sorted by it (eos (S, b), `by_length`, none below lo): (S * H * (L - lo), m). The
    examples of one p are a run of rows, so each sum is a bag of consecutive rows (an embedding
    bag, several times faster than index_add over (s, h, p) rows; the same additions in the
    same order)."""
    S, H, B, m = x.shape
    n = torch.zeros(S, L - lo, dtype=torch.long).scatter_add_(1, eos - lo, torch.ones_like(eos))
    start = n.cumsum(1) - n  # (S, L - lo) each p's first example
    offsets = (torch.arange(S * H).view(S, H, 1) * B + start[:, None]).view(-1)
    return torch.nn.functional.embedding_bag(torch.arange(S * H * B), x.reshape(-1, m),
                                             offsets, mode="sum")


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """Block-diagonal (S, H*m, H*n) from H blocks (S, H, m, n): a product with it is every
    head's own product in one bmm per seed."""
    S, H, m, n = x.shape
    out = x.new_zeros(S, H, m, H, n)
    out.diagonal(0, 1, 3).copy_(x.permute(0, 2, 3, 1))
    return out.view(S, H * m, H * n)


def _at_row(t: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """t (S, B, H, P, ...) at each example's query row query (S or 1, B): (S, B, H, ...)."""
    S, B, H = t.shape[:3]
    rest = t.shape[4:]
    idx = query.expand(S, B).view(S, B, 1, 1, *(1,) * len(rest)).expand(S, B, H, 1, *rest)
    return torch.gather(t, 3, idx).squeeze(3)


def _replaced(result: torch.Tensor, layer: int,
              replace: dict[tuple[int, int], torch.Tensor] | None,
              rows: torch.Tensor | None) -> torch.Tensor:
    """Head outputs result (S, B, H, Q, d) at Q query rows, at positions rows (S or 1, B, Q)
    (None: every position, Q = P), with `layer`'s heads that `replace` names (see
    Model.run_layers) set to the given output."""
    heads = {h: val for (n, h), val in (replace or {}).items() if n == layer}
    if not heads:
        return result
    result = result.clone()
    S, B, H, Q, d = result.shape
    for h, val in heads.items():
        if val.dim() == 3:  # the same output at every position
            val = val[:, :, None]
        elif rows is not None:  # per position: the rows computed
            if val.dim() != 4:
                raise ValueError("a replaced head output is (S, B, d) or (S, B, P, d)")
            val = torch.gather(val.expand(S, B, -1, d), 2, rows.expand(S, B, Q)[..., None]
                               .expand(S, B, Q, d))
        result[:, :, h] = val.expand(S, B, Q, d)
    return result


def _rows(table: torch.Tensor, rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Row rows[i] of a table seen as rows of its last axis, for every i, viewed as `shape`: an
    embedding lookup (several times faster than index_select or indexing for these rows)."""
    return torch.nn.functional.embedding(rows, table.reshape(-1, shape[-1])).view(shape)


__all__ = ["Model", "Cache", "PosCache", "weight_shapes", "init_weights", "BOS", "EOS"]
