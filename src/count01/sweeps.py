"""Sweeps (SPEC 5, training path): a grid of configurations x many seeds, resumable, on a local
process pool or on Ray, with one tidy table of results.

Each grid point is one configuration whose seeds train as ONE batched model (`train.train`), so a
sweep costs a few batched trainings, not thousands of small ones. A job trains (or resumes, or
just reloads) its configuration, reads every checkpoint, and returns one record; the driver writes
it atomically as results/<id>.json and rebuilds the tables from all records. Re-running the same
command skips finished configurations and resumes the one in progress from its last checkpoint,
so a kill loses at most the steps since that checkpoint. Every job runs with one torch thread
whichever executor runs it, so the tables do not depend on the executor.

A sweep file (TOML; see examples/sweep.toml):
    seeds = 32                       # seeds per configuration (Config.n_seeds); also allowed in
                                     # [base] or [grid] as a single number
    [base]                           # Config fields shared by every configuration
    steps = 3000
    [grid]                           # Config fields to vary: every combination is a configuration
    heads = [1, 2, 4, 8]
    init_scale = [0.5, 1.0]
    [[skip]]                         # optional: combinations left out (each must match one)
    heads = 8
    init_scale = 0.5

SWEEP_DIR holds
    sweep.json                 the sweep and its configurations (id, grid values), in grid order
    runs/<id>/                 a run directory per configuration (see `runs`): checkpoints, weights
    results/<id>.json          the finished record of a configuration (written atomically; an
                               edited or corrupted one is refused, see `read_record`)
    .lock                      held while a sweep runs here (`lock`)
    results.csv, .parquet      one row per run (configuration x seed)
    heads.csv, .parquet        one row per (run, evaluation set, head) of the final weights
    trajectory.csv, .parquet   one row per (run, checkpoint)
    head_trajectory.csv, .parquet   one row per (run, checkpoint, head)
<id> is readable and stable: the grid values, then a hash of the whole Config
(heads=4_lr=0.01-1a2b3c4d).

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

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .aggregation import head_sets
from .config import Config, Count01Error
from .criteria import IDEAL_SETS, SUCCESS_L_ACC, SUCCESS_SET
from .language import EVAL_SETS, ONE, eval_set
from .metrics import (
    direct_scores,
    evaluate,
    evaluate_logits,
    fit_threshold,
    head_table,
    kind_weights,
    l_acc,
    mean_loss,
    roc_auc_rows,
    score,
    threshold_acc,
    valid_rate,
    w02,
)
from .model import Model
from .runs import (
    atomic_write,
    checkpoints,
    load,
    load_config,
    locked,
    read_json,
    remove_leftovers,
    save_tensors,
    watch_parent,
    write_json,
)
from .train import STOP_RULE, train

HEAD_SETS = ("iid", "hard", "long", "noisy")
TABLES = ("results", "heads", "trajectory", "head_trajectory")
TOKEN_PATH_SEEDS = 1  # seeds evaluated at once on the token path: bounds memory (B x L x S)
NOT_IN_GRID = ("seed", "n_seeds")  # a sweep varies seeds through `seeds`, not a grid axis
FORMAT = "count01-sweep/1"
EXECUTORS = ("local", "ray", "inline")
STAT_COLUMNS = ("loss", "hard_l_acc", "hard_valid", "hard_auc")  # trajectory, per checkpoint
HEAD_STAT_COLUMNS = ("s_acc", "head_auc", "w01", "w02")  # head_trajectory, per checkpoint


class SweepError(Count01Error):
    pass


class NoResultsYet(SweepError):
    """A sweep directory without tables: no configuration has finished."""


# --- the sweep file and its grid -------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One configuration of the grid."""

    id: str
    grid: dict[str, Any]  # this configuration's value of every grid field
    cfg: Config


