"""The sweep directory's files: sweep.json, the records results/<id>.json and the four tables
built from them (columns below; see `count01.sweeps` for the directory).

Columns. Every table starts with config_id; the long tables then repeat the grid fields.
- results: config_id, every Config field except `seed` (d_head resolved to d_model // heads when
  unset), seed, success (hard l-acc >= 0.99), ideal (SPEC 4's ideal solution: l-acc >= 0.99 on
  hard, long, noisy and exhaustive), diverged (some final weight is NaN or infinite:
  training blew up; the run is a failure and its final metrics are empty), steps_to_success (the
  first checkpoint step at which hard l-acc >= 0.99, empty if none), loss (final cross-entropy on
  iid), then for each set in
  iid, hard, exhaustive, long, noisy: <set>_l_acc, <set>_valid, <set>_auc; min_heads (the size of
  the smallest head set that keeps hard l-acc >= 0.99 with alpha refitted, empty if none),
  min_head_set (its heads as a JSON list, e.g. "[0, 2]"), labour (SPEC 4's division of labour:
  pseudo-ensemble, divided, mixed or unsolved, `aggregation.head_sets`, on hard),
  stopped_at (with early_stop: the step at which training gave up on the seed, else empty); then
  h<k>_s_acc, h<k>_w01, h<k>_w02 for k < the sweep's largest head count (head k on `hard`;
  empty where the configuration has fewer heads). The long heads table holds the same numbers
  with every other head statistic.
- heads: config_id, grid fields, set (iid, hard, long, noisy; not exhaustive, which on the token
  path is 3^12 strings), seed, head, then every column of `metrics.head_table`: head_auc, s_acc,
  s_threshold, probe_s_acc, w01, w02, w_eos, w_bos, mass_0, mass_1, mass_2, mass_eos, mass_bos.
- trajectory: config_id, grid fields, seed, step, loss (cross-entropy on iid), hard_l_acc,
  hard_valid, hard_auc.
- head_trajectory: config_id, grid fields, seed, step, head, s_acc (on hard, threshold fitted on
  `fit` at that checkpoint), head_auc (hard), w01, w02 (measured on hard).
  Both are empty for a seed at a checkpoint where its weights are not finite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import Config, Count01Error
from ..criteria import IDEAL_SETS, SUCCESS_L_ACC, SUCCESS_SET
from ..files import atomic_write, read_json, write_json
from .grid import Point, Sweep, SweepError

TABLES = ("results", "heads", "trajectory", "head_trajectory")
FORMAT = "count01-sweep/1"


class NoResultsYet(SweepError):
    """A sweep directory without tables: no configuration has finished."""



def write_sweep(out: Path, sweep: Sweep, points: list[Point]) -> None:
    """sweep.json: the sweep and its configurations (id, grid values), in grid order."""
    write_json(out / "sweep.json", {"format": FORMAT, "sweep": sweep.to_dict(),
                                    "points": [{"id": p.id, "grid": p.grid} for p in points]})


def result_path(out: Path, point: Point) -> Path:
    """Where the finished record of `point` is written."""
    return out / "results" / f"{point.id}.json"


def read_sweep(out: str | Path) -> Sweep:
    """The sweep last run in `out`, from sweep.json (checked like a sweep file)."""
    path = Path(out) / "sweep.json"
    if not path.is_file():
        raise SweepError(f"{out} is not a sweep directory (no sweep.json); run count01 sweep first")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(
            data.get("sweep"), dict):
        raise SweepError(f"{path} is not a count01 sweep (no '{FORMAT}' format and sweep table)")
    return Sweep.from_dict(data["sweep"], source=str(path))


def read_points(out: str | Path) -> list[Point]:
    """The configurations of the sweep last run in `out`, recomputed from its sweep, never
    taken from the ids written in sweep.json: an id names a directory, and a recomputed one is
    always a single safe path component (`config_id`)."""
    return read_sweep(out).points()


def seed_steps(out: str | Path) -> int:
    """Seed-steps the sweep's finished configurations trained: seeds x steps, a seed early
    stopping gave up on counted to the step where it stopped (0 without a sweep.json)."""
    out = Path(out)
    if not (out / "sweep.json").exists():
        return 0
    total = 0
    for point in read_points(out):
        record = read_record(out, point)
        if record is not None:
            total += sum(r.get("stopped_at") or point.cfg.steps for r in record["runs"])
    return total


# what `tables_of` reads of each row of a record (`_is_record`)
RECORD_KEYS = {"runs": ("seed", "success", "diverged"),
               "heads": ("seed", "set", "head", "s_acc", "w01", "w02"),
               "trajectory": ("seed", "step"), "head_trajectory": ("seed", "step", "head")}


def read_record(out: Path, point: Point) -> dict[str, Any] | None:
    """The finished record of `point` (results/<id>.json), None if it has none yet.

    Records are written atomically, so one that does not parse or lacks what `tables_of` reads
    was edited or copied in: it is refused, naming the file, rather than silently recomputed
    (deleting it and re-running the sweep recomputes that configuration).
    """
    path = result_path(out, point)
    if not path.exists():
        return None
    hint = "; delete it and re-run the sweep to recompute that configuration"
    try:
        rec = read_json(path)
    except Count01Error as e:
        raise SweepError(f"{e}{hint}") from None
    if not _is_record(rec):
        raise SweepError(f"{path} is not a sweep record (config, seconds, and rows of runs, "
                         f"heads, trajectory, head_trajectory){hint}")
    try:  # read as a Config: a record from before a field was added holds its default
        same = Config.from_dict(rec["config"], source=str(path)) == point.cfg
    except Count01Error:
        same = False
    if not same:
        raise SweepError(f"{path} was written for another configuration{hint}")
    return rec


def _is_record(rec: Any) -> bool:
    """Has `rec` what `tables_of` and `report` read of a record?"""
    if not (isinstance(rec, dict) and isinstance(rec.get("config"), dict)
            and isinstance(rec.get("seconds"), (int, float))):
        return False
    return all(isinstance(rec.get(name), list)
               and all(isinstance(r, dict) and all(k in r for k in keys) for r in rec[name])
               for name, keys in RECORD_KEYS.items())


def tables_of(out: Path, points: list[Point], records: dict[str, dict | None] | None = None
              ) -> dict[str, pd.DataFrame]:
    """The four tables from the finished records of `points` (unfinished ones are left out):
    `records` ({id: `read_record`'s answer}, None: read here) spares a driver re-reading every
    record after each job."""
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    max_heads = max(p.cfg.layers * p.cfg.heads for p in points)  # h<global index>_*
    for p in points:
        rec = read_record(out, p) if records is None else records[p.id]
        if rec is None:
            continue
        tag = {"config_id": p.id} | p.grid
        for name in TABLES[1:]:
            rows[name] += [tag | r for r in rec[name]]
        fields = {k: v for k, v in p.cfg.to_dict().items() if k != "seed"}
        fields["d_head"] = p.cfg.d_head_
        wide: dict[int, dict] = {}
        for r in rec["heads"]:
            if r["set"] == SUCCESS_SET:
                wide.setdefault(r["seed"], {}).update(
                    {f"h{r['head']}_{k}": r[k] for k in ("s_acc", "w01", "w02")})
        for r in rec["runs"]:
            heads = {f"h{h}_{k}": wide.get(r["seed"], {}).get(f"h{h}_{k}", np.nan)
                     for h in range(max_heads) for k in ("s_acc", "w01", "w02")}
            rows["results"].append({"config_id": p.id} | fields | _with_new_columns(r) | heads)
    tables = {name: pd.DataFrame(r) for name, r in rows.items()}
    if len(tables["results"]):  # steps, empty where none: float, so CSV and Parquet agree
        tables["results"] = tables["results"].astype({"steps_to_success": float,
                                                      "stopped_at": float})
    return tables


def _with_new_columns(run: dict[str, Any]) -> dict[str, Any]:
    """A run row of a record written before a column was added: ideal recomputed from its
    per-set l-acc, the labour and the early stop unknown (empty)."""
    if "ideal" in run:
        return run
    ideal = run["success"] and all((run.get(f"{name}_l_acc") or 0.0) >= SUCCESS_L_ACC
                                   for name in IDEAL_SETS)
    items = list(run.items())
    at = list(run).index("success") + 1  # the columns keep their order: ideal after success
    return dict(items[:at] + [("ideal", ideal)] + items[at:]) | {"labour": None,
                                                                 "stopped_at": None}


def write_tables(out: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, df in tables.items():
        if df.empty:
            continue
        atomic_write(out / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
        atomic_write(out / f"{name}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))


def load_tables(out: str | Path) -> dict[str, pd.DataFrame]:
    """The sweep's tables as written (Parquet, exact dtypes). Every row's config_id must be one
    of the sweep's own configurations (`read_points`): ids name files and directories."""
    out = Path(out)
    missing = [n for n in TABLES if not (out / f"{n}.parquet").exists()]
    if missing:
        raise NoResultsYet(f"{out} has no finished configuration yet (no {missing[0]}.parquet); "
                         "run count01 sweep first")
    ids = {p.id for p in read_points(out)}
    tables = {}
    for name in TABLES:
        path = out / f"{name}.parquet"
        try:
            tables[name] = df = pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            raise SweepError(f"{path} is not a readable table: {e}") from None
        foreign = sorted(set(df["config_id"]) - ids) if "config_id" in df else ["(none)"]
        if foreign:
            raise SweepError(f"{path} holds config_id {foreign[0]!r}, not a configuration of "
                             f"the sweep in {out / 'sweep.json'}")
    return tables

