"""`count01 reproduce`: the default study, end to end, resumable, then the report.

The study answers the questions of SPEC 1 with two sweeps and one analysis:
    1. sweep          heads 1, 2, 4, 8 x many seeds (each head count one batched run, `sweeps`)
    2. training_path  the training-path grid of question 4 (`PATH_GRIDS`): head count x
                      optimiser x init_scale x learning rate, many seeds each
    3. noise          question 5's noise benchmark (`NOISE_GRIDS`): the analysed configuration
                      under noise rates x noise patterns x noise symbols x p_one, many seeds
                      each (`NOISE_SKIPS`: noise 0 once per p_one; by default 3 symbols at
                      p_one 0.5 only)
    4. paths          training-path analysis of every sweep (`paths`): success and ideal rates,
                      phase diagrams, trajectories, minimal head sets, the division of labour
                      (the three sweeps side by side, `paths_stage`)
    5. analysis       the default 4-head configuration of the sweep, every seed (`analysis`):
                      head metrics, attention interventions, aggregation, value swap
    6. sentence       question 2 in the sentence framing (SPEC 2, the study's wording): the
                      analysed configuration trained on `[BOS] x EOS y EOS` with lm_loss
                      (`SENTENCE_MODES`: fewer seeds and steps, lm_loss's rows cost ~20x a
                      count-path step), then every analysis of it (`analysis`)
    7. scale          question 6 (`SCALE_MODES`): the analysed configuration (2 heads a layer)
                      as the small model beside larger ones (d_model 64, an MLP, 2 layers, 2
                      layers and an MLP; quick: 2 layers), a sweep, then every analysis of
                      each model (`analysis`); a study whose scale stage an older version
                      planned otherwise runs this version's again
    8. report         report.html and report.md from the saved results (`report`)
Full mode trains 32 seeds per head count for the default 3000 steps and intervenes on a 25 x 25
grid; quick mode trains 8 seeds for 1000 steps and uses a 13 x 13 grid (every seed of the default
config has reached hard l-acc 1.0 by step 500 in our runs, so quick mode still measures trained
models; the report states the mode). Every head count keeps d_head = 4, the default model's head.
The training-path grid was sized before it was run to meet failing and succeeding
configurations: an exploratory run of the full grid (32 seeds, 1500 steps) on 2026-11-30 found
rates from 0/32 (init_scale 10, and SGD at lr 1e-3 from init_scale 0.3) to 32/32.

OUT holds study.json (the plan, versions, the analysed run, and every finished stage with its
wall time in seconds and, for the stages that train, seed_steps: the seed-steps of the
configurations this run of the stage finished, seeds x steps, a seed given up by early stopping
counted to its stopping step; a configuration resumed from a checkpoint counts whole), sweep/
(a sweep directory, see `sweeps`; the analysed run is sweep/runs/<id of heads=4>/ with its
analysis/), training_path/ and noise/ (the sweep directories of questions 4 and 5, with
their paths/), sentence/ (the sentence-framing run, with its analysis/), scale/ (question
6's sweep, each run with its analysis/), report.html,
report.md, verdicts.json and sensitivity.csv/.png. A stage is recorded only once it has
finished, so re-running the same command skips finished stages and resumes the sweep where it
stopped; a study directory holds one plan (another plan there is refused).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from .files import locked, remove_leftovers, write_json
from .plan import FORMAT, Plan, StudyError, read_state
from .present.report import ReportFiles, software_versions, write_report

STAGES = ("sweep", "training_path", "noise", "paths", "analysis", "sentence", "scale", "report")
BASE = {"d_head": 4}  # every head as wide as in the default model, whatever the head count
MODES = {  # seeds per head count, intervention grid, Config fields that differ from the defaults
    "full": {"seeds": 32, "grid_size": 25, "base": {"steps": 3000, "checkpoint_every": 250}},
    "quick": {"seeds": 8, "grid_size": 13, "base": {"steps": 1000, "checkpoint_every": 200}},
    "wide": {"seeds": 64, "grid_size": 25, "base": {"steps": 3000, "checkpoint_every": 250}},
}
SCOPES = tuple(MODES)  # SPEC 7: quick (a smoke test), full (the default), wide (SPEC 5's grids)
NOISE_GRIDS = {  # question 5's noise conditions (SPEC 2), for the analysed head count
    "full": {"noise": [0.0, 0.25, 0.5], "noise_pattern": ["iid", "bursty"],
             "noise_symbols": [1, 3], "p_one": [0.5, 0.7]},
    "quick": {"noise": [0.5], "noise_pattern": ["iid", "bursty"], "noise_symbols": [1, 3]},
    "wide": {"noise": [0.0, 0.25, 0.5], "noise_pattern": ["iid", "bursty"],
             "noise_symbols": [1, 3], "p_one": [0.5, 0.7]},
}
SENTENCE_MODES = {  # question 2 in the sentence framing: seeds, Config fields, grid size; 16
    # seeds x 1500 steps took 74 s on 2 shared cores (14 of 16 reached hard l-acc 1.0)
    "full": {"seeds": 16, "base": {"steps": 1500, "checkpoint_every": 250}, "grid_size": 7},
    "quick": {"seeds": 8, "base": {"steps": 300, "checkpoint_every": 100}, "grid_size": 5},
    "wide": {"seeds": 64, "base": {"steps": 3000, "checkpoint_every": 250}, "grid_size": 25},
}
SCALE_MODES = {  # question 6: the analysed configuration as the small model (the grid's first
    # point) beside larger ones: a wider residual stream (d_model 64), an MLP of 64, two layers,
    # two layers with an MLP, one change at a time. 2 heads a layer, as in every scope: a model
    # of 2 layers and an MLP is analysed by forwards through its later layers (the minimal head
    # set refits alpha for subsets of its L x H heads), sized here to fit the default study's
    # budget (eval sets of 256 strings; see README, Performance, for the stage's time). Seeds
    # (a plan choice: no rule changed): 32 for each 1-layer model, 20 for each 2-layer one
    # (`seeds_at`: a 2-layer seed's training and record cost 10-100x a 1-layer one's, on the
    # token path). Measured 2026-12-01, 32 seeds of every model judged on their first 8, 12, ..., 32:
    # the small model decides rule 2 (0/n successful seeds: n >= 12) and 3a (17/30 heads, mixed)
    # from 16 seeds, d_model 64 rules 2 and 3a at 32 (2/32; 23/64), 2 layers rule 2 (mixed)
    # from 20 (7/16 is not); 8 and 12 seeds left 2, 3a, 3b undecided on the small model. No
    # affordable size decides rule 3b on the small model (no informative hybrid in 60: its two
    # heads are equally good), rule 1 with an MLP or 2 layers (46/64, 96/128 heads: shares at
    # most's 0.75) nor rule 2 with an MLP (6/32, at few's 0.25) or with 2 layers and an MLP
    # (~0.6: 11/20 is mixed by a hair, 24 and 32 seeds are not). Every 2-layer seed succeeds at
    # 600 steps, so steps stay; larger sets were not tried (the shares count heads and seeds).
    "full": {"seeds": 32, "grid_size": 5,
             "base": {"steps": 600, "checkpoint_every": 300, "heads": 2, "eval_size": 256,
                      "exhaustive_len": 6},
             "grid": {"layers": [1, 2], "d_mlp": [0, 64], "d_model": [16, 64]},
             "skip": [{"layers": 2, "d_model": 64}, {"d_mlp": 64, "d_model": 64}],
             "seeds_at": [{"layers": 2, "seeds": 20}]},
    "quick": {"seeds": 2, "grid_size": 5,  # a smoke test: the small model and 2 layers
              "base": {"steps": 200, "checkpoint_every": 100, "heads": 2, "eval_size": 256,
                       "exhaustive_len": 5},
              "grid": {"layers": [1, 2]}, "skip": [], "seeds_at": []},
    "wide": {"seeds": 64, "grid_size": 7,
             "base": {"steps": 3000, "checkpoint_every": 500, "heads": 2, "eval_size": 2048,
                      "exhaustive_len": 7},
             "grid": {"layers": [1, 2], "d_mlp": [0, 64], "d_model": [16, 64]},
             "skip": [{"layers": 2, "d_model": 64}, {"d_mlp": 64, "d_model": 64}],
             "seeds_at": []},
}
# without noise, the pattern and the number of noise symbols change nothing in the strings: the
# grid trains noise 0 once per p_one (i.i.d., one symbol) instead of four times
NOISE_COPIES = [{"noise": 0.0, "noise_pattern": "bursty"}, {"noise": 0.0, "noise_symbols": 3}]
# the default scope trains three symbols at p_one 0.5 only: with them a set holds ~3x (fit) to
# ~6x (hard) as many distinct count tuples, and a condition costs ~2x one of one symbol (the
# head-set fits grow with them), so the whole product would add ~3 min to `reproduce`
NOISE_SKIPS = {"full": NOISE_COPIES + [{"noise_symbols": 3, "p_one": 0.7}], "quick": [],
               "wide": NOISE_COPIES}
PATH_GRIDS = {  # question 4's grid (SPEC 5, training path): seeds, Config fields, grid
    "full": {"seeds": 32, "base": {"steps": 1500, "checkpoint_every": 250},
             "grid": {"heads": [1, 4], "optimizer": ["adamw", "sgd"],
                      "init_scale": [0.3, 1.0, 3.0, 10.0], "lr": [1e-3, 1e-2, 1e-1]}},
    "quick": {"seeds": 8, "base": {"steps": 1000, "checkpoint_every": 250},
              "grid": {"heads": [4], "init_scale": [0.3, 10.0], "lr": [1e-2, 1e-1]}},
    # SPEC 5's full grid: hours on 2 cores (the position path is ~15x a count-path step),
    # minutes on a Ray cluster (count01 reproduce --scope wide --executor ray --address ...)
    "wide": {"seeds": 64, "base": {"steps": 3000, "checkpoint_every": 250},
             "grid": {"heads": [1, 2, 4, 8], "optimizer": ["adamw", "sgd"],
                      "schedule": ["constant", "cosine"], "weight_decay": [0.0, 0.01],
                      "pos_embed": ["none", "learned"], "init_scale": [0.3, 1.0, 3.0, 10.0],
                      "lr": [1e-3, 1e-2, 1e-1]}},
}


def make_plan(quick: bool = False, seeds: int | None = None, heads: tuple[int, ...] | None = None,
              scope: str | None = None,
              grid_size: int | None = None, path_seeds: int | None = None,
              path_grid: dict[str, list] | None = None, noise_grid: dict[str, list] | None = None,
              sentence_seeds: int | None = None, scale_seeds: int | None = None,
              scale_grid: dict[str, list] | None = None, **config: Any) -> Plan:
    """The default study of a mode; the other arguments shrink or change it (tests use a tiny
    one). `config` holds Config fields for every configuration of both sweeps (e.g. steps=60,
    eval_size=512)."""
    from .measure.interventions import default_grid
    from .sweeps import Sweep

    name = scope or ("quick" if quick else "full")
    if name not in SCOPES or (quick and name != "quick"):
        raise StudyError(f"scope must be one of {', '.join(SCOPES)} (--quick is scope quick), "
                         f"got {name!r}")
    mode, path, sentence = MODES[name], PATH_GRIDS[name], SENTENCE_MODES[name]
    scale = SCALE_MODES[name]
    plan = Plan(mode=name, seeds=mode["seeds"] if seeds is None else seeds,
                heads=Plan.heads if heads is None else tuple(heads),
                base=BASE | mode["base"] | config,
                grid_size=mode["grid_size"] if grid_size is None else grid_size,
                path_seeds=path["seeds"] if path_seeds is None else path_seeds,
                path_base=BASE | path["base"] | config,
                path_grid=path["grid"] if path_grid is None else path_grid,
                noise_grid=NOISE_GRIDS[name] if noise_grid is None else noise_grid,
                noise_skip=NOISE_SKIPS[name] if noise_grid is None else [],
                sentence_seeds=sentence["seeds"] if sentence_seeds is None else sentence_seeds,
                sentence_base=sentence["base"] | config,
                sentence_grid_size=min(sentence["grid_size"],
                                       mode["grid_size"] if grid_size is None else grid_size),
                scale_seeds=scale["seeds"] if scale_seeds is None else scale_seeds,
                scale_base=scale["base"] | config,
                scale_grid=scale["grid"] if scale_grid is None else scale_grid,
                scale_skip=scale["skip"] if scale_grid is None else [],
                scale_seeds_at=(scale["seeds_at"] if scale_grid is None and scale_seeds is None
                                else []),  # scale_seeds given: every model's seeds
                scale_grid_size=min(scale["grid_size"],
                                    mode["grid_size"] if grid_size is None else grid_size))
    if (plan.seeds < 1 or not plan.heads or plan.path_seeds < 1 or plan.sentence_seeds < 1
            or plan.scale_seeds < 1):
        raise StudyError(f"a study needs seeds >= 1 and some head counts: {plan}")
    default_grid(plan.grid_size)
    for h in plan.heads:
        plan.config(h)  # every configuration is valid before anything trains
    plan.sentence_config()
    Sweep.from_dict(plan.path_sweep_dict(), source="study plan (training path)")
    Sweep.from_dict(plan.noise_sweep_dict(), source="study plan (noise benchmark)")
    Sweep.from_dict(plan.scale_sweep_dict(), source="study plan (larger models)")
    return plan


def analysed_run(out: Path, plan: Plan) -> Path:
    """The sweep's run directory of the analysed configuration."""
    from .sweeps import Sweep

    points = Sweep.from_dict(plan.sweep_dict()).points()
    point = next(p for p in points if p.cfg.heads == plan.analysed_heads)
    return out / "sweep" / "runs" / point.id


