"""`count01 report DIR`: report.html and report.md from saved results only (never retrains).

DIR is a study (`count01 reproduce`, with study.json), a sweep (sweep.json) or a single run
(config.json). The report reads the tidy tables of `analysis` (RUN/analysis/*.csv) and of the
sweep (results.parquet, paths/), judges each question of SPEC 1 with the rules of its module in
`count01.questions` (whose prose and captions it also takes), runs each rule on the hand-built
controls it is handed (`study.build_report` builds them from weights with
`measure.controls.rule_controls`, a few seconds, after the saved results have been read: they
are the same for every report and never saved) and over its thresholds, and writes
    report.html   self-contained: figures embedded as base64 PNG, inline CSS, no script, no
                  network access of any kind
    report.md     the same text, figures linked by relative path
    verdicts.json a list, one object per question: question, title, status, rule_version,
                  controls {positive, negative} (and parts for question 3), evidence (false when
                  both controls get the same verdict), sensitivity, finding, numbers,
                  previous_versions {version: status} (for scripts)
    sensitivity.csv, sensitivity.png  each rule's verdict with each threshold varied
into DIR. Sections (HTML ids): summary, q1, q2, q3, q4, methods. A lone run is judged like a
study's analysed run; its question 4 is not measured (one configuration has no training path to
compare).
"""

from __future__ import annotations

import base64
import html
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

import pandas as pd

from ..config import Config, noise_ids
from ..criteria import SUCCESS_L_ACC, SUCCESS_SET
from ..files import atomic_write, load_config, read_json, saved_eval, write_json
from ..plan import read_state
from ..questions import QUESTIONS
from ..questions import base as V
from ..sweeps.grid import Point, Sweep
from ..sweeps.tables import NoResultsYet, load_tables, read_record, read_sweep
from .document import Block, Bullets, Figure, ReportError, Section, Table, rel

SECTIONS = ("summary", *(f"q{q.NUMBER}" for q in QUESTIONS), "methods")
ANALYSIS_TABLES = ("model", "heads", "aggregation", "value_swap", "intervention",
                   "minimal_heads", "alpha", "ideal_intervention")
PREFERRED_HEADS = 4  # in a sweep, the configuration analysed in depth if it has an analysis


# --- what was saved ----------------------------------------------------------------------------

@dataclass
class Evidence:
    """Everything the report reads, gathered from disk."""

    root: Path
    kind: str  # "study", "sweep" or "run"
    study: dict | None = None  # study.json
    run_dir: Path | None = None  # the run analysed in depth
    cfg: Config | None = None  # its config
    analysis: dict | None = None  # RUN/analysis/metrics.json
    imported: dict | None = None  # where an imported run came from (RUN/metrics.json)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # RUN/analysis/*.csv
    sweep_dir: Path | None = None
    sweep: Sweep | None = None  # from sweep.json
    points: list[Point] = field(default_factory=list)  # the sweep's configurations
    # question 4 reads the sweep whose training paths it judges: a study's training-path grid,
    # else the sweep itself
    path_dir: Path | None = None
    success: pd.DataFrame | None = None  # one row per configuration (`paths.success_table`)
    minimal: pd.DataFrame | None = None  # minimal head-set sizes (`paths.minimal_heads_table`)
    grid: list[str] = field(default_factory=list)  # that sweep's grid fields
    path_tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # its paths/*.csv
    path_summary: dict | None = None  # its paths/paths.json
    noise_dir: Path | None = None  # a study's noise benchmark (question 5), with its paths/
    sentence_dir: Path | None = None  # a study's sentence-framing run (question 2), analysed
    labour: pd.DataFrame | None = None  # its paths/labour.csv, one row per noise condition
    scale_dir: Path | None = None  # a study's larger models (question 6): a sweep, each analysed
    scale: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)  # label -> tables
    sweep_runs: pd.DataFrame | None = None  # results: one row per (configuration, seed)
    sweep_heads: pd.DataFrame | None = None  # heads: one row per (run, set, head)
    train_seconds: dict[str, float] = field(default_factory=dict)  # per configuration


