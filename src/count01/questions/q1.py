"""Question 1 of SPEC 1: do the heads form a pseudo-ensemble on the semantics, each head alone
separating "more 1s" from "not more 1s"? Its rule, thresholds, history, controls and prose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pandas as pd

from ..present.document import Block, analysis_figures
from .base import (
    FEW,
    HELD,
    INCONCLUSIVE,
    MIXED,
    MOST,
    NOT_HELD,
    NOT_MEASURED,
    SET,
    Evidence,
    Verdict,
    by_evidence,
    by_share,
    evidence_rule,
    seeds_note,
    share,
    share_ci,
    spread,
    successful_seeds,
)
from .base import THRESHOLDS as SHARED
from .base import aggregation_rows as hard_rows

if TYPE_CHECKING:
    from ..present.report import Evidence as Saved

NUMBER = 1
S_ACC_GOOD = 0.9  # a head "separates" if its s-acc on hard is at least this
THRESHOLDS = {"s_acc_good": S_ACC_GOOD}
VARIED = {"s_acc_good": "from_one"}
MIN_UNITS = {"1": 8}  # the fewest heads the rule decides on
PARTS: dict[str, str] = {}
HISTORY = [
    (1, "commit 39e0da1", None, "first version: share of heads with s-acc >= 0.9"),
    (2, "issue #13", True, "inconclusive below 8 heads or when the share's Wilson 95% "
     "interval straddles its threshold")]
VERSION = HISTORY[-1][0]
# rule -> (positive control: has the property, negative control: lacks it), `controls.LIBRARY`
CONTROLS = {"1": ("ideal", "split")}
READS = {"1": ("heads",)}  # rule -> the analysis tables it judges by (what a control computes)

RULE = (f"On `{SET}`, count the heads (every head of every successful seed) whose s-acc is "
        f">= {S_ACC_GOOD}. Held if that share is >= {MOST:.0%}, did not hold if <= {FEW:.0%}, "
        "mixed otherwise. " + evidence_rule("heads", MIN_UNITS["1"]))
TITLE = "Pseudo-ensemble on the semantics: does each head alone separate the answers?"


def _verdict(status: str, finding: str, numbers=(), **kw) -> Verdict:
    return Verdict(NUMBER, TITLE, status, RULE, finding, list(numbers), rule_version=VERSION,
                   **kw)


def verdict(heads: pd.DataFrame | None, model: pd.DataFrame | None,
            t: Mapping[str, float] = SHARED | THRESHOLDS) -> Verdict:
    if heads is None or model is None:
        return _verdict(NOT_MEASURED, "No head analysis was found.")
    ok = successful_seeds(model, t)
    h = heads[(heads["set"] == SET) & heads["seed"].isin(ok)]
    if h.empty:
        return _verdict(NOT_MEASURED, "No seed succeeded, so no trained head could be judged.",
                        [seeds_note(model, ok)])
    good = int((h["s_acc"] >= t["s_acc_good"]).sum())
    status = by_evidence(good, len(h), MIN_UNITS["1"], t)
    per_seed = h.groupby("seed")["s_acc"].apply(lambda s: (s >= t["s_acc_good"]).mean())
    finding = (f"{share(good, len(h))} of the heads separate the answers alone on `{SET}` "
               f"(s-acc >= {t['s_acc_good']:g}); median head s-acc {h['s_acc'].median():.3f}, "
               f"median head AUC {h['head_auc'].median():.3f}.")
    numbers = [seeds_note(model, ok),
               (f"heads with s-acc >= {t['s_acc_good']:g} ({SET}), the deciding share",
                share_ci(good, len(h))),
               (f"head s-acc ({SET})", spread(h["s_acc"])),
               (f"head AUC ({SET})", spread(h["head_auc"])),
               (f"probe s-acc ({SET})", spread(h["probe_s_acc"])),
               ("share of a seed's heads that separate, over seeds", spread(per_seed, 2))]
    for name in ("iid", "exhaustive"):
        other = heads[(heads["set"] == name) & heads["seed"].isin(ok)]
        if len(other):
            numbers.append((f"head s-acc ({name})", spread(other["s_acc"])))
    return _verdict(status, finding, numbers, previous={1: by_share(good / len(h), t)})


def of_evidence(e: Evidence, t: Mapping[str, float]) -> Verdict:
    return verdict(e.tables.get("heads"), e.tables.get("model"), t)


RULES = {"1": (("success_l_acc", "s_acc_good", "most", "few"),
               lambda e, t: of_evidence(e, t).status)}


def separating_heads_by_config(heads: pd.DataFrame, runs: pd.DataFrame
                               ) -> list[tuple[str, str]]:
    """Q1 across the sweep (context, not part of the rule): per head count, the share of heads
    of successful runs that separate alone on `hard`. heads / runs: the sweep's tables."""
    ok = runs.loc[runs["success"].astype(bool), ["config_id", "seed", "heads"]]
    # the heads table holds the grid's fields only; every run's head count is in results
    h = heads[heads["set"] == SET].drop(columns="heads", errors="ignore").merge(
        ok, on=["config_id", "seed"])
    out = []
    for n, g in h.groupby("heads"):
        good = int((g["s_acc"] >= S_ACC_GOOD).sum())
        out.append((f"sweep, heads = {n}: heads with s-acc >= {S_ACC_GOOD} ({SET})",
                    f"{share(good, len(g))}; s-acc {spread(g['s_acc'])}"))
    return out


# --- what the report says ----------------------------------------------------------------------

def summary(ev: Saved, v: Verdict) -> list[tuple[str, str, str]]:
    """The summary's finding: (status, label, text)."""
    if v.status == NOT_MEASURED:
        return [(v.status, "Finding 1, the semantics",
                 "Not measured: no head analysis was saved (run `count01 analyze RUN`).")]
    loo = hard_rows(ev.tables, "leave_one_out")["l_acc"]
    removal = (f"; removing any one head (mean-ablated) leaves l-acc at median "
               f"{loo.median():.3f}, lowest {loo.min():.3f}." if len(loo) else ".")
    design = {HELD: "For model design: the heads are redundant counters, each readable on its "
                    "own" + removal,
              NOT_HELD: "For model design: the answer is spread across heads, so no head can "
                        "be read, trusted or pruned on its own" + removal,
              MIXED: "For model design: some heads can be read on their own and others "
                     "cannot, so check each head before relying on it" + removal,
              INCONCLUSIVE: "For model design: too few heads, or a share too close to its "
                            "threshold, to say; measure more seeds before relying on a single "
                            "head" + removal}[v.status]
    return [(v.status, "Finding 1, the semantics", f"{v.finding} {design}")]


def numbers(ev: Saved, v: Verdict) -> list[tuple[str, str]]:
    """The section's numbers: the verdict's, and the sweep's heads per head count."""
    out = list(v.numbers)
    if ev.sweep_heads is not None:
        out += separating_heads_by_config(ev.sweep_heads, ev.sweep_runs)
    return out


def figures(ev: Saved, v: Verdict) -> list[Block]:
    return analysis_figures(ev, [("heads_table", f"Every head of every seed on `{SET}`: head "
                                  "AUC, s-acc and probe s-acc (green = 1, red = chance), "
                                  "attention ratios and masses.")])


def closing(ev: Saved, v: Verdict) -> list[Block]:
    return []


def controls_text() -> list[str]:
    """The methods' description of this question's controls."""
    return [f"rule {k}: positive `{p}`, negative `{n}`" for k, (p, n) in CONTROLS.items()]
