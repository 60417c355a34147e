"""Run directories on disk: safetensors weights, and loading them with checks.

A run directory holds
    config.json              the full Config
    model.safetensors        final weights, TransformerLens names, leading seed axis (S, ...)
    metrics.json             evaluation of the final weights
    resume.safetensors       weights + AdamW state of the latest checkpoint (for --resume)
    checkpoints/step_NNNNNNN.safetensors   weights every `checkpoint_every` steps
Every file is written to a temporary name and renamed (`files.atomic_write`), so a crash never
leaves half a file. Weights are only ever read from safetensors and JSON (never pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from .config import Config
from .files import CheckpointError, atomic_write, load_config
from .model import Model, weight_shapes

FORMAT = "count01/1"
OPTIM = "optim."  # prefix of the optimiser state's tensors in resume.safetensors


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file of `tensors`, byte for byte the same for the same input: the header's
    keys sorted (the library's own writer orders the metadata by a randomly seeded hash map, so
    identical runs gave different files). Any safetensors reader loads it."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
           torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8",
           torch.bool: "BOOL"}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], cfg: Config, seeds: list[int],
                 **meta: Any) -> None:
    metadata = {"format": FORMAT, "model": json.dumps(cfg.model_dict()),
                "seeds": json.dumps(list(seeds))} | {k: json.dumps(v) for k, v in meta.items()}
    data = safetensors_bytes(tensors, metadata)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def load_tensors(path: Path, cfg: Config | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a count01 safetensors file; check it is ours, well-formed, and matches `cfg` if given.
    The metadata holds `model` (Config.model_dict), `seeds` (a list of ints) and, for training
    checkpoints, `step`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupted or truncated checkpoint {path}: {e}") from None
    if raw_meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a count01 checkpoint (no '{FORMAT}' metadata)")
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupted metadata (not JSON)") from None
    seeds, step = meta.get("seeds"), meta.get("step", 0)
    if not isinstance(meta.get("model"), dict) or not isinstance(seeds, list) or not seeds or \
            not all(_is_int(s) for s in seeds) or not _is_int(step) or step < 0:
        raise CheckpointError(f"{path}: corrupted metadata (needs a model dict, a non-empty list "
                              "of integer seeds and an integer step >= 0)")
    for k, t in tensors.items():
        if t.dtype != torch.float32:
            raise CheckpointError(f"{path}: {k} is {t.dtype}, count01 weights are float32")
    if cfg is not None:
        if meta["model"] != cfg.model_dict():
            raise CheckpointError(f"{path}: checkpoint model {meta['model']} does not match "
                                  f"the config {cfg.model_dict()}")
        check_shapes(tensors, cfg, len(seeds), path)
    return tensors, meta


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_shapes(tensors: dict[str, torch.Tensor], cfg: Config, n_seeds: int, path: Path) -> None:
    expected = {k: (n_seeds,) + s for k, s in weight_shapes(cfg).items()}
    names = {k for k in tensors if not k.startswith(OPTIM)}
    if names != set(expected):
        diff = sorted(names ^ set(expected))
        raise CheckpointError(f"{path}: weights do not match the config (names differ: {diff})")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, config "
                                  f"implies {shape}")


def load(run: str | Path, checkpoint: str | Path | None = None) -> Model:
    """The trained model of a run directory (all seeds), or of one of its checkpoints."""
    run = Path(run)
    cfg = load_config(run)
    path = run / "model.safetensors" if checkpoint is None else Path(checkpoint)
    if checkpoint is None and not path.exists():
        raise CheckpointError(f"{run} has no final weights (model.safetensors); "
                              f"finish it with: count01 train --resume {run}")
    tensors, meta = load_tensors(path, cfg)
    if meta["seeds"] != cfg.seeds:
        raise CheckpointError(f"{path} holds seeds {_span(meta['seeds'])}, but {run / 'config.json'}"
                              f" says {_span(cfg.seeds)} (seed {cfg.seed}, n_seeds {cfg.n_seeds})")
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIM)}
    return Model(cfg, weights, meta["seeds"])


def _span(seeds: list[int]) -> str:
    return f"{seeds[0]}..{seeds[-1]} ({len(seeds)})" if len(seeds) > 2 else str(seeds)



