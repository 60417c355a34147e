"""What every question's rule uses (SPEC 6): statuses, the Verdict, shares decided with their
Wilson interval, the study's shared thresholds, and `judge`, which runs every question of a
registry on the evidence, on its controls and over its thresholds.

A rule reads saved tidy tables (the CSV files of `analysis` and `paths`) and returns a `Verdict`:
"held", "did not hold", "mixed", "inconclusive" (too few informative units, or a Wilson 95%
interval on the deciding share that straddles its threshold) or "not measured" (a table is
missing); the rule in words; and the numbers it rests on with their spread. Every threshold is
an entry of a THRESHOLDS dict (these shared ones, and each question module's own), printed in the
report and varied by `sensitivity`.

A question module (`count01.questions.q1` ...) holds its rule, thresholds, version HISTORY,
controls, the rule's functions (RULES) and its prose; `judge` runs each rule on the trained
model's tables, on the hand-built controls of `count01.measure.controls` (a rule whose positive and
negative control get the same verdict is not evidence) and over its thresholds. HISTORY says
what each version changed and whether the change was made after results were seen, and each
verdict keeps what the older versions say on the same tables.

Questions 1 to 3 are about models that learned the task, so they are judged on the seeds that
succeeded (hard l-acc >= SUCCESS_L_ACC); the failed seeds are counted and named in the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import pandas as pd

from ..criteria import SUCCESS_L_ACC, SUCCESS_SET
from ..stats import wilson

HELD, NOT_HELD, MIXED = "held", "did not hold", "mixed"
INCONCLUSIVE, NOT_MEASURED = "inconclusive", "not measured"
STATUSES = (HELD, NOT_HELD, MIXED, INCONCLUSIVE, NOT_MEASURED)
SET = SUCCESS_SET  # every rule is judged where counting, not a rough majority, decides
MOST, FEW = 0.75, 0.25  # share of units above which a claim held, below which it did not
# the thresholds every question shares; each question module adds its own THRESHOLDS
THRESHOLDS: dict[str, float] = {"success_l_acc": SUCCESS_L_ACC, "most": MOST, "few": FEW}
# how `sensitivity` varies each threshold by a factor f in FACTORS: "from_one" scales its
# distance from 1 (accuracies, the share MOST), "log" scales its logarithm, "scale" (the
# default) itself; each question module adds its own VARIED
VARIED = {"success_l_acc": "from_one", "most": "from_one"}
FACTORS = np.geomspace(0.5, 2.0, 17)
SENSITIVITY_RANGE = ("each threshold x0.5 to x2 in 17 log-spaced steps (of its distance from 1 "
                     "for accuracies, AUC and the share 'most'; of its logarithm for w01_factor)")
# the controls (`count01.measure.controls`): seeds of each hand-built model (they differ only in the
# scale of their values), and runs per configuration of the tables that control questions 4, 5
CONTROL_SEEDS = 16  # enough units for every rule's minimum
CONTROL_RUNS = 100
SENTENCE = "sentence_"  # prefix of the sentence-framing run's tables in Evidence.tables
History = list[tuple[int, str, bool | None, str]]  # (version, when, changed after results were
# seen (None: not recorded), what this version changed)


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
    part_sensitivity: dict[str, str] = field(default_factory=dict)  # sub-claim key -> text
    sensitivity_table: pd.DataFrame | None = None  # (rule, threshold, factor, value, status)
    framing: str = "classify"  # question 2 is judged in both framings of SPEC 2
    sentence: Verdict | None = None  # question 2's verdict in the sentence framing
    rule_version: int = 0  # the question module's VERSION (every rule sets it)
    part_keys: tuple[str, ...] = ()  # the sub-claims' rule keys, as `parts` (question 3)

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
                            for key, (name, status) in zip(self.part_keys, self.parts)}
        if self.sentence is not None:
            out["framing"] = self.framing
            out["sentence"] = self.sentence.to_json() | {"framing": "sentence"}
        return out


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
    # question 6: the small model's label first, then each larger model's -> its analysis tables
    scale: Mapping[str, Mapping[str, pd.DataFrame]] | None = None
    # statuses question 6 judged on these tables, by (tables, rule, the thresholds it reads):
    # its sensitivity varies one threshold at a time, which most compared rules do not read
    seen: dict = field(default_factory=dict, repr=False, compare=False)


# --- formatting of numbers with their spread ------------------------------------------------

def spread(x, digits: int = 3) -> str:
    """median [IQR q25-q75], min-max, n of a sample."""
    x = np.asarray(pd.Series(x).dropna(), dtype=float)
    if len(x) == 0:
        return "n/a"
    with np.errstate(invalid="ignore"):  # interpolating between two infinite order statistics
        q = np.quantile(x, [0.25, 0.5, 0.75])  # (w01 of a head that never attends to a 0)
    q = np.where(np.isnan(q), np.quantile(x, [0.25, 0.5, 0.75], method="lower"), q)
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


def combined_status(statuses: list[str]) -> str:
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


def seeds_note(model: pd.DataFrame, ok: list[int]) -> tuple[str, str]:
    seeds = sorted(int(s) for s in model["seed"].unique())
    failed = [s for s in seeds if s not in ok]
    text = share(len(ok), len(seeds)) + " seeds succeeded"
    return ("seeds judged", text + (f"; left out (failed): {failed}" if failed else ""))



def evidence_rule(unit: str, minimum: int) -> str:
    return (f"Inconclusive with fewer than {minimum} {unit}, or when the Wilson 95% "
            "interval of the share straddles the threshold that decided.")


def config_name(value, label: str) -> str:
    """'heads = 4', or the configuration's own label ('heads=4, lr=0.01') for a grid of several
    fields."""
    return str(value) if label == "configuration" else f"{label} = {value}"


# --- every question of a registry at once: sensitivity, controls, verdicts ------------------------

# rule key -> (the thresholds it reads, its status on evidence under thresholds t)
RuleFunctions = dict[str, tuple[tuple[str, ...], Callable[[Evidence, Mapping], str]]]
Controls = Mapping[str, tuple[Evidence, Evidence]]  # rule key -> (positive, negative) evidence


def thresholds(questions: Sequence[ModuleType]) -> dict[str, float]:
    """The shared thresholds and every question's own, in the registry's order."""
    out = dict(THRESHOLDS)
    for q in questions:
        out |= q.THRESHOLDS
    return out


def rule_functions(questions: Sequence[ModuleType]) -> RuleFunctions:
    return {k: f for q in questions for k, f in q.RULES.items()}


def varied(name: str, factor: float, questions: Sequence[ModuleType]) -> float:
    """Threshold `name` varied by `factor` (see VARIED)."""
    x = thresholds(questions)[name]
    how = (VARIED | {k: h for q in questions for k, h in q.VARIED.items()}).get(name, "scale")
    if how == "from_one":
        return 1 - (1 - x) * factor
    return x ** factor if how == "log" else x * factor


def _parts(questions: Sequence[ModuleType]) -> dict[str, tuple[str, ...]]:
    """rule key -> the keys of its sub-claims (question 3's), for the rules that have some."""
    return {str(q.NUMBER): tuple(q.PARTS) for q in questions if q.PARTS}


def _status(rule: str, e: Evidence, t: Mapping[str, float], seen: dict,
            questions: Sequence[ModuleType]) -> str:
    """The rule's status under thresholds t, remembered in `seen` by the thresholds it reads
    (a rule with sub-claims from its sub-claims, so each is judged once per setting)."""
    parts = _parts(questions)
    if rule in parts:
        return combined_status([_status(k, e, t, seen, questions) for k in parts[rule]])
    names, status_of = rule_functions(questions)[rule]
    key = (rule, *(t[n] for n in names))
    if key not in seen:
        seen[key] = status_of(e, t)
    return seen[key]


def sensitivity(rule: str, e: Evidence, questions: Sequence[ModuleType],
                seen: dict | None = None) -> tuple[str, pd.DataFrame]:
    """The rule's status with each of its thresholds varied over FACTORS, the others at their
    defaults: "robust" or where it flips, and the table (rule, threshold, factor, value,
    status). seen: statuses already judged on `e` (see `_status`)."""
    seen = {} if seen is None else seen
    t = thresholds(questions)
    names = rule_functions(questions)[rule][0]
    base = _status(rule, e, t, seen, questions)
    rows = [{"rule": rule, "threshold": name, "factor": float(f),
             "value": varied(name, f, questions),
             "status": _status(rule, e, t | {name: varied(name, f, questions)}, seen, questions)}
            for name in names for f in FACTORS]
    table = pd.DataFrame(rows)
    flips = []
    for name, g in table.groupby("threshold", sort=False):
        for side in (g[g["factor"] < 1].iloc[::-1], g[g["factor"] > 1]):
            other = side[side["status"] != base]
            if len(other):
                r = other.iloc[0]
                flips.append(f"{r['status']} at {name} = {r['value']:.4g} "
                             f"(x{r['factor']:.2f}; default {t[name]:g})")
    return ("robust" if not flips else "flips: " + "; ".join(flips)), table


def rule_key(v: Verdict) -> str:
    """The key of a verdict's rule in RULES: its question, "2s" for question 2 in the
    sentence framing."""
    return "2s" if v.framing == "sentence" else str(v.question)


def judge(questions: Sequence[ModuleType], e: Evidence,
          controls: Controls | None = None) -> list[Verdict]:
    """Every question's verdict on `e`, in the registry's order, with its controls (rule ->
    (positive, negative) evidence) and its sensitivity to each threshold."""
    t = thresholds(questions)
    parts = _parts(questions)
    out = [q.of_evidence(e, t) for q in questions]
    judged = out + [v.sentence for v in out if v.sentence is not None]
    for v in judged:
        q = rule_key(v)
        if v.status == NOT_MEASURED:
            v.sensitivity = "not measured"
            continue
        rules = [q, *parts.get(q, ())]
        seen: dict = {}
        got = {r: sensitivity(r, e, questions, seen) for r in rules}
        v.sensitivity_table = pd.concat([table for _, table in got.values()], ignore_index=True)
        v.sensitivity = got[q][0]
        v.part_sensitivity = {r: text for r, (text, _) in got.items() if r != q}
    functions = rule_functions(questions)
    for v in judged if controls is not None else []:
        q = rule_key(v)
        keys = parts.get(q, (q,))
        got = {k: {side: functions[k][1](controls[k][i], t)
                   for i, side in enumerate(("positive", "negative"))} for k in keys}
        if q in parts:  # the question's controls combine its sub-claims' as its verdict does
            v.controls = {side: combined_status([got[k][side] for k in keys])
                          for side in ("positive", "negative")} | {"parts": got}
        else:
            v.controls = got[q]
    return out


# --- what the report says of every verdict ---------------------------------------------------------

def describe_controls(controls: dict) -> str:
    """'positive held, negative did not hold', and 'not evidence' when the two agree."""
    if not controls:
        return "not run"
    text = f"positive {controls['positive']}, negative {controls['negative']}"
    return text if controls["positive"] != controls["negative"] else text + ": not evidence"


def aggregation_rows(tables: Mapping[str, pd.DataFrame], scheme: str) -> pd.DataFrame:
    """Aggregation rows of one scheme on the judged set (empty without the table)."""
    a = tables.get("aggregation")
    if a is None:
        return pd.DataFrame(columns=["scheme", "head", "seed", "set", "l_acc", "valid", "auc"])
    return a[(a["scheme"] == scheme) & (a["set"] == SET)]
