"""The count path: one layer, no positional embedding. Every key and value exists once per
token kind, so the EOS query (or any query of a known kind) attends over the d_vocab kinds with
their multiplicities, and a batch is its counts, not its tokens: the logits and hand-written
gradients of training and evaluation. Held to the reference forward (`Model.reference_run` over
token slots) and to autograd by tests/test_fast_count.py::
test_count_and_token_paths_agree_on_logits_head_outputs_and_attention_mass,
test_hand_written_count_gradient_equals_autograd and
test_training_on_the_count_path_equals_training_on_the_token_path, and tests/test_fast_count.py::
test_count_rows_loss_grad_matches_autograd_through_every_query_row."""

from __future__ import annotations

import math

import torch

from ..cache import ATTN
from ..language import EOS, Batch


class CountPath:
    """The count path of `Model`: its logits and hand-written gradients."""

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
        logits. Held to autograd through the textbook forward by tests/test_fast_count.py::
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
