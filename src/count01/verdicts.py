"""Verdicts on the four questions of SPEC 1, by rules written down before any run was looked at.

Each rule reads saved tidy tables (the CSV files of `analysis` and `paths`) and returns a
`Verdict`: "held", "did not hold" or "mixed" (or "not measured" when a table is missing), the
rule in words (the report prints it next to the verdict), and the numbers it rests on with their
spread over seeds. The tool measures; it does not confirm: every threshold below is a constant
here, printed in the report, and a claim that misses it is reported as not held.

Questions 1 to 3 are about models that learned the task, so they are judged on the seeds that
succeeded (hard l-acc >= 0.99); the failed seeds are counted and named in the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

HELD, NOT_HELD, MIXED, NOT_MEASURED = "held", "did not hold", "mixed", "not measured"
SET = "hard"  # |#1 - #0| <= 1: every rule is judged where counting, not a rough majority, decides
SUCCESS_L_ACC = 0.99  # SPEC 5: a run succeeded if its l-acc on `hard` is >= 0.99
MOST, FEW = 0.75, 0.25  # share of heads / seeds above which a claim held, below which it did not

# Q1: a head "separates" if its s-acc on hard is at least this
S_ACC_GOOD = 0.9
# Q2: uniform weighting "still ranks well" / "answers worse" / learned-or-fitted "gets it right"
AUC_GOOD = 0.95
L_ACC_DROP = 0.05
# Q3: "balanced" = w01 within a factor W01_FACTOR of 1; "suppressed" = w02 at most W02_MAX
W01_FACTOR = 2.0
W02_MAX = 0.25
VALUE_SWAP_GAP = 0.05  # a value swap is informative only between heads whose s-acc differ more
COLLAPSE_DROP = 0.25  # "collapse": mean drops by at least this from w01 = 1 to each end of the grid
# Q4: the training path "decides" if some configuration fails in at least this share of its seeds
FAIL_RATE = 0.05


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


def by_share(frac: float) -> str:
    """The status of a claim that holds for a share `frac` of heads or seeds."""
    if frac >= MOST:
        return HELD
    if frac <= FEW:
        return NOT_HELD
    return MIXED


def combine(statuses: list[str]) -> str:
    """Held if every sub-claim held, did not hold if none did, mixed otherwise."""
    measured = [s for s in statuses if s != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    if all(s == HELD for s in measured):
        return HELD
    if all(s == NOT_HELD for s in measured):
        return NOT_HELD
    return MIXED


def successful_seeds(model: pd.DataFrame) -> list[int]:
    """Seeds whose l-acc on `hard` reaches SUCCESS_L_ACC (model.csv rows: set, seed, l_acc)."""
    hard = model[model["set"] == SET]
    return sorted(int(s) for s in hard.loc[hard["l_acc"] >= SUCCESS_L_ACC, "seed"])


def _seeds_note(model: pd.DataFrame, ok: list[int]) -> tuple[str, str]:
    seeds = sorted(int(s) for s in model["seed"].unique())
    failed = [s for s in seeds if s not in ok]
    text = share(len(ok), len(seeds)) + " seeds succeeded"
    return ("seeds judged", text + (f"; left out (failed): {failed}" if failed else ""))


# --- Q1: pseudo-ensemble on the semantics ---------------------------------------------------

Q1_RULE = (f"On `{SET}`, count the heads (every head of every successful seed) whose s-acc is "
           f">= {S_ACC_GOOD}. Held if that share is >= {MOST:.0%}, did not hold if <= {FEW:.0%}, "
           "mixed otherwise.")


def q1(heads: pd.DataFrame | None, model: pd.DataFrame | None) -> Verdict:
    title = "Pseudo-ensemble on the semantics: does each head alone separate the answers?"
    if heads is None or model is None:
        return Verdict(1, title, NOT_MEASURED, Q1_RULE, "No head analysis was found.")
    ok = successful_seeds(model)
    h = heads[(heads["set"] == SET) & heads["seed"].isin(ok)]
    if h.empty:
        return Verdict(1, title, NOT_MEASURED, Q1_RULE, "No seed succeeded, so no trained head "
                       "could be judged.", [_seeds_note(model, ok)])
    good = int((h["s_acc"] >= S_ACC_GOOD).sum())
    status = by_share(good / len(h))
    per_seed = h.groupby("seed")["s_acc"].apply(lambda s: (s >= S_ACC_GOOD).mean())
    finding = (f"{share(good, len(h))} of the heads separate the answers alone on `{SET}` "
               f"(s-acc >= {S_ACC_GOOD}); median head s-acc {h['s_acc'].median():.3f}, "
               f"median head AUC {h['head_auc'].median():.3f}.")
    numbers = [_seeds_note(model, ok),
               (f"heads with s-acc >= {S_ACC_GOOD} ({SET})", share(good, len(h))),
               (f"head s-acc ({SET})", spread(h["s_acc"])),
               (f"head AUC ({SET})", spread(h["head_auc"])),
               (f"probe s-acc ({SET})", spread(h["probe_s_acc"])),
               ("share of a seed's heads that separate, over seeds", spread(per_seed, 2))]
    for name in ("iid", "exhaustive"):
        other = heads[(heads["set"] == name) & heads["seed"].isin(ok)]
        if len(other):
            numbers.append((f"head s-acc ({name})", spread(other["s_acc"])))
    return Verdict(1, title, status, Q1_RULE, finding, numbers)


def separating_heads_by_config(heads: pd.DataFrame, runs: pd.DataFrame
                               ) -> list[tuple[str, str]]:
    """Q1 across the sweep (context, not part of the rule): per head count, the share of heads
    of successful runs that separate alone on `hard`. heads / runs: the sweep's tables."""
    ok = runs.loc[runs["success"].astype(bool), ["config_id", "seed"]]
    h = heads[heads["set"] == SET].merge(ok, on=["config_id", "seed"])
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
           f"<= {FEW:.0%}, mixed otherwise.")


