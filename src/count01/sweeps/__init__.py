"""Sweeps (SPEC 5, training path): a grid of configurations x many seeds, resumable, on a local
process pool or on Ray, with one tidy table of results.

Each grid point is one configuration whose seeds train as ONE batched model (`train.train`), so a
sweep costs a few batched trainings, not thousands of small ones. A job trains (or resumes, or
just reloads) its configuration, reads every checkpoint, and returns one record; the driver writes
it atomically as results/<id>.json and rebuilds the tables from all records (while the sweep
runs, at most every `driver.TABLES_EVERY` seconds; at its end, always). Re-running the same
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
    [[seeds_at]]                     # optional: configurations that train another number
    heads = 1                        # of seeds (each must match one; none matched twice)
    seeds = 64

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
The columns of the four tables: `sweeps.tables`.

The package, one job per module: `grid` (the sweep file, its configurations and their ids),
`jobs` (one configuration: train or resume, then read its checkpoints into a record),
`executors` (inline, local process pool, Ray), `tables` (sweep.json, records, tables) and
`driver` (`run_sweep`).
"""

from importlib import import_module

from .grid import Point, Sweep, SweepError, config_id
from .tables import (
    FORMAT,
    TABLES,
    NoResultsYet,
    load_tables,
    read_points,
    read_record,
    read_sweep,
    seed_steps,
    tables_of,
)

# what trains and runs models (torch) is loaded on first use: the sweep file and the saved tables
# (`grid`, `tables`) are read, by the report among others, without torch
_LAZY = {"run_sweep": "driver", "EXECUTORS": "executors", "import_ray": "executors",
         "HEAD_SETS": "jobs", "record_run": "jobs"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'count01.sweeps' has no attribute {name!r}")


__all__ = ["Sweep", "Point", "SweepError", "NoResultsYet", "config_id", "run_sweep", "record_run",
           "read_sweep", "read_points", "read_record", "tables_of", "load_tables", "seed_steps",
           "import_ray", "EXECUTORS", "FORMAT", "HEAD_SETS", "TABLES"]
