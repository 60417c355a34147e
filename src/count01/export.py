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

Import is the inverse, and needs no TransformerLens: a TL checkpoint of L layers, attention-only
or with a GELU MLP (act_fn "gelu"), on this vocabulary (these two files, or a state dict in
safetensors or a weights-only .pt/.pth with its TL config) becomes a one-seed count01 run. Every
TL setting that changes the function is checked, and one count01 does not compute is refused by
name; HookedTransformer's buffers (the causal mask, IGNORE) are checked and dropped; an all-zero
position table is `pos_embed none` (the same model). An export carries its run's config, so
export-then-import gives back the run's seed exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .config import MAX_NOISE_SYMBOLS, Config, Count01Error
from .files import atomic_write, locked, read_json, writable, write_json
from .language import at_end, exhaustive, vocab
from .measure.metrics import evaluate
from .model import LN_EPS, Model, sinusoidal, weight_shapes
from .runs import load, save_tensors

STATE_DICT = "tl_state_dict.safetensors"
CONFIG = "tl_config.json"
FORMAT = "count01-transformer-lens/1"
TOLERANCE = 1e-4
ACT_FN = "gelu"  # TL's name of torch's exact GELU (F.gelu), count01's MLP activation
INSTALL = "TransformerLens is not installed: pip install count01[lens]"
# TL 3.x HookedTransformer buffers that a weights file need not carry
_HT_BUFFERS = (".mask", ".IGNORE")


class ExportError(Count01Error):
    pass


def tl_config(cfg: Config) -> dict[str, Any]:
    """Our config as TL config fields, accepted by TransformerBridgeConfig (4.x) and
    HookedTransformerConfig (3.x) alike. Our strings carry BOS themselves: no prepended BOS."""
    mlp = {"attn_only": False, "d_mlp": cfg.d_mlp, "act_fn": ACT_FN} if cfg.d_mlp else {}
    return {"d_model": cfg.d_model, "d_head": cfg.d_head_, "n_heads": cfg.heads,
            "n_layers": cfg.layers, "n_ctx": cfg.n_ctx, "d_vocab": cfg.d_vocab,
            "d_vocab_out": cfg.d_vocab, "attn_only": True,
            "normalization_type": "LN" if cfg.layernorm else None,
            "positional_embedding_type": "standard", "eps": LN_EPS, "attention_dir": "causal",
            "default_prepend_bos": False} | mlp


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
    """Largest |logit difference| at EOS (in the sentence framing also at the ending, the query
    at y) between our seed and its TL copy, over every string of length 1..max_len: the check
    that the export computes the same function."""
    batch = exhaustive(model.cfg, tokens=True, max_len=max_len)
    m = model.select(seed_index)
    with torch.no_grad():
        ours = m.run(batch, force_tokens=True).logits[0]  # (B, V)
        theirs = eos_logits(tl_model, batch.tokens, batch.eos_pos)
        err = (ours - theirs.to(ours.dtype)).abs().max().item()
        if model.cfg.framing == "sentence":  # tokens are [BOS] x EOS y EOS: y one after EOS
            ours = m(at_end(batch))[0]
            theirs = eos_logits(tl_model, batch.tokens, batch.eos_pos + 1)
            err = max(err, (ours - theirs.to(ours.dtype)).abs().max().item())
    return err


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
    meta = {"format": FORMAT, "seed": json.dumps(seed),
            "vocab": json.dumps(vocab(model.cfg.noise_symbols)),
            "count01_model": json.dumps(model.cfg.model_dict()),
            "count01_config": json.dumps(model.cfg.to_dict())}  # so import restores the run's
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


# --- import: a TransformerLens checkpoint as a count01 run (the inverse of the export) --------

WEIGHT_FILES = (".safetensors", ".pt", ".pth")
SHAPE_FIELDS = ("heads", "d_model", "d_head", "pos_embed", "layernorm", "n_seeds",
                "noise_symbols", "layers", "d_mlp")  # from TL (noise_symbols = d_vocab - 4)
# TL config fields that change the function, at the value (or values) count01 computes; any
# other value is refused by name. Fields not listed (names, tokenizer, init, device, dtype,
# rotary or MLP settings that the checks above make unused) do not change what the model computes.
_NEUTRAL: dict[str, tuple] = {
    "attention_dir": ("causal",), "use_attn_scale": (True,), "use_local_attn": (False,),
    "attn_types": (None,), "use_qk_norm": (False,), "clip_qkv": (None,),
    "use_logn_attn": (False,), "final_rms": (False,), "post_embedding_ln": (False,),
    "use_normalization_before_and_after": (False,), "use_attention_sinks": (False,),
    "num_experts": (None,), "uses_rms_norm": (False,), "relative_attention_num_buckets": (None,),
    "ungroup_grouped_query_attention": (False,), "scale_attn_by_inverse_layer_idx": (False, True),
    "gated_mlp": (False,), "parallel_attn_mlp": (False,),
}
_REQUIRED = ("d_model", "d_head", "n_heads", "n_layers", "n_ctx", "d_vocab")


