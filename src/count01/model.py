"""The transformer of SPEC 3, S seeds at once, read at the query (the EOS position, or the
`sentence` ending's): the definition every faster forward is held to.

Weights carry TransformerLens names and shapes with a leading seed axis: `blocks.0.attn.W_Q` is
(S, H, d_model, d_head). Only the query's attention row is computed (the answer is read there
and nowhere else). The keys the query sees are "slots": with one layer and no positional
embedding the d_vocab token kinds with their multiplicities (n0, n1, n2, EOS = 1, BOS = 0 or 1,
then any further noise symbols' counts); otherwise the L positions with multiplicity 1 up to the
query and 0 after. Attention over slots with multiplicity m is softmax(score + log m), which is
exactly attention over the tokens.

The reference forward is `reference_run` (one layer, over slots) and `run_layers` (L layers: the
causal forward over tokens, layer by layer). `Model` also carries the fast paths, mixins that
compute the same function from tables (each names the tests that hold it to the reference):
`fast.count` (one layer, no positional embedding: counts, not tokens), `fast.position` (one layer
with a positional embedding), `fast.prefix` (L >= 2 without positional embedding). `__call__`
and `run` choose among them.
"""

from __future__ import annotations

import math

import torch

from .cache import ATTN, Cache, at_row, attn, replaced_heads, seed_bmm
from .config import Config
from .fast.count import CountPath
from .fast.position import PositionPath
from .fast.prefix import PrefixPath
from .language import EOS, Batch

LN_EPS = 1e-5  # LayerNorm's epsilon (TransformerLens' default)


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


