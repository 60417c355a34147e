"""The position path: one layer with a positional embedding and no LayerNorm. Inputs are
W_E[t_j] + W_pos[j], so the EOS query's score of position j is tok[p, t_j] + pos[p, j] and the
value it reads into the logits r_E[t_j] + r_P[j]: tables per seed of (L, d_vocab) and (L, L)
entries per head, and per example two row lookups and a product per position and head, no product
with a weight matrix. The `sentence` ending's query (the fed answer after EOS) reads tables of
every query token stacked (`query_tables`). `causal_logits` does the same for every query row
(`lm_loss`). LayerNorm stays on the reference forward: ln1 normalises W_E[t] + W_pos[j] as a
whole, so keys and values are functions of the pair (t, j), not a token part plus a position
part.
Held to the textbook full L x L forward and its autograd gradients in float64 by
tests/test_fast_position.py::test_position_path_matches_the_textbook_forward_and_autograd,
test_position_paths_run_matches_the_reference_slots_forward,
test_every_query_row_matches_the_textbook_forward and
test_position_path_redoes_underflowing_rows_in_the_log_domain."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..cache import ATTN, seed_bmm
from ..language import EOS, Batch

if TYPE_CHECKING:
    from ..model import Model


class PosCache:
    """The Cache of the position path (same fields and methods), from the tables of
    `Model.pos_tables` (t: those of the batch's width, when the caller shares them among
    slices): z, head outputs, residual and logits are computed at once; the per-position
    tensors (pattern, scores, values) and each head's share of the logits (zl, which only the
    value swap reads) only when an analysis reads them, and `mass` and `slot_readout` need no
    per-position product with a weight matrix. Held to the reference forward by
    tests/test_fast_position.py::
    test_position_paths_run_matches_the_reference_slots_forward."""

    def __init__(self, model: Model, batch: Batch, t: dict[str, torch.Tensor] | None = None):
        w = model.weights
        f = model._pos_pattern_rows(batch.tokens, batch.eos_pos, t, batch.query)
        self._f, self._t = f, f["t"]
        t, u, D = f["t"], f["u"], f["D"]
        S, H, B, L = u.shape
        b_V = w[ATTN + "b_V"][:, :, None]  # (S, H, 1, e)
        z = (f["mass"] @ t["vE"] + u @ t["vP"]) / D + b_V  # (S, H, B, e): sum_j a_j v_j
        self.z = z.transpose(1, 2)
        self.result = torch.einsum("shbe,shed->sbhd", z, w[ATTN + "W_O"])
        x_eos = rows_of(t["xq"], f["rows0"], (S, B, w["embed.W_E"].shape[-1]))
        self.resid = x_eos + self.result.sum(2) + w[ATTN + "b_O"][:, None]
        self.logits = model.unembed(self.resid)
        self.kinds = batch.tokens if batch.tokens.dim() == 3 else batch.tokens[None]
        eos = batch.eos_pos if batch.eos_pos.dim() == 2 else batch.eos_pos[None]
        query = eos + (batch.query is not None)  # EOS, or the ending's fed answer after it
        self.mult = (torch.arange(L) <= query[..., None]).to(u.dtype)
        self._b_V = b_V

    @property
    def zl(self) -> torch.Tensor:  # (S, H, B, V) each head's share of the logits (`_pos_forward`)
        if "zl" not in self._f:
            self._f["zl"] = _head_logits(self._f)
        return self._f["zl"]

    @property
    def pattern(self) -> torch.Tensor:  # (S, B, H, L)
        return (self._f["u"] / self._f["D"]).transpose(1, 2)

    @property
    def scores(self) -> torch.Tensor:  # (S, B, H, L) tok[p, t_j] + pos[p, j]
        S, H, B, L = self._f["u"].shape
        V = self._t["tok"].shape[-1]
        tok = torch.gather(rows_of(self._t["tok"], self._f["rows"], (S, H, B, V)), 3,
                           self._f["tok"])
        return (tok + rows_of(self._t["pos_all"], self._f["rows"], (S, H, B, L))).transpose(1, 2)

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


PER_QUERY = {"xq": 1, "q": 1, "xo": 1, "c0": 1, "tok": 2, "pos": 2, "pos_all": 2, "A": 2,
             "Bt": 2}  # the tables with a row per query position, and their row axis


def _head_logits(f: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each head's share of the logits zl = (u r_P + mass r_E) / D (S, H, B, V) of the rows f
    (`PositionPath._pos_pattern_rows`)."""
    t, u = f["t"], f["u"]
    S, H, B, L = u.shape
    V = t["rE"].shape[-1]
    by_kind = seed_bmm(f["mass"].reshape(-1, B, V), t["rE"].reshape(-1, V, V))
    by_position = seed_bmm(u.reshape(-1, B, L), t["rP"].reshape(-1, L, V))
    return (by_kind + by_position).view(S, -1, B, V).div_(f["D"])


