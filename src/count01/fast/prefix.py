"""The prefix path: L >= 2 layers without positional embedding. Layer 0's input at a position
is its token's embedding alone, so its query at i attends over the token kinds of its prefix with
their counts (a cumsum of one-hots): tables of (V, V) and (V, d) per head, no P x P product; the
last layer is computed at the query row only. Held to the textbook forward, and its gradient to
the textbook's autograd, in float64 by tests/test_fast_prefix.py::
test_the_prefix_path_is_the_textbook_forward and
test_the_prefix_paths_gradient_is_the_textbook_forwards."""

from __future__ import annotations

import math

import torch

from ..cache import ATTN, ROW_BLOCK, Cache, at_row, attn, replaced_heads
from ..language import Batch


class PrefixPath:
    """The prefix path of `Model`: layer 0 by token kinds, the last layer at the query."""

    def _two_layers(self, batch: Batch) -> torch.Tensor:
        """Two layers without positional embedding, for the logits (`_layers` without caches):
        the residual at the query after layer 1's attention (S, B, d). The prefix path on the
        positions up to each query only (about half of a padded batch): layer 0 (and its MLP)
        acts on each position alone given its prefix's counts, and so do layer 1's keys and
        values, so the positions are a list (each seed's in order), and only the keys and values
        go back to the (B, P) grid, for the query's softmax and sum. The list has room for the
        whole grid, B * P columns rounded up to ROW_BLOCK, whatever the seeds' lengths: the
        gradient's sums run over the columns, and MKL sums a product in an order that depends
        on its length (trailing zero columns changed the last bits on an AVX-512 Xeon), so a
        seed's columns must not depend on its companions'."""
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
        n = -(-B * P // ROW_BLOCK) * ROW_BLOCK
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
        tests/test_fast_prefix.py::test_the_prefix_path_is_the_textbook_forward."""
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
        result = replaced_heads(result, 0, replace, None)
        x = base[seeds, tokens] + result.sum(2)
        cache = Cache(pattern, tokens, mult, q_scores, v_pos, z, at_row(result, query), None,
                      None, result if positions else None) if caches else None
        return x, cache
