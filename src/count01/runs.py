"""Run directories on disk: atomic writes, safetensors weights, and loading with checks.

A run directory holds
    config.json              the full Config
    model.safetensors        final weights, TransformerLens names, leading seed axis (S, ...)
    metrics.json             evaluation of the final weights
    resume.safetensors       weights + AdamW state of the latest checkpoint (for --resume)
    checkpoints/step_NNNNNNN.safetensors   weights every `checkpoint_every` steps
Every file is written to a temporary name and renamed, so a crash never leaves half a file.
Weights are only ever read from safetensors and JSON (never pickle).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .config import Config, Count01Error
from .model import Model, weight_shapes

FORMAT = "count01/1"


class CheckpointError(Count01Error):
    pass


def _file_mode() -> int:
    """The mode open() would give a new file (mkstemp's is 0600, unreadable to collaborators)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def writable(path: str | Path, kind: str = "dir", what: str = "--out") -> Path:
    """Check, before anything is computed or written, that `path` can become a directory
    (kind="dir") or a file (kind="file"): the path is not the other kind, and its nearest existing
    ancestor is a directory this process can create entries in (tried, then undone). A refused
    path is one `Count01Error` line naming `what`; nothing is left behind."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise Count01Error(f"{what} {path} is a dangling symbolic link")
    if path.exists() and (path.is_dir() != (kind == "dir")):
        raise Count01Error(f"{what} {path} is {'a file' if kind == 'dir' else 'a directory'}; "
                           f"expected a {'directory' if kind == 'dir' else 'file'}")
    ancestor = path if path.exists() and kind == "dir" else path.parent
    while not ancestor.exists() and not ancestor.is_symlink():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise Count01Error(f"{what} {path} cannot be created: {ancestor} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".count01-probe."))
    except OSError as e:
        raise Count01Error(f"{what} {path} cannot be written: {e.strerror or e}") from None
    return path


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp onto path (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_leftovers(directory: str | Path) -> None:
    """Delete the temporary files (.NAME.XXXX.tmp) that `atomic_write`s killed mid-way left in
    `directory`. Only for a directory no other process is writing to (it holds a lock)."""
    for tmp in Path(directory).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupted JSON in {path}: {e}") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], cfg: Config, seeds: list[int],
                 **meta: Any) -> None:
    metadata = {"format": FORMAT, "model": json.dumps(cfg.model_dict()),
                "seeds": json.dumps(list(seeds))} | {k: json.dumps(v) for k, v in meta.items()}
    data = {k: v.detach().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=metadata))


def load_tensors(path: Path, cfg: Config | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a count01 safetensors file; check it is ours and matches `cfg` if given."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"missing checkpoint: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupted or truncated checkpoint {path}: {e}") from None
    if raw_meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a count01 checkpoint (no '{FORMAT}' metadata)")
    meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    if cfg is not None:
        if meta.get("model") != cfg.model_dict():
            raise CheckpointError(f"{path}: checkpoint model {meta.get('model')} does not match "
                                  f"the config {cfg.model_dict()}")
        check_shapes(tensors, cfg, len(meta["seeds"]), path)
    return tensors, meta


def check_shapes(tensors: dict[str, torch.Tensor], cfg: Config, n_seeds: int, path: Path) -> None:
    expected = {k: (n_seeds,) + s for k, s in weight_shapes(cfg).items()}
    names = {k for k in tensors if not k.startswith("optim.")}
    if names != set(expected):
        diff = sorted(names ^ set(expected))
        raise CheckpointError(f"{path}: weights do not match the config (names differ: {diff})")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, config "
                                  f"implies {shape}")


def load_config(run: Path) -> Config:
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"no such run directory: {run}")
    data = read_json(run / "config.json")
    if not isinstance(data, dict):
        raise CheckpointError(f"{run / 'config.json'} is not a config")
    try:
        return Config.from_dict(data, source=str(run / "config.json"))
    except Count01Error as e:
        raise CheckpointError(str(e)) from None


def load(run: str | Path, checkpoint: str | Path | None = None) -> Model:
    """The trained model of a run directory (all seeds), or of one of its checkpoints."""
    run = Path(run)
    cfg = load_config(run)
    path = run / "model.safetensors" if checkpoint is None else Path(checkpoint)
    if checkpoint is None and not path.exists():
        raise CheckpointError(f"{run} has no final weights (model.safetensors); "
                              f"finish it with: count01 train --resume {run}")
    tensors, meta = load_tensors(path, cfg)
    weights = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    return Model(cfg, weights, meta["seeds"])


def checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the periodic checkpoints of a run, by step."""
    found = []
    for p in sorted((Path(run) / "checkpoints").glob("step_*.safetensors")):
        found.append((int(p.stem.split("_")[1]), p))
    return found