def read_evidence(root: str | Path) -> Evidence:
    """Find the saved results of a study, sweep or run directory."""
    root = Path(root)
    if (root / "study.json").exists():
        study = read_state(root)
        ev = Evidence(root, "study", study=study)
        _add_sweep(ev, root / "sweep")
        if (root / "training_path" / "sweep.json").exists():
            _add_paths(ev, root / "training_path")
        if (root / "noise" / "paths" / "labour.csv").exists():
            _add_noise(ev, root / "noise")
        run = study.get("analysed_run")
        _add_run(ev, root / run if run else _pick_run(ev))
        _add_sentence(ev, root / "sentence")
        if (root / "scale" / "sweep.json").exists():
            _add_scale(ev, root / "scale")
    elif (root / "sweep.json").exists():
        ev = Evidence(root, "sweep")
        _add_sweep(ev, root)
        _add_run(ev, _pick_run(ev))
    elif (root / "config.json").exists():
        ev = Evidence(root, "run")
        _add_run(ev, root)
    else:
        raise ReportError(f"{root} is not a study, sweep or run directory (no study.json, "
                          "sweep.json or config.json)")
    return ev


def _add_sweep(ev: Evidence, sweep_dir: Path) -> None:
    if not (sweep_dir / "sweep.json").exists():
        return
    ev.sweep_dir, ev.sweep = sweep_dir, read_sweep(sweep_dir)
    ev.points = ev.sweep.points()
    try:
        tables = load_tables(sweep_dir)
    except NoResultsYet:
        return
    ev.sweep_runs = tables["results"]
    ev.sweep_heads = tables["heads"]
    _add_paths(ev, sweep_dir)
    for p in ev.points:
        record = read_record(sweep_dir, p)
        if record is not None:
            ev.train_seconds[p.id] = float(record["seconds"])


def _add_paths(ev: Evidence, sweep_dir: Path) -> None:
    """Question 4's evidence from one sweep: the tables `count01 paths` wrote in its paths/
    (success, minimal heads, best practice, early stopping), labelled by the grid (one column
    `configuration` when the grid has several fields). The report computes none of them."""
    tables = sweep_dir / "paths"
    if not (tables / "success.csv").exists():
        return
    grid = list(read_sweep(sweep_dir).grid)
    ev.path_dir, ev.grid = sweep_dir, grid
    ev.success = pd.read_csv(tables / "success.csv")
    ev.minimal = pd.read_csv(tables / "minimal_heads.csv")
    if len(grid) > 1:
        ev.success.insert(1, "configuration", [", ".join(f"{k}={r[k]:g}" if isinstance(
            r[k], float) else f"{k}={r[k]}" for k in grid) for _, r in ev.success.iterrows()])
    for name in ("best_practice", "early_stop"):
        if (tables / f"{name}.csv").exists():
            ev.path_tables[name] = pd.read_csv(tables / f"{name}.csv")
    if (tables / "paths.json").exists():
        ev.path_summary = read_json(tables / "paths.json")


def _add_noise(ev: Evidence, noise_dir: Path) -> None:
    """Question 5's evidence: the noise benchmark's labour table, labelled by its grid."""
    grid = list(read_sweep(noise_dir).grid)
    labour = pd.read_csv(noise_dir / "paths" / "labour.csv")
    labour.insert(1, "configuration", [", ".join(f"{k}={r[k]}" for k in grid)
                                       for _, r in labour.iterrows()])
    ev.noise_dir, ev.labour = noise_dir, labour


def _pick_run(ev: Evidence) -> Path | None:
    """The sweep's analysed run: heads = 4 if analysed, else the first analysed one."""
    if ev.sweep_dir is None:
        return None
    analysed = [p for p in ev.points
                if (ev.sweep_dir / "runs" / p.id / "analysis" / "metrics.json").exists()]
    analysed.sort(key=lambda p: p.grid.get("heads") != PREFERRED_HEADS)
    return ev.sweep_dir / "runs" / analysed[0].id if analysed else None


