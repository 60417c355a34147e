"""Question 2 of SPEC 1: do the heads need non-uniform aggregation for the syntax? Judged in both
framings of SPEC 2, each with its own verdict (the sentence framing's hangs on the classify one's
`sentence`). Its rules, thresholds, history, controls and prose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..criteria import SUCCESS_L_ACC
from ..present.document import Block, Figure, Table, analysis_figures
from .base import (
    FEW,
    HELD,
    INCONCLUSIVE,
    MIXED,
    MOST,
    NOT_HELD,
    NOT_MEASURED,
    SENTENCE,
    SET,
    Evidence,
    Verdict,
    by_evidence,
    by_share,
    describe_controls,
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

NUMBER = 2
# uniform weighting "still ranks well" / "answers worse" / learned-or-fitted "gets it right"
AUC_GOOD = 0.95
L_ACC_DROP = 0.05
THRESHOLDS = {"auc_good": AUC_GOOD, "l_acc_drop": L_ACC_DROP}
VARIED = {"auc_good": "from_one"}
MIN_UNITS = {"2": 8, "2s": 8}  # the fewest successful seeds each framing's rule decides on
PARTS: dict[str, str] = {}
HISTORY = [
    (1, "commit 39e0da1", None, "first version: share of seeds supporting the claim"),
    (2, "issue #13", True, "inconclusive below 8 seeds or when the share's Wilson 95% "
     "interval straddles its threshold"),
    (3, "issue #15, before any result of the sentence framing was seen", False, "judged "
     "in both framings, each with its own verdict: the classify rule unchanged; in the "
     "sentence framing (the study's wording: the syntax decides how the sentence ends) the "
     "same rule on sentence accuracy (the answer, then EOS after it) in place of l-acc, on "
     "a run trained in that framing"),
    (4, "issue #15, after the sentence framing's first results were seen", True, "in the "
     "sentence framing a seed supports the claim only if uniform weighting lowers the END "
     "accuracy (the ending itself), not the sentence accuracy: version 3 counted a wrong "
     "answer followed by a right ending as a failed ending, and the study's sentence run, "
     "whose end accuracy stayed 1.000 under every scheme, read 5/14 seeds supporting the "
     "claim; a hand-built model that answers wrongly but always ends (`answer_bias`) is its "
     "second negative control")]
VERSION = HISTORY[-1][0]
# rule -> (positive control: has the property, negative control: lacks it), `controls.LIBRARY`
CONTROLS = {"2": ("bos_bias", "ideal"), "2s": ("ending_bias", "answer_bias")}
READS = {"2": ("aggregation",), "2s": ("aggregation",)}  # rule -> the analysis tables it reads

CLASSIFY_RULE = (
    f"On `{SET}`, a successful seed supports the claim if with uniform weighting the "
    f"model still ranks well (AUC >= {AUC_GOOD}) but answers worse (l-acc at least "
    f"{L_ACC_DROP} below learned), while learned or fitted alpha reach l-acc >= "
    f"{SUCCESS_L_ACC}. Held if >= {MOST:.0%} of the seeds support it, did not hold if "
    f"<= {FEW:.0%}, mixed otherwise. " + evidence_rule("successful seeds", MIN_UNITS["2"]))
TITLE = ("Non-uniform aggregation for the syntax: do equally weighted heads rank well but "
         "answer wrongly, and a learned or fitted weighting fix it?")
SENTENCE_RULE = (
    f"The sentence framing (a run trained on `[BOS] x EOS y EOS`): on `{SET}`, a "
    "successful seed (answer l-acc as above) supports the claim if with uniform "
    f"weighting the model still ranks well (AUC >= {AUC_GOOD}) but ends the sentence "
    f"wrongly more often (end accuracy, EOS predicted after the true answer, at least "
    f"{L_ACC_DROP} below learned), while learned or fitted alpha (fitted to the answer "
    f"and the ending together) reach sentence accuracy (the answer, then EOS) >= "
    f"{SUCCESS_L_ACC}. Held if >= "
    f"{MOST:.0%} of the seeds support it, did not hold if <= {FEW:.0%}, mixed otherwise. "
    + evidence_rule("successful seeds", MIN_UNITS["2s"]))
SENTENCE_TITLE = ("Non-uniform aggregation for the syntax, sentence framing: do equally weighted "
                  "heads rank well but end the sentence wrongly, and a learned or fitted "
                  "weighting fix it?")
RULE = CLASSIFY_RULE + " " + SENTENCE_RULE  # both framings, as the methods state it


def verdict(agg: pd.DataFrame | None, model: pd.DataFrame | None,
            t: Mapping[str, float] = SHARED | THRESHOLDS) -> Verdict:
    """Question 2 in the classify framing."""
    def out(status, finding, numbers=(), **kw):
        return Verdict(NUMBER, TITLE, status, CLASSIFY_RULE, finding, list(numbers),
                       rule_version=VERSION, **kw)

    if agg is None or model is None:
        return out(NOT_MEASURED, "No aggregation table was found.")
    ok = successful_seeds(model, t)
    a = agg[(agg["set"] == SET) & agg["seed"].isin(ok)]
    if a.empty:
        return out(NOT_MEASURED, "No seed succeeded.", [seeds_note(model, ok)])
    whole = a[a["head"] == -1].pivot_table(index="seed", columns="scheme",
                                           values=["l_acc", "valid", "auc"])
    learned, uniform, fitted = (whole[("l_acc", s)] for s in ("learned", "uniform", "fitted"))
    support = ((whole[("auc", "uniform")] >= t["auc_good"])
               & (uniform <= learned - t["l_acc_drop"])
               & (np.maximum(learned, fitted) >= t["success_l_acc"]))
    k, n = int(support.sum()), len(support)
    finding = (f"{share(k, n)} seeds lose l-acc under uniform weighting while still ranking "
               f"well: uniform l-acc {uniform.median():.3f} (median; lowest {uniform.min():.3f}) "
               f"against learned {learned.median():.3f} and fitted {fitted.median():.3f}.")
    numbers = [seeds_note(model, ok), ("seeds supporting the claim, the deciding share",
                                       share_ci(k, n))]
    for scheme in ("learned", "uniform", "fitted"):
        for col in ("l_acc", "valid", "auc"):
            numbers.append((f"{scheme}: {col.replace('_', '-')}", spread(whole[(col, scheme)])))
    single = a[a["scheme"] == "single"]
    if len(single):
        numbers += [("single head (others mean-ablated): l-acc", spread(single["l_acc"])),
                    ("single head: valid rate", spread(single["valid"])),
                    ("single head: AUC", spread(single["auc"]))]
    loo = a[a["scheme"] == "leave_one_out"]
    if len(loo):
        numbers.append(("leave one head out: l-acc", spread(loo["l_acc"])))
    status = by_evidence(k, n, MIN_UNITS["2"], t)  # version 3 kept version 2's classify rule
    return out(status, finding, numbers, previous={1: by_share(k / n, t), 2: status, 3: status})


def sentence_verdict(agg: pd.DataFrame | None, model: pd.DataFrame | None,
                     t: Mapping[str, float] = SHARED | THRESHOLDS) -> Verdict:
    """Question 2 in the sentence framing, from the aggregation and model tables of a run
    trained in it (with end and sentence accuracy columns)."""
    def out(status, finding, numbers=()):
        return Verdict(NUMBER, SENTENCE_TITLE, status, SENTENCE_RULE, finding, list(numbers),
                       framing="sentence", rule_version=VERSION)

    if agg is None or model is None or "sentence" not in agg:
        return out(NOT_MEASURED, "No run was trained and analysed in the sentence framing.")
    ok = successful_seeds(model, t)
    a = agg[(agg["set"] == SET) & agg["seed"].isin(ok)]
    if a.empty:
        return out(NOT_MEASURED, "No seed of the sentence-framing run succeeded.",
                   [seeds_note(model, ok)])
    whole = a[a["head"] == -1].pivot_table(index="seed", columns="scheme",
                                           values=["sentence", "end", "l_acc", "valid", "auc"])
    learned, uniform, fitted = (whole[("sentence", s)] for s in ("learned", "uniform", "fitted"))
    ranks = whole[("auc", "uniform")] >= t["auc_good"]
    fixed = np.maximum(learned, fitted) >= t["success_l_acc"]
    end_learned, end_uniform = whole[("end", "learned")], whole[("end", "uniform")]
    support = ranks & (end_uniform <= end_learned - t["l_acc_drop"]) & fixed
    version3 = ranks & (uniform <= learned - t["l_acc_drop"]) & fixed  # on sentence accuracy
    k, n = int(support.sum()), len(support)
    finding = (f"{share(k, n)} seeds end the sentence wrongly more often under uniform weighting "
               f"while still ranking well: uniform end accuracy {end_uniform.median():.3f} "
               f"(median; lowest {end_uniform.min():.3f}) against learned "
               f"{end_learned.median():.3f}; uniform sentence accuracy {uniform.median():.3f} "
               f"(lowest {uniform.min():.3f}) against learned {learned.median():.3f} and fitted "
               f"{fitted.median():.3f}.")
    numbers = [seeds_note(model, ok), ("seeds supporting the claim, the deciding share",
                                       share_ci(k, n))]
    for scheme in ("learned", "uniform", "fitted"):
        for col in ("sentence", "end", "l_acc", "valid", "auc"):
            numbers.append((f"{scheme}: {col.replace('_', '-')}", spread(whole[(col, scheme)])))
    single = a[a["scheme"] == "single"]
    if len(single):
        numbers += [("single head (others mean-ablated): sentence accuracy",
                     spread(single["sentence"])),
                    ("single head: end accuracy", spread(single["end"]))]
    v = out(by_evidence(k, n, MIN_UNITS["2s"], t), finding, numbers)
    v.previous = {1: "no rule", 2: "no rule",  # versions before 3 judged classify only
                  3: by_evidence(int(version3.sum()), n, MIN_UNITS["2s"], t)}
    return v


def of_evidence(e: Evidence, t: Mapping[str, float]) -> Verdict:
    """Both framings: the classify verdict, the sentence framing's as its `sentence`."""
    g = e.tables.get
    v = verdict(g("aggregation"), g("model"), t)
    v.sentence = sentence_verdict(g(SENTENCE + "aggregation"), g(SENTENCE + "model"), t)
    return v