def q2(agg: pd.DataFrame | None, model: pd.DataFrame | None) -> Verdict:
    title = ("Non-uniform aggregation for the syntax: do equally weighted heads rank well but "
             "answer wrongly, and a learned or fitted weighting fix it?")
    if agg is None or model is None:
        return Verdict(2, title, NOT_MEASURED, Q2_RULE, "No aggregation table was found.")
    ok = successful_seeds(model)
    a = agg[(agg["set"] == SET) & agg["seed"].isin(ok)]
    if a.empty:
        return Verdict(2, title, NOT_MEASURED, Q2_RULE, "No seed succeeded.",
                       [_seeds_note(model, ok)])
    whole = a[a["head"] == -1].pivot_table(index="seed", columns="scheme",
                                           values=["l_acc", "valid", "auc"])
    learned, uniform, fitted = (whole[("l_acc", s)] for s in ("learned", "uniform", "fitted"))
    support = ((whole[("auc", "uniform")] >= AUC_GOOD) & (uniform <= learned - L_ACC_DROP)
               & (np.maximum(learned, fitted) >= SUCCESS_L_ACC))
    status = by_share(float(support.mean()))
    single = a[a["scheme"] == "single"]
    finding = (f"{share(int(support.sum()), len(support))} seeds lose l-acc under uniform "
               f"weighting while still ranking well: uniform l-acc {uniform.median():.3f} "
               f"(median; lowest {uniform.min():.3f}) against learned {learned.median():.3f} "
               f"and fitted {fitted.median():.3f}.")
    numbers = [_seeds_note(model, ok),
               ("seeds supporting the claim", share(int(support.sum()), len(support)))]
    for scheme in ("learned", "uniform", "fitted"):
        for col in ("l_acc", "valid", "auc"):
            numbers.append((f"{scheme}: {col.replace('_', '-')}", spread(whole[(col, scheme)])))
    if len(single):
        numbers += [("single head (others mean-ablated): l-acc", spread(single["l_acc"])),
                    ("single head: valid rate", spread(single["valid"])),
                    ("single head: AUC", spread(single["auc"]))]
    loo = a[a["scheme"] == "leave_one_out"]
    if len(loo):
        numbers.append(("leave one head out: l-acc", spread(loo["l_acc"])))
    return Verdict(2, title, status, Q2_RULE, finding, numbers)


