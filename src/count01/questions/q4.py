"""Question 4 of SPEC 1: does reaching the (ideal) solution depend on the training path (seed,
initialisation, learning rate, optimiser, schedule, heads)? Its rule, thresholds, history,
controls (training-path tables with known failures: no hand-built model has a training path),
and prose, with the training path's figures and tables (best practice, early stopping)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..criteria import IDEAL_SETS, RESTART_CHANCE, SUCCESS_L_ACC, SUCCESS_SET
from ..present.document import Block, Figure, ReportError, Table, rel
from ..stats import wilson
from .base import (
    HELD,
    INCONCLUSIVE,
    MIXED,
    NOT_HELD,
    NOT_MEASURED,
    SET,
    Evidence,
    History,
    Verdict,
    config_name,
    share,
)
from .base import THRESHOLDS as SHARED

if TYPE_CHECKING:
    from ..present.report import Evidence as Saved

NUMBER = 4
FAIL_RATE = 0.05  # the training path "decides" if some configuration fails in more seeds
THRESHOLDS = {"fail_rate": FAIL_RATE}
VARIED: dict[str, str] = {}
MIN_UNITS = {"4": 8}  # the fewest runs per configuration the rule decides on
REGIME_NAMES = 6  # configurations named per regime of the training path (the numbers list all)
PARTS: dict[str, str] = {}
HISTORY = [
    (1, "commit 39e0da1", None, "first version: held if some configuration fails in >= 5% "
     "of its seeds, did not hold if every seed succeeded"),
    (2, "issue #13", True, "a failure rate decides only if its Wilson 95% interval is clear "
     "of 5%; inconclusive below 8 runs per configuration"),
    (3, "issue #16, after an exploratory run of the training-path grid was seen", True,
     "missing the ideal solution (SPEC 4) counts like failing: held also if some "
     "configuration misses it in more than 5% of its seeds, or the ideal rates of the best "
     "and the worst configuration have disjoint intervals; the regimes are named")]
VERSION = HISTORY[-1][0]
# early stopping's rule (`train.STOP_RULES`; not a verdict, but chosen the same way), as HISTORY
STOP_RULE_HISTORY: History = [
    (1, "issue #16, before any training trajectory was looked at", False, "first version: "
     "hard l-acc at most 0.6 from a quarter of the steps (its replay counts a seed whose weights "
     "blew up as stopped, as training did: their l-acc is at chance)"),
    (2, "issue #16, after the full study's training-path trajectories were seen", True,
     "iid cross-entropy at least ln 2 (a coin flip between 0 and 1) from a sixth of the steps, "
     "or weights no longer finite; chosen on the design half of the grid (criteria's protocol: "
     "the most seed-steps saved for at most 1% of the half's successes stopped; the chosen "
     "threshold 0.685 rounded up to ln 2, which stops fewer successes there), then tested once "
     "on the held-out half (the table above)"),
]
# the controls: failures per configuration of the positive and negative control's
# training-path tables (`controls.training_paths`), of CONTROL_RUNS runs each
CONTROL_FAILURES = ((20, 0), (0, 0))
CONTROLS: dict[str, tuple[str, str]] = {}  # no hand-built model: see CONTROL_FAILURES
READS: dict[str, tuple[str, ...]] = {}

RULE = (f"Per configuration, success = l-acc >= {SUCCESS_L_ACC} on `{SET}` and the ideal "
           f"solution = also l-acc >= {SUCCESS_L_ACC} on `long`, `noisy` and `exhaustive`, "
           "each rate with its Wilson 95% interval. Held (the path decides) if some "
           f"configuration of at least {MIN_UNITS['4']} runs fails, or misses the ideal "
           f"solution, in more than {FAIL_RATE:.0%} of its seeds (the interval's lower end "
           "above it), or, every configuration having at least that many runs, the intervals of "
           "the best and the worst configuration's success (or ideal) rate do not overlap. Did "
           "not hold if every configuration's failure and miss "
           f"rates are below {FAIL_RATE:.0%} (the intervals' upper ends below it) and, within "
           "each configuration, every successful seed needs the same number of heads (minimal "
           "head set); mixed if so but the number of heads varies. Inconclusive otherwise: a "
           f"configuration with fewer than {MIN_UNITS['4']} runs, or an interval that straddles "
           f"{FAIL_RATE:.0%}.")
TITLE = ("The training path: how often does training reach the (ideal) solution, and does it "
            "depend on the seed, initialisation, optimiser, learning rate and number of heads?")


def _decides(n: np.ndarray, ok: np.ndarray, t: float) -> tuple[bool, bool, np.ndarray]:
    """From per-configuration runs n and good runs ok: is some configuration of enough runs bad
    in more than a share t of them (95% sure), is every one bad in less (95% sure), and the
    Wilson intervals of the bad rates, as rows (lo, hi)."""
    lo, hi = (np.asarray(x, dtype=float) for x in wilson(n - ok, n))
    return bool(((n >= MIN_UNITS["4"]) & (lo > t)).any()), bool((hi < t).all()), np.stack([lo, hi])


def _disjoint(n: np.ndarray, ok: np.ndarray) -> bool:
    lo, hi = (np.asarray(x, dtype=float) for x in wilson(ok, n))
    return bool(hi.min() < lo.max())


def verdict(success: pd.DataFrame | None, minimal: pd.DataFrame | None, label: str = "heads",
       t: Mapping[str, float] = SHARED | THRESHOLDS) -> Verdict:
    """success: config rows (n_runs, n_success, rate, ci_low, ci_high, <label>, and n_ideal
    where the sweep measured the ideal solution); minimal: rows (config_id, size, n_runs) of
    minimal head-set sizes (size NaN = none)."""
    if success is None or success.empty:
        return Verdict(NUMBER, TITLE, NOT_MEASURED, RULE, "No training-path tables were found "
                       "(`count01 paths SWEEP_DIR` writes them from a sweep's results).",
                       rule_version=VERSION)
    s = success.sort_values(label) if label in success else success
    n, ok = s["n_runs"].to_numpy(), s["n_success"].to_numpy()
    ideal = s["n_ideal"].to_numpy() if "n_ideal" in s else ok
    enough = n >= MIN_UNITS["4"]
    bad_fail, good_fail, fail_ci = _decides(n, ok, t["fail_rate"])
    bad_miss, good_miss, miss_ci = _decides(n, ideal, t["fail_rate"])
    differ = _disjoint(n, ok)
    differ_ideal = _disjoint(n, ideal)
    sizes_vary = False
    if minimal is not None and len(minimal):
        known = minimal.dropna(subset=["size"])
        sizes_vary = bool((known.groupby("config_id")["size"].nunique() > 1).any())
    if bad_fail or bad_miss or ((differ or differ_ideal) and enough.all()):
        status = HELD
    elif not enough.all() or not (good_fail and good_miss):
        status = INCONCLUSIVE
    else:
        status = MIXED if sizes_vary else NOT_HELD
    fail = 1 - s["rate"]
    if bad_fail or (differ and enough.all()):  # version 2: success alone
        v2 = HELD
    elif not enough.all() or not good_fail:
        v2 = INCONCLUSIVE
    else:
        v2 = MIXED if sizes_vary else NOT_HELD
    if (fail >= t["fail_rate"]).any() or differ:  # version 1
        v1 = HELD
    elif (fail == 0).all() and not sizes_vary:
        v1 = NOT_HELD
    else:
        v1 = MIXED
    names = [config_name(r[label], label) if label in r else str(r["config_id"])
             for _, r in s.iterrows()]
    total, good, best = int(n.sum()), int(ok.sum()), int(ideal.sum())
    details = []
    if good == total and best == total:
        finding = (f"All {total} runs of the {len(s)} "
                   f"configuration{'s' if len(s) > 1 else ''} succeeded and reached the ideal "
                   "solution; with these seed counts the true failure rate of each is only "
                   f"known to be below {max(fail_ci[1].max(), miss_ci[1].max()):.2f} (Wilson 95% "
                   "upper bound).")
    else:
        worst = int(np.argmin(ok / n))
        finding = (f"{share(good, total)} runs succeeded and {share(best, total)} reached the "
                   f"ideal solution; the lowest success rate is {ok[worst] / n[worst]:.2f} "
                   f"(95% CI {s['ci_low'].iloc[worst]:.2f}-{s['ci_high'].iloc[worst]:.2f}) at "
                   f"{names[worst]}.")
        bad_lo, bad_hi = np.maximum(fail_ci[0], miss_ci[0]), np.maximum(fail_ci[1], miss_ci[1])
        regimes = [("mostly fail or miss the ideal solution (the bad rate's interval above 50%)",
                    [nm for nm, lo in zip(names, bad_lo) if lo > 0.5]),
                   ("mostly reach the ideal solution (below 50%)",
                    [nm for nm, hi in zip(names, bad_hi) if hi < 0.5]),
                   ("are in between or too close to tell (the interval holds 50%)",
                    [nm for nm, lo, hi in zip(names, bad_lo, bad_hi) if lo <= 0.5 <= hi])]
        details.append(f"**Regimes** (bad = failed, or missed the ideal solution; "
                       f"{int((bad_lo > t['fail_rate']).sum())} of {len(s)} configurations are "
                       f"bad in more than {t['fail_rate']:.0%} of their seeds, 95% sure). "
                       + " ".join(f"{len(group)} {text}" + (": " + "; ".join(group[:REGIME_NAMES])
                                  + (f"; and {len(group) - REGIME_NAMES} more" if len(group)
                                     > REGIME_NAMES else "") if group else "") + "."
                                  for text, group in regimes))
    if sizes_vary:
        mix = _size_mix(s, minimal, label)
        more = f"; and {len(mix) - 2} more configurations (see the numbers)" if len(mix) > 2 else ""
        finding += (" Seeds of one configuration reached solutions of different sizes (the "
                    "smallest head set keeping the answers right, alpha refitted): "
                    + "; ".join(mix[:2]) + more + ".")
    numbers = []
    for i, (_, r) in enumerate(s.iterrows()):
        text = (f"{int(ok[i])}/{int(n[i])} succeeded, rate {r['rate']:.3f} (Wilson 95% CI "
                f"{r['ci_low']:.3f}-{r['ci_high']:.3f}); failure rate {fail_ci[0, i]:.3f}-"
                f"{fail_ci[1, i]:.3f}")
        if "n_ideal" in s:
            text += (f"; {int(ideal[i])}/{int(n[i])} ideal, miss rate {miss_ci[0, i]:.3f}-"
                     f"{miss_ci[1, i]:.3f}")
        if minimal is not None and len(minimal):
            m = minimal[minimal["config_id"] == r["config_id"]]
            dist = ", ".join(("no set" if _nan(z) else f"{int(z)} head{'s' * (int(z) != 1)}")
                             + f": {int(c)}" for z, c in zip(m["size"], m["n_runs"]))
            text += f"; minimal head set sizes: {dist}"
        numbers.append((names[i], text))
    numbers.append(("success rates differ between configurations (intervals disjoint)",
                    "yes" if differ else "no"))
    numbers.append(("ideal rates differ between configurations (intervals disjoint)",
                    "yes" if differ_ideal else "no"))
    numbers.append(("minimal head-set size varies across seeds of a configuration",
                    "yes" if sizes_vary else "no"))
    return Verdict(NUMBER, TITLE, status, RULE, finding, numbers, details=details,
                   previous={1: v1, 2: v2}, rule_version=VERSION)



def _size_mix(success: pd.DataFrame, minimal: pd.DataFrame, label: str) -> list[str]:
    """'at heads = 8, 31 runs need 1 head and 1 needs 2', per configuration whose sizes vary."""
    out = []
    for cid, m in minimal.dropna(subset=["size"]).groupby("config_id", sort=False):
        if m["size"].nunique() < 2:
            continue
        row = success[success["config_id"] == cid]
        name = (config_name(row[label].iloc[0], label) if label in row and len(row)
                else str(cid))
        m = m.sort_values("n_runs", ascending=False)
        out.append(f"at {name}, " + " and ".join(
            f"{int(n)} {'run needs' if n == 1 else 'runs need'} {int(z)} "
            f"{'head' if z == 1 else 'heads'}" for z, n in zip(m["size"], m["n_runs"])))
    return out


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x)



def of_evidence(e: Evidence, t: Mapping[str, float]) -> Verdict:
    return verdict(e.success, e.minimal, e.label, t)


RULES = {"4": (("fail_rate",), lambda e, t: of_evidence(e, t).status)}


# --- what the report says ----------------------------------------------------------------------

def summary(ev: Saved, v: Verdict) -> list[tuple[str, str, str]]:
    """The summary's finding: (status, label, text)."""
    label = "The risk, the training path"
    if v.status == NOT_MEASURED:
        return [(v.status, label, "Not measured: no training-path results were saved (run "
                 "`count01 sweep`).")]
    scope = "" if ev.kind != "run" else "This run alone is one configuration (its own seeds). "
    unvaried = [f for f in ("lr", "init_scale") if f not in ev.grid]
    caveat = (f"; this study did not vary {' or '.join(unvaried)}, where the path may matter "
              "more." if unvaried else ".")
    failed = ev.success is not None and bool((ev.success["n_success"]
                                              < ev.success["n_runs"]).any())
    design = {HELD: "For model design: the training path decides; take a configuration "
                    "from the best-practice table below (or the most reliable one measured) "
                    "and budget its restarts (`count01 train --restarts K`)",
              NOT_HELD: "For model design: no restarts were needed here, but a failure "
                        "rate up to that bound is not ruled out",
              MIXED: ("For model design: failures were rare; a few restarts (`count01 train "
                      "--restarts K`) are cheap insurance" if failed else
                      "For model design: no restarts were needed here"),
              INCONCLUSIVE: ("For model design: too few seeds to bound the failure rate below "
                             f"{FAIL_RATE:.0%}; a few restarts (`count01 train --restarts K`) "
                             "are cheap insurance")
              }[v.status]
    return [(v.status, label, f"{v.finding} {scope}{design}{caveat}")]