RULES = {
    "2": (("success_l_acc", "auc_good", "l_acc_drop", "most", "few"),
          lambda e, t: verdict(e.tables.get("aggregation"), e.tables.get("model"), t).status),
    "2s": (("success_l_acc", "auc_good", "l_acc_drop", "most", "few"),
           lambda e, t: sentence_verdict(e.tables.get(SENTENCE + "aggregation"),
                                         e.tables.get(SENTENCE + "model"), t).status)}


# --- what the report says ----------------------------------------------------------------------

WHERE = ("This framing matches the study's wording: the syntax decides how the sentence ends, "
         "where the classify framing only asks for a valid answer token.")


def summary(ev: Saved, v: Verdict) -> list[tuple[str, str, str]]:
    """The summary's findings: (status, label, text), one per framing."""
    out = [(v.status, "Finding 2, the syntax", _finding_classify(v, ev.tables))]
    if v.sentence is not None:
        s = v.sentence
        out.append((s.status, "Finding 2, the syntax in the sentence framing",
                    f"Not measured: {s.finding} {WHERE}" if s.status == NOT_MEASURED else
                    f"{s.finding} {WHERE}"))
    return out


def _finding_classify(v: Verdict, t: Mapping[str, pd.DataFrame]) -> str:
    if v.status == NOT_MEASURED:
        return "Not measured: no aggregation table was saved."
    single = hard_rows(t, "single")
    extra = ""
    if len(single):
        extra = (f" A single head with the others mean-ablated still ranks the answers (median "
                 f"AUC {single['auc'].median():.3f}) but answers right only "
                 f"{single['l_acc'].median():.3f} of the time (median l-acc).")
    whole = pd.concat([hard_rows(t, k) for k in ("learned", "uniform")])
    whole = whole[whole["head"] == -1].pivot_table(index="seed", columns="scheme",
                                                   values="l_acc")
    lost = whole["learned"] - whole["uniform"] if len(whole) else pd.Series(dtype=float)
    cost = lost.max() if len(lost) else float("nan")
    costly = int((lost > L_ACC_DROP).sum())
    worst = (f"{cost:.3f} l-acc in the worst seed ({costly} of {len(lost)} seed"
             f"{'s' if len(lost) != 1 else ''} lose more than {L_ACC_DROP})")
    design = {HELD: " For model design: the head weights must be learned or fitted; averaging "
                    "heads equally is not enough.",
              NOT_HELD: f" For model design: equal weighting cost little in most seeds but "
                        f"{worst}, and a head kept alone needs its weight refitted: fit the "
                        "readout rather than assume it.",
              MIXED: " For model design: equal weighting is sometimes harmless and sometimes "
                     "not; fit the head weights rather than assume.",
              INCONCLUSIVE: f" For model design: too few seeds to say; equal weighting cost "
                            f"{worst}, so fit the readout rather than assume it."}[v.status]
    return v.finding + extra + design


