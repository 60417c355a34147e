"""What a forward pass records at its query row (`Cache`, in TransformerLens's vocabulary),
the names of a layer's attention weights, and the helpers the reference forward and the fast
paths share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# rows (`train.sentence_rows` per seed) and columns (the prefix path's position list) come in
# multiples of this, padded: torch's sums and MKL's products run in blocks of 64 floats here (a
# partial block is summed in another order). Their number is also the batch's bound from the
# config, not its longest seed's: MKL sums a longer product in another order even where the
# extra entries are zeros, so only then does a seed's result not depend on its companions
ROW_BLOCK = 64
ATTN = "blocks.0.attn."  # layer 0's attention weights (the fast paths' only layer); `attn(l)`


def seed_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (S, m, k) x (S, k, n) -> (S, m, n), a product per batch entry whose numbers do not
    depend on the entry's place in the batch: MKL rounds a product by where its output lies, in
    16-byte steps (seen on an AMD EPYC: a float32 batch of 5 columns rounded every other seed
    apart from the seed alone), so a's rows are padded with zeros until each entry's output
    starts on a 64-byte boundary, as a batch of one does."""
    m = a.shape[-2]
    row = b.shape[-1] * a.element_size()
    pad = -m % (64 // math.gcd(64, row))
    if not pad:
        return torch.bmm(a, b)
    return torch.bmm(torch.nn.functional.pad(a, (0, 0, 0, pad)), b)[:, :m].contiguous()


def attn(layer: int) -> str:
    """The prefix of a layer's attention weights (ATTN is layer 0's)."""
    return f"blocks.{layer}.attn."


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


def at_row(t: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """t (S, B, H, P, ...) at each example's query row query (S or 1, B): (S, B, H, ...)."""
    S, B, H = t.shape[:3]
    rest = t.shape[4:]
    idx = query.expand(S, B).view(S, B, 1, 1, *(1,) * len(rest)).expand(S, B, H, 1, *rest)
    return torch.gather(t, 3, idx).squeeze(3)


def replaced_heads(result: torch.Tensor, layer: int,
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