# --- Q3: attention as the mechanism -----------------------------------------------------------

Q3_RULE = (f"Three sub-claims, each on `{SET}` and the successful seeds. (a) Attention: a head is "
           f"balanced if 1/{W01_FACTOR:g} <= w01 <= {W01_FACTOR:g} and suppresses 2s if w02 <= "
           f"{W02_MAX}; held if >= {MOST:.0%} of the heads are both, did not hold if <= "
           f"{FEW:.0%}. (b) Values matter less than attention: among hybrids (attention of head i, "
           "value/output weights of head j of the same seed) whose two donors' s-acc differ by "
           f"more than {VALUE_SWAP_GAP}, count those whose s-acc is closer to the attention "
           f"donor's; held if >= {MOST:.0%}, did not hold if <= {FEW:.0%}, mixed otherwise; "
           "not measured if no two heads differ that much (the swap cannot tell attention from "
           "values when every head is equally good). (c) Collapse: with one head intervened at w02 = 0, the "
           f"model's l-acc and the head's fixed-readout s-acc drop by >= {COLLAPSE_DROP} (mean) "
           "from the grid point nearest w01 = 1 to both ends of the w01 grid, and the spread (sd "
           "over seeds and heads) of l-acc at both ends exceeds its spread at w01 = 1; held if "
           "both, else did not hold. Question 3 held if all three held, did not hold if none "
           "did, mixed otherwise.")