def numbers(ev: Saved, v: Verdict) -> list[tuple[str, str]]:
    return list(v.numbers)


def figures(ev: Saved, v: Verdict) -> list[Block]:
    return analysis_figures(ev, [("aggregation", "l-acc, valid rate and AUC of the model under "
                                  "each aggregation scheme (mean and spread over seeds).")])


def closing(ev: Saved, v: Verdict) -> list[Block]:
    """Question 2 in the sentence framing: its verdict, rule, controls, numbers and figure,
    after the classify framing's (the section's verdict badge is the classify one)."""
    s = v.sentence
    if s is None:
        return []
    blocks: list[Block] = [
        f"**In the sentence framing** (`[BOS] x EOS y EOS`; the framing that matches the "
        f"study's wording, where the syntax decides how the sentence ends; the classify "
        f"framing above only asks for a valid answer token): **verdict: {s.status}** (rule "
        f"version {s.rule_version}). {s.finding}", f"**Rule.** {s.rule}",
        f"**Controls**: {describe_controls(s.controls)}." + ("" if s.evidence else
                                                         " Not evidence."),
        f"**Threshold sensitivity**: {s.sensitivity}."]
    if s.numbers:
        blocks.append(Table(["quantity", "value (spread over seeds / heads)"],
                            [[a, b] for a, b in s.numbers]))
    d = None if ev.sentence_dir is None else ev.sentence_dir / "analysis" / "figures"
    if d is not None and (d / "aggregation.png").exists():
        blocks.append(Figure(d / "aggregation.png", "Sentence framing: answer l-acc, valid "
                             "rate, AUC, end accuracy and sentence accuracy of the model under "
                             "each aggregation scheme (mean and spread over seeds)."))
    return blocks


def controls_text() -> list[str]:
    """The methods' description of this question's controls."""
    return [f"rule {k}: positive `{p}`, negative `{n}`" for k, (p, n) in CONTROLS.items()]
