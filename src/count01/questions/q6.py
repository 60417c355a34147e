"""Question 6 of SPEC 1: do the heads behave the same in larger models (more layers, an MLP, a
wider residual stream)? Judged by re-running the rules of questions 1 to 3 on each larger model's
analysis and comparing their statuses with the small model's. Its rule, history, controls and
prose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pandas as pd

from ..present.document import Block, rel
from . import q1, q2, q3
from .base import HELD, INCONCLUSIVE, NOT_HELD, NOT_MEASURED, Evidence, Verdict

if TYPE_CHECKING:
    from ..present.report import Evidence as Saved

NUMBER = 6
THRESHOLDS: dict[str, float] = {}  # none of its own: the compared rules' thresholds
VARIED: dict[str, str] = {}
MIN_UNITS: dict[str, int] = {}  # each compared rule applies its own minimum
PARTS: dict[str, str] = {}
HISTORY = [
    (1, "issue #17, before any model of several layers or with an MLP was analysed (a rule "
     "undecided on the small model left out after a review, still before any result)", False,
     "first version: the statuses of rules 1, 2, 3a, 3b and 3c on each larger model against "
     "the small model's")]
VERSION = HISTORY[-1][0]
# the rules compared, with what each says (their own rules are printed under questions 1-3)
COMPARED = {"1": "1 (each head separates alone)", "2": "2 (uniform weighting breaks the syntax)",
            "3a": "3a (balanced attention, noise suppressed)", "3b": "3b (values a minor factor)",
            "3c": "3c (collapse at extreme ratios beyond the ideal counter)"}
_FUNCTIONS = q1.RULES | q2.RULES | q3.RULES
# the controls: scale evidence whose larger model is (positive) the small model's tables again,
# (negative) a hand-built model on which rule 1 comes out the other way: rule 1's controls
CONTROL_MODELS = (("ideal", "ideal"), ("ideal", "split"))  # (small, larger) of each side
CONTROLS: dict[str, tuple[str, str]] = {}  # no hand-built model of its own: CONTROL_MODELS
READS: dict[str, tuple[str, ...]] = {}

RULE = ("The rules of questions 1, 2 (classify framing), 3a, 3b and 3c are run, with their "
        "thresholds and minimums, on the analysis of each larger model (more layers, an MLP, a "
        "wider residual stream; every head of every layer, s_h its direct path) and on the "
        "small model trained beside them. A rule carries over if it gives a larger model the "
        "small model's status (held, did not hold or mixed); it changes if both are decided and "
        "differ; a rule the small model leaves undecided (inconclusive or not measured) is left "
        "out, as there is nothing to carry over. Held (the heads behave the same) if every rule "
        "left in carries over in every larger model; did not hold if some rule changes in some "
        "larger model; inconclusive otherwise (a rule decided on the small model is undecided on "
        "a larger one, or no rule is left in).")
TITLE = ("Larger models: do the heads behave the same with more layers, an MLP or a wider "
         "residual stream?")


def compare(small: Mapping[str, pd.DataFrame], large: Mapping[str, pd.DataFrame],
            t: Mapping[str, float], seen: dict | None = None) -> dict[str, tuple[str, str]]:
    """Compared rule -> (its status on the small model's tables, on the larger model's). seen:
    statuses already judged (`Evidence.seen`), each kept with the tables it was judged on."""
    seen = {} if seen is None else seen

    def status(k: str, tables: Mapping[str, pd.DataFrame]) -> str:
        names, status_of = _FUNCTIONS[k]
        key = (id(tables), k, *(t[n] for n in names))
        if key not in seen:
            seen[key] = (tables, status_of(Evidence(tables=tables), t))
        return seen[key][1]
    return {k: (status(k, small), status(k, large)) for k in COMPARED}


def outcome(small: str, large: str) -> str:
    """'carries over', 'changes', 'undecided' (decided on the small model only) or 'left out'
    (undecided on the small model: nothing to carry over)."""
    decided = (HELD, NOT_HELD, "mixed")
    if small not in decided:
        return "left out"
    if large in decided:
        return "carries over" if small == large else "changes"
    return "undecided"


def verdict(scale: Mapping[str, Mapping[str, pd.DataFrame]] | None,
            t: Mapping[str, float], seen: dict | None = None) -> Verdict:
    """scale: the small model's label first, then each larger model's, -> its analysis tables;
    seen: statuses already judged on them (`compare`)."""
    def out(status, finding, numbers=()):
        return Verdict(NUMBER, TITLE, status, RULE, finding, list(numbers), rule_version=VERSION)

    if not scale or len(scale) < 2:
        return out(NOT_MEASURED, "No larger model was trained and analysed beside the small one.")
    (small_name, small), *larger = scale.items()
    rows = {name: compare(small, tables, t, seen) for name, tables in larger}
    got = {name: {k: outcome(*pair) for k, pair in r.items()} for name, r in rows.items()}
    flat = [o for r in got.values() for o in r.values()]
    changes = [(name, k) for name, r in got.items() for k, o in r.items() if o == "changes"]
    status = (NOT_HELD if changes else
              INCONCLUSIVE if "undecided" in flat or not any(o == "carries over" for o in flat)
              else HELD)
    def tally(r: dict[str, str]) -> str:
        return ", ".join(f"{sum(o == x for o in r.values())} {x}" for x in
                         ("carries over", "changes", "undecided", "left out")
                         if x in r.values())

    finding = " ".join(f"{name}: " + (", ".join(f"rule {k} {rows[name][k][0]} -> "
                                                 f"{rows[name][k][1]}"
                                                 for n, k in changes if n == name)
                                      or "no rule changes") + f" ({tally(r)})."
                       for name, r in got.items())
    numbers = [(f"{small_name}, the small model", "; ".join(
        f"rule {COMPARED[k]} {s}" for k, (s, _) in next(iter(rows.values())).items()))]
    numbers += [(name, "; ".join(f"rule {k} {rows[name][k][1]} ({o})" for k, o in r.items()))
                for name, r in got.items()]
    return out(status, finding, numbers)


def of_evidence(e: Evidence, t: Mapping[str, float]) -> Verdict:
    return verdict(e.scale, t, e.seen)


RULES = {"6": (tuple(dict.fromkeys(n for k in COMPARED for n in _FUNCTIONS[k][0])),
               lambda e, t: of_evidence(e, t).status)}


# --- what the report says ----------------------------------------------------------------------

def summary(ev: Saved, v: Verdict) -> list[tuple[str, str, str]]:
    """The summary's finding: (status, label, text)."""
    label = "Finding 6, larger models"
    if v.status == NOT_MEASURED:
        return [(v.status, label, "Not measured: no larger model was trained and analysed (a "
                 "study's `scale/` sweep).")]
    design = {HELD: "For model design: what the small model shows about its heads held in "
                    "every larger model measured",
              NOT_HELD: "For model design: some of what the small model shows about its heads "
                        "does not carry over to a larger model; re-check it at the size you use",
              INCONCLUSIVE: "For model design: too little evidence in some model to say whether "
                            "the heads behave the same"}[v.status]
    return [(v.status, label, f"{v.finding} {design}.")]


def numbers(ev: Saved, v: Verdict) -> list[tuple[str, str]]:
    return list(v.numbers)


def figures(ev: Saved, v: Verdict) -> list[Block]:
    return []


def closing(ev: Saved, v: Verdict) -> list[Block]:
    if ev.scale_dir is None:
        return []
    return [f"Each model's analysis (tables and figures) is in `{rel(ev.scale_dir, ev.root)}"
            "/runs/<id>/analysis/`; rules 1 to 3 read every head of every layer, its s_h the "
            "head's direct path to the logits."]


def controls_text() -> list[str]:
    """The methods' description of this question's controls."""
    return ["rule 6: small and larger model " + ", ".join(
        f"{side} `{a}` and `{b}`" for side, (a, b) in zip(("positive", "negative"),
                                                         CONTROL_MODELS))]