def q3(heads: pd.DataFrame | None, swap: pd.DataFrame | None, inter: pd.DataFrame | None,
       model: pd.DataFrame | None) -> Verdict:
    title = ("Success through attention: balanced 0/1 attention, suppressed 2s, values minor; and "
             "collapse when the ratio is pushed to an extreme?")
    if model is None or all(t is None for t in (heads, swap, inter)):
        return Verdict(3, title, NOT_MEASURED, Q3_RULE, "No head analysis was found.")
    ok = successful_seeds(model)
    numbers, parts, clauses, details = [_seeds_note(model, ok)], [], [], []
    a_name, b_name, c_name = ("(a) balanced 0/1 attention and suppressed 2s",
                              "(b) value vectors a minor factor",
                              "(c) collapse with growing spread at extreme w01")

    if heads is not None:  # (a) measured attention ratios
        h = heads[(heads["set"] == SET) & heads["seed"].isin(ok)]
        balanced = (h["w01"] >= 1 / W01_FACTOR) & (h["w01"] <= W01_FACTOR)
        suppressed = h["w02"] <= W02_MAX
        both = int((balanced & suppressed).sum())
        parts.append((a_name, by_share(both / len(h)) if len(h) else NOT_MEASURED))
        numbers += [("w01 (per-occurrence attention on a 1 relative to a 0)", spread(h["w01"])),
                    ("w02 (on a 2 relative to a 0)", spread(h["w02"])),
                    (f"heads with 1/{W01_FACTOR:g} <= w01 <= {W01_FACTOR:g}",
                     share(int(balanced.sum()), len(h))),
                    (f"heads with w02 <= {W02_MAX}", share(int(suppressed.sum()), len(h))),
                    ("heads with both", share(both, len(h)))]
        clauses.append(f"measured w01 has median {h['w01'].median():.2f} and w02 median "
                       f"{h['w02'].median():.2f} ({share(both, len(h))} heads balanced and "
                       "suppressing 2s)")
    else:
        parts.append((a_name, NOT_MEASURED))

    # (b) value swap: does a hybrid follow its attention or its values?
    s = None if swap is None else swap[(swap["set"] == SET) & swap["seed"].isin(ok)]
    if s is not None and s["swapped"].any():
        hyb = swap_donors(s)
        by_attn, by_vals = hyb["by_attn"].to_numpy(), hyb["by_vals"].to_numpy()
        y, informative = hyb["s_acc"].to_numpy(), hyb["informative"].to_numpy()
        n = int(informative.sum())
        follows = int((informative & (np.abs(y - by_attn) < np.abs(y - by_vals))).sum())
        follows_vals = int((informative & (np.abs(y - by_vals) < np.abs(y - by_attn))).sum())
        parts.append((b_name, by_share(follows / n) if n else NOT_MEASURED))
        numbers += [("s-acc of the heads themselves", spread(s.loc[~s["swapped"], "s_acc"])),
                    ("s-acc of hybrids (attention of i, values of j)", spread(hyb["s_acc"])),
                    (f"hybrids whose donors' s-acc differ by > {VALUE_SWAP_GAP}",
                     f"{n} of {len(hyb)}, in {hyb.loc[informative, 'seed'].nunique()} seeds"),
                    ("of those, closer to the attention donor", share(follows, n)),
                    ("|change| keeping the attention, taking other values",
                     spread(np.abs(y - by_attn))),
                    ("|change| keeping the values, taking other attention",
                     spread(np.abs(y - by_vals)))]
        if n:
            clauses.append(f"hybrids of heads whose s-acc differ by more than {VALUE_SWAP_GAP} "
                           f"score closer to their attention donor in {share(follows, n)} swaps")
            details.append(f"Value swap: of the {n} hybrids whose donors differ, {follows_vals} "
                           "score closer to the head that gave its value/output weights than to "
                           f"the head that gave its attention, {follows} the other way round.")
        else:
            clauses.append(f"every head's s-acc is within {VALUE_SWAP_GAP} of the others', so "
                           "the value swap cannot tell attention from values")
    else:
        parts.append((b_name, NOT_MEASURED))

    c = pd.DataFrame()
    if inter is not None:  # (c) collapse under intervention
        c = inter[(inter["intervened"] == "each") & inter["seed"].isin(ok)]
        c = c[c["w02"] == c["w02"].min()]
    if len(c):
        w = np.array(sorted(c["w01"].unique()))
        near1 = w[np.argmin(np.abs(np.log10(w)))]
        ends = (("low", w[0]), ("one", near1), ("high", w[-1]))
        at = {name: c[c["w01"] == v] for name, v in ends}
        drop = {k: {m: at["one"][m].mean() - at[k][m].mean() for m in ("l_acc", "s_acc_fixed")}
                for k in ("low", "high")}
        collapse = all(d >= COLLAPSE_DROP for e in drop.values() for d in e.values())
        sd = {k: float(at[k]["l_acc"].std(ddof=0)) for k in at}
        grows = sd["low"] > sd["one"] and sd["high"] > sd["one"]
        parts.append((c_name, HELD if collapse and grows else NOT_HELD))
        w02 = c["w02"].min()
        for k, v in ends:
            label = f"w01 = {v:.3g}, w02 = {w02:g}"
            numbers += [(f"{label}: model l-acc", mean_sd(at[k]["l_acc"])),
                        (f"{label}: model valid rate", mean_sd(at[k]["valid"])),
                        (f"{label}: model AUC", mean_sd(at[k]["auc"])),
                        (f"{label}: head s-acc, fixed readout", mean_sd(at[k]["s_acc_fixed"])),
                        (f"{label}: head s-acc, refitted readout",
                         mean_sd(at[k]["s_acc_refit"]))]
        mean = {k: {m: at[k][m].mean() for m in ("l_acc", "valid", "auc", "s_acc_fixed",
                                                 "s_acc_refit")} for k in at}
        clauses.append(f"pushing one head to w01 = {w[0]:.3g} or {w[-1]:.3g} takes the model's "
                       f"l-acc from {mean['one']['l_acc']:.3f} to {mean['low']['l_acc']:.3f} "
                       f"and {mean['high']['l_acc']:.3f}")
        details.append(f"Collapse: the spread of the model's l-acc over seeds and heads goes from "
                       f"sd {sd['one']:.3f} at w01 = {near1:.3g} to {sd['low']:.3f} and "
                       f"{sd['high']:.3f} at the ends. There the model still ranks the strings "
                       f"(AUC {mean['low']['auc']:.3f} and {mean['high']['auc']:.3f}) and "
                       f"answers 0 or 1 (valid rate {mean['low']['valid']:.3f} and "
                       f"{mean['high']['valid']:.3f}): the answers go wrong, the ranking does "
                       "not.")
        kept = [v for k, v in (("low", w[0]), ("high", w[-1]))
                if mean[k]["s_acc_refit"] >= S_ACC_GOOD]
        if kept:
            where = " and ".join(f"{v:.3g}" for v in kept)
            details.append(f"With its readout refitted, the intervened head still separates "
                           f"at w01 = {where} (s-acc >= {S_ACC_GOOD}): there the collapse is in "
                           "how its output is read, not in what it carries.")
        if heads is not None and len(h):
            plain = model.loc[(model["set"] == SET) & model["seed"].isin(ok), "l_acc"].mean()
            details.append(f"The reference point is itself an intervention (w02 = {w02:g}, not "
                           f"each head's measured w02): there the head's fixed-readout s-acc is "
                           f"{mean['one']['s_acc_fixed']:.3f} and the model's l-acc "
                           f"{mean['one']['l_acc']:.3f}, against {h['s_acc'].mean():.3f} and "
                           f"{plain:.3f} (means) unintervened.")
    else:
        parts.append((c_name, NOT_MEASURED))

    status = combine([p[1] for p in parts])
    finding = (clauses[0][0].upper() + "; ".join(clauses)[1:] + ".") if clauses else \
        "Nothing was measured."
    return Verdict(3, title, status, Q3_RULE, finding, numbers, parts, details)