def numbers(ev: Saved, v: Verdict) -> list[tuple[str, str]]:
    return list(v.numbers)


def figures(ev: Saved, v: Verdict) -> list[Block]:
    """The training path's tables and figures, from the sweep's paths/ (`count01 paths`)."""
    if ev.path_dir is None:
        return []
    d = ev.path_dir / "paths"
    out = [Figure(d / "phase_diagram.png", "Phase diagram: the share of seeds that reach the "
                  "solution (top) and the ideal solution (bottom) over init_scale x learning "
                  "rate, a column per optimiser and head count; each cell k/n seeds."),
           Figure(d / "success_rate.png", "Success rate per configuration with its Wilson 95% "
                  f"interval (success = l-acc >= {SUCCESS_L_ACC} on `{SUCCESS_SET}`)."),
           Figure(d / "minimal_heads.png", "How many heads each run needs: the size of the "
                  f"smallest head set that keeps {SUCCESS_SET} l-acc >= {SUCCESS_L_ACC} once "
                  "alpha is refitted.")]
    if ev.success is not None and len(ev.success):
        ranked = ev.success.sort_values(["rate", "config_id"])
        worst = ranked.iloc[0]
        tied = int((ranked["rate"] == worst["rate"]).sum())
        which = ("the configuration with the lowest success rate" if tied == 1 else
                 f"the first of {tied} configurations tied at the lowest success rate, "
                 f"{worst['rate']:.2f}")
        out.append(Figure(d / "trajectories" / f"{worst['config_id']}.png",
                          f"Training paths of {which} ({worst['config_id']}): hard l-acc, head "
                          "s-acc, w01 and w02 per seed over the checkpoints (blue = succeeded, "
                          "red = failed)."))
    out.append(Figure(d / "early_predictors.png", "Which early-training quantities tell a "
                      "failing run apart (ROC AUC for failure, all configurations pooled)."))
    if ev.path_summary is None:
        return [f"(No training-path figures: run `count01 paths {rel(ev.path_dir, ev.root)}`.)"]
    summary = ev.path_summary
    skipped = summary.get("figures_skipped") if isinstance(summary, dict) else None
    if not isinstance(skipped, dict):
        raise ReportError(f"{d / 'paths.json'} is not a training-path summary (no "
                          "figures_skipped)")
    blocks: list[Block] = _path_tables(ev, summary)
    for f in out:
        if f.path.exists():
            blocks.append(f)
        elif f.path.stem in skipped:
            blocks.append(f"(No `{f.path.name}` figure: {skipped[f.path.stem]}.)")
        else:
            blocks.append(f"(Figure `{f.path.name}` was not found in `{rel(d, ev.root)}`.)")
    return blocks


