"""Files every stage writes and reads, with no torch (so the report and the tables import no
computation): atomic writes, strict JSON, a run's config, saved evaluation and checkpoint list,
directory locks, writability checks, and the watchdog that ends pool workers with their parent.

Every file is written to a temporary name and renamed, so a crash never leaves half a file; the
weights' own readers and writers (safetensors, with shape checks) are in `runs`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .config import Config, Count01Error


class CheckpointError(Count01Error):
    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# the modes open() and mkdir() would give (mkstemp's 0600 and mkdtemp's 0700 would make results
# unreadable to collaborators)
FILE_MODE, DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


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


def json_safe(x: Any) -> Any:
    """NaN and infinities as null: strict JSON readers accept the file."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: Path, data: Any) -> None:
    """Atomically, as strict JSON (non-finite numbers become null)."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupted JSON in {path}: {e}") from None


def load_config(run: Path) -> Config:
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"no such run directory: {run}")
    if not (run / "config.json").is_file():
        raise CheckpointError(f"{run} holds no run (no config.json)")
    data = read_json(run / "config.json")
    if not isinstance(data, dict):
        raise CheckpointError(f"{run / 'config.json'} is not a config")
    try:
        return Config.from_dict(data, source=str(run / "config.json"))
    except Count01Error as e:
        raise CheckpointError(str(e)) from None


def saved_eval(run) -> list[dict]:
    """The rows of `evaluate` a run saved in RUN/metrics.json, checked to be such rows."""
    path = Path(run) / "metrics.json"
    data = read_json(path)
    rows = data.get("eval") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and {"set", "seed", "l_acc", "valid", "auc"} <= r.keys()
            for r in rows):
        raise CheckpointError(f"{path} is not a run's metrics: 'eval' must hold the rows of "
                              "evaluate (set, seed, l_acc, valid, auc)")
    return rows


class locked:
    """Hold an exclusive lock on directory `out` (created if missing) while a command writes
    into it: two processes writing one run or sweep would interleave their files."""

    def __init__(self, out: Path, what: str = "process"):
        self.path, self.what = Path(out) / ".lock", what

    def __enter__(self) -> locked:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "w")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise Count01Error(f"another {self.what} is writing into {self.path.parent}; wait "
                               "for it or choose another directory") from None
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the periodic checkpoints of a run, by step."""
    found = []
    for p in sorted((Path(run) / "checkpoints").glob("step_*.safetensors")):
        found.append((int(p.stem.split("_")[1]), p))
    return found


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def watch_parent(parent: int) -> None:
    """A pool worker's initializer: exit as soon as process `parent` (the command that started
    the pool) is gone, killed or not, so that no worker outlives it or keeps writing into its
    directories (sweep workers, analysis' figure process)."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