def swap_donors(swap: pd.DataFrame) -> pd.DataFrame:
    """The hybrids among value-swap rows of one set, each with the s-acc of the head that gave
    its attention (by_attn) and of the head that gave its value/output weights (by_vals), and
    `informative` where those two differ by more than VALUE_SWAP_GAP: only there can a swap
    tell attention from values."""
    own = swap[~swap["swapped"]].set_index(["seed", "attn_head"])["s_acc"]
    hyb = swap[swap["swapped"]]
    by_attn = own.reindex(list(zip(hyb["seed"], hyb["attn_head"]))).to_numpy()
    by_vals = own.reindex(list(zip(hyb["seed"], hyb["ov_head"]))).to_numpy()
    return hyb.assign(by_attn=by_attn, by_vals=by_vals,
                      informative=np.abs(by_attn - by_vals) > VALUE_SWAP_GAP)


# --- Q4: the training path ----------------------------------------------------------------------

Q4_RULE = (f"Per configuration, success = l-acc >= {SUCCESS_L_ACC} on `{SET}`, with a Wilson 95% "
           "interval. Held (the path decides) if some configuration fails in at least "
           f"{FAIL_RATE:.0%} of its seeds, or the intervals of the best and the worst "
           "configuration do not overlap. Did not hold if every seed of every configuration "
           "succeeded and, within each configuration, every successful seed needs the same "
           "number of heads (minimal head set). Mixed otherwise (rare failures, or the same "
           "success but different minimal solutions).")