@dataclass(frozen=True)
class Sweep:
    base: dict[str, Any]  # Config fields, including n_seeds
    grid: dict[str, list]  # Config field -> values, in file order
    skip: list[dict[str, Any]] = field(default_factory=list)  # combinations left out

    @classmethod
    def from_toml(cls, path: str | Path) -> Sweep:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SweepError(f"sweep file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SweepError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:  # a directory, unreadable
            raise SweepError(f"cannot read sweep file {path}: {e.strerror or e}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "sweep") -> Sweep:
        """A sweep without [grid] is one configuration (its [base]) x seeds, and says so when it
        runs; a sweep with nothing at all in it is refused (an empty or wrong file)."""
        if not data:
            raise SweepError(f"{source} is empty: give seeds = N, a [base] and a [grid] table "
                             "(see examples/sweep.toml)")
        unknown = sorted(set(data) - {"seeds", "base", "grid", "skip"})
        if unknown:
            raise SweepError(f"{source}: unknown key(s) {', '.join(unknown)} (expected seeds, "
                             "[base], [grid], [[skip]])")
        for table in ("base", "grid"):
            if not isinstance(data.get(table, {}), dict):
                raise SweepError(f"{source}: {table} must be a table ([{table}])")
        base, grid = dict(data.get("base", {})), dict(data.get("grid", {}))
        given = {where: d.pop(key) for where, d, key in (
            ("seeds", dict(data), "seeds"), ("base.seeds", base, "seeds"),
            ("base.n_seeds", base, "n_seeds"), ("grid.seeds", grid, "seeds")) if key in d}
        if len(given) > 1:
            raise SweepError(f"{source}: the number of seeds is given twice ({', '.join(given)})")
        if given:
            base["n_seeds"] = next(iter(given.values()))
        for name, values in grid.items():
            if name in NOT_IN_GRID:
                raise SweepError(f"{source}: {name} cannot be a grid axis; set seeds = N (and "
                                 "seed in [base]) instead")
            if name in base:
                raise SweepError(f"{source}: {name} is both in [base] and in [grid]")
            if not isinstance(values, list) or not values:
                raise SweepError(f"{source}: grid.{name} must be a non-empty list, got {values!r}")
        skip = data.get("skip", [])
        if not isinstance(skip, list) or not all(isinstance(x, dict) and x for x in skip):
            raise SweepError(f"{source}: skip must be a list of tables ([[skip]]) of grid values")
        for x in skip:
            if set(x) - set(grid):
                raise SweepError(f"{source}: skip names {', '.join(sorted(set(x) - set(grid)))}, "
                                 "not a grid field")
        sweep = cls(base, grid, [dict(x) for x in skip])
        sweep.points(source)  # every configuration is checked before anything trains
        return sweep

    def points(self, source: str = "sweep") -> list[Point]:
        """Every configuration, in grid order (the last grid field varies fastest). Values are
        compared once converted to Config values, so 2 and 2.0 (or false and "false") repeat a
        configuration: two would train into one run directory and double its rows."""
        out: dict[str, Point] = {}
        given: dict[str, str] = {}  # id -> the grid values as written, to name a repeat
        used = [False] * len(self.skip)
        for combo in itertools.product(*self.grid.values()):
            values = dict(zip(self.grid, combo))
            hits = [all(values[k] == v for k, v in x.items()) for x in self.skip]
            used = [a or b for a, b in zip(used, hits)]
            if any(hits):
                continue
            where = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "base"
            try:
                cfg = Config.from_dict(self.base | values, source=f"{source} ({where})")
            except Count01Error as e:
                raise SweepError(str(e)) from None
            values = {k: getattr(cfg, k) for k in values}  # coerced: 1 -> 1.0 for floats
            point = Point(config_id(cfg, values), values, cfg)
            if point.id in out:
                raise SweepError(f"{source}: the grid repeats a configuration: {given[point.id]} "
                                 f"and {where} are the same once converted")
            out[point.id], given[point.id] = point, where
        if not all(used):
            raise SweepError(f"{source}: skip {self.skip[used.index(False)]} matches no "
                             "combination of the grid")
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "grid": self.grid} | ({"skip": self.skip} if self.skip else {})


def config_id(cfg: Config, grid: dict[str, Any]) -> str:
    """A stable, readable directory name: the grid values, then a hash of the whole config."""
    digest = hashlib.sha1(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:8]
    label = "_".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in grid.items())
    return re.sub(r"[^A-Za-z0-9.=_+-]", "-", label or "base") + "-" + digest


