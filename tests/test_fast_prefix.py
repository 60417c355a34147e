"""count01.fast.prefix: the prefix path (L >= 2 layers, no positional embedding) against the
textbook forward, and its gradient against the textbook's autograd, in float64."""

import pytest
import torch
from test_layers import SMALL, random_model

from count01.config import Config
from count01.language import at_end, exhaustive
from count01.model import Model

PREFIX = [(layers, d_mlp, layernorm, bos, framing) for layers in (2, 3) for d_mlp in (0, 5)
          for layernorm in (False, True) for bos in (True, False)
          for framing in ("classify", "sentence")]


def with_zero_positions(model: Model) -> Model:
    """The same function on the textbook forward: a learned positional embedding of zeros."""
    cfg = model.cfg.replace(pos_embed="learned")
    W_pos = torch.zeros((model.n_seeds, cfg.n_ctx, cfg.d_model), dtype=torch.float64)
    return Model(cfg, model.weights | {"pos_embed.W_pos": W_pos}, model.seeds)


def close(got: torch.Tensor | None, want: torch.Tensor | None, what: str) -> None:
    assert (got is None) == (want is None), what
    if got is not None:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=what)


@pytest.mark.parametrize("layers, d_mlp, layernorm, bos, framing", PREFIX)
def test_the_prefix_path_is_the_textbook_forward(layers, d_mlp, layernorm, bos, framing):
    """Without positional embedding, L >= 2: every layer's Cache of `run_layers` (layer 0 over
    token kinds), the logits of `Model.__call__` (the last layer at the query alone) and the
    interventions, to 1e-10 of the textbook forward, in float64."""
    cfg = Config(layers=layers, d_mlp=d_mlp, layernorm=layernorm, bos=bos, framing=framing,
                 heads=2, d_model=8, **SMALL)
    model = random_model(cfg, 0.5)  # scores up to a few hundred (at 0.7 up to 10^4, where
    twin = with_zero_positions(model)  # one rounding of a score moves a pattern by 1e-10)
    batch = exhaustive(cfg, tokens=True, max_len=5)
    for b in [batch] + ([at_end(batch)] if framing == "sentence" else []):
        got, want = model.run_layers(b, positions=True), twin.run_layers(b, positions=True)
        for n, (g, w) in enumerate(zip(got, want)):
            for field in ("pattern", "scores", "v", "z", "result", "resid", "logits",
                          "positions"):
                close(getattr(g, field), getattr(w, field), f"layer {n} {field}")
        close(model(b), want[-1].logits, "__call__")
        # interventions: a head replaced at every position of layer 0, a layer's query row
        mean = want[0].positions[:, :, 1].mean(1, keepdim=True)
        for layer in range(layers):
            over = torch.rand(want[layer].pattern.shape, generator=torch.Generator().manual_seed(
                layer), dtype=torch.float64)
            kw = dict(attn_override=over, layer=layer, replace={(0, 1): mean, (1, 0): mean[:, :, 0]})
            for g, w in zip(model.run_layers(b, **kw), twin.run_layers(b, **kw)):
                for field in ("pattern", "z", "result", "resid", "logits"):
                    close(getattr(g, field), getattr(w, field), f"override at {layer}: {field}")


@pytest.mark.parametrize("layers, d_mlp, layernorm, bos, framing", PREFIX[::3])
def test_the_prefix_paths_gradient_is_the_textbook_forwards(layers, d_mlp, layernorm, bos,
                                                              framing):
    cfg = Config(layers=layers, d_mlp=d_mlp, layernorm=layernorm, bos=bos, framing=framing,
                 heads=2, d_model=8, **SMALL)
    batch = exhaustive(cfg, tokens=True, max_len=5)
    batch = at_end(batch) if framing == "sentence" else batch
    target = torch.randint(0, cfg.d_vocab, (cfg.n_seeds, len(batch)),
                           generator=torch.Generator().manual_seed(1))
    grads = []
    for textbook_forward in (False, True):
        model = random_model(cfg, 0.5)
        leaves = [w.requires_grad_() for w in model.weights.values()]
        if textbook_forward:
            logits = with_zero_positions(model).run_layers(batch)[-1].logits
        else:
            logits = model(batch)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()
        grads.append([w.grad for w in leaves])
    for name, g, w in zip(random_model(cfg).weights, *grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)
