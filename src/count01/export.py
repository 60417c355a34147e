"""Export one seed of a model to TransformerLens, so its users can open it with their own tools.

Our weights already carry TransformerLens names and shapes (SPEC 3); export selects one seed and
fills in what TransformerLens always has: a `pos_embed.W_pos` (zeros when we have none, since
its native model knows only "standard" and "rotary" position embeddings) and the TL config.
On disk it is the legacy TL checkpoint format (`HookedTransformer.state_dict()` names and
shapes) plus the config as JSON; TransformerLens 4.x, which removed `HookedTransformer`, loads
that through

    cfg = TransformerBridgeConfig.from_dict(json.load(open("tl_config.json")))
    bridge = TransformerBridge.boot_native(cfg)
    bridge.load_state_dict(convert_tl_checkpoint(load_file("tl_state_dict.safetensors"), cfg))

and 3.x through `HookedTransformer(HookedTransformerConfig.from_dict(...))`. TransformerLens
is an optional, heavy extra (`count01[lens]`): it is imported only inside these functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import Config, Count01Error
from .language import exhaustive, vocab
from .model import Model
from .runs import atomic_write, load, read_json, write_json

STATE_DICT = "tl_state_dict.safetensors"
CONFIG = "tl_config.json"
FORMAT = "count01-transformer-lens/1"
TOLERANCE = 1e-4
INSTALL = "TransformerLens is not installed: pip install count01[lens]"
# TL 3.x HookedTransformer buffers that a weights file need not carry
_HT_BUFFERS = (".mask", ".IGNORE")


class ExportError(Count01Error):
    pass


def tl_config(cfg: Config) -> dict[str, Any]:
    """Our config as TL config fields, accepted by TransformerBridgeConfig (4.x) and
    HookedTransformerConfig (3.x) alike. Our strings carry BOS themselves: no prepended BOS."""
    return {"d_model": cfg.d_model, "d_head": cfg.d_head_, "n_heads": cfg.heads, "n_layers": 1,
            "n_ctx": cfg.n_ctx, "d_vocab": cfg.d_vocab, "d_vocab_out": cfg.d_vocab, "attn_only": True,
            "normalization_type": "LN" if cfg.layernorm else None,
            "positional_embedding_type": "standard", "eps": 1e-5, "attention_dir": "causal",
            "default_prepend_bos": False}


def tl_state_dict(model: Model, seed_index: int) -> dict[str, torch.Tensor]:
    """One seed's weights in TL names and exact TL shapes (W_Q (H, d_model, d_head), ...)."""
    if not -model.n_seeds <= seed_index < model.n_seeds:
        raise ExportError(f"seed index {seed_index} out of range: the model has "
                          f"{model.n_seeds} seeds")
    sd = {k: w[seed_index].detach().clone().contiguous() for k, w in model.weights.items()}
    if "pos_embed.W_pos" not in sd:  # no position embedding: an all-zero table is the same model
        sd["pos_embed.W_pos"] = torch.zeros(model.cfg.n_ctx, model.cfg.d_model,
                                            dtype=sd["embed.W_E"].dtype)
    return sd


def _import_lens() -> None:
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        raise ExportError(INSTALL) from None


def load_transformer_lens(state_dict: dict[str, torch.Tensor], config: dict[str, Any]):
    """A TransformerLens model holding these weights: a `TransformerBridge` on 4.x (via
    `convert_tl_checkpoint` into `boot_native`), a `HookedTransformer` on 3.x."""
    _import_lens()
    # TL initialises weights before we overwrite them; keep that off the caller's global RNG
    with torch.random.fork_rng(devices=[]):
        try:
            from transformer_lens import TransformerBridge, TransformerBridgeConfig
            from transformer_lens.conversion_utils import convert_tl_checkpoint
        except ImportError:  # the 3.x line
            from transformer_lens import HookedTransformer, HookedTransformerConfig

            tl = HookedTransformer(HookedTransformerConfig.from_dict(dict(config)))
            result = tl.load_state_dict(state_dict, strict=False)
            missing = [k for k in result.missing_keys if not k.endswith(_HT_BUFFERS)]
        else:
            cfg = TransformerBridgeConfig.from_dict(dict(config))
            tl = TransformerBridge.boot_native(cfg, dtype=state_dict["embed.W_E"].dtype)
            result = tl.load_state_dict(convert_tl_checkpoint(state_dict, cfg), strict=False)
            missing = list(result.missing_keys)
    if missing or result.unexpected_keys:
        raise ExportError(f"TransformerLens did not take the weights: missing {missing}, "
                          f"unexpected {list(result.unexpected_keys)}")
    return tl.eval()