# --- one configuration: train or resume, then read the checkpoints ------------------------------

def run_point(cfg_dict: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The job of one configuration (runs in a worker): its record of runs, heads, trajectories.

    Finished weights are reloaded, a run with a checkpoint resumes from it, anything else (never
    started, or killed before its first checkpoint) starts afresh.
    """
    cfg = Config.from_dict(cfg_dict, source="sweep job")
    run = Path(run_dir)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic whichever executor runs the job
    try:
        for d in (run, run / "checkpoints"):  # a killed job's temporary files
            remove_leftovers(d)
        if (run / "model.safetensors").exists():
            if load_config(run) != cfg:
                raise SweepError(f"{run} holds a different configuration")
            model = load(run)
        elif (run / "resume.safetensors").exists():
            model = train(cfg, run, resume=True, progress=False)
        else:
            if run.exists():
                shutil.rmtree(run)
            model = train(cfg, run, progress=False)
        record = record_run(model, run)
    finally:
        torch.set_num_threads(threads)
    return record | {"config": cfg.to_dict(), "seconds": time.perf_counter() - t0}


def record_run(model: Model, run: Path) -> dict[str, list[dict]]:
    """Final metrics, head table, minimal head sets and checkpoint trajectories of a run.

    A seed whose weights are not finite (training blew up) is a failure with empty metrics: the
    analyses run on the other seeds, which are independent of it.
    """
    cfg = model.cfg
    sets = {name: eval_set(cfg, name) for name in ("fit", "iid", "hard")}
    trajectory, head_trajectory = [], []
    for step, path in checkpoints(run):
        rows, head_rows = checkpoint_stats(load(run, path), sets)
        trajectory += [{"seed": r.pop("seed"), "step": step} | r for r in rows]
        head_trajectory += [{"seed": r.pop("seed"), "step": step} | r for r in head_rows]
    finite = finite_seeds(model)
    healthy = model.select([i for i, ok in enumerate(finite) if ok])
    final = {name: eval_set(cfg, name) for name in HEAD_SETS}
    evals, heads, minimal, labour = [], [], {}, {}
    if healthy.n_seeds:
        for part in seed_chunks(healthy):
            evals += evaluate(part)
            heads += head_table(part, final, fit=sets["fit"])
            found, kinds = head_sets(part, sets["fit"], sets["hard"], threshold=SUCCESS_L_ACC)
            minimal |= dict(zip(part.seeds, found))
            labour |= dict(zip(part.seeds, kinds))
    empty = {f"{name}_{k}": None for name in EVAL_SETS for k in ("l_acc", "valid", "auc")}
    stopped = read_json(run / "metrics.json").get("stopped", {}) if cfg.early_stop else {}
    runs = []
    for seed, ok in zip(model.seeds, finite):
        mine = [r for r in trajectory if r["seed"] == seed]
        reached = [r["step"] for r in mine
                   if r["hard_l_acc"] is not None and r["hard_l_acc"] >= SUCCESS_L_ACC]
        final_sets = empty | {f"{r['set']}_{k}": r[k] for r in evals if r["seed"] == seed
                              for k in ("l_acc", "valid", "auc")}
        best = minimal.get(seed)
        runs.append({"seed": seed,
                     "success": ok and final_sets[f"{SUCCESS_SET}_l_acc"] >= SUCCESS_L_ACC,
                     "ideal": ok and all(final_sets[f"{name}_l_acc"] >= SUCCESS_L_ACC
                                         for name in IDEAL_SETS),
                     "diverged": not ok, "steps_to_success": min(reached, default=None),
                     "loss": max(mine, key=lambda r: r["step"])["loss"]} | final_sets
                    | {"min_heads": None if best is None else len(best),
                       "min_head_set": None if best is None else json.dumps(best),
                       "labour": labour.get(seed), "stopped_at": stopped.get(str(seed))})
    return {"runs": runs, "heads": heads, "trajectory": trajectory,
            "head_trajectory": head_trajectory}


def finite_seeds(model: Model) -> list[bool]:
    """Per seed: are all its weights finite?"""
    ok = torch.ones(model.n_seeds, dtype=torch.bool)
    for w in model.weights.values():
        ok &= torch.isfinite(w).flatten(1).all(1)
    return ok.tolist()


def seed_chunks(model: Model) -> list[Model]:
    """The model in seed chunks small enough to evaluate: all seeds on the count path (a few
    thousand count triples), TOKEN_PATH_SEEDS at a time on the token path (B x L tokens each)."""
    if model.cfg.count_path:
        return [model]
    n = model.n_seeds
    return [model.select(list(range(i, min(i + TOKEN_PATH_SEEDS, n))))
            for i in range(0, n, TOKEN_PATH_SEEDS)]


def checkpoint_stats(model: Model, sets: dict) -> tuple[list[dict], list[dict]]:
    """Per seed: iid loss, hard l-acc/valid/AUC; per seed and head: s-acc, head AUC, w01, w02 on
    hard (threshold fitted on `fit` at this checkpoint; no probes, which cost seconds each)."""
    fit, iid, hard = sets["fit"], sets["iid"], sets["hard"]
    rows, head_rows = [], []
    with torch.no_grad():
        for part in seed_chunks(model):
            logits = part(iid)  # (S, B, V)
            loss = mean_loss(logits, iid)
            hl = part(hard)  # (S, B, V)
            hard_acc = l_acc(hl, hard.y, hard.weight)
            hard_valid = valid_rate(hl, hard.weight)
            hard_auc = roc_auc_rows(score(hl), hard.y, hard.weight)  # exact, no sklearn per seed
            m = part.to(torch.float64)
            fc, hc = m.run(fit), m.run(hard)
            t = fit_threshold(direct_scores(m, fc.result), fit.y, fit.weight)  # (S, H)
            s = direct_scores(m, hc.result)  # (S, H, B)
            sacc = threshold_acc(s, t, hard.y, hard.weight).numpy()
            auc = roc_auc_rows(s, hard.y, hard.weight).numpy()
            w = kind_weights(m, hc, hard).numpy()  # (S, H, V)
            w_02 = w02(w, m.cfg.noise_symbols)  # (S, H)
            for i, (seed, ok) in enumerate(zip(part.seeds, finite_seeds(part))):
                if not ok:  # blown up: its numbers would be artefacts of NaN arithmetic
                    rows.append({"seed": seed} | dict.fromkeys(STAT_COLUMNS, None))
                    head_rows += [{"seed": seed, "head": h} | dict.fromkeys(HEAD_STAT_COLUMNS)
                                  for h in range(w.shape[1])]
                    continue
                rows.append({"seed": seed, "loss": float(loss[i]),
                             "hard_l_acc": float(hard_acc[i]), "hard_valid": float(hard_valid[i]),
                             "hard_auc": float(hard_auc[i])})
                head_rows += [{"seed": seed, "head": h, "s_acc": float(sacc[i, h]),
                               "head_auc": float(auc[i, h]), "w01": float(w[i, h, ONE]),
                               "w02": float(w_02[i, h])} for h in range(w.shape[1])]
    return rows, head_rows


# --- executors ---------------------------------------------------------------------------------

def _init_worker(parent: int) -> None:
    torch.set_num_threads(1)
    watch_parent(parent)


def _inline(jobs: list[tuple[Point, Path]]):
    """Yield (point, record or exception), one job after another in this process (debugging,
    tests: no process start-up)."""
    for point, run in jobs:
        try:
            yield point, run_point(point.cfg.to_dict(), str(run))
        except Exception as e:
            yield point, e


def _local(jobs: list[tuple[Point, Path]], workers: int):
    """Yield (point, record or exception) as jobs finish, on a spawn process pool."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    spawn = mp.get_context("spawn")  # fork would copy torch's thread pools into the workers
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=spawn,
                             initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_point, p.cfg.to_dict(), str(run)): p for p, run in jobs}
        try:
            for fut in as_completed(futures):
                try:
                    yield futures[fut], fut.result()
                except BrokenProcessPool:
                    raise SweepError("a sweep worker died (out of memory, killed, or it could "
                                     "not start: a script must call run_sweep under `if __name__ "
                                     "== '__main__':`); re-run the same command to resume") from None
                except Exception as e:  # a job's failure is reported, the others go on
                    yield futures[fut], e
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("the ray executor needs Ray: pip install count01[ray]") from None
    return ray