def _load_state(out: Path, plan: Plan) -> dict[str, Any]:
    if not (out / "study.json").exists():
        return {"format": FORMAT, "plan": plan.to_dict(), "stages": {}}
    state = read_state(out)
    new = plan.to_dict()
    if state["plan"] == {k: new[k] for k in state["plan"] if k in new}:
        state["plan"] = new  # a study begun before a stage was added: it runs the new stage
    elif _unscaled(state["plan"]) == _unscaled(new):  # an older scale stage's models: this
        state["plan"] = new  # version's scale stage runs again (and the report after it)
        for stage in ("scale", "report"):
            state["stages"].pop(stage, None)
    if state["plan"] != new:
        raise StudyError(f"{out} holds another study ({state['plan']['mode']} mode, "
                         f"{state['plan']['seeds']} seeds, heads {state['plan']['heads']}); "
                         "choose another --out")
    return state


def _unscaled(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan without question 6's scale stage fields."""
    return {k: v for k, v in plan.items() if not k.startswith("scale_")}


def reproduce(out: str | Path, quick: bool = False, plan: Plan | None = None,
              workers: int | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None, scope: str | None = None,
              executor: str = "local", address: str | None = None) -> Path:
    """Run (or resume) the study into `out` and write its report; return report.html's path.
    Its sweeps run on `executor` (local, ray: a cluster at `address` or a local instance)."""

    out = Path(out)
    plan = plan or make_plan(quick, scope=scope)
    if executor == "ray":
        from .sweeps import import_ray

        import_ray()  # fail before anything is written
    log = log or ((lambda msg: print(msg, file=sys.stderr, flush=True)) if progress
                  else (lambda msg: None))
    state = _load_state(out, plan)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out, "study"):
        remove_leftovers(out)  # of a killed study: its stages clean their own directories
        return _reproduce(out, plan, state, progress, log,
                          {"workers": workers, "executor": executor, "address": address})