class ImportRefused(Count01Error):
    """A checkpoint count01 cannot take as it is: one line naming what is unsupported."""


def read_checkpoint(src: str | Path, tl_config: str | Path | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str], Path, Path]:
    """The state dict, TL config and safetensors metadata of a TransformerLens checkpoint, and the
    paths read. SRC is a directory `count01 export` wrote, or a state dict file: safetensors, or
    .pt/.pth read only through torch.load(weights_only=True) (never arbitrary pickle); its TL
    config is `tl_config`, by default tl_config.json in SRC or beside it."""
    src = Path(src)
    if src.is_dir():
        weights = src / STATE_DICT
        if not weights.is_file():
            raise ImportRefused(f"{src} holds no {STATE_DICT} (a directory written by count01 "
                                "export)")
    elif src.is_file():
        if not src.name.endswith(WEIGHT_FILES):
            raise ImportRefused(f"{src}: a TransformerLens state dict must be .safetensors, .pt "
                                "or .pth (or a directory written by count01 export)")
        weights = src
    else:
        raise ImportRefused(f"no such file or directory: {src}")
    config_path = Path(tl_config) if tl_config is not None else weights.parent / CONFIG
    if not config_path.is_file():
        raise ImportRefused(f"no TransformerLens config: {config_path} does not exist "
                            "(give --tl-config)")
    meta: dict[str, str] = {}
    if weights.name.endswith(".safetensors"):
        try:
            with safe_open(str(weights), framework="pt") as f:
                meta = f.metadata() or {}
            sd = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise ImportRefused(f"corrupted or truncated safetensors file {weights}: "
                                f"{_line(e)}") from None
    else:
        try:
            sd = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # the unpickler raises many kinds; each one means "not weights"
            raise ImportRefused(f"{weights} is not a weights-only PyTorch file: {_line(e)}") from None
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in sd.items()):
            raise ImportRefused(f"{weights} is not a plain state dict (a mapping of names to "
                                "tensors)")
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise ImportRefused(f"{config_path} is not a TransformerLens config (not a JSON object)")
    missing = [k for k in _REQUIRED if not isinstance(config.get(k), int)
               or isinstance(config.get(k), bool)]
    if missing:
        raise ImportRefused(f"{config_path} is not a TransformerLens config: no integer "
                            f"{', '.join(missing)}")
    return sd, config, meta, weights, config_path


def _line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _check_tl_config(tl: dict[str, Any]) -> None:
    """Refuse, by name, every TL setting whose model count01 does not compute."""
    v = tl["d_vocab"]
    if not 5 <= v <= MAX_NOISE_SYMBOLS + 4 or tl.get("d_vocab_out", -1) not in (-1, v, None):
        raise ImportRefused(f"vocabulary size d_vocab {v}, d_vocab_out "
                            f"{tl.get('d_vocab_out', -1)}: count01's vocabulary is 5 tokens "
                            f"({' '.join(vocab(1))}) plus up to {MAX_NOISE_SYMBOLS - 1} more noise "
                            "symbols, the same in and out")
    if tl["n_layers"] < 1:
        raise ImportRefused(f"n_layers {tl['n_layers']}: a model needs at least one layer")
    if tl.get("attn_only", False) is not True:  # TL's default is a model with an MLP
        act, d_mlp = tl.get("act_fn"), tl.get("d_mlp")
        if act != ACT_FN:
            raise ImportRefused(f"an MLP with act_fn {act!r}: count01's MLP is exact GELU "
                                f"(act_fn {ACT_FN!r})")
        if not isinstance(d_mlp, int) or isinstance(d_mlp, bool) or d_mlp < 1:
            raise ImportRefused(f"an MLP with d_mlp {d_mlp!r}: a positive integer is needed")
    pos = tl.get("positional_embedding_type", "standard")
    if pos != "standard":
        raise ImportRefused(f"positional_embedding_type {pos!r}: count01 imports standard "
                            "(additive table) position embeddings only")
    norm = tl.get("normalization_type", "LN")  # TL's default
    if norm not in (None, "LN"):
        raise ImportRefused(f"normalization_type {norm!r}: count01 has LayerNorm (LN) or none")
    if norm == "LN" and tl.get("eps", LN_EPS) != LN_EPS:
        raise ImportRefused(f"LayerNorm eps {tl['eps']}: count01's LayerNorm uses {LN_EPS:g}")
    for key, allowed in _NEUTRAL.items():
        if key in tl and tl[key] not in allowed:
            raise ImportRefused(f"{key} = {tl[key]!r}: count01 computes only {allowed[0]!r}")
    for key in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (tl.get(key) or -1.0) > 0:
            raise ImportRefused(f"{key} = {tl[key]!r}: count01 has no soft cap")
    kv = tl.get("n_key_value_heads")
    if kv is not None and kv != tl["n_heads"]:
        raise ImportRefused(f"grouped-query attention (n_key_value_heads {kv} of {tl['n_heads']} "
                            "heads): count01 has one key and value per head")
    scale = tl.get("attn_scale")
    if scale is not None and abs(float(scale) - tl["d_head"] ** 0.5) > 1e-9:
        raise ImportRefused(f"attn_scale {scale}: count01 divides scores by sqrt(d_head) = "
                            f"{tl['d_head'] ** 0.5:g}")