def _add_run(ev: Evidence, run: Path | None) -> None:
    if run is None or not (run / "config.json").exists():
        return
    ev.run_dir, ev.cfg = run, load_config(run)
    a = run / "analysis"
    if (a / "metrics.json").exists():
        ev.analysis = read_json(a / "metrics.json")
        if not isinstance(ev.analysis, dict):
            raise ReportError(f"{a / 'metrics.json'} is not an analysis summary (not an object)")
        for name in ANALYSIS_TABLES:
            if (a / f"{name}.csv").exists():
                ev.tables[name] = pd.read_csv(a / f"{name}.csv")
    if (run / "metrics.json").exists():
        if "model" not in ev.tables:
            ev.tables["model"] = pd.DataFrame(saved_eval(run))
        saved = read_json(run / "metrics.json")
        origin = saved.get("imported") if isinstance(saved, dict) else None
        ev.imported = origin if isinstance(origin, dict) else None
    if ev.cfg.framing == "sentence" and ev.kind != "study":  # a study's sentence run is its own
        _add_sentence(ev, run)  # question 2 in the sentence framing, from this run's tables


def _add_sentence(ev: Evidence, run: Path) -> None:
    """The sentence-framing run's model and aggregation tables, as questions.base.SENTENCE + name."""
    a = run / "analysis"
    if not (a / "metrics.json").exists():
        return
    ev.sentence_dir = run
    for name in ("model", "aggregation"):
        if (a / f"{name}.csv").exists():
            ev.tables[V.SENTENCE + name] = pd.read_csv(a / f"{name}.csv")


def _add_scale(ev: Evidence, scale_dir: Path) -> None:
    """Question 6's evidence: the analysis tables of every analysed configuration of the scale
    sweep, labelled by its grid values; the first configuration is the small model."""
    ev.scale_dir = scale_dir
    sweep = read_sweep(scale_dir)
    points = sweep.points()
    if not (scale_dir / "runs" / points[0].id / "analysis" / "metrics.json").exists():
        return  # without the small model there is nothing to compare with: not measured
    for p in points:
        a = scale_dir / "runs" / p.id / "analysis"
        if (a / "metrics.json").exists():  # a larger model is named by what it changes
            changed = {k: v for k, v in p.grid.items() if p is points[0] or v != points[0].grid[k]}
            label = ", ".join(f"{k} {v}" for k, v in changed.items()) or p.id
            ev.scale[label] = {name: pd.read_csv(a / f"{name}.csv") for name in ANALYSIS_TABLES
                               if (a / f"{name}.csv").exists()}


# --- verdicts ------------------------------------------------------------------------------------

def judge(ev: Evidence, controls: V.Controls) -> dict[int, V.Verdict]:
    """Every question's verdict, with its rules run on the controls
    (`count01.measure.controls.rule_controls`, built by the caller) and its sensitivity."""
    tables = dict(ev.tables) if ev.analysis else {}
    label = "configuration" if len(ev.grid) > 1 else (ev.grid[0] if ev.grid else "config_id")
    got = V.judge(QUESTIONS, V.Evidence(tables, ev.success, ev.minimal, label, ev.labour,
                                        scale=ev.scale),
                  controls)
    return {v.question: v for v in got}


# --- the text ------------------------------------------------------------------------------------