def _path_tables(ev: Saved, summary: dict) -> list[Block]:
    """Best practice (the cheapest reliable ideal solutions) and what early stopping would do,
    from the paths tables."""
    out: list[Block] = []
    best, stop = ev.path_tables.get("best_practice"), ev.path_tables.get("early_stop")
    if best is not None and len(best):
        top = best.head(5)
        out.append("**Best practice** (`best_practice.csv`): the configurations that buy a "
                   f"{RESTART_CHANCE:.0%} chance of one ideal solution (l-acc >= {SUCCESS_L_ACC} "
                   f"on {', '.join(IDEAL_SETS)}) for the fewest seed-steps, counting restarts "
                   "from the lower end of the ideal rate's Wilson 95% interval:")
        out.append(Table(["configuration", "ideal runs", "ideal rate (95% CI)", "restarts",
                          "seed-steps"],
                         [[", ".join(f"{k}={r[k]}" for k in ev.grid) or str(r["config_id"]),
                           f"{int(r['n_ideal'])}/{int(r['n_runs'])}",
                           f"{r['ideal_rate']:.2f} ({r['ideal_ci_low']:.2f}-"
                           f"{r['ideal_ci_high']:.2f})",
                           "never" if not np.isfinite(r["restarts_99_ideal"])
                           else f"{int(r['restarts_99_ideal'])}",
                           "never" if not np.isfinite(r["seed_steps_99_ideal"])
                           else f"{int(r['seed_steps_99_ideal']):,}"]
                          for _, r in top.iterrows()]))
    if stop is not None and len(stop):
        out += _early_stop_blocks(stop.assign(rule=1) if "rule" not in stop else stop, summary)
    return out


