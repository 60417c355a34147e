"""Test-side references: the one-layer forward written out over every query row (the
textbook full L x L pattern), random float64 weights with every bias nonzero, and the sentence
framing's loss from every row's logits. The fast paths' tests hold them to these."""

import torch

from count01.model import Model


def textbook(model: Model, tokens: torch.Tensor, eos: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference forward written out: every query position attends (causal L x L pattern)
    to x = W_E[tokens] + W_pos, then the EOS row is read off. tokens (B, L), eos (B,)."""
    w, a = model.weights, "blocks.0.attn."
    L = tokens.shape[-1]
    x = w["embed.W_E"][:, tokens]  # (S, B, L, d)
    if "pos_embed.W_pos" in w:
        x = x + w["pos_embed.W_pos"][:, None, :L]
    q = torch.einsum("sbld,shde->sbhle", x, w[a + "W_Q"]) + w[a + "b_Q"][:, None, :, None]
    k = torch.einsum("sbld,shde->sbhle", x, w[a + "W_K"]) + w[a + "b_K"][:, None, :, None]
    v = torch.einsum("sbld,shde->sbhle", x, w[a + "W_V"]) + w[a + "b_V"][:, None, :, None]
    scores = q @ k.transpose(-1, -2) / model.cfg.d_head_**0.5  # (S, B, H, L, L)
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    pattern = scores.softmax(-1)
    z = pattern @ v  # (S, B, H, L, e)
    result = torch.einsum("sbhle,shed->sbhld", z, w[a + "W_O"])
    resid = x + result.sum(2) + w[a + "b_O"][:, None, None]
    rows = torch.arange(tokens.shape[0])
    resid_eos = resid[:, rows, eos]  # (S, B, d)
    logits = torch.einsum("sbd,sdv->sbv", resid_eos, w["unembed.W_U"]) + w["unembed.b_U"][:, None]
    # (split advanced indices put the example axis first)
    every = torch.einsum("sbld,sdv->sblv", resid, w["unembed.W_U"]) + w["unembed.b_U"][:, None, None]
    return {"logits": logits, "every_row": every, "pattern": pattern[:, rows, :, eos].transpose(0, 1),
            "result": result[:, rows, :, eos].transpose(0, 1)}


def random_model(cfg, dtype=torch.float64) -> Model:
    """Random weights, every bias nonzero (b_K too: the forward must not assume it is 0)."""
    m = Model.init(cfg, [3, 4]).to(dtype)
    gen = torch.Generator().manual_seed(7)
    m.weights = {k: w + 0.3 * torch.randn(w.shape, generator=gen, dtype=dtype)
                 if k != "pos_embed.W_pos" or cfg.pos_embed == "learned" else w
                 for k, w in m.weights.items()}
    return m


def sentence_loss(every: torch.Tensor, tokens: torch.Tensor, eos: torch.Tensor,
                  lm: bool) -> torch.Tensor:
    """The sentence framing's loss per seed written out from every row's logits (S, B, L, V):
    the mean of the answer's, the ending's and (lm) the string's mean cross-entropies."""
    from count01.language import answer, tokens_to_counts

    rows = torch.arange(tokens.shape[0])
    y = answer(tokens_to_counts(tokens, eos))

    def ce(logits, target):  # (S, B, V), (B,) -> (S, B)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2),
                                                 target.expand(logits.shape[0], -1),
                                                 reduction="none")

    parts = [ce(every[:, rows, eos], y).mean(1), ce(every[:, rows, eos + 1], torch.full_like(y, 3))
             .mean(1)]
    if lm:
        per = [ce(every[:, b, :int(eos[b])], tokens[b, 1:int(eos[b]) + 1]) for b in rows]
        parts.append(torch.cat(per, 1).mean(1))
    return torch.stack(parts).mean(0)