def build_report(root: str | Path, out: str | Path | None = None) -> ReportFiles:
    """Write report.html and report.md for a study, sweep or run directory (into `out`, default
    the directory itself): its saved results, and every rule also run on the hand-built
    controls, built here (with torch) so that the report itself computes nothing."""
    from .measure.controls import rule_controls

    return write_report(root, out, rule_controls)


def _reproduce(out: Path, plan: Plan, state: dict[str, Any], progress: bool,
               log: Callable[[str], None], run: dict[str, Any]) -> Path:
    from .measure.analysis import analyze
    from .sweeps import Sweep, run_sweep

    run_dir = analysed_run(out, plan)
    state["versions"] = software_versions()
    state["analysed_run"] = str(run_dir.relative_to(out))
    write_json(out / "study.json", state)
    n_paths = len(Sweep.from_dict(plan.path_sweep_dict()).points())
    log(f"study: {plan.mode} mode, heads {', '.join(map(str, plan.heads))} x {plan.seeds} seeds, "
        f"{plan.config(plan.analysed_heads).steps} steps; training-path grid of {n_paths} "
        f"configurations x {plan.path_seeds} seeds; writing to {out}")

    steps = {
        "sweep": lambda: run_sweep(Sweep.from_dict(plan.sweep_dict()), out / "sweep", log=log,
                                   **run),
        "training_path": lambda: run_sweep(Sweep.from_dict(plan.path_sweep_dict()),
                                           out / "training_path", log=log, **run),
        "noise": lambda: run_sweep(Sweep.from_dict(plan.noise_sweep_dict()), out / "noise",
                                   log=log, **run),
        "paths": lambda: paths_stage(out, side_workers(run)),
        "analysis": lambda: analyze(run_dir, grid_size=plan.grid_size, progress=progress),
        "sentence": lambda: sentence_stage(out / "sentence", plan, progress),
        "scale": lambda: scale_stage(out / "scale", plan, progress, log, run),
        "report": lambda: build_report(out),
    }
    trains = {"sweep", "training_path", "noise", "sentence", "scale"}  # stages that train: seed-steps
    redo = False  # once a stage runs again, every later stage must too (its inputs changed)
    for n, name in enumerate(STAGES, 1):
        done = state["stages"].get(name)
        if done and not redo and name != "report":  # the report is cheap: always rebuilt
            log(f"[{n}/{len(STAGES)}] {name}: done earlier ({done['seconds']:.0f} s), skipped")
            continue
        log(f"[{n}/{len(STAGES)}] {name} ...")
        before = trained(out / name) if name in trains else 0
        t0 = time.perf_counter()
        if name == "report":  # the report reads study.json: record the time so far first
            write_json(out / "study.json", state)
        steps[name]()
        seconds = time.perf_counter() - t0
        now = datetime.now(UTC).isoformat(timespec="seconds")
        state["stages"][name] = {"seconds": seconds, "finished": now}
        if name in trains:  # what this run of the stage trained, beside its wall time
            state["stages"][name]["seed_steps"] = trained(out / name) - before
        write_json(out / "study.json", state)
        redo = True
        log(f"[{n}/{len(STAGES)}] {name}: {seconds:.1f} s")
    log(f"report: {out / 'report.html'} (and report.md)")
    return out / "report.html"