def _ray(jobs: list[tuple[Point, Path]], workers: int, address: str | None):
    """Yield (point, record or exception) as jobs finish, on Ray: an existing cluster at `address`
    ("auto" or host:port), else a local instance on loopback with `workers` CPUs. On a cluster,
    SWEEP_DIR must be on storage every node sees (runs resume there; records come to the driver)."""
    ray = import_ray()
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise SweepError(f"cannot join the Ray cluster at {address}: {e} (is it running, "
                             "and does this machine hold its auth token?)") from None
    else:
        ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_point)
        pending = {task.remote(p.cfg.to_dict(), str(run)): p for p, run in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            point = pending.pop(done[0])
            try:
                yield point, ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                yield point, e.as_instanceof_cause()
    finally:
        ray.shutdown()


# --- the sweep ---------------------------------------------------------------------------------

def run_sweep(sweep: Sweep, out: str | Path, executor: str = "local", workers: int | None = None,
              address: str | None = None, log: Callable[[str], None] | None = None
              ) -> dict[str, pd.DataFrame]:
    """Run every unfinished configuration of `sweep` into `out`; return the rebuilt tables.

    executor: "local" (a spawn process pool of `workers` processes, default the CPU count),
    "ray" (see `_ray`) or "inline" (this process, one job at a time). Every job computes with one
    torch thread, so all three write the same tables. Tables are rebuilt after every finished
    configuration.
    """
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor == "ray":
        import_ray()  # fail before anything is written
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    workers = workers or os.cpu_count() or 1
    out = Path(out).absolute()
    points = sweep.points()
    if (out / "config.json").exists():
        raise SweepError(f"{out} holds a run (config.json), not a sweep: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with locked(out, "sweep"):
        for d in (out, out / "results"):
            remove_leftovers(d)
        # finished records are checked first: a bad one is refused before anything is written
        todo = [(p, out / "runs" / p.id) for p in points if read_record(out, p) is None]
        write_json(out / "sweep.json", {"format": FORMAT, "sweep": sweep.to_dict(),
                                        "points": [{"id": p.id, "grid": p.grid} for p in points]})
        todo.sort(key=lambda job: _work(job[0].cfg), reverse=True)
        what = (f"{len(points)} configurations" if sweep.grid else
                "1 configuration (no [grid]: the [base] fields alone)")
        log(f"sweep: {what} x {points[0].cfg.n_seeds} seeds; "
            f"{len(points) - len(todo)} done, {len(todo)} to run ({executor}, {workers} workers)")
        failed = []
        if todo:
            jobs = {"local": lambda: _local(todo, workers), "inline": lambda: _inline(todo),
                    "ray": lambda: _ray(todo, workers, address)}[executor]()
            for n, (point, record) in enumerate(jobs, 1):
                if isinstance(record, BaseException):
                    failed.append(f"{point.id}: {record}")
                    log(f"[{n}/{len(todo)}] {point.id} FAILED: {record}")
                    continue
                write_json(_result_path(out, point), record)
                ok = sum(r["success"] for r in record["runs"])
                log(f"[{n}/{len(todo)}] {point.id}: {ok}/{len(record['runs'])} seeds succeeded "
                    f"({record['seconds']:.0f} s)")
                write_tables(out, collect(out, points))
        tables = collect(out, points)
        write_tables(out, tables)
    if failed:
        raise SweepError(f"{len(failed)} configuration(s) failed; first: {failed[0]}")
    return tables


def _work(cfg: Config) -> tuple[int, int]:
    """How big a job is, roughly: jobs start biggest first so that no worker is left alone with
    one big configuration at the end. Heads lead: they widen training and the minimal head-set
    search is exponential in them."""
    width = cfg.d_head_ * (1 if cfg.count_path else cfg.max_len)
    return cfg.heads, cfg.n_seeds * cfg.steps * width


def _result_path(out: Path, point: Point) -> Path:
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


# what `collect` reads of each row of a record (`_is_record`)
RECORD_KEYS = {"runs": ("seed", "success", "diverged"),
               "heads": ("seed", "set", "head", "s_acc", "w01", "w02"),
               "trajectory": ("seed", "step"), "head_trajectory": ("seed", "step", "head")}


def read_record(out: Path, point: Point) -> dict[str, Any] | None:
    """The finished record of `point` (results/<id>.json), None if it has none yet.

    Records are written atomically, so one that does not parse or lacks what `collect` reads
    was edited or copied in: it is refused, naming the file, rather than silently recomputed
    (deleting it and re-running the sweep recomputes that configuration).
    """
    path = _result_path(out, point)
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
    """Has `rec` what `collect` and `report` read of a record?"""
    if not (isinstance(rec, dict) and isinstance(rec.get("config"), dict)
            and isinstance(rec.get("seconds"), (int, float))):
        return False
    return all(isinstance(rec.get(name), list)
               and all(isinstance(r, dict) and all(k in r for k in keys) for r in rec[name])
               for name, keys in RECORD_KEYS.items())


def collect(out: Path, points: list[Point]) -> dict[str, pd.DataFrame]:
    """The four tables from the finished records of `points` (unfinished ones are left out)."""
    rows: dict[str, list[dict]] = {name: [] for name in TABLES}
    max_heads = max(p.cfg.heads for p in points)
    for p in points:
        rec = read_record(out, p)
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


# --- restarts: K seeds, keep the best ----------------------------------------------------------

def keep_best(run: str | Path) -> dict[str, Any]:
    """Pick the best seed of a trained run: highest hard l-acc, ties by lower hard loss (then seed).

    Writes RUN/restarts.json (every seed's hard l-acc, loss, success and, with early stopping,
    the step where training gave up on it; the best seed; how many succeeded; how many were given
    up and by which rule) and RUN/best/, a one-seed run directory (config.json with seed = the best seed and
    n_seeds = 1, model.safetensors, metrics.json) that every command takes like any run.
    """
    run = Path(run)
    model = load(run)
    cfg, hard = model.cfg, eval_set(model.cfg, SUCCESS_SET)
    acc, loss = [], []
    with torch.no_grad():
        for part in seed_chunks(model):
            logits = part(hard)  # (S, B, V)
            acc += evaluate_logits(logits, hard)["l_acc"].tolist()
            loss += mean_loss(logits, hard).tolist()
    order = sorted(range(model.n_seeds), key=lambda i: (-acc[i], loss[i], model.seeds[i]))
    best = order[0]
    seed = model.seeds[best]
    best_cfg = cfg.replace(seed=seed, n_seeds=1)
    one = model.select(best)
    write_json(run / "best" / "config.json", best_cfg.to_dict())
    write_json(run / "best" / "metrics.json", {"steps": cfg.steps, "eval": evaluate(one)})
    save_tensors(run / "best" / "model.safetensors", one.weights, best_cfg, one.seeds,
                 step=cfg.steps)
    stopped = read_json(run / "metrics.json").get("stopped", {}) if cfg.early_stop else {}
    summary = {"restarts": model.n_seeds, "succeeded": int(sum(a >= SUCCESS_L_ACC for a in acc)),
               "stopped_early": len(stopped),
               "early_stop_rule": STOP_RULE.text() if cfg.early_stop else None,
               "success": f"{SUCCESS_SET} l-acc >= {SUCCESS_L_ACC}", "best_seed": seed,
               "best_dir": str(run / "best"), "best_hard_l_acc": acc[best],
               "best_hard_loss": loss[best],
               "seeds": [{"seed": s, "hard_l_acc": acc[i], "hard_loss": loss[i],
                          "success": acc[i] >= SUCCESS_L_ACC, "stopped_at": stopped.get(str(s))}
                         for i, s in enumerate(model.seeds)]}
    write_json(run / "restarts.json", summary)
    return summary