def _what_ran(ev: Evidence) -> str:
    parts = []
    if ev.study:
        p = ev.study["plan"]
        flag = " --quick" if p["mode"] == "quick" else ""
        steps = p["base"].get("steps", Config.steps)
        parts.append(f"the {p['mode']} study (`count01 reproduce{flag}`): heads "
                     f"{', '.join(map(str, p['heads']))} x {p['seeds']} seeds each, {steps} "
                     "training steps")
        for name, grid, seeds, skip in (("a training-path grid", p.get("path_grid"),
                                         p.get("path_seeds"), []),
                                        ("a noise benchmark", p.get("noise_grid"), p["seeds"],
                                         p.get("noise_skip", []))):
            if grid:
                sizes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
                if skip:  # the conditions the grid leaves out, and how many it trains
                    n = len(Sweep({}, grid, skip).points())
                    left = "; ".join(", ".join(f"{k}={v}" for k, v in x.items()) for x in skip)
                    sizes += f" without {left} ({n} conditions)"
                parts.append(f"{name} of {sizes} x {seeds} seeds")
        stages = ev.study.get("stages", {})
        if stages:
            total = sum(x["seconds"] for n, x in stages.items() if n != "report")
            cpus = ev.study.get("versions", {}).get("cpus", "?")
            parts.append(f"it took {total / 60:.1f} min on {cpus} CPU cores")
    elif ev.sweep:
        parts.append(f"the sweep in `{ev.root}` ({len(ev.points)} configurations)")
    if ev.cfg is not None:
        parts.append(f"the {ev.cfg.heads}-head model analysed in depth over its "
                     f"{ev.cfg.n_seeds} seeds (`{rel(ev.run_dir, ev.root)}`)")
    return "; ".join(parts) if parts else "no results"


def summary_section(ev: Evidence, v: dict[int, V.Verdict], sensitivity_figure: Path | None = None
                    ) -> Section:
    """Three findings, what they mean for model design, and the risk, in plain words."""
    blocks: list[Block] = [
        f"What was run: {_what_ran(ev)}. Each question of SPEC 1 is judged by a versioned rule "
        "in code (`count01.questions`), printed below; a claim that misses its threshold is "
        "reported as not held, and one resting on too few units, or on a share whose 95% "
        "interval straddles the threshold, as inconclusive. Each rule also judges a hand-built "
        "model that has the property (positive control) and one that lacks it (negative); a "
        "rule that gives both the same verdict is not evidence. Sensitivity: the verdict with "
        f"{V.SENSITIVITY_RANGE}, the other thresholds fixed.",
        Table(["question", "verdict", "controls", "threshold sensitivity"],
              [row for q, x in v.items() for row in _summary_rows(q, x)])]
    if sensitivity_figure is not None:
        blocks.append(Figure(sensitivity_figure, "Where each verdict flips: every rule (and "
                             "each sub-claim of question 3) with one threshold varied at a time, "
                             "x = the factor applied to the default (1 = the rule as written)."))
    items = [item for q in QUESTIONS for item in q.summary(ev, v[q.NUMBER])]
    blocks.append(Bullets([f"**{label}** ({status}). {text}" for status, label, text in items]))
    return Section("summary", "Summary: is this approach worth investing in?", blocks)


def _summary_rows(q: int, x: V.Verdict) -> list[list[str]]:
    """A question's rows of the summary table: question 2 a row per framing."""
    rows = [[f"Q{q}. {x.title}" + (" (classify framing)" if x.sentence else ""), x.status,
             V.describe_controls(x.controls), x.sensitivity]]
    if x.sentence is not None:
        s = x.sentence
        rows.append([f"Q{q}. {s.title}", s.status, V.describe_controls(s.controls), s.sensitivity])
    return rows


def _verdict_of_version(v: V.Verdict, version: int) -> str:
    """'mixed ((a) mixed, (b) held, (c) held)': the verdict of one rule version here."""
    if version == v.rule_version:
        status, parts = v.status, [s for _, s in v.parts]
    else:
        status, parts = v.previous.get(version, V.NOT_MEASURED), v.previous_parts.get(version)
    if not parts:
        return status
    return f"{status} (" + ", ".join(f"({k[1]}) {s}" for k, s in zip(v.part_keys, parts)) + ")"