def to_transformer_lens(model: Model, seed_index: int = 0):
    """Seed `seed_index` (a position in model.seeds) of `model` as a TransformerLens model."""
    return load_transformer_lens(tl_state_dict(model, seed_index), tl_config(model.cfg))


def eos_logits(tl_model, tokens: torch.Tensor, eos_pos: torch.Tensor) -> torch.Tensor:
    """TL logits at each example's EOS. tokens (B, L) right-padded: with the causal mask the
    padding after EOS never reaches the EOS row. Returns (B, d_vocab)."""
    logits = tl_model(tokens)  # (B, L, d_vocab)
    return logits[torch.arange(len(tokens)), eos_pos]


def max_logit_error(model: Model, seed_index: int, tl_model, max_len: int = 6) -> float:
    """Largest |logit difference| at EOS between our seed and its TL copy, over every string of
    length 1..max_len: the check that the export computes the same function."""
    batch = exhaustive(model.cfg, tokens=True, max_len=max_len)
    with torch.no_grad():
        ours = model.select(seed_index).run(batch, force_tokens=True).logits[0]  # (B, V)
        theirs = eos_logits(tl_model, batch.tokens, batch.eos_pos)
    return (ours - theirs.to(ours.dtype)).abs().max().item()


@dataclass
class Export:
    out_dir: Path  # holds tl_state_dict.safetensors and tl_config.json
    seed: int
    tl_model: Any  # loaded back from the files; None without TransformerLens
    max_logit_error: float | None  # vs count01 on every string of length 1..checked_len
    checked_len: int | None


def save_transformer_lens(run: str | Path, seed: int | None = None,
                          out_dir: str | Path | None = None) -> Export:
    """Write seed `seed` (a seed number of the run; default its first) of a run directory as
    tl_state_dict.safetensors + tl_config.json in out_dir (default RUN/transformer_lens/seed_K).

    Where TransformerLens is installed, load the written files back and check the loaded model
    against ours (logits at EOS within TOLERANCE), so a file that would mislead never ships
    silently.
    """
    model = load(run)
    seed = model.seeds[0] if seed is None else seed
    if seed not in model.seeds:
        raise ExportError(f"{run} has no seed {seed}; its seeds are "
                          f"{', '.join(map(str, model.seeds))}")
    index = model.seeds.index(seed)
    out = Path(run) / "transformer_lens" / f"seed_{seed}" if out_dir is None else Path(out_dir)
    sd = tl_state_dict(model, index)
    meta = {"format": FORMAT, "seed": json.dumps(seed), "vocab": json.dumps(vocab(model.cfg.noise_symbols)),
            "count01_model": json.dumps(model.cfg.model_dict())}
    atomic_write(out / STATE_DICT, lambda tmp: save_file(sd, tmp, metadata=meta))
    write_json(out / CONFIG, tl_config(model.cfg))
    try:
        _import_lens()
    except ExportError:
        return Export(out, seed, None, None, None)
    tl = load_transformer_lens(load_file(str(out / STATE_DICT)), read_json(out / CONFIG))
    checked_len = min(6, model.cfg.n_ctx - 2)  # TL's position table ends at n_ctx
    error = max_logit_error(model, index, tl, checked_len)
    if not error <= TOLERANCE:
        raise ExportError(f"the exported model's logits differ from count01's by {error:.3g} "
                          f"(> {TOLERANCE}): TransformerLens computes another function")
    return Export(out, seed, tl, error, checked_len)