def block_diagonal(x: torch.Tensor) -> torch.Tensor:
    """Block-diagonal (S, H*m, H*n) from H blocks (S, H, m, n): a product with it is every
    head's own product in one bmm per seed."""
    S, H, m, n = x.shape
    out = x.new_zeros(S, H, m, H, n)
    out.diagonal(0, 1, 3).copy_(x.permute(0, 2, 3, 1))
    return out.view(S, H * m, H * n)


def rows_of(table: torch.Tensor, rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Row rows[i] of a table seen as rows of its last axis, for every i, viewed as `shape`: an
    embedding lookup (several times faster than index_select or indexing for these rows)."""
    return torch.nn.functional.embedding(rows, table.reshape(-1, shape[-1])).view(shape)


class PositionPath:
    """The position path of `Model`: its tables, logits and hand-written gradients."""

    # --- the position path: one layer with a positional embedding, no LayerNorm ---------------

    def pos_path(self, batch: Batch) -> bool:
        """Whether `run` (with no override or replacement) takes the position path on batch:
        one attention-only layer with a positional embedding, no LayerNorm, tokens; the EOS
        query or the `sentence` ending's (batch.query)."""
        cfg = self.cfg
        return (cfg.layers == 1 and not cfg.d_mlp and cfg.pos_embed != "none"
                and not cfg.layernorm and batch.tokens is not None)

    def batch_tables(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The tables `_pos_run` reads on batch's width: `pos_tables` at EOS, `query_tables` at
        the `sentence` ending (batch.query)."""
        L = batch.tokens.shape[-1]
        return self.pos_tables(L) if batch.query is None else self.query_tables(L)

    def query_tables(self, L: int) -> dict[str, torch.Tensor]:
        """`pos_tables` of every query token k stacked: the rows of a table per query position
        p are k L + p (PER_QUERY), the keys' and values' tables are the query's own. What the
        `sentence` ending's query, the fed answer one position after EOS, reads."""
        parts = [self.pos_tables(L, k) for k in range(self.weights["embed.W_E"].shape[1])]
        return parts[0] | {k: torch.cat([t[k] for t in parts], axis)
                           for k, axis in PER_QUERY.items()}

    def pos_tables(self, L: int, query: int = EOS) -> dict[str, torch.Tensor]:
        """What the EOS query (the token `query` at the query position) computes on strings of
        width L before it sees an example.

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
        xq = E[:, query, None] + P  # (S, L, d) the query's input with it at position p
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
        # (S, H, L, V + L) [p, t] then [p, j]; a bmm per head here (no faster side by side), of
        # contiguous operands: MKL rounds a product of strided ones differently by batch size
        scores = (q.view(S, L, H, e).transpose(1, 2).contiguous()
                  @ k.permute(0, 2, 3, 1).contiguous())
        tok, pos_all = scores[..., :V], scores[..., V:]
        after = torch.ones(L, L, dtype=torch.bool).triu(1)  # j > p: the causal mask
        pos = pos_all.masked_fill(after, -math.inf)
        M = torch.bmm(W_O.view(S, H * e, d), W_U)  # (S, H*e, V): a value's map to the logits
        r = torch.bmm(v.reshape(S, V + L, H * e), block_diagonal(M.view(S, H, e, V)))
        r = r.view(S, V + L, H, V).transpose(1, 2).contiguous()  # (S, H, V + L, V)
        rb = torch.bmm(w[ATTN + "b_V"].view(S, 1, H * e), M)  # (S, 1, V): sum_j a_j = 1
        xo = E[:, query, None] + P + w[ATTN + "b_O"][:, None]  # (S, L, d) residual at it, no heads
        v = v.transpose(1, 2)  # (S, H, V + L, e)
        return {"X": X, "xq": xq, "q": q, "k": k, "W_kv": W_kv, "tok": tok, "pos": pos,
                "pos_all": pos_all, "M": M.view(S, H, e, V), "v": v, "vE": v[:, :, :V],
                "vP": v[:, :, V:], "rE": r[:, :, :V], "rP": r[:, :, V:], "xo": xo,
                "c0": seed_bmm(xo, W_U) + (w["unembed.b_U"][:, None] + rb),  # (S, L, V)
                "A": torch.exp(tok - tok.amax(-1, keepdim=True)),
                # exp of -inf (or of a large positive) takes torch's slow path: 0 put in after
                "Bt": torch.exp((pos_all - pos.amax(-1, keepdim=True)).masked_fill_(after, 0.0))
                .masked_fill(after, 0.0)}

    def pos_pattern(self, t: dict[str, torch.Tensor], tokens: torch.Tensor, eos: torch.Tensor):
        """exp(score) of the EOS query on tokens (S, B, L) with EOS at eos (S, B), from the
        tables: A[p, t_j] Bt[p, j], two row lookups and a product per position. eos is each
        example's row p of the tables (the ending's query: k L + p, `query_tables`).

        Returns u (S, H, B, L), its sum per kind (S, H, B, V) and per row D (S, H, B, 1) (so
        the pattern is u / D), the table row index (s H + h) R + p (S*H*B,) with R the tables'
        rows per head, and the token index (S, H, B, L). Should an example's largest product
        underflow (D below FLOAT_MIN * 1e8: only for extreme weights), the rows are redone in
        the log domain, shifted by each row's own maximum (torch.softmax), and D is 1."""
        S, B, L = tokens.shape
        H, R, V = self.cfg.heads, t["A"].shape[2], t["A"].shape[-1]
        rows = (torch.arange(S * H).view(S, H, 1) * R + eos[:, None]).view(-1)
        tok = tokens[:, None].expand(S, H, B, L).contiguous()  # gather is 2x faster so
        if t["A"].requires_grad:  # autograd (`Trainer` without by-hand gradients): torch ops
            # A[p, t_j] by one gather with an index shared by the heads ((p, t_j)), not a row
            # lookup per head and example and a gather: the same numbers, 10% less CPU
            pt = torch.add(tokens, eos[..., None], alpha=V).view(S, 1, B * L).expand(S, H, -1)
            u = torch.gather(t["A"].reshape(S, H, R * V), 2, pt).view(S, H, B, L)
            u.mul_(rows_of(t["Bt"], rows, (S, H, B, L)))
            mass = torch.zeros(S, H, B, V, dtype=u.dtype).scatter_add_(3, tok, u)
        else:  # the same numbers in one compiled loop over the examples, 5x less CPU
            from .kernels import pos_rows  # numba: imported where a position forward runs

            u = torch.empty(S, H, B, L, dtype=t["A"].dtype)
            mass = torch.empty(S, H, B, V, dtype=u.dtype)
            pos_rows(t["A"].numpy(), t["Bt"].numpy(), tokens.numpy(), eos.numpy(), u.numpy(),
                     mass.numpy())
        D = mass.sum(-1, keepdim=True)
        if D.min() < torch.finfo(D.dtype).tiny * 1e8:
            ls = torch.gather(rows_of(t["tok"], rows, (S, H, B, V)), 3, tok)
            u = torch.softmax(ls + rows_of(t["pos"], rows, (S, H, B, L)), -1)
            mass = torch.zeros_like(mass).scatter_add_(3, tok, u)
            D = torch.ones_like(D)
        return u, mass, D, rows, tok

    def _pos_pattern_rows(self, tokens: torch.Tensor, eos: torch.Tensor,
                          t: dict[str, torch.Tensor] | None = None,
                          query: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The query's rows on tokens (S|1, B, L), at EOS or, with the fed answers query
        (S|1, B), at the `sentence` ending one position after it: tables t (made for width L
        if not given), u, mass, D, rows, tok (`pos_pattern`) and rows0, each example's row
        s R + r of the per-(seed, query row) tables."""
        S = self.n_seeds
        tokens = (tokens if tokens.dim() == 3 else tokens[None]).expand(S, -1, -1)
        at = (eos if eos.dim() == 2 else eos[None]).expand(S, -1)
        L = tokens.shape[2]
        if query is None:
            t, row = self.pos_tables(L) if t is None else t, at
        else:
            at = at + 1
            t = self.query_tables(L) if t is None else t
            row = at + L * (query if query.dim() == 2 else query[None]).expand(S, -1)
        u, mass, D, rows, tok = self.pos_pattern(t, tokens, row)
        rows0 = (torch.arange(S)[:, None] * t["A"].shape[2] + row).view(-1)
        return {"t": t, "u": u, "mass": mass, "D": D, "rows": rows, "tok": tok, "rows0": rows0}

    def _pos_forward(self, tokens: torch.Tensor, eos: torch.Tensor,
                     t: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The position path's forward: `_pos_pattern_rows`, each head's share of the logits
        zl = (u r_P + mass r_E) / D (S, H, B, V) and the logits (S, B, V)."""
        f = self._pos_pattern_rows(tokens, eos, t)
        S, B = f["u"].shape[0], f["u"].shape[2]
        zl = _head_logits(f)
        logits = rows_of(f["t"]["c0"], f["rows0"], (S, B, zl.shape[-1])) + zl.sum(1)
        return f | {"zl": zl, "logits": logits}

    def pos_loss_grad(self, tokens: torch.Tensor, eos: torch.Tensor, y: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy per seed (S,) and its gradient for every trainable weight, by hand,
        on the position path: tokens (S, B, L), EOS positions (S, B), answers y (S, B).

        Per example only exp(score) (H L numbers), a sum of it per kind and head and the logits are
        formed, each example up to its own EOS, in one compiled loop (`kernels.pos_examples_grad`);
        the rest are tables per seed (`pos_tables`), made and differentiated once per step in
        torch. Autograd would record a hundred ops per step; this is what the Trainer runs with a
        positional embedding. Held to the textbook full L x L forward and to autograd by
        tests/test_fast_position.py::test_position_path_matches_the_textbook_forward_and_autograd."""
        from .kernels import pos_examples_grad  # numba: imported (~0.5 s) only to train here

        w = self.weights
        E, P, W_U = w["embed.W_E"], w["pos_embed.W_pos"], w["unembed.W_U"]
        W_Q, W_K, W_V, W_O = (w[ATTN + k] for k in ("W_Q", "W_K", "W_V", "W_O"))
        S = E.shape[0]
        tokens = (tokens if tokens.dim() == 3 else tokens[None]).expand(S, -1, -1)
        eos = (eos if eos.dim() == 2 else eos[None]).expand(S, -1)
        y = (y if y.dim() == 2 else y[None]).expand(S, -1)
        B, L = tokens.shape[1:]
        t = self.pos_tables(L)
        loss = torch.zeros(S, dtype=E.dtype)
        H, V, e, d = self.cfg.heads, t["rE"].shape[-1], self.cfg.d_head_, E.shape[-1]
        dc0 = torch.zeros_like(t["c0"])
        drE, drPT = torch.zeros(S, H, V, V, dtype=E.dtype), torch.zeros(S, H, V, L, dtype=E.dtype)
        dtok, dpos = torch.zeros(S, H, L, V, dtype=E.dtype), torch.zeros(S, H, L, L, dtype=E.dtype)
        pos_examples_grad(*(x.contiguous().numpy() for x in (  # contiguous: faster compiled loops
            t["A"], t["Bt"], t["tok"], t["pos"], t["rE"], t["rP"].transpose(2, 3), t["c0"],
            tokens, eos, y)), 1.0 / B, torch.finfo(E.dtype).tiny * 1e8,
            *(x.numpy() for x in (loss, dc0, drE, drPT, dtok, dpos)))
        # the gradients of the tables in the layout of the products they enter: the scores
        # [tok, pos] (S, H, L, V + L) and the value read-outs [r_E; r_P] (S, H, V + L, V)
        dscores = torch.cat([dtok, dpos], 3)
        dr = torch.cat([drE, drPT.transpose(2, 3)], 2)
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
        dk = torch.bmm(dsc.transpose(1, 2), block_diagonal(t["q"].view(S, L, H, e).transpose(1, 2)))
        drs = dr.transpose(1, 2).reshape(S, V + L, H * V)
        dv = torch.bmm(drs, block_diagonal(t["M"].transpose(2, 3)))  # (S, V + L, H*e)
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
        gradient by tests/test_fast_position.py::test_every_query_row_matches_the_textbook_forward."""
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

    def _pos_run(self, batch: Batch, t: dict[str, torch.Tensor] | None = None) -> PosCache:
        """`run` on the position path: a PosCache, from the tables (t: `batch_tables` of the
        batch's width, if the caller has them). Held to the slots forward, at EOS and at the
        `sentence` ending, by tests/test_fast_position.py::
        test_position_paths_run_matches_the_reference_slots_forward."""
        return PosCache(self, batch, t)