def question_section(ev: Evidence, q: ModuleType, v: V.Verdict) -> Section:
    """A question's section: its verdict, rule, controls, sensitivity, history, numbers and
    figures, the prose and captions from its module `q`."""
    blocks: list[Block] = [f"**Verdict: {v.status}** (rule version {v.rule_version}). "
                           f"{v.finding}", *v.details, f"**Rule.** {v.rule}"]
    blocks.append(f"**Controls** (hand-built models of `count01.measure.controls`): "
                  f"{V.describe_controls(v.controls)}." + ("" if v.evidence else " The rule gives the "
                                                      "model that has the property and the one "
                                                      "that lacks it the same verdict, so its "
                                                      "verdict is not evidence."))
    blocks.append(f"**Threshold sensitivity** ({V.SENSITIVITY_RANGE}): {v.sensitivity}.")
    if v.parts:
        parts = v.controls.get("parts", {})
        blocks.append(Table(["sub-claim", "verdict", "controls", "threshold sensitivity"],
                            [[a, b, V.describe_controls(parts.get(k, {})),
                              v.part_sensitivity.get(k, "")]
                             for (a, b), k in zip(v.parts, v.part_keys)]))
    blocks.append("**Rule history.** Every version of this rule and its verdict on these same "
                  "tables; a version made after results were seen is marked so.")
    blocks.append(Table(
        ["version", "when", "after results were seen", "what it changed", "verdict here"],
        [[str(n), when, {True: "yes", False: "no", None: "not recorded"}[seen], what,
          _verdict_of_version(v, n)] for n, when, seen, what in q.HISTORY]))
    numbers = q.numbers(ev, v)
    if numbers:
        blocks.append(Table(["quantity", "value (spread over seeds / heads)"],
                            [[a, b] for a, b in numbers]))
    figs = q.figures(ev, v)
    if not figs:
        blocks.append("(No figure was saved for this question.)")
    blocks += figs + q.closing(ev, v)
    return Section(f"q{v.question}", f"Q{v.question}. {v.title}", blocks, v.status)