class Model(CountPath, PositionPath, PrefixPath):
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
        x = x / (x.pow(2).mean(-1, keepdim=True) + LN_EPS).sqrt()
        return x * w.view(shape) + b.view(shape)

    def _ln_tangent(self, x: torch.Tensor, t: torch.Tensor, name: str) -> torch.Tensor:
        """The derivative of `_ln` at x (S, ..., d) along t (x broadcast against t), each
        step's derivative as forward-mode autograd writes it (x - mean, its square's mean,
        sqrt, the quotient): autograd's numbers, to the last bit in every case tested but a few
        elements (within 4e-16) with one layer, an MLP and LayerNorm."""
        if not self.cfg.layernorm:
            return t
        w = self.weights[name + ".w"]
        xc = x - x.mean(-1, keepdim=True)
        sigma = (xc.pow(2).mean(-1, keepdim=True) + LN_EPS).sqrt()
        tc = t - t.mean(-1, keepdim=True)
        t_sigma = (tc * (2.0 * xc)).mean(-1, keepdim=True) / (2 * sigma)
        t_norm = (tc - t_sigma * (xc / sigma)) / sigma
        return t_norm * w.view((w.shape[0],) + (1,) * (t.dim() - 2) + (-1,))

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

    def run(self, batch: Batch, force_tokens: bool = False,
            attn_override: torch.Tensor | None = None, layer: int = -1,
            replace: dict[tuple[int, int], torch.Tensor] | None = None) -> Cache:
        """Forward pass at EOS with everything the analyses read: the Cache of `layer`'s query
        row (default the last layer's; its logits are the model's). See `run_layers` for
        attn_override (at `layer`) and replace."""
        self._layer(layer)
        if attn_override is None and not replace and self.pos_path(batch):
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
            result = replaced_heads(result[:, :, :, None], 0, replace, rows)[:, :, :, 0]
        resid = x_eos + result.sum(2) + w[ATTN + "b_O"][:, None]
        if self.cfg.d_mlp:
            resid = resid + self._mlp(resid, 0)
        return Cache(pattern, kinds, mult, scores, v, z, result, resid, self.unembed(resid))

    def _mlp(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s MLP output on residuals x (S, ..., d_model): ln2 (with LayerNorm),
        W_in, b_in, exact GELU (TransformerLens act_fn "gelu"), W_out, b_out."""
        h = self._ln(x, f"blocks.{layer}.ln2")
        S, d = h.shape[0], h.shape[-1]
        if h.dim() == 4 and not h.is_contiguous() and h.permute(0, 3, 1, 2).is_contiguous():
            # positions last (S, d, B, P), as `_kinds_layer` gives
            out = self._mlp_columns(h.permute(0, 3, 1, 2).reshape(S, d, -1), layer)
            return out.view(S, d, *h.shape[1:3]).permute(0, 2, 3, 1)
        return self._mlp_rows(h, layer)[1]

    def _mlp_rows(self, h: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`_mlp` after ln2 of h (S, ..., d_model): GELU's input (S, N, d_mlp) and the output."""
        w, b = self.weights, f"blocks.{layer}.mlp."
        S, d = h.shape[0], h.shape[-1]
        pre = h.reshape(S, -1, d) @ w[b + "W_in"] + w[b + "b_in"][:, None]
        out = torch.nn.functional.gelu(pre) @ w[b + "W_out"] + w[b + "b_out"][:, None]
        return pre, out.view(h.shape)

    def mlp_dual(self, x: torch.Tensor, layer: int, t: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_mlp` on residuals x (S, ..., d_model) and its derivative along t (S, ...,
        d_model; x broadcast against it), written out: a dual number (forward-mode autograd
        costs many times the arithmetic on tensors this small)."""
        w, b = self.weights, f"blocks.{layer}."
        pre, out = self._mlp_rows(self._ln(x, b + "ln2"), layer)
        th = self._ln_tangent(x, t, b + "ln2")
        S, d = th.shape[0], th.shape[-1]
        t_pre = (th.reshape(S, -1, d) @ w[b + "mlp.W_in"]).view(*th.shape[:-1], -1)
        # GELU's derivative by autograd's own kernel, on an operand laid out as t_pre (on a
        # broadcast one the kernel rounds differently)
        at = pre.view(*x.shape[:-1], -1).expand_as(t_pre).contiguous()
        t_act = torch.ops.aten.gelu_backward(t_pre, at)
        return out, (t_act.reshape(S, -1, t_act.shape[-1]) @ w[b + "mlp.W_out"]).view(th.shape)

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
                result = replaced_heads(result, n, replace, query[..., None] if last else None)
                if last:
                    x_q = torch.gather(x, 2, at_query.expand(S, B, 1, d))[:, :, 0]
                    x = x_q + result[:, :, :, 0].sum(2) + w[a + "b_O"][:, None]
                else:
                    x = x + result.sum(2) + w[a + "b_O"][:, None, None]
                c = None
                if caches:
                    c = Cache(pattern[..., 0, :] if last else at_row(pattern, query), tokens,
                              mult, scores[..., 0, :] if last else at_row(scores, query), v,
                              z[:, :, :, 0] if last else at_row(z, query),
                              result[:, :, :, 0] if last else at_row(result, query), None,
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

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """ln_final (if any), then W_U and b_U. resid (S, B, d_model) -> (S, B, d_vocab)."""
        w = self.weights
        return seed_bmm(self._ln(resid, "ln_final"), w["unembed.W_U"]) + w["unembed.b_U"][:, None]

    def unembed_tangent(self, resid: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The derivative of `unembed` at resid (S, ..., d_model) along t (S, ..., d_model;
        resid broadcast against it): (S, ..., d_vocab)."""
        return self.read_out(self._ln_tangent(resid, t, "ln_final"))

    def read_out(self, x: torch.Tensor) -> torch.Tensor:
        """x W_U (S, ..., d_model) -> (S, ..., d_vocab), no bias: with no ln_final the logits
        are linear in the residual, so heads recombined after this (alpha, mean ablation) sum
        d_vocab numbers a head, not d_model, and need no unembedding per variant. One product
        per seed (`seed_bmm`)."""
        S, d = x.shape[0], x.shape[-1]
        return seed_bmm(x.reshape(S, -1, d), self.weights["unembed.W_U"]).view(*x.shape[:-1], -1)