def q4(success: pd.DataFrame | None, minimal: pd.DataFrame | None, label: str = "heads"
       ) -> Verdict:
    """success: config rows (n_runs, n_success, rate, ci_low, ci_high, <label>); minimal: rows
    (config_id, size, n_runs) of minimal head-set sizes (size NaN = none)."""
    title = ("The training path: how often does training reach the solution, and does it depend "
             "on the seed and the number of heads?")
    if success is None or success.empty:
        return Verdict(4, title, NOT_MEASURED, Q4_RULE, "No training-path results were found.")
    s = success.sort_values(label) if label in success else success
    fail = 1 - s["rate"]
    differ = bool(s["ci_high"].min() < s["ci_low"].max())
    sizes_vary = False
    if minimal is not None and len(minimal):
        known = minimal.dropna(subset=["size"])
        sizes_vary = bool((known.groupby("config_id")["size"].nunique() > 1).any())
    if (fail >= FAIL_RATE).any() or differ:
        status = HELD
    elif (fail == 0).all() and not sizes_vary:
        status = NOT_HELD
    else:
        status = MIXED
    total, ok = int(s["n_runs"].sum()), int(s["n_success"].sum())
    worst = s.loc[s["rate"].idxmin()]
    if ok == total:
        finding = (f"All {total} runs of the {len(s)} "
                   f"configuration{'s' if len(s) > 1 else ''} succeeded; with these "
                   f"seed counts the true failure rate of each is below "
                   f"{1 - s['ci_low'].min():.2f} (Wilson 95% upper bound).")
    else:
        finding = (f"{share(ok, total)} runs succeeded overall; the lowest rate is "
                   f"{worst['rate']:.2f} (95% CI {worst['ci_low']:.2f}-{worst['ci_high']:.2f}) "
                   f"at {label} = {worst.get(label, worst['config_id'])}.")
    if sizes_vary:
        finding += (" Seeds of one configuration reached solutions of different sizes (the "
                    "smallest head set keeping the answers right, alpha refitted): "
                    + "; ".join(_size_mix(s, minimal, label)) + ".")
    numbers = []
    for _, r in s.iterrows():
        name = f"{label} = {r[label]}" if label in r else str(r["config_id"])
        text = (f"{int(r['n_success'])}/{int(r['n_runs'])} succeeded, rate {r['rate']:.3f} "
                f"(Wilson 95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f})")
        if minimal is not None and len(minimal):
            m = minimal[minimal["config_id"] == r["config_id"]]
            dist = ", ".join(f"{'none' if _nan(z) else int(z)} heads: {int(n)}"
                             for z, n in zip(m["size"], m["n_runs"]))
            text += f"; minimal head set sizes: {dist}"
        numbers.append((name, text))
    numbers.append(("rates differ between configurations (intervals disjoint)",
                    "yes" if differ else "no"))
    numbers.append(("minimal head-set size varies across seeds of a configuration",
                    "yes" if sizes_vary else "no"))
    return Verdict(4, title, status, Q4_RULE, finding, numbers)


def _size_mix(success: pd.DataFrame, minimal: pd.DataFrame, label: str) -> list[str]:
    """'at heads = 8, 31 runs need 1 head and 1 needs 2', per configuration whose sizes vary."""
    out = []
    for cid, m in minimal.dropna(subset=["size"]).groupby("config_id", sort=False):
        if m["size"].nunique() < 2:
            continue
        row = success[success["config_id"] == cid]
        name = f"{label} = {row[label].iloc[0]}" if label in row and len(row) else str(cid)
        m = m.sort_values("n_runs", ascending=False)
        out.append(f"at {name}, " + " and ".join(
            f"{int(n)} {'run needs' if n == 1 else 'runs need'} {int(z)} "
            f"{'head' if z == 1 else 'heads'}" for z, n in zip(m["size"], m["n_runs"])))
    return out


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x)


RULES = {1: Q1_RULE, 2: Q2_RULE, 3: Q3_RULE, 4: Q4_RULE}
