"""The driver: run every unfinished configuration of a sweep on an executor, write each
finished record and rebuild the tables."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..config import Config
from ..files import locked, remove_leftovers, write_json
from .executors import EXECUTORS, import_ray, inline, local, on_ray
from .grid import Sweep, SweepError
from .tables import read_record, result_path, tables_of, write_sweep, write_tables

TABLES_EVERY = 30.0  # seconds: while a sweep runs, its tables are rebuilt after a finished
# configuration at most this often (every rebuild reads and writes all of them: once per job,
# ~21 s of the driver's CPU over the study's 48-configuration sweep, beside its two workers)


def run_sweep(sweep: Sweep, out: str | Path, executor: str = "local", workers: int | None = None,
              address: str | None = None, log: Callable[[str], None] | None = None
              ) -> dict[str, pd.DataFrame]:
    """Run every unfinished configuration of `sweep` into `out`; return the rebuilt tables.

    executor: "local" (a spawn process pool of `workers` processes, default the CPU count),
    "ray" (see `on_ray`) or "inline" (this process, one job at a time). Every job computes with one
    torch thread, so all three write the same tables. While it runs the tables are rebuilt after
    a finished configuration, at most every TABLES_EVERY seconds, from the records read once
    each; at the end, from all of them.
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
        records = {p.id: read_record(out, p) for p in points}
        todo = [(p, out / "runs" / p.id) for p in points if records[p.id] is None]
        write_sweep(out, sweep, points)
        todo.sort(key=lambda job: _work(job[0].cfg), reverse=True)
        what = (f"{len(points)} configurations" if sweep.grid else
                "1 configuration (no [grid]: the [base] fields alone)")
        seeds = sorted({p.cfg.n_seeds for p in points})  # [[seeds_at]] may give some more
        span = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        log(f"sweep: {what} x {span} seeds; "
            f"{len(points) - len(todo)} done, {len(todo)} to run ({executor}, {workers} workers)")
        failed = []
        shown = time.monotonic()
        if todo:
            jobs = {"local": lambda: local(todo, workers), "inline": lambda: inline(todo),
                    "ray": lambda: on_ray(todo, workers, address)}[executor]()
            for n, (point, record) in enumerate(jobs, 1):
                if isinstance(record, BaseException):
                    failed.append(f"{point.id}: {record}")
                    log(f"[{n}/{len(todo)}] {point.id} FAILED: {record}")
                    continue
                write_json(result_path(out, point), record)
                records[point.id] = read_record(out, point)  # as written: JSON's values
                ok = sum(r["success"] for r in record["runs"])
                log(f"[{n}/{len(todo)}] {point.id}: {ok}/{len(record['runs'])} seeds succeeded "
                    f"({record['seconds']:.0f} s)")
                if time.monotonic() - shown >= TABLES_EVERY:
                    write_tables(out, tables_of(out, points, records))
                    shown = time.monotonic()
        tables = tables_of(out, points, records)
        write_tables(out, tables)
    if failed:
        raise SweepError(f"{len(failed)} configuration(s) failed; first: {failed[0]}")
    return tables


def _work(cfg: Config) -> tuple[int, int]:
    """How big a job is, roughly: jobs start biggest first so that no worker is left alone with
    one big configuration at the end. Heads lead: they widen training and the minimal head-set
    search is exponential in them. Each noise symbol beyond the first multiplies the count
    tuples a set holds and a step draws (three symbols: a job ~2-4x one symbol's)."""
    width = cfg.d_head_ * (1 if cfg.count_path else cfg.max_len)
    return cfg.heads, cfg.n_seeds * cfg.steps * width * cfg.noise_symbols