def methods_section(ev: Evidence) -> Section:
    cfg = ev.cfg
    b: list[Block] = []
    if cfg is not None:

        noise = ", ".join(map(str, noise_ids(cfg.noise_symbols)))
        b.append(f"**Task (SPEC 2).** Strings `[BOS] x1..xn EOS` over digits 0, 1 and noise {noise}; "
                 "the answer is 1 if the string holds more 1s than 0s, else 0 (ties answer 0). "
                 f"Training lengths are uniform in {cfg.min_len}..{cfg.max_len}, P(noise) = "
                 f"{cfg.noise}, P(0) = P(1) = {(1 - cfg.noise) / 2:g}"
                 f"{', class-balanced' if cfg.class_balanced else ''}. Evaluation sets, each "
                 f"from its own hash stream keyed by eval_seed = {cfg.eval_seed}: `iid` "
                 f"({cfg.eval_size} draws of the training law), `hard` (|#1 - #0| <= 1), `long` "
                 f"(lengths {cfg.max_len + 1}..{cfg.long_max_len}), `noisy` (P(noise) = "
                 f"{cfg.noisy_noise}), `exhaustive` (every string of length 1.."
                 f"{cfg.exhaustive_len}, exact, weighted by multinomial coefficients) and `fit` "
                 "(an independent iid split on which thresholds, probes, means and alphas are "
                 "fitted before scoring elsewhere). Every metric is weighted by how many strings "
                 "an example stands for.")
        shape = ("One layer" if cfg.layers == 1 else f"{cfg.layers} layers") + (
            f", an MLP of width {cfg.d_mlp} after each attention" if cfg.d_mlp
            else ", attention only")
        b.append(f"**Model (SPEC 3).** {shape}, {cfg.heads} heads"
                 + (" a layer (heads numbered layer * H + h)" if cfg.layers > 1 else "")
                 + ", d_model = "
                 f"{cfg.d_model}, d_head = {cfg.d_head_}, positional embedding {cfg.pos_embed}, "
                 f"LayerNorm {'on' if cfg.layernorm else 'off'}, BOS {'on' if cfg.bos else 'off'}; "
                 + ("logits = W_U (e(EOS) + p + sum_h o_h) + b_U at EOS. "
                    if cfg.layers == 1 and not cfg.d_mlp else
                    "logits read at EOS after the last layer; a head's direct score is its "
                    "output read along W_U[:, 1] - W_U[:, 0], its total effect the l-acc change "
                    "when it is mean-ablated. ")
                 + (f"Imported from TransformerLens (`{ev.imported.get('state_dict')}`), not "
                    "trained by count01: the training fields of its configuration say nothing "
                    "of how it was trained." if ev.imported else
                    f"Trained with AdamW (lr = {cfg.lr}, weight decay = {cfg.weight_decay}, "
                    f"batch {cfg.batch_size}, {cfg.steps} steps, init scale {cfg.init_scale}) on "
                    f"the cross-entropy of the answer over all {cfg.d_vocab} output tokens; S seeds "
                    "train at once as one batched model without interacting."))
    b.append("**Metrics (SPEC 4).** l-acc: the argmax over every output token equals the "
             "answer. Valid rate: the argmax is 0 or 1. ROC AUC of logit(1) - logit(0). Per "
             "head: direct score s_h = (o_h W_U)[1] - (o_h W_U)[0]; head AUC; s-acc = accuracy "
             "of the best threshold on s_h fitted on `fit` and scored on another set (polarity "
             "fixed: a head whose score runs against the answer scores low); probe s-acc = "
             "held-out accuracy of a logistic regression on o_h. w01, w02: the EOS query's "
             "attention per occurrence of a 1 (a 2) relative to a 0, exp(score(1) - score(0)) "
             "without positional embedding.")
    grid = ev.analysis.get("grid") if ev.analysis else None
    grid_text = (f"w01 on {len(grid['w01'])} log-spaced values from {min(grid['w01']):g} to "
                 f"{max(grid['w01']):g}, w02 on the same values plus 0" if grid else
                 "log grids of w01 and w02 (w02 also at 0)")
    b.append("**Experiments (SPEC 5).** Attention intervention: the EOS attention row of one "
             "head (or all) is replaced by weights proportional to w(0) = 1, w(1) = w01, "
             "w(noise) = w02 (every noise symbol), EOS and BOS at their measured values, values "
             f"untouched; {grid_text}; "
             f"measured on `{ev.analysis.get('sweep_set', V.SET) if ev.analysis else V.SET}` "
             "with the head's threshold fixed before the intervention and refitted under it. "
             "Aggregation: head outputs reweighted by alpha: learned (1), uniform (every head "
             "rescaled to the same mean norm of o_h on `fit`, total kept), single head and "
             "leave-one-out (the other heads / the head replaced by its mean on `fit`), fitted "
             "(alpha fitted by cross-entropy on `fit`, everything else frozen). Training path: "
             f"success = l-acc >= {SUCCESS_L_ACC} on `{SUCCESS_SET}`, rate with a Wilson 95% "
             "interval, trajectories from the saved checkpoints, and the smallest head set "
             f"keeping {SUCCESS_SET} l-acc >= {SUCCESS_L_ACC} once alpha is refitted. Value "
             "swap: a head keeps its attention pattern and takes another head's W_V, b_V, W_O "
             "(and the reverse); s-acc refitted.")
    b.append("**Verdict rules** (thresholds are constants in `count01/questions/`, one module "
             "per question; each rule is versioned, its history in the question's section):")
    b.append(Bullets([f"Q{q.NUMBER} (version {q.VERSION}): {q.RULE}" for q in QUESTIONS]))
    b.append(f"**Controls** (`count01/measure/controls.py`, models written from weights, "
             f"{V.CONTROL_SEEDS} seeds that differ only in the scale of their values; question "
             f"4's controls are training-path tables of {V.CONTROL_RUNS} runs per "
             "configuration): " + "; ".join(x for q in QUESTIONS for x in q.controls_text())
             + ".")
    if ev.sweep:
        sw = ev.sweep.to_dict()
        grid = "; ".join(f"{k} in {', '.join(map(str, x))}" for k, x in sw["grid"].items())
        base = ", ".join(f"{k} = {x}" for k, x in sw["base"].items())
        b.append(f"**Sweep.** Grid: {grid}; each configuration trains "
                 f"{sw['base'].get('n_seeds', '?')} seeds as one batched run; fields shared by "
                 f"every configuration: {base} (the rest are Config defaults).")
    if cfg is not None:
        b.append(f"**Seeds** of the analysed run: {cfg.seeds[0]}..{cfg.seeds[-1]} "
                 f"({cfg.n_seeds} seeds). Full configuration of the analysed run:")
        b.append(Table(["field", "value"], [[k, str(val)] for k, val in cfg.to_dict().items()]))
    b.append(_versions_block(ev))
    b.append(_time_table(ev))
    b.append("**How to re-run.** `count01 reproduce --out DIR` (full: heads 1, 2, 4, 8 x 32 "
             "seeds) or `count01 reproduce --quick --out DIR` (8 seeds, 1000 steps); re-running "
             "the same command resumes and skips finished stages. `count01 report DIR` rebuilds "
             "this report from the saved results without training. The pieces: `count01 sweep "
             "SWEEP.toml`, `count01 paths SWEEP_DIR`, `count01 analyze RUN`.")
    b.append(f"Report generated {datetime.now(UTC).isoformat(timespec='seconds')} "
             f"from `{ev.root}`.")
    return Section("methods", "Methods", b)