def _tl_buffers(sd: dict[str, torch.Tensor]) -> list[str]:
    """Drop HookedTransformer's attention buffers after checking they hold what count01 computes
    anyway (the causal mask, a score that softmax turns into 0); what was dropped, for the
    run's record."""
    notes = []
    for name in [k for k in sd if k.endswith(_HT_BUFFERS)]:
        t = sd.pop(name)
        if re.fullmatch(r"blocks\.\d+\.attn\.mask", name):
            causal = torch.ones(t.shape, dtype=torch.bool).tril()
            if t.dim() != 2 or t.shape[0] != t.shape[1] or t.dtype != torch.bool \
                    or not torch.equal(t, causal):
                raise ImportRefused(f"{name} is not TransformerLens's causal mask: count01 "
                                    "attends causally only")
        elif re.fullmatch(r"blocks\.\d+\.attn\.IGNORE", name):
            if t.numel() != 1 or not t.is_floating_point() or not t.item() <= -1e4:
                raise ImportRefused(f"{name} is {t.flatten()[:1].tolist()}: a masked score must "
                                    "be -inf (or <= -1e4) so that softmax ignores it")
        else:
            sd[name] = t  # not a buffer count01 knows: the key check names it
            continue
        notes.append(f"{name}: TransformerLens buffer checked and dropped")
    return notes


def _pos_embed(W_pos: torch.Tensor, said: str | None) -> str:
    """count01's positional embedding for a TL table: `said` (a count01 export's own word)
    when the table agrees with it, otherwise none for an all-zero table (exactly the same
    model), sinusoidal for count01's fixed table, learned for anything else."""
    zero = not W_pos.any()
    sinus = torch.equal(W_pos, sinusoidal(*W_pos.shape))
    if said is not None:
        if (said == "none" and not zero) or (said == "sinusoidal" and not sinus):
            raise ImportRefused(f"pos_embed.W_pos does not match the pos_embed {said!r} that its "
                                "metadata names")
        return said
    return "none" if zero else "sinusoidal" if sinus else "learned"


def _metadata(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key]) if key in meta else None
    except json.JSONDecodeError:
        raise ImportRefused(f"corrupted metadata {key!r} (not JSON)") from None