def trained(stage_dir: Path) -> int:
    """Seed-steps a training stage's directory holds: a sweep's finished configurations
    (`sweeps.seed_steps`), or the sentence stage's finished run, seeds x steps."""
    from .files import load_config
    from .sweeps import seed_steps

    if (stage_dir / "sweep.json").exists():
        return seed_steps(stage_dir)
    if (stage_dir / "model.safetensors").exists():
        cfg = load_config(stage_dir)
        return cfg.n_seeds * cfg.steps
    return 0


TRAJECTORY_CHUNK = 6  # trajectory figures a paths-stage job draws (~1.3 s each): small jobs
# keep both workers busy to the end, where one sweep's analysis would hold 48 of the 66 figures


def paths_stage(out: Path, workers: int | None) -> None:
    """The training-path analysis (`analyze_paths`) of the three sweeps, side by side
    (`side_by_side`), the largest first: each reads its own sweep's tables and writes only its
    paths/. Its trajectory figures, most of the work, are drawn afterwards in small jobs
    (`trajectory_figures`) beside the other sweeps' analyses."""
    from .files import read_json
    from .measure.paths import analyze_paths, trajectory_figures

    dirs = [out / d for d in ("training_path", "noise", "sweep")]

    def figures(i: int) -> list[Callable[[], Any]]:
        ids = [c["config_id"] for c in read_json(dirs[i] / "paths" / "paths.json")["configs"]]
        return [partial(trajectory_figures, dirs[i], ids[k:k + TRAJECTORY_CHUNK])
                for k in range(0, len(ids), TRAJECTORY_CHUNK)]

    side_by_side([partial(analyze_paths, d, trajectories=False) for d in dirs], workers,
                 then=figures)