def software_versions() -> dict[str, str]:
    """The software and machine a study ran on, for the methods."""
    got = {"python": platform.python_version()}  # the versions installed: no package imported
    for package in ("torch", "count01", "numpy", "scikit-learn", "pandas", "matplotlib", "safetensors"):
        try:
            got[package] = version(package)
        except PackageNotFoundError:
            got[package] = "not installed"
    return got | {"platform": platform.platform(), "cpus": str(os.cpu_count())}


def _versions_block(ev: Evidence) -> Block:
    if ev.study and "versions" in ev.study:
        got, when = ev.study["versions"], "recorded when the study ran"
    else:
        got, when = software_versions(), "at report time (the run did not record them)"
    return Table(["software", f"version ({when})"], [[k, str(x)] for k, x in got.items()])


def _time_table(ev: Evidence) -> Table:
    rows = []
    if ev.study:
        stages = ev.study.get("stages", {})
        for name, s in stages.items():
            if name != "report":
                n = s.get("seed_steps")  # stages that train (studies before it: not recorded)
                rows.append([f"study stage: {name}", f"{s['seconds']:.1f} s",
                             "-" if n is None else f"{n:,}",
                             "-" if n is None or s["seconds"] <= 0 else
                             f"{n / s['seconds']:,.0f}"])
        total = sum(s["seconds"] for n, s in stages.items() if n != "report")
        rows.append(["study total (before the report)", f"{total:.1f} s", "", ""])
    if ev.train_seconds:
        rows.append(["each configuration below (the sweep's workers run them in parallel, so "
                     "these times overlap)", "", "", ""])
    for cid, s in ev.train_seconds.items():
        rows.append([f"train and evaluate {cid}", f"{s:.1f} s", "", ""])
    if ev.analysis and "seconds" in ev.analysis:
        rows.append(["head analysis", f"{sum(ev.analysis['seconds'].values()):.1f} s", "", ""])
    if not rows:
        rows.append(["(not recorded)", "-", "", ""])
    return Table(["time taken", "wall time", "seed-steps trained (seeds x steps)",
                  "seed-steps/s (wall time, with evaluation)"], rows)


def build_document(ev: Evidence, v: dict[int, V.Verdict], sensitivity_figure: Path | None = None
                   ) -> tuple[str, list[Section]]:
    sections = [summary_section(ev, v, sensitivity_figure)] + [
        question_section(ev, q, v[q.NUMBER]) for q in QUESTIONS]
    return "count01 report: do attention heads compete or cooperate?", sections + [
        methods_section(ev)]


