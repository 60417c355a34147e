"""Question 5 of SPEC 1: do the heads keep the same division of labour under other noise
conditions, or do they start to specialise? Its rule, history, controls (labour tables with
known answers: no hand-built model has a training path) and prose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..criteria import SUCCESS_L_ACC
from ..present.document import Block, Figure, rel
from ..stats import wilson
from .base import HELD, INCONCLUSIVE, MOST, NOT_HELD, NOT_MEASURED, SET, Evidence, Verdict, config_name
from .base import THRESHOLDS as SHARED

if TYPE_CHECKING:
    from ..present.report import Evidence as Saved

NUMBER = 5
THRESHOLDS: dict[str, float] = {}  # the shared `most` only
VARIED: dict[str, str] = {}
MIN_UNITS = {"5": 8}  # the fewest solved seeds per noise condition the rule decides on
PARTS: dict[str, str] = {}
HISTORY = [
    (1, "issue #15, before the noise benchmark was run", False, "first version: the "
     "shares of pseudo-ensemble and of divided seeds per noise condition, with Wilson 95% "
     "intervals")]
VERSION = HISTORY[-1][0]
# the controls: every seed's labour per noise condition of the positive (it changes) and the
# negative control's labour tables (`controls.noise_benchmark`)
CONTROL_LABOURS = (("pseudo-ensemble", "divided"), ("pseudo-ensemble", "pseudo-ensemble"))
CONTROLS: dict[str, tuple[str, str]] = {}  # no hand-built model: see CONTROL_LABOURS
READS: dict[str, tuple[str, ...]] = {}

LABOUR_SHARES = ("pseudo_ensemble", "divided")  # the classes whose shares the rule compares
RULE = ("Per noise condition, the solved seeds (some head set, alpha refitted, keeps "
           f"l-acc >= {SUCCESS_L_ACC} on `{SET}`) are classed by SPEC 4's division of labour: "
           "pseudo-ensemble (each head alone suffices), divided (the minimal head set has >= 2 "
           "heads) or mixed; the shares of pseudo-ensemble and of divided seeds get Wilson 95% "
           "intervals. Held (the division of labour changes with the noise condition) if, for "
           "either share, the intervals of two conditions do not overlap. Did not hold if one "
           f"class holds >= {MOST:.0%} of the solved seeds in every condition (every interval's "
           "lower end at or above it). Inconclusive otherwise, or with fewer than "
           f"{MIN_UNITS['5']} solved seeds in a condition or fewer than two conditions.")
TITLE = ("The division of labour under other noise conditions: do the heads keep sharing the "
            "count, or do they start to specialise?")


def verdict(labour: pd.DataFrame | None, label: str = "configuration",
       t: Mapping[str, float] = SHARED | THRESHOLDS) -> Verdict:
    """labour: one row per noise condition (`paths.labour_table`: n_pseudo_ensemble,
    n_divided, n_mixed, n_unsolved, n_runs and the condition's <label>)."""
    if labour is None or labour.empty:
        return Verdict(NUMBER, TITLE, NOT_MEASURED, RULE, "No noise benchmark was found.",
                       rule_version=VERSION)
    names = [config_name(r[label], label) if label in r else str(r["config_id"])
             for _, r in labour.iterrows()]
    solved = (labour["n_runs"] - labour["n_unsolved"]).to_numpy()
    counts = {c: labour[f"n_{c}"].to_numpy() for c in (*LABOUR_SHARES, "mixed")}
    ci = {c: np.stack([np.asarray(x, dtype=float) for x in wilson(counts[c], solved)])
          for c in counts}
    enough = len(labour) >= 2 and bool((solved >= MIN_UNITS["5"]).all())
    changes = [c for c in LABOUR_SHARES if ci[c][1].min() < ci[c][0].max()]
    steady = [c for c in counts if (ci[c][0] >= t["most"]).all()]
    status = (HELD if enough and changes else NOT_HELD if enough and steady else INCONCLUSIVE)
    share_of = {c: counts[c].sum() / max(solved.sum(), 1) for c in counts}
    finding = (f"Over {len(labour)} noise conditions, {int(solved.sum())} of "
               f"{int(labour['n_runs'].sum())} seeds were solved: "
               + ", ".join(f"{share_of[c]:.0%} {c.replace('_', '-')}" for c in counts) + ".")
    if changes:
        c = changes[0]
        lo, hi = int(np.argmin(counts[c] / np.maximum(solved, 1))), int(
            np.argmax(counts[c] / np.maximum(solved, 1)))
        finding += (f" The {c.replace('_', '-')} share runs from {counts[c][lo]}/{solved[lo]} "
                    f"at {names[lo]} to {counts[c][hi]}/{solved[hi]} at {names[hi]}.")
    numbers = [(nm, f"{int(solved[i])} solved of {int(labour['n_runs'].iloc[i])}: "
                + ", ".join(f"{c.replace('_', '-')} {int(counts[c][i])} ({ci[c][0, i]:.2f}-"
                            f"{ci[c][1, i]:.2f})" for c in counts))
               for i, nm in enumerate(names)]
    numbers.append(("shares that differ between conditions (intervals disjoint)",
                    ", ".join(c.replace("_", "-") for c in changes) or "none"))
    return Verdict(NUMBER, TITLE, status, RULE, finding, numbers, rule_version=VERSION)



def of_evidence(e: Evidence, t: Mapping[str, float]) -> Verdict:
    return verdict(e.labour, e.labour_label, t)


RULES = {"5": (("most",), lambda e, t: of_evidence(e, t).status)}


# --- what the report says ----------------------------------------------------------------------

def summary(ev: Saved, v: Verdict) -> list[tuple[str, str, str]]:
    """The summary's finding: (status, label, text)."""
    label = "Finding 5, other noise"
    if v.status == NOT_MEASURED:
        return [(v.status, label, "Not measured: no noise benchmark was saved (a study's "
                 "`noise/` sweep).")]
    design = {HELD: "For model design: how the heads share the count depends on the noise the "
                    "model is trained on; re-check it for the noise you expect",
              NOT_HELD: "For model design: the heads share the count the same way under every "
                        "noise condition measured",
              INCONCLUSIVE: "For model design: too few seeds per condition, or shares too close "
                            "to their threshold, to say whether the noise changes it"}[v.status]
    return [(v.status, label, f"{v.finding} {design}.")]


def numbers(ev: Saved, v: Verdict) -> list[tuple[str, str]]:
    return list(v.numbers)


def figures(ev: Saved, v: Verdict) -> list[Block]:
    if ev.noise_dir is None:
        return []
    d = ev.noise_dir / "paths"
    return [Figure(d / "labour.png", "How the heads divide the labour under each noise "
                   "condition: the share of seeds that are pseudo-ensembles (each head alone "
                   "suffices), divided (the minimal head set has two or more heads), mixed, or "
                   "unsolved.")] if (d / "labour.png").exists() else [
        f"(Figure `labour.png` was not found in `{rel(d, ev.root)}`.)"]


def closing(ev: Saved, v: Verdict) -> list[Block]:
    return []


def controls_text() -> list[str]:
    """The methods' description of this question's controls."""
    return ["rule 5: every seed's labour per noise condition, " + ", ".join(
        f"{side} {' / '.join(x)}" for side, x in zip(("positive", "negative"), CONTROL_LABOURS))]
