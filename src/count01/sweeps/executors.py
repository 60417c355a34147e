"""Executors: where the jobs of a sweep run. Each yields (point, record or exception) as jobs
finish: `inline` (this process), `local` (a spawn process pool), `on_ray` (a Ray cluster or a
local instance)."""

from __future__ import annotations

import os
from pathlib import Path

from ..files import watch_parent
from .grid import Point, SweepError
from .jobs import run_point

EXECUTORS = ("local", "ray", "inline")


def inline(jobs: list[tuple[Point, Path]]):
    """Yield (point, record or exception), one job after another in this process (debugging,
    tests: no process start-up)."""
    for point, run in jobs:
        try:
            yield point, run_point(point.cfg.to_dict(), str(run))
        except Exception as e:
            yield point, e


def local(jobs: list[tuple[Point, Path]], workers: int):
    """Yield (point, record or exception) as jobs finish, on a spawn process pool."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    spawn = mp.get_context("spawn")  # fork would copy torch's thread pools into the workers
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=spawn,
                             initializer=watch_parent, initargs=(os.getpid(),)) as pool:
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


def on_ray(jobs: list[tuple[Point, Path]], workers: int, address: str | None):
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