# --- rendering ------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:60rem;
margin:2rem auto;padding:0 1rem;line-height:1.5;color:#222}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f6f6}figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}nav a{margin-right:.8rem}
.badge{display:inline-block;white-space:nowrap;padding:.05rem .5rem;border-radius:.8rem;
font-size:.85rem;color:#fff;vertical-align:middle;margin-left:.4rem}
.held{background:#2e7d32}.did-not-hold{background:#c62828}.mixed{background:#b26a00}
.not-measured{background:#757575}.inconclusive{background:#5e35b1}
"""


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _badge(status: str) -> str:
    return f'<span class="badge {status.replace(" ", "-")}">{html.escape(status)}</span>'


def _status_cell(text: str) -> str:
    for s in V.STATUSES:
        if text == s:
            return _badge(s)
    return _inline_html(text)


def render_html(title: str, sections: list[Section]) -> str:
    """The page, figures embedded (`write_report` checks first that each lies inside the directory
    reported on or the report's own: a planted link to elsewhere is refused)."""
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><nav>"
             + "".join(f'<a href="#{s.id}">{html.escape(s.title.split(":")[0])}</a>'
                       for s in sections) + "</nav>"]
    for s in sections:
        badge = _badge(s.status) if s.status else ""
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}{badge}</h2>')
        for blk in s.blocks:
            if isinstance(blk, str):
                parts.append(f"<p>{_inline_html(blk)}</p>")
            elif isinstance(blk, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in blk.items)
                             + "</ul>")
            elif isinstance(blk, Table):
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in blk.header)
                rows = "".join("<tr>" + "".join(f"<td>{_status_cell(c)}</td>" for c in r)
                               + "</tr>" for r in blk.rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            else:
                data = base64.b64encode(blk.path.read_bytes()).decode("ascii")
                parts.append(f'<figure><img src="data:image/png;base64,{data}" '
                             f'alt="{html.escape(blk.caption)}"><figcaption>'
                             f"{_inline_html(blk.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[Section], base: Path) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}" + (f" — *{s.status}*" if s.status else ""), ""]
        for blk in s.blocks:
            if isinstance(blk, str):
                lines += [blk, ""]
            elif isinstance(blk, Bullets):
                lines += [f"- {i}" for i in blk.items] + [""]
            elif isinstance(blk, Table):
                lines.append("| " + " | ".join(map(_md_cell, blk.header)) + " |")
                lines.append("|" + " --- |" * len(blk.header))
                lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in blk.rows]
                lines.append("")
            else:
                rel = Path(os.path.relpath(blk.path, base)).as_posix()
                lines += [f"![{_md_cell(blk.caption)}]({rel})", "", f"*{blk.caption}*", ""]
    return "\n".join(lines)


def _sensitivity_table(v: dict[int, V.Verdict]) -> pd.DataFrame | None:
    """Every rule's status per varied threshold (sensitivity.csv), None if no rule varies one."""
    every = [y for x in v.values() for y in (x, x.sentence) if y is not None]
    tables = [x.sensitivity_table for x in every if x.sensitivity_table is not None]
    return pd.concat(tables, ignore_index=True) if tables else None


@dataclass
class ReportFiles:
    html: Path
    md: Path
    json: Path  # verdicts.json: [{"question", "status", "rule_version", "controls", ...}, ...]
    verdicts: dict[int, str]


def write_report(root: str | Path, out: str | Path | None,
                 controls: Callable[[], V.Controls]) -> ReportFiles:
    """Write report.html and report.md for a study, sweep or run directory (into `out`,
    default the directory itself) from its saved results and the rules' controls (built by
    `controls()` once the results have been read: a bad directory is refused at once)."""
    root = Path(root)
    out = root if out is None else Path(out)
    from .plots import sensitivity

    ev = read_evidence(root)
    v = judge(ev, controls())
    table = _sensitivity_table(v)
    title, sections = build_document(ev, v, None if table is None else out / "sensitivity.png")
    outside = [b.path for s in sections for b in s.blocks if isinstance(b, Figure)
               and not any(b.path.resolve().is_relative_to(d.resolve()) for d in (root, out))]
    if outside:  # checked before anything is written
        raise ReportError(f"figure {outside[0]} lies outside {root}: not embedded")
    if table is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "sensitivity.csv", lambda tmp: table.to_csv(tmp, index=False))
        sensitivity(table, out)
    page = render_html(title, sections)
    md = render_markdown(title, sections, out)
    atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    write_json(out / "verdicts.json", [x.to_json() for x in v.values()])
    return ReportFiles(out / "report.html", out / "report.md", out / "verdicts.json",
                       {q: x.status for q, x in v.items()})

