"""A compiled kernel (numba, nopython, no fastmath) for the per-example part of the position
path's gradient (`Model.pos_loss_grad`). In torch ops that part is a dozen passes over
(S, H, B, L) tensors (gathers, scatters, small batched products), each bound by memory traffic
and per-op overhead; here it is one loop over each example's positions with no intermediate
tensors. Each seed's sums are made in a fixed order (example, head, position), so a seed's
result is the same bit for bit whatever seeds are batched beside it. One thread: a `prange`
over seeds measured no faster on 2 shared cores. The tables and their products with the
weights stay in torch. Held to the textbook forward and autograd by tests/test_fast_position.py."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def _pos_examples_grad(A, Bt, tok, pos, rE, rPT, c0, tokens, eos, y, scale, tiny,
                       loss, dc0, drE, drPT, dtok, dpos):
    """Adds each seed's summed cross-entropy into loss (S,) and the gradients of scale * it
    into the tables' gradients, for examples tokens (S, B, L) with EOS at eos (S, B) and answers
    y (S, B), from the tables of `Model.pos_tables`: A, tok (S, H, L, V), Bt, pos (S, H, L, L),
    r_E (S, H, V, V), r_P^T (S, H, V, L), c0 (S, L, V). Gradients: dc0 (S, L, V), dr_E
    (S, H, V, V), dr_P^T (S, H, V, L), dtok (S, H, L, V), dpos (S, H, L, L).

    Per head, exp(score_j) = A[p, t_j] Bt[p, j] (both shifted by their row's maximum); should an
    example's sum D fall below tiny (only for extreme weights) that head's row is redone from
    the scores shifted by the row's own maximum. Head h's share of the logits is
    zl = (sum_j u_j r_P[j] + sum_k mass_k r_E[k]) / D; with gh = g / D (g = d loss / d logits),
    d/d score_j = u_j (gh . (r_E[t_j] + r_P[j]) - gh . zl)."""
    S, H, L, V = A.shape
    B = tokens.shape[1]
    zero, one = A.dtype.type(0), A.dtype.type(1)  # the tables' float type throughout
    scale, tiny = A.dtype.type(scale), A.dtype.type(tiny)
    for s in range(S):
        u = np.empty((H, L), A.dtype)
        mass = np.empty((H, V), A.dtype)
        D = np.empty(H, A.dtype)
        zl = np.empty((H, V), A.dtype)
        logits = np.empty(V, A.dtype)
        g = np.empty(V, A.dtype)
        gh = np.empty(V, A.dtype)
        per_kind = np.empty(V, A.dtype)
        ds = np.empty(L, A.dtype)
        total = zero
        for b in range(B):
            p = eos[s, b]
            n = p + 1
            for h in range(H):  # forward: exp(score), the mass per kind, the head's logits
                for k in range(V):
                    mass[h, k] = zero
                for j in range(n):
                    uj = A[s, h, p, tokens[s, b, j]] * Bt[s, h, p, j]
                    u[h, j] = uj
                    mass[h, tokens[s, b, j]] += uj
                d = zero
                for k in range(V):
                    d += mass[h, k]
                if d < tiny:  # redone in the log domain: shifted by this row's own maximum
                    m = tok[s, h, p, tokens[s, b, 0]] + pos[s, h, p, 0]
                    for j in range(1, n):
                        m = max(m, tok[s, h, p, tokens[s, b, j]] + pos[s, h, p, j])
                    for k in range(V):
                        mass[h, k] = zero
                    d = zero
                    for j in range(n):
                        uj = math.exp(tok[s, h, p, tokens[s, b, j]] + pos[s, h, p, j] - m)
                        u[h, j] = uj
                        mass[h, tokens[s, b, j]] += uj
                    for k in range(V):
                        d += mass[h, k]
                D[h] = d
                for v in range(V):
                    z = zero
                    for j in range(n):
                        z += u[h, j] * rPT[s, h, v, j]
                    for k in range(V):
                        z += mass[h, k] * rE[s, h, k, v]
                    zl[h, v] = z / d
            top = c0[s, p, 0] + zl[0, 0]  # any logit: the largest is found below
            for v in range(V):
                x = c0[s, p, v]
                for h in range(H):
                    x += zl[h, v]
                logits[v] = x
                top = max(top, x)
            norm = zero
            for v in range(V):
                norm += math.exp(logits[v] - top)
            lse = top + math.log(norm)
            total += lse - logits[y[s, b]]
            for v in range(V):  # d loss / d logits, scaled
                g[v] = (math.exp(logits[v] - lse) - (one if v == y[s, b] else zero)) * scale
                dc0[s, p, v] += g[v]
            for h in range(H):  # backward through head h
                gz = zero
                for v in range(V):
                    gh[v] = g[v] / D[h]
                    gz += gh[v] * zl[h, v]
                for k in range(V):
                    pk = zero
                    for v in range(V):
                        pk += rE[s, h, k, v] * gh[v]
                        drE[s, h, k, v] += mass[h, k] * gh[v]
                    per_kind[k] = pk - gz
                for j in range(n):
                    ds[j] = zero
                for v in range(V):
                    for j in range(n):
                        ds[j] += gh[v] * rPT[s, h, v, j]
                        drPT[s, h, v, j] += u[h, j] * gh[v]
                for j in range(n):
                    dj = u[h, j] * (per_kind[tokens[s, b, j]] + ds[j])
                    dpos[s, h, p, j] += dj
                    dtok[s, h, p, tokens[s, b, j]] += dj
        loss[s] += total


try:  # compiled once per machine (~2.5 s), then loaded (~0.5 s): beside the package, else in ~/.cache
    pos_examples_grad = njit(cache=True, nogil=True)(_pos_examples_grad)
except RuntimeError:  # no writable place for numba's cache: compiled in each process
    pos_examples_grad = njit(nogil=True)(_pos_examples_grad)