def _early_stop_blocks(stop: pd.DataFrame, summary: dict) -> list[Block]:
    """Each early-stopping rule replayed on the checkpoints, on each half of the grid and on all
    of it: what it saves and what it costs in seeds that would have succeeded. The rules' text
    and the one training uses are read from paths.json (`count01 paths` wrote them)."""
    texts = summary.get("early_stop_rules", {})
    training = summary.get("early_stop_rule")
    rows = []
    for number, by_rule in stop.groupby("rule", sort=False):
        parts = ([(h, by_rule[by_rule["half"] == h]) for h in ("held-out", "design")]
                 if "half" in by_rule else [])
        for half, d in parts + [("all", by_rule)]:
            n, failed, stopped = (int(d[k].sum()) for k in ("n_runs", "n_failed", "n_stopped"))
            wrong, missed = int(d["n_wrongly_stopped"].sum()), int(d["n_missed"].sum())
            steps = (d["seed_steps"] if "seed_steps" in d else d["n_runs"]).astype(float)
            saved = float((d["saved_fraction"] * steps).sum() / max(steps.sum(), 1))
            ok = n - failed
            per = (f"{(1 - saved) / (ok - wrong) * n:.2f}" if ok > wrong else "no success")
            rows.append([f"rule {number}" + (" (training's)" if number == training else ""),
                         half, f"{stopped}/{n}",
                         f"{stopped - wrong} of {failed}", f"{wrong} of {ok}",
                         f"{missed}", f"{saved:.0%}", per,
                         f"{n / ok:.2f}" if ok else "no success"])
    used = set(stop["rule"])
    rules = "; ".join(text for v, text in texts.items() if int(v) in used)
    return [f"**Early stopping**, each rule replayed on the checkpoints (`early_stop.csv`): "
            f"{rules}. Rule {training} is the one `--early-stop` trains with. Rule 2 was "
            "chosen after the full study's training-path trajectories were seen, on its design "
            "half (the configurations at even positions of the grid) and is tested on the "
            "held-out half; on any other sweep both halves are new to it. A wrongly stopped run is "
            "a success lost; the last two columns are the seed-steps spent per success, as a "
            "multiple of one run's steps, with the rule and without it.",
            Table(["rule", "half of the grid", "stopped", "of them failed", "wrongly stopped "
                   "(of the successes)", "failures missed", "seed-steps saved",
                   "runs' steps per success, stopping", "without stopping"], rows),
            "**Early stopping's rule history.**",
            Table(["rule", "when", "after results were seen", "what it changed"],
                  [[str(n), when, {True: "yes", False: "no", None: "not recorded"}[seen], what]
                   for n, when, seen, what in STOP_RULE_HISTORY])]


def closing(ev: Saved, v: Verdict) -> list[Block]:
    return []


def controls_text() -> list[str]:
    """The methods' description of this question's controls."""
    return ["rule 4: failures per configuration " + ", ".join(
        f"{side} {f}" for side, f in zip(("positive", "negative"), CONTROL_FAILURES))]