def side_workers(run: dict[str, Any]) -> int | None:
    """The processes `side_by_side` may use in a study run with `run`'s executor: one (this
    process) under --executor inline, else the sweep's workers."""
    return 1 if run["executor"] == "inline" else run["workers"]


def side_by_side(calls: list[Callable[[], Any]], workers: int | None,
                 then: Callable[[int], list[Callable[[], Any]]] | None = None) -> None:
    """Run independent calls (picklable: module functions and their arguments), in the order
    given, on up to `workers` spawn processes (default the CPU count), or in this process when
    one worker is all there is; then(i) names the calls that may start once call i has
    finished. Each process computes with one torch and one BLAS thread, as the sweep workers
    do: two processes of two threads each on two cores wait on each other."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    after = then or (lambda i: [])
    n = min(workers or os.cpu_count() or 1, len(calls))
    if n <= 1:
        for i, call in enumerate(calls):
            call()
            for more in after(i):
                more()
        return
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_one_thread,
                             initargs=(os.getpid(),)) as pool:
        first = {pool.submit(call): i for i, call in enumerate(calls)}
        rest = []
        for done in as_completed(first):
            done.result()
            rest += [pool.submit(more) for more in after(first[done])]
        for done in rest:
            done.result()


def _one_thread(parent: int) -> None:
    """A `side_by_side` worker's initializer: one torch (OpenMP, MKL) and one BLAS thread for
    the whole process, and exit with the parent (`files.watch_parent`)."""
    import torch
    from threadpoolctl import threadpool_limits

    from .files import watch_parent

    watch_parent(parent)
    torch.set_num_threads(1)
    threadpool_limits(1)

def sentence_stage(run: Path, plan: Plan, progress: bool) -> None:
    """Question 2 in the sentence framing: train the analysed configuration in it (resuming a
    killed training), then analyse it. A finished training (model.safetensors) is kept."""
    from .measure.analysis import analyze
    from .train import train

    if not (run / "model.safetensors").exists():
        train(plan.sentence_config(), run, resume=(run / "config.json").exists(),
              progress=progress)
    analyze(run, grid_size=plan.sentence_grid_size, progress=progress)


def scale_stage(out: Path, plan: Plan, progress: bool, log: Callable[[str], None],
                run: dict[str, Any]) -> None:
    """Question 6: train the small model and the larger ones (a sweep), then analyse each (an
    analysis already finished is kept), side by side on the sweep's workers (`side_by_side`),
    the most heads first: the minimal head-set search is exponential in them, and the 2-layer
    models' analyses are most of the stage's."""
    from .measure.analysis import analyze
    from .sweeps import Sweep, run_sweep

    sweep = Sweep.from_dict(plan.scale_sweep_dict())
    run_sweep(sweep, out, log=log, **run)
    todo = [p for p in sweep.points()
            if not (out / "runs" / p.id / "analysis" / "metrics.json").exists()]
    todo.sort(key=lambda p: (p.cfg.layers * p.cfg.heads, p.cfg.d_mlp, p.cfg.d_model),
              reverse=True)
    workers = side_workers(run)
    side_by_side([partial(analyze, out / "runs" / p.id, grid_size=plan.scale_grid_size,
                          progress=progress and workers == 1) for p in todo], workers)
