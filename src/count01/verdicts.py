"""Verdicts on the questions of SPEC 1 (1 to 5), by versioned rules that can fail (SPEC 6).

Each rule reads saved tidy tables (the CSV files of `analysis` and `paths`) and returns a
`Verdict`: "held", "did not hold", "mixed", "inconclusive" (too few informative units, or a
Wilson 95% interval on the deciding share that straddles its threshold) or "not measured" (a
table is missing); the rule in words; and the numbers it rests on with their spread. Every
threshold is an entry of THRESHOLDS, printed in the report and varied by `sensitivity`.

`judge` runs each rule on the trained model's tables, on the hand-built controls of
`count01.controls` (a rule whose positive and negative control get the same verdict is not
evidence) and over its thresholds. Rules carry a version; HISTORY says what each version changed
and whether the change was made after results were seen, and each verdict keeps what the older
versions say on the same tables.

Questions 1 to 3 are about models that learned the task, so they are judged on the seeds that
succeeded (hard l-acc >= SUCCESS_L_ACC); the failed seeds are counted and named in the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .criteria import SUCCESS_L_ACC, SUCCESS_SET
from .stats import wilson

HELD, NOT_HELD, MIXED = "held", "did not hold", "mixed"
INCONCLUSIVE, NOT_MEASURED = "inconclusive", "not measured"
STATUSES = (HELD, NOT_HELD, MIXED, INCONCLUSIVE, NOT_MEASURED)
SET = SUCCESS_SET  # every rule is judged where counting, not a rough majority, decides
MOST, FEW = 0.75, 0.25  # share of units above which a claim held, below which it did not
# Q1: a head "separates" if its s-acc on hard is at least this
S_ACC_GOOD = 0.9
# Q2: uniform weighting "still ranks well" / "answers worse" / learned-or-fitted "gets it right"
AUC_GOOD = 0.95
L_ACC_DROP = 0.05
# Q3: "balanced" = w01 within a factor W01_FACTOR of 1; "suppressed" = w02 at most W02_MAX
W01_FACTOR = 2.0
W02_MAX = 0.25
VALUE_SWAP_GAP = 0.05  # a value swap is informative only between heads whose s-acc differ more
COLLAPSE_BEYOND = 0.1  # a head's collapse exceeds the ideal counter's by at least this l-acc
# Q4: the training path "decides" if some configuration fails in more than this share of seeds
FAIL_RATE = 0.05
REGIME_NAMES = 6  # configurations named per regime of the training path (the numbers list all)

THRESHOLDS: dict[str, float] = {
    "success_l_acc": SUCCESS_L_ACC, "most": MOST, "few": FEW, "s_acc_good": S_ACC_GOOD,
    "auc_good": AUC_GOOD, "l_acc_drop": L_ACC_DROP, "w01_factor": W01_FACTOR,
    "w02_max": W02_MAX, "value_swap_gap": VALUE_SWAP_GAP, "collapse_beyond": COLLAPSE_BEYOND,
    "fail_rate": FAIL_RATE}
# how `sensitivity` varies each threshold by a factor f in FACTORS: "from_one" scales its
# distance from 1 (accuracies, the share MOST), "log" scales its logarithm, "scale" itself
VARIED = {"success_l_acc": "from_one", "most": "from_one", "s_acc_good": "from_one",
          "auc_good": "from_one", "w01_factor": "log"}
FACTORS = np.geomspace(0.5, 2.0, 17)
SENSITIVITY_RANGE = ("each threshold x0.5 to x2 in 17 log-spaced steps (of its distance from 1 "
                     "for accuracies, AUC and the share 'most'; of its logarithm for w01_factor)")
# the fewest informative units a rule decides on
MIN_UNITS = {"1": 8, "2": 8, "2s": 8, "3a": 8, "3b": 8, "3c": 8, "4": 8, "5": 8}
MIN_SWAP_SEEDS = 3  # informative hybrids must come from at least this many seeds

# question -> versions: (version, when, changed after results were seen (None: not recorded),
# what this version changed)
HISTORY: dict[int, list[tuple[int, str, bool | None, str]]] = {
    1: [(1, "commit 39e0da1", None, "first version: share of heads with s-acc >= 0.9"),
        (2, "issue #13", True, "inconclusive below 8 heads or when the share's Wilson 95% "
         "interval straddles its threshold")],
    2: [(1, "commit 39e0da1", None, "first version: share of seeds supporting the claim"),
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
         "second negative control")],
    3: [(1, "commit 39e0da1", None, "first version; (b) held if the median |s-acc change| of a "
         "head given another head's values is <= 0.05"),
        (2, "commit 38bdcc5, after the full study's results were known", True, "(b) counts "
         "hybrids of heads whose s-acc differ by > 0.05 that score closer to their attention "
         "donor"),
        (3, "issue #13", True, "inconclusive below 8 units (8 informative hybrids from 3 seeds "
         "for (b)) or when a share's Wilson 95% interval straddles its threshold; (c) compares "
         "each head's drop in model l-acc from w01 near 1 to either end of the grid with an "
         "ideal counter's under the same intervention (was: a drop of >= 0.25 in l-acc and "
         "fixed-readout s-acc at both ends and a growing spread, with no reference)")],
    4: [(1, "commit 39e0da1", None, "first version: held if some configuration fails in >= 5% "
         "of its seeds, did not hold if every seed succeeded"),
        (2, "issue #13", True, "a failure rate decides only if its Wilson 95% interval is clear "
         "of 5%; inconclusive below 8 runs per configuration"),
        (3, "issue #16, after an exploratory run of the training-path grid was seen", True,
         "missing the ideal solution (SPEC 4) counts like failing: held also if some "
         "configuration misses it in more than 5% of its seeds, or the ideal rates of the best "
         "and the worst configuration have disjoint intervals; the regimes are named")],
    5: [(1, "issue #15, before the noise benchmark was run", False, "first version: the "
         "shares of pseudo-ensemble and of divided seeds per noise condition, with Wilson 95% "
         "intervals")],
}
VERSIONS = {q: h[-1][0] for q, h in HISTORY.items()}
# early stopping's rule (`train.STOP_RULES`; not a verdict, but chosen the same way), as HISTORY
STOP_RULE_HISTORY: list[tuple[int, str, bool | None, str]] = [
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


@dataclass
class Verdict:
    question: int
    title: str
    status: str
    rule: str  # the rule, in words, with its thresholds
    finding: str  # one sentence, the key number: what the summary says
    numbers: list[tuple[str, str]] = field(default_factory=list)  # (quantity, value with spread)
    parts: list[tuple[str, str]] = field(default_factory=list)  # (sub-claim, status) if any
    details: list[str] = field(default_factory=list)  # further sentences, in its own section
    previous: dict[int, str] = field(default_factory=dict)  # older rule version -> its status
    previous_parts: dict[int, list[str]] = field(default_factory=dict)  # and its sub-claims'
    controls: dict = field(default_factory=dict)  # {"positive": status, "negative": status}
    sensitivity: str = ""  # "robust" or where the verdict flips
    part_sensitivity: dict[str, str] = field(default_factory=dict)  # Q3: sub-claim key -> text
    sensitivity_table: pd.DataFrame | None = None  # (rule, threshold, factor, value, status)
    framing: str = "classify"  # question 2 is judged in both framings of SPEC 2
    sentence: Verdict | None = None  # question 2's verdict in the sentence framing

    @property
    def rule_version(self) -> int:
        return VERSIONS[self.question]

    @property
    def evidence(self) -> bool:
        """False when the rule gives its positive and negative control the same verdict."""
        return not self.controls or self.controls["positive"] != self.controls["negative"]

    def to_json(self) -> dict:
        """One entry of verdicts.json."""
        out = {"question": self.question, "title": self.title, "status": self.status,
               "rule_version": self.rule_version, "controls": self.controls,
               "evidence": self.evidence, "sensitivity": self.sensitivity,
               "finding": self.finding, "numbers": dict(self.numbers),
               "previous_versions": {str(k): s for k, s in self.previous.items()}}
        if self.parts:
            controls = self.controls.get("parts", {})
            out["parts"] = {key: {"name": name, "status": status,
                                  "controls": controls.get(key, {}),
                                  "sensitivity": self.part_sensitivity.get(key, "")}
                            for key, (name, status) in zip(Q3_PARTS, self.parts)}
        if self.sentence is not None:
            out["framing"] = self.framing
            out["sentence"] = self.sentence.to_json() | {"framing": "sentence"}
        return out


# --- formatting of numbers with their spread ------------------------------------------------

def spread(x, digits: int = 3) -> str:
    """median [IQR q25-q75], min-max, n of a sample."""
    x = np.asarray(pd.Series(x).dropna(), dtype=float)
    if len(x) == 0:
        return "n/a"
    q = np.quantile(x, [0.25, 0.5, 0.75])
    f = f"{{:.{digits}f}}"
    return (f"median {f.format(q[1])} [IQR {f.format(q[0])}-{f.format(q[2])}], "
            f"range {f.format(x.min())}-{f.format(x.max())}, n = {len(x)}")


def mean_sd(x, digits: int = 3) -> str:
    x = np.asarray(pd.Series(x).dropna(), dtype=float)
    if len(x) == 0:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(x.mean())} +- {f.format(x.std())} (sd), n = {len(x)}"


def share(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "0/0"


def share_ci(k: int, n: int) -> str:
    """k/n (p%), Wilson 95% CI lo-hi."""
    if not n:
        return "0/0"
    lo, hi = wilson(k, n)
    return f"{share(k, n)}, Wilson 95% CI {float(lo):.2f}-{float(hi):.2f}"


def by_share(frac: float, t: Mapping[str, float] = THRESHOLDS) -> str:
    """The status of a claim that holds for a share `frac` of units, before the evidence check."""
    if frac >= t["most"]:
        return HELD
    if frac <= t["few"]:
        return NOT_HELD
    return MIXED


def by_evidence(k: int, n: int, minimum: int, t: Mapping[str, float] = THRESHOLDS) -> str:
    """The status of a claim that holds for k of n units: `by_share`, unless there are fewer
    than `minimum` units or the Wilson 95% interval of k/n straddles the threshold that decided
    (for mixed, either threshold): then inconclusive."""
    if n == 0:
        return NOT_MEASURED
    raw = by_share(k / n, t)
    lo, hi = (float(x) for x in wilson(k, n))
    straddles = {HELD: lo < t["most"], NOT_HELD: hi > t["few"],
                 MIXED: lo < t["few"] or hi > t["most"]}[raw]
    return INCONCLUSIVE if n < minimum or straddles else raw


def combine(statuses: list[str]) -> str:
    """Held if every sub-claim held, did not hold if none did, mixed if decided sub-claims
    disagree, inconclusive if the decided ones agree but some could not be decided."""
    measured = [s for s in statuses if s != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    decided = [s for s in measured if s != INCONCLUSIVE]
    if not decided:
        return INCONCLUSIVE
    if all(s == HELD for s in decided):
        return HELD if len(decided) == len(measured) else INCONCLUSIVE
    if all(s == NOT_HELD for s in decided):
        return NOT_HELD if len(decided) == len(measured) else INCONCLUSIVE
    return MIXED


def successful_seeds(model: pd.DataFrame, t: Mapping[str, float] = THRESHOLDS) -> list[int]:
    """Seeds whose l-acc on `hard` reaches success_l_acc (model.csv rows: set, seed, l_acc)."""
    hard = model[model["set"] == SET]
    return sorted(int(s) for s in hard.loc[hard["l_acc"] >= t["success_l_acc"], "seed"])


def _seeds_note(model: pd.DataFrame, ok: list[int]) -> tuple[str, str]:
    seeds = sorted(int(s) for s in model["seed"].unique())
    failed = [s for s in seeds if s not in ok]
    text = share(len(ok), len(seeds)) + " seeds succeeded"
    return ("seeds judged", text + (f"; left out (failed): {failed}" if failed else ""))


def _evidence_rule(unit: str, key: str) -> str:
    return (f"Inconclusive with fewer than {MIN_UNITS[key]} {unit}, or when the Wilson 95% "
            "interval of the share straddles the threshold that decided.")


# --- Q1: pseudo-ensemble on the semantics ---------------------------------------------------

Q1_RULE = (f"On `{SET}`, count the heads (every head of every successful seed) whose s-acc is "
           f">= {S_ACC_GOOD}. Held if that share is >= {MOST:.0%}, did not hold if <= {FEW:.0%}, "
           "mixed otherwise. " + _evidence_rule("heads", "1"))
Q1_TITLE = "Pseudo-ensemble on the semantics: does each head alone separate the answers?"


def q1(heads: pd.DataFrame | None, model: pd.DataFrame | None,
       t: Mapping[str, float] = THRESHOLDS) -> Verdict:
    if heads is None or model is None:
        return Verdict(1, Q1_TITLE, NOT_MEASURED, Q1_RULE, "No head analysis was found.")
    ok = successful_seeds(model, t)
    h = heads[(heads["set"] == SET) & heads["seed"].isin(ok)]
    if h.empty:
        return Verdict(1, Q1_TITLE, NOT_MEASURED, Q1_RULE, "No seed succeeded, so no trained "
                       "head could be judged.", [_seeds_note(model, ok)])
    good = int((h["s_acc"] >= t["s_acc_good"]).sum())
    status = by_evidence(good, len(h), MIN_UNITS["1"], t)
    per_seed = h.groupby("seed")["s_acc"].apply(lambda s: (s >= t["s_acc_good"]).mean())
    finding = (f"{share(good, len(h))} of the heads separate the answers alone on `{SET}` "
               f"(s-acc >= {t['s_acc_good']:g}); median head s-acc {h['s_acc'].median():.3f}, "
               f"median head AUC {h['head_auc'].median():.3f}.")
    numbers = [_seeds_note(model, ok),
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
    return Verdict(1, Q1_TITLE, status, Q1_RULE, finding, numbers,
                   previous={1: by_share(good / len(h), t)})


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


# --- Q2: non-uniform aggregation for the syntax ---------------------------------------------

Q2_RULE = (f"On `{SET}`, a successful seed supports the claim if with uniform weighting the "
           f"model still ranks well (AUC >= {AUC_GOOD}) but answers worse (l-acc at least "
           f"{L_ACC_DROP} below learned), while learned or fitted alpha reach l-acc >= "
           f"{SUCCESS_L_ACC}. Held if >= {MOST:.0%} of the seeds support it, did not hold if "
           f"<= {FEW:.0%}, mixed otherwise. " + _evidence_rule("successful seeds", "2"))
Q2_TITLE = ("Non-uniform aggregation for the syntax: do equally weighted heads rank well but "
            "answer wrongly, and a learned or fitted weighting fix it?")


def q2(agg: pd.DataFrame | None, model: pd.DataFrame | None,
       t: Mapping[str, float] = THRESHOLDS) -> Verdict:
    if agg is None or model is None:
        return Verdict(2, Q2_TITLE, NOT_MEASURED, Q2_RULE, "No aggregation table was found.")
    ok = successful_seeds(model, t)
    a = agg[(agg["set"] == SET) & agg["seed"].isin(ok)]
    if a.empty:
        return Verdict(2, Q2_TITLE, NOT_MEASURED, Q2_RULE, "No seed succeeded.",
                       [_seeds_note(model, ok)])
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
    numbers = [_seeds_note(model, ok), ("seeds supporting the claim, the deciding share",
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
    return Verdict(2, Q2_TITLE, status, Q2_RULE, finding, numbers,
                   previous={1: by_share(k / n, t), 2: status, 3: status})


SENTENCE = "sentence_"  # prefix of the sentence-framing run's tables in Evidence.tables
Q2S_RULE = (f"The sentence framing (a run trained on `[BOS] x EOS y EOS`): on `{SET}`, a "
            "successful seed (answer l-acc as above) supports the claim if with uniform "
            f"weighting the model still ranks well (AUC >= {AUC_GOOD}) but ends the sentence "
            f"wrongly more often (end accuracy, EOS predicted after the true answer, at least "
            f"{L_ACC_DROP} below learned), while learned or fitted alpha (fitted to the answer "
            f"and the ending together) reach sentence accuracy (the answer, then EOS) >= "
            f"{SUCCESS_L_ACC}. Held if >= "
            f"{MOST:.0%} of the seeds support it, did not hold if <= {FEW:.0%}, mixed otherwise. "
            + _evidence_rule("successful seeds", "2s"))
Q2S_TITLE = ("Non-uniform aggregation for the syntax, sentence framing: do equally weighted heads "
             "rank well but end the sentence wrongly, and a learned or fitted weighting fix it?")


def q2_sentence(agg: pd.DataFrame | None, model: pd.DataFrame | None,
                t: Mapping[str, float] = THRESHOLDS) -> Verdict:
    """Question 2 in the sentence framing, from the aggregation and model tables of a run
    trained in it (with end and sentence accuracy columns)."""
    def verdict(status, finding, numbers=()):
        return Verdict(2, Q2S_TITLE, status, Q2S_RULE, finding, list(numbers),
                       framing="sentence")

    if agg is None or model is None or "sentence" not in agg:
        return verdict(NOT_MEASURED, "No run was trained and analysed in the sentence framing.")
    ok = successful_seeds(model, t)
    a = agg[(agg["set"] == SET) & agg["seed"].isin(ok)]
    if a.empty:
        return verdict(NOT_MEASURED, "No seed of the sentence-framing run succeeded.",
                       [_seeds_note(model, ok)])
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
    numbers = [_seeds_note(model, ok), ("seeds supporting the claim, the deciding share",
                                        share_ci(k, n))]
    for scheme in ("learned", "uniform", "fitted"):
        for col in ("sentence", "end", "l_acc", "valid", "auc"):
            numbers.append((f"{scheme}: {col.replace('_', '-')}", spread(whole[(col, scheme)])))
    single = a[a["scheme"] == "single"]
    if len(single):
        numbers += [("single head (others mean-ablated): sentence accuracy",
                     spread(single["sentence"])),
                    ("single head: end accuracy", spread(single["end"]))]
    v = verdict(by_evidence(k, n, MIN_UNITS["2s"], t), finding, numbers)
    v.previous = {1: "no rule", 2: "no rule",  # versions before 3 judged classify only
                  3: by_evidence(int(version3.sum()), n, MIN_UNITS["2s"], t)}
    return v


# --- Q3: attention as the mechanism -----------------------------------------------------------

Q3_PARTS = {"3a": "(a) balanced 0/1 attention and suppressed 2s",
            "3b": "(b) value vectors a minor factor",
            "3c": "(c) collapse beyond an ideal counter's at an extreme w01"}
Q3_RULE = (f"Three sub-claims, each on `{SET}` and the successful seeds. (a) Attention: a head is "
           f"balanced if 1/{W01_FACTOR:g} <= w01 <= {W01_FACTOR:g} and suppresses 2s if w02 <= "
           f"{W02_MAX}; held if >= {MOST:.0%} of the heads are both, did not hold if <= "
           f"{FEW:.0%}; at least {MIN_UNITS['3a']} heads. (b) Values matter less than "
           "attention: among hybrids (attention of head i, value/output weights of head j of the "
           f"same seed) whose two donors' s-acc differ by more than {VALUE_SWAP_GAP} (the "
           "informative ones: the swap cannot tell attention from values between equally good "
           "heads), count those whose s-acc is closer to the attention donor's; held if >= "
           f"{MOST:.0%}, did not hold if <= {FEW:.0%}, mixed otherwise; at least "
           f"{MIN_UNITS['3b']} informative hybrids from {MIN_SWAP_SEEDS} seeds. (c) Collapse: "
           "with one head intervened at w02 = 0, a head's drop is the model's l-acc at the grid "
           "point nearest w01 = 1 minus its l-acc at an end of the w01 grid; the same "
           "intervention on an ideal counter with as many heads (`count01.controls`) gives the "
           f"reference drop; a head collapses beyond the ideal if at either end its drop exceeds "
           f"the reference's by >= {COLLAPSE_BEYOND}; held if >= {MOST:.0%} of the heads do, did "
           f"not hold if <= {FEW:.0%}; at least {MIN_UNITS['3c']} heads. Each sub-claim is "
           "inconclusive with fewer units or when the Wilson 95% interval of its share straddles "
           "the threshold that decided. Question 3 held if all three held, did not hold if none "
           "did, mixed if decided sub-claims disagree, inconclusive otherwise.")
Q3_TITLE = ("Success through attention: balanced 0/1 attention, suppressed 2s, values minor; and "
            "collapse when the ratio is pushed to an extreme?")
OLD_COLLAPSE_DROP = 0.25  # (c) of versions 1 and 2: the drop from w01 near 1 to both ends


def q3(heads: pd.DataFrame | None, swap: pd.DataFrame | None, inter: pd.DataFrame | None,
       model: pd.DataFrame | None, ideal: pd.DataFrame | None = None,
       t: Mapping[str, float] = THRESHOLDS) -> Verdict:
    """ideal: the intervention table of an ideal counter (`controls.ideal_intervention`)."""
    if model is None or all(x is None for x in (heads, swap, inter)):
        return Verdict(3, Q3_TITLE, NOT_MEASURED, Q3_RULE, "No head analysis was found.")
    ok = successful_seeds(model, t)
    out = {"numbers": [_seeds_note(model, ok)], "clauses": [], "details": []}
    parts, old1, old2 = [], [], []
    for key, part in (("3a", _q3a), ("3b", _q3b), ("3c", _q3c)):
        status, before = part(heads, swap, inter, model, ideal, ok, t, out)
        parts.append((Q3_PARTS[key], status))
        old1.append(before[1])
        old2.append(before[2])
    clauses = out["clauses"]
    finding = (clauses[0][0].upper() + "; ".join(clauses)[1:] + ".") if clauses else \
        "Nothing was measured."
    return Verdict(3, Q3_TITLE, combine([s for _, s in parts]), Q3_RULE, finding,
                   out["numbers"], parts, out["details"],
                   previous={1: combine(old1), 2: combine(old2)},
                   previous_parts={1: old1, 2: old2})


def _q3a(heads, swap, inter, model, ideal, ok, t, out) -> tuple[str, dict[int, str]]:
    """(a) measured attention ratios: (status, {older version: its status})."""
    h = None if heads is None else heads[(heads["set"] == SET) & heads["seed"].isin(ok)]
    if h is None or h.empty:
        return NOT_MEASURED, {1: NOT_MEASURED, 2: NOT_MEASURED}
    f = t["w01_factor"]
    balanced = (h["w01"] >= 1 / f) & (h["w01"] <= f)
    suppressed = h["w02"] <= t["w02_max"]
    both = int((balanced & suppressed).sum())
    out["numbers"] += [
        ("w01 (per-occurrence attention on a 1 relative to a 0)", spread(h["w01"])),
        ("w02 (on a noise symbol relative to a 0)", spread(h["w02"])),
        (f"heads with 1/{f:g} <= w01 <= {f:g}", share(int(balanced.sum()), len(h))),
        (f"heads with w02 <= {t['w02_max']:g}", share(int(suppressed.sum()), len(h))),
        ("(a) heads with both, the deciding share", share_ci(both, len(h)))]
    out["clauses"].append(f"measured w01 has median {h['w01'].median():.2f} and w02 median "
                          f"{h['w02'].median():.3f} ({share(both, len(h))} heads balanced and "
                          "suppressing noise)")
    raw = by_share(both / len(h), t)
    return by_evidence(both, len(h), MIN_UNITS["3a"], t), {1: raw, 2: raw}


def _q3b(heads, swap, inter, model, ideal, ok, t, out) -> tuple[str, dict[int, str]]:
    """(b) value swap: does a hybrid follow its attention or its values?"""
    s = None if swap is None else swap[(swap["set"] == SET) & swap["seed"].isin(ok)]
    if s is None or not s["swapped"].any():
        return NOT_MEASURED, {1: NOT_MEASURED, 2: NOT_MEASURED}
    hyb = swap_donors(s, t["value_swap_gap"])
    by_attn, by_vals = hyb["by_attn"].to_numpy(), hyb["by_vals"].to_numpy()
    y, informative = hyb["s_acc"].to_numpy(), hyb["informative"].to_numpy()
    n = int(informative.sum())
    seeds = hyb.loc[informative, "seed"].nunique()
    follows = int((informative & (np.abs(y - by_attn) < np.abs(y - by_vals))).sum())
    follows_vals = int((informative & (np.abs(y - by_vals) < np.abs(y - by_attn))).sum())
    status = by_evidence(follows, n, MIN_UNITS["3b"], t) if n else INCONCLUSIVE
    if seeds < MIN_SWAP_SEEDS:
        status = INCONCLUSIVE
    v1 = HELD if np.median(np.abs(y - by_attn)) <= 0.05 else NOT_HELD
    out["numbers"] += [
        ("s-acc of the heads themselves", spread(s.loc[~s["swapped"], "s_acc"])),
        ("s-acc of hybrids (attention of i, values of j)", spread(hyb["s_acc"])),
        (f"hybrids whose donors' s-acc differ by > {t['value_swap_gap']:g}",
         f"{n} of {len(hyb)}, in {seeds} seed{'s' if seeds != 1 else ''}"),
        ("(b) of those, closer to the attention donor: the deciding share",
         share_ci(follows, n)),
        ("|change| keeping the attention, taking other values", spread(np.abs(y - by_attn))),
        ("|change| keeping the values, taking other attention", spread(np.abs(y - by_vals)))]
    if "l_acc" in s:  # scale-aware: the whole model with the hybrid in place of head i
        own = s.loc[~s["swapped"], "l_acc"]
        out["numbers"] += [("model l-acc, unswapped", spread(own)),
                           ("model l-acc with a hybrid in place of its attention donor",
                            spread(hyb["l_acc"]))]
        out["details"].append(
            f"Value swap, scale included: with a hybrid in place of the head that gave its "
            f"attention, the model's l-acc is {hyb['l_acc'].median():.3f} (median; lowest "
            f"{hyb['l_acc'].min():.3f}) against {own.median():.3f} unswapped; s-acc, which "
            "refits the readout, cannot see a change of scale, l-acc can.")
    if n:
        out["clauses"].append(f"hybrids of heads whose s-acc differ by more than "
                              f"{t['value_swap_gap']:g} score closer to their attention donor in "
                              f"{share(follows, n)} swaps ({seeds} seed{'s' if seeds != 1 else ''})")
        out["details"].append(f"Value swap: of the {n} hybrids whose donors differ, "
                              f"{follows_vals} score closer to the head that gave its "
                              "value/output weights than to the head that gave its attention, "
                              f"{follows} the other way round; they come from {seeds} "
                              f"seed{'s' if seeds != 1 else ''}.")
    else:
        out["clauses"].append(f"every head's s-acc is within {t['value_swap_gap']:g} of the "
                              "others', so the value swap cannot tell attention from values")
    return status, {1: v1, 2: by_share(follows / n, t) if n else NOT_MEASURED}


def _q3c(heads, swap, inter, model, ideal, ok, t, out) -> tuple[str, dict[int, str]]:
    """(c) collapse under the intervention, against an ideal counter's."""
    c = pd.DataFrame()
    if inter is not None:
        c = inter[(inter["intervened"] == "each") & inter["seed"].isin(ok)]
        c = c[c["w02"] == c["w02"].min()]
    if c.empty:
        return NOT_MEASURED, {1: NOT_MEASURED, 2: NOT_MEASURED}
    w = np.array(sorted(c["w01"].unique()))
    near1 = w[np.argmin(np.abs(np.log10(w)))]
    ends = {"low": w[0], "one": near1, "high": w[-1]}
    at = {k: c[c["w01"] == v].set_index(["seed", "head"]) for k, v in ends.items()}
    cols = ("l_acc", "valid", "auc", "s_acc_fixed", "s_acc_refit")
    mean = {k: {m: at[k][m].mean() for m in cols} for k in at}
    old = {m: min(mean["one"][m] - mean[e][m] for e in ("low", "high"))
           for m in ("l_acc", "s_acc_fixed")}
    sd = {k: float(at[k]["l_acc"].std(ddof=0)) for k in at}
    v12 = HELD if (min(old.values()) >= OLD_COLLAPSE_DROP and sd["low"] > sd["one"]
                   and sd["high"] > sd["one"]) else NOT_HELD
    w02 = c["w02"].min()
    ref = None
    if ideal is not None and len(ideal):
        ideal = ideal[ideal["w02"] == 0.0]
        ref = {k: ideal.loc[np.isclose(ideal["w01"], v), ["l_acc", "s_acc_fixed"]].mean()
               for k, v in ends.items()}
    for k, v in ends.items():
        label = f"w01 = {v:.3g}, w02 = {w02:g}"
        out["numbers"] += [(f"{label}: model l-acc", mean_sd(at[k]["l_acc"])),
                           (f"{label}: model valid rate", mean_sd(at[k]["valid"])),
                           (f"{label}: model AUC", mean_sd(at[k]["auc"])),
                           (f"{label}: head s-acc, fixed readout", mean_sd(at[k]["s_acc_fixed"])),
                           (f"{label}: head s-acc, refitted readout",
                            mean_sd(at[k]["s_acc_refit"]))]
        if ref is not None:
            out["numbers"].append((f"{label}: ideal counter, model l-acc / head s-acc (fixed)",
                                   f"{ref[k]['l_acc']:.3f} / {ref[k]['s_acc_fixed']:.3f}"))
    out["clauses"].append(f"pushing one head to w01 = {w[0]:.3g} or {w[-1]:.3g} takes the "
                          f"model's l-acc from {mean['one']['l_acc']:.3f} to "
                          f"{mean['low']['l_acc']:.3f} and {mean['high']['l_acc']:.3f}" +
                          (f" (an ideal counter's: {ref['one']['l_acc']:.3f} to "
                           f"{ref['low']['l_acc']:.3f} and {ref['high']['l_acc']:.3f})"
                           if ref is not None else ""))
    out["details"].append(
        f"Collapse: the spread of the model's l-acc over seeds and heads goes from sd "
        f"{sd['one']:.3f} at w01 = {near1:.3g} to {sd['low']:.3f} and {sd['high']:.3f} at the "
        f"ends. There the model still ranks the strings (AUC {mean['low']['auc']:.3f} and "
        f"{mean['high']['auc']:.3f}) and answers 0 or 1 (valid rate {mean['low']['valid']:.3f} "
        f"and {mean['high']['valid']:.3f}).")
    if ref is None:
        out["details"].append("No ideal counter's intervention was saved (run `count01 analyze` "
                              "again), so the collapse cannot be compared with it.")
        return NOT_MEASURED, {1: v12, 2: v12}
    drop = {e: at["one"]["l_acc"] - at[e]["l_acc"] for e in ("low", "high")}
    excess = pd.concat({e: d - (ref["one"]["l_acc"] - ref[e]["l_acc"]) for e, d in drop.items()},
                       axis=1).max(axis=1)
    k = int((excess >= t["collapse_beyond"]).sum())
    out["numbers"].append(("(c) heads whose drop exceeds the ideal counter's by >= "
                           f"{t['collapse_beyond']:g} at an end: the deciding share",
                           share_ci(k, len(excess))))
    if heads is not None:
        h = heads[(heads["set"] == SET) & heads["seed"].isin(ok)]
        plain = model.loc[(model["set"] == SET) & model["seed"].isin(ok), "l_acc"].mean()
        out["details"].append(
            f"The reference point is itself an intervention (w02 = {w02:g}, not each head's "
            f"measured w02): there the head's fixed-readout s-acc is "
            f"{mean['one']['s_acc_fixed']:.3f} and the model's l-acc {mean['one']['l_acc']:.3f}, "
            f"against {h['s_acc'].mean():.3f} and {plain:.3f} (means) unintervened.")
    return by_evidence(k, len(excess), MIN_UNITS["3c"], t), {1: v12, 2: v12}