def from_transformer_lens(sd: dict[str, torch.Tensor], tl: dict[str, Any],
                          meta: dict[str, str] | None = None,
                          overrides: dict[str, Any] | None = None
                          ) -> tuple[Config, dict[str, torch.Tensor], list[str]]:
    """The count01 config, one-seed weights (1, ...) and notes of a TL state dict and config.

    The model fields (SHAPE_FIELDS) come from the checkpoint; the rest from `overrides` over the
    exporting run's config (a count01 export's metadata) or Config's defaults. Refuses, in one
    line naming it, anything count01 does not compute."""
    meta, overrides, sd = meta or {}, dict(overrides or {}), dict(sd)
    _check_tl_config(tl)
    notes = _tl_buffers(sd)
    if "pos_embed.W_pos" not in sd:
        raise ImportRefused("missing weight pos_embed.W_pos (TransformerLens's standard "
                            "position table; all zeros for a model without one)")
    for k, t in sd.items():
        if t.dtype != torch.float32:
            raise ImportRefused(f"{k} is {t.dtype}: count01 imports float32 weights")
        if not torch.isfinite(t).all():
            raise ImportRefused(f"{k} holds non-finite values")
    said = _metadata(meta, "count01_model")
    base = _metadata(meta, "count01_config")
    base = base if isinstance(base, dict) else {}
    n_ctx = tl["n_ctx"]
    W_pos = sd["pos_embed.W_pos"]
    if W_pos.shape != (n_ctx, tl["d_model"]):
        raise ImportRefused(f"pos_embed.W_pos has shape {tuple(W_pos.shape)}, the TL config "
                            f"implies {(n_ctx, tl['d_model'])}")
    pos = _pos_embed(W_pos, said.get("pos_embed") if isinstance(said, dict) else None)
    if pos == "none":
        sd.pop("pos_embed.W_pos")
        notes.append("pos_embed.W_pos all zero: imported as pos_embed none (the same model)")
    heads, d_model, d_head = tl["n_heads"], tl["d_model"], tl["d_head"]
    shape = {"heads": heads, "d_model": d_model, "pos_embed": pos, "n_seeds": 1,
             "noise_symbols": tl["d_vocab"] - 4,
             "layernorm": tl.get("normalization_type", "LN") == "LN", "layers": tl["n_layers"],
             "d_mlp": 0 if tl.get("attn_only", False) is True else tl["d_mlp"],
             "d_head": None if heads * d_head == d_model else d_head}
    clash = [k for k in SHAPE_FIELDS if k in overrides and overrides[k] != shape[k]]
    if clash:
        raise ImportRefused(f"{', '.join(clash)} come(s) from the checkpoint "
                            f"({', '.join(f'{k} = {shape[k]}' for k in clash)})")
    fields = base | {"seed": _metadata(meta, "seed") or 0} | overrides | shape
    ends = 2 * ((overrides | base).get("framing") == "sentence")  # ... EOS y EOS: 2 more
    if pos != "none" and "long_max_len" not in overrides | base:
        fields["long_max_len"] = n_ctx - 2 - ends  # the table's length, if nothing says else

    try:
        cfg = Config.from_dict(fields, source="imported config")
    except Count01Error as e:
        raise ImportRefused(str(e)) from None
    if pos != "none" and cfg.n_ctx != n_ctx:
        raise ImportRefused(f"n_ctx {n_ctx} of the TL config differs from count01's n_ctx "
                            f"{cfg.n_ctx} (max(long_max_len, exhaustive_len, max_len) + 2, + 2 "
                            f"more in the sentence framing): set long_max_len to {n_ctx - 2 - ends}")
    expected = weight_shapes(cfg)
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or extra:
        raise ImportRefused("weights do not match the TL config's model: "
                            + "; ".join(f"{what} {', '.join(ks)}" for what, ks in
                                        (("missing", missing), ("unexpected", extra)) if ks))
    for k, s in expected.items():
        if tuple(sd[k].shape) != s:
            raise ImportRefused(f"{k} has shape {tuple(sd[k].shape)}, the TL config implies {s}")
    return cfg, {k: sd[k][None].contiguous() for k in expected}, notes


def import_transformer_lens(src: str | Path, out: str | Path, tl_config: str | Path | None = None,
                            overrides: dict[str, Any] | None = None) -> Model:
    """Write a TransformerLens checkpoint (see read_checkpoint) as a finished one-seed count01
    run in `out` (config.json, model.safetensors, metrics.json, as `count01 train` writes), so
    every command takes it; metrics.json and the weights' metadata record where it came from.
    `overrides`: Config fields of the task and evaluation (see from_transformer_lens)."""
    out = writable(out)
    if (out / "config.json").exists():
        raise ImportRefused(f"{out} already holds a run; choose another --out")
    sd, tl, meta, weights, config_path = read_checkpoint(src, tl_config)
    cfg, tensors, notes = from_transformer_lens(sd, tl, meta, overrides)
    model = Model(cfg, tensors, cfg.seeds)
    origin = {"from": "transformer-lens", "state_dict": str(weights.resolve()),
              "tl_config": str(config_path.resolve()), "notes": notes}
    with locked(out, "import"):
        if (out / "config.json").exists():
            raise ImportRefused(f"{out} already holds a run")
        save_tensors(out / "model.safetensors", model.weights, cfg, model.seeds, imported=origin)
        write_json(out / "metrics.json", {"imported": origin, "eval": evaluate(model)})
        write_json(out / "config.json", cfg.to_dict())  # last: it is what makes a run
    return model