def swap_donors(swap: pd.DataFrame, gap: float = VALUE_SWAP_GAP) -> pd.DataFrame:
    """The hybrids among value-swap rows of one set, each with the s-acc of the head that gave
    its attention (by_attn) and of the head that gave its value/output weights (by_vals), and
    `informative` where those two differ by more than `gap`: only there can a swap tell
    attention from values."""
    own = swap[~swap["swapped"]].set_index(["seed", "attn_head"])["s_acc"]
    hyb = swap[swap["swapped"]]
    by_attn = own.reindex(list(zip(hyb["seed"], hyb["attn_head"]))).to_numpy()
    by_vals = own.reindex(list(zip(hyb["seed"], hyb["ov_head"]))).to_numpy()
    return hyb.assign(by_attn=by_attn, by_vals=by_vals,
                      informative=np.abs(by_attn - by_vals) > gap)


# --- Q4: the training path ----------------------------------------------------------------------

Q4_RULE = (f"Per configuration, success = l-acc >= {SUCCESS_L_ACC} on `{SET}` and the ideal "
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
Q4_TITLE = ("The training path: how often does training reach the (ideal) solution, and does it "
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


def q4(success: pd.DataFrame | None, minimal: pd.DataFrame | None, label: str = "heads",
       t: Mapping[str, float] = THRESHOLDS) -> Verdict:
    """success: config rows (n_runs, n_success, rate, ci_low, ci_high, <label>, and n_ideal
    where the sweep measured the ideal solution); minimal: rows (config_id, size, n_runs) of
    minimal head-set sizes (size NaN = none)."""
    if success is None or success.empty:
        return Verdict(4, Q4_TITLE, NOT_MEASURED, Q4_RULE, "No training-path tables were found "
                       "(`count01 paths SWEEP_DIR` writes them from a sweep's results).")
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
    names = [_config_name(r[label], label) if label in r else str(r["config_id"])
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
    return Verdict(4, Q4_TITLE, status, Q4_RULE, finding, numbers, details=details,
                   previous={1: v1, 2: v2})


def _config_name(value, label: str) -> str:
    """'heads = 4', or the configuration's own label ('heads=4, lr=0.01') for a grid of several
    fields."""
    return str(value) if label == "configuration" else f"{label} = {value}"


def _size_mix(success: pd.DataFrame, minimal: pd.DataFrame, label: str) -> list[str]:
    """'at heads = 8, 31 runs need 1 head and 1 needs 2', per configuration whose sizes vary."""
    out = []
    for cid, m in minimal.dropna(subset=["size"]).groupby("config_id", sort=False):
        if m["size"].nunique() < 2:
            continue
        row = success[success["config_id"] == cid]
        name = (_config_name(row[label].iloc[0], label) if label in row and len(row)
                else str(cid))
        m = m.sort_values("n_runs", ascending=False)
        out.append(f"at {name}, " + " and ".join(
            f"{int(n)} {'run needs' if n == 1 else 'runs need'} {int(z)} "
            f"{'head' if z == 1 else 'heads'}" for z, n in zip(m["size"], m["n_runs"])))
    return out


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x)


# --- Q5: the division of labour under other noise conditions -------------------------------------

LABOUR_SHARES = ("pseudo_ensemble", "divided")  # the classes whose shares the rule compares
Q5_RULE = ("Per noise condition, the solved seeds (some head set, alpha refitted, keeps "
           f"l-acc >= {SUCCESS_L_ACC} on `{SET}`) are classed by SPEC 4's division of labour: "
           "pseudo-ensemble (each head alone suffices), divided (the minimal head set has >= 2 "
           "heads) or mixed; the shares of pseudo-ensemble and of divided seeds get Wilson 95% "
           "intervals. Held (the division of labour changes with the noise condition) if, for "
           "either share, the intervals of two conditions do not overlap. Did not hold if one "
           f"class holds >= {MOST:.0%} of the solved seeds in every condition (every interval's "
           "lower end at or above it). Inconclusive otherwise, or with fewer than "
           f"{MIN_UNITS['5']} solved seeds in a condition or fewer than two conditions.")
Q5_TITLE = ("The division of labour under other noise conditions: do the heads keep sharing the "
            "count, or do they start to specialise?")


def q5(labour: pd.DataFrame | None, label: str = "configuration",
       t: Mapping[str, float] = THRESHOLDS) -> Verdict:
    """labour: one row per noise condition (`paths.labour_table`: n_pseudo_ensemble,
    n_divided, n_mixed, n_unsolved, n_runs and the condition's <label>)."""
    if labour is None or labour.empty:
        return Verdict(5, Q5_TITLE, NOT_MEASURED, Q5_RULE, "No noise benchmark was found.")
    names = [_config_name(r[label], label) if label in r else str(r["config_id"])
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
    return Verdict(5, Q5_TITLE, status, Q5_RULE, finding, numbers)


RULES = {1: Q1_RULE, 2: Q2_RULE + " " + Q2S_RULE, 3: Q3_RULE, 4: Q4_RULE, 5: Q5_RULE}


# --- controls, sensitivity, and every verdict at once ----------------------------------------

@dataclass
class Evidence:
    """What the rules read: the tables of `analysis` (model, heads, aggregation, value_swap,
    intervention, ideal_intervention) and the training path's success and minimal tables."""

    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    success: pd.DataFrame | None = None
    minimal: pd.DataFrame | None = None
    label: str = "heads"
    labour: pd.DataFrame | None = None  # the noise benchmark's `paths.labour_table`
    labour_label: str = "configuration"


def _run_q3(e: Evidence, t: Mapping[str, float]) -> Verdict:
    g = e.tables.get
    return q3(g("heads"), g("value_swap"), g("intervention"), g("model"),
              g("ideal_intervention"), t)


def _q3_part(key: str) -> Callable[[Evidence, Mapping[str, float]], str]:
    """The status of sub-claim `key` of question 3 alone (sensitivity runs it many times)."""
    part = {"3a": _q3a, "3b": _q3b, "3c": _q3c}[key]

    def status(e: Evidence, t: Mapping[str, float]) -> str:
        g = e.tables.get
        if g("model") is None:
            return NOT_MEASURED
        scratch = {"numbers": [], "clauses": [], "details": []}
        return part(g("heads"), g("value_swap"), g("intervention"), g("model"),
                    g("ideal_intervention"), successful_seeds(g("model"), t), t, scratch)[0]
    return status


# rule -> (the thresholds it reads, its status on evidence under thresholds t)
RULE_FUNCTIONS: dict[str, tuple[tuple[str, ...], Callable[[Evidence, Mapping], str]]] = {
    "1": (("success_l_acc", "s_acc_good", "most", "few"),
          lambda e, t: q1(e.tables.get("heads"), e.tables.get("model"), t).status),
    "2": (("success_l_acc", "auc_good", "l_acc_drop", "most", "few"),
          lambda e, t: q2(e.tables.get("aggregation"), e.tables.get("model"), t).status),
    "2s": (("success_l_acc", "auc_good", "l_acc_drop", "most", "few"),
           lambda e, t: q2_sentence(e.tables.get(SENTENCE + "aggregation"),
                                    e.tables.get(SENTENCE + "model"), t).status),
    "3": (("success_l_acc", "w01_factor", "w02_max", "value_swap_gap", "collapse_beyond",
           "most", "few"), lambda e, t: combine([_q3_part(k)(e, t) for k in Q3_PARTS])),
    "3a": (("success_l_acc", "w01_factor", "w02_max", "most", "few"), _q3_part("3a")),
    "3b": (("success_l_acc", "value_swap_gap", "most", "few"), _q3_part("3b")),
    "3c": (("success_l_acc", "collapse_beyond", "most", "few"), _q3_part("3c")),
    "4": (("fail_rate",), lambda e, t: q4(e.success, e.minimal, e.label, t).status),
    "5": (("most",), lambda e, t: q5(e.labour, e.labour_label, t).status),
}


def varied(name: str, factor: float) -> float:
    """Threshold `name` varied by `factor` (see VARIED)."""
    x = THRESHOLDS[name]
    how = VARIED.get(name, "scale")
    if how == "from_one":
        return 1 - (1 - x) * factor
    return x ** factor if how == "log" else x * factor


def _status(rule: str, e: Evidence, t: Mapping[str, float], seen: dict) -> str:
    """The rule's status under thresholds t, remembered in `seen` by the thresholds it reads
    (question 3 from its sub-claims, so each is judged once per setting)."""
    if rule == "3":
        return combine([_status(k, e, t, seen) for k in Q3_PARTS])
    names, status_of = RULE_FUNCTIONS[rule]
    key = (rule, *(t[n] for n in names))
    if key not in seen:
        seen[key] = status_of(e, t)
    return seen[key]


def sensitivity(rule: str, e: Evidence, seen: dict | None = None) -> tuple[str, pd.DataFrame]:
    """The rule's status with each of its thresholds varied over FACTORS, the others at their
    defaults: "robust" or where it flips, and the table (rule, threshold, factor, value,
    status). seen: statuses already judged on `e` (see `_status`)."""
    seen = {} if seen is None else seen
    names = RULE_FUNCTIONS[rule][0]
    base = _status(rule, e, THRESHOLDS, seen)
    rows = [{"rule": rule, "threshold": name, "factor": float(f), "value": varied(name, f),
             "status": _status(rule, e, THRESHOLDS | {name: varied(name, f)}, seen)}
            for name in names for f in FACTORS]
    table = pd.DataFrame(rows)
    flips = []
    for name, g in table.groupby("threshold", sort=False):
        for side in (g[g["factor"] < 1].iloc[::-1], g[g["factor"] > 1]):
            other = side[side["status"] != base]
            if len(other):
                r = other.iloc[0]
                flips.append(f"{r['status']} at {name} = {r['value']:.4g} "
                             f"(x{r['factor']:.2f}; default {THRESHOLDS[name]:g})")
    return ("robust" if not flips else "flips: " + "; ".join(flips)), table


def rule_key(v: Verdict) -> str:
    """The key of a verdict's rule in RULE_FUNCTIONS: its question, "2s" for question 2 in the
    sentence framing."""
    return "2s" if v.framing == "sentence" else str(v.question)


def judge(e: Evidence, controls: Mapping[str, tuple[Evidence, Evidence]] | None = None
          ) -> list[Verdict]:
    """Every question's verdict on `e`, with its controls (rule -> (positive, negative)
    evidence) and its sensitivity to each threshold."""
    t = e.tables.get
    out = [q1(t("heads"), t("model")), q2(t("aggregation"), t("model")), _run_q3(e, THRESHOLDS),
           q4(e.success, e.minimal, e.label), q5(e.labour, e.labour_label)]
    out[1].sentence = q2_sentence(t(SENTENCE + "aggregation"), t(SENTENCE + "model"))
    judged = out + [out[1].sentence]
    for v in judged:
        q = rule_key(v)
        if v.status == NOT_MEASURED:
            v.sensitivity = "not measured"
            continue
        rules = [q] + (list(Q3_PARTS) if q == "3" else [])
        seen: dict = {}
        got = {r: sensitivity(r, e, seen) for r in rules}
        v.sensitivity_table = pd.concat([table for _, table in got.values()], ignore_index=True)
        v.sensitivity = got[q][0]
        v.part_sensitivity = {r: text for r, (text, _) in got.items() if r != q}
    for v in judged if controls is not None else []:
        q = rule_key(v)
        keys = tuple(Q3_PARTS) if q == "3" else (q,)
        got = {k: {side: RULE_FUNCTIONS[k][1](controls[k][i], THRESHOLDS)
                   for i, side in enumerate(("positive", "negative"))} for k in keys}
        if q == "3":  # the question's controls combine its sub-claims' as its verdict does
            v.controls = {side: combine([got[k][side] for k in keys])
                          for side in ("positive", "negative")} | {"parts": got}
        else:
            v.controls = got[q]
    return out
