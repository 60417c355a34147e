"""Question 3 of SPEC 1: do the heads succeed because of how they attend (balanced 0/1
attention, suppressed noise, values minor), and does performance collapse when the attention
ratio is pushed to an extreme? Three sub-claims (PARTS), each with its own rule; their rules,
thresholds, history, controls and prose."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
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
    combined_status,
    mean_sd,
    seeds_note,
    share,
    share_ci,
    spread,
    successful_seeds,
)
from .base import THRESHOLDS as SHARED

if TYPE_CHECKING:
    from ..present.report import Evidence as Saved

NUMBER = 3
# "balanced" = w01 within a factor W01_FACTOR of 1; "suppressed" = w02 at most W02_MAX
W01_FACTOR = 2.0
W02_MAX = 0.25
VALUE_SWAP_GAP = 0.05  # a value swap is informative only between heads whose s-acc differ more
COLLAPSE_BEYOND = 0.1  # a head's collapse exceeds the ideal counter's by at least this l-acc
THRESHOLDS = {"w01_factor": W01_FACTOR, "w02_max": W02_MAX, "value_swap_gap": VALUE_SWAP_GAP,
              "collapse_beyond": COLLAPSE_BEYOND}
VARIED = {"w01_factor": "log"}
MIN_UNITS = {"3a": 8, "3b": 8, "3c": 8}  # the fewest units each sub-claim decides on
MIN_SWAP_SEEDS = 3  # informative hybrids must come from at least this many seeds
HISTORY = [
    (1, "commit 39e0da1", None, "first version; (b) held if the median |s-acc change| of a "
     "head given another head's values is <= 0.05"),
    (2, "commit 38bdcc5, after the full study's results were known", True, "(b) counts "
     "hybrids of heads whose s-acc differ by > 0.05 that score closer to their attention "
     "donor"),
    (3, "issue #13", True, "inconclusive below 8 units (8 informative hybrids from 3 seeds "
     "for (b)) or when a share's Wilson 95% interval straddles its threshold; (c) compares "
     "each head's drop in model l-acc from w01 near 1 to either end of the grid with an "
     "ideal counter's under the same intervention (was: a drop of >= 0.25 in l-acc and "
     "fixed-readout s-acc at both ends and a growing spread, with no reference)")]
VERSION = HISTORY[-1][0]
# sub-claim rule -> (positive control: has the property, negative control: lacks it),
# `controls.LIBRARY`
CONTROLS = {"3a": ("ideal", "noise_valued"), "3b": ("bos", "silent"),
            "3c": ("bos_anchored", "ideal")}
# rule -> the analysis tables it judges by (what a control computes)
READS = {"3a": ("heads",), "3b": ("value_swap",), "3c": ("intervention", "ideal_intervention")}

PARTS = {"3a": "(a) balanced 0/1 attention and suppressed 2s",
            "3b": "(b) value vectors a minor factor",
            "3c": "(c) collapse beyond an ideal counter's at an extreme w01"}
RULE = (f"Three sub-claims, each on `{SET}` and the successful seeds. (a) Attention: a head is "
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
           "intervention on an ideal counter with as many heads (`count01.measure.controls`) gives the "
           f"reference drop; a head collapses beyond the ideal if at either end its drop exceeds "
           f"the reference's by >= {COLLAPSE_BEYOND}; held if >= {MOST:.0%} of the heads do, did "
           f"not hold if <= {FEW:.0%}; at least {MIN_UNITS['3c']} heads. Each sub-claim is "
           "inconclusive with fewer units or when the Wilson 95% interval of its share straddles "
           "the threshold that decided. Question 3 held if all three held, did not hold if none "
           "did, mixed if decided sub-claims disagree, inconclusive otherwise.")
TITLE = ("Success through attention: balanced 0/1 attention, suppressed 2s, values minor; and "
            "collapse when the ratio is pushed to an extreme?")
OLD_COLLAPSE_DROP = 0.25  # (c) of versions 1 and 2: the drop from w01 near 1 to both ends


def verdict(heads: pd.DataFrame | None, swap: pd.DataFrame | None, inter: pd.DataFrame | None,
       model: pd.DataFrame | None, ideal: pd.DataFrame | None = None,
       t: Mapping[str, float] = SHARED | THRESHOLDS) -> Verdict:
    """ideal: the intervention table of an ideal counter (`controls.ideal_intervention`)."""
    if model is None or all(x is None for x in (heads, swap, inter)):
        return Verdict(NUMBER, TITLE, NOT_MEASURED, RULE, "No head analysis was found.",
                       rule_version=VERSION)
    ok = successful_seeds(model, t)
    out = {"numbers": [seeds_note(model, ok)], "clauses": [], "details": []}
    parts, old1, old2 = [], [], []
    for key, part in (("3a", _q3a), ("3b", _q3b), ("3c", _q3c)):
        status, before = part(heads, swap, inter, model, ideal, ok, t, out)
        parts.append((PARTS[key], status))
        old1.append(before[1])
        old2.append(before[2])
    clauses = out["clauses"]
    finding = (clauses[0][0].upper() + "; ".join(clauses)[1:] + ".") if clauses else \
        "Nothing was measured."
    return Verdict(NUMBER, TITLE, combined_status([s for _, s in parts]), RULE, finding,
                   out["numbers"], parts, out["details"],
                   previous={1: combined_status(old1), 2: combined_status(old2)},
                   previous_parts={1: old1, 2: old2}, rule_version=VERSION,
                   part_keys=tuple(PARTS))


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



def of_evidence(e: Evidence, t: Mapping[str, float]) -> Verdict:
    g = e.tables.get
    return verdict(g("heads"), g("value_swap"), g("intervention"), g("model"),
                   g("ideal_intervention"), t)


def _part(key: str) -> Callable[[Evidence, Mapping[str, float]], str]:
    """The status of sub-claim `key` alone (sensitivity runs it many times)."""
    part = {"3a": _q3a, "3b": _q3b, "3c": _q3c}[key]

    def status(e: Evidence, t: Mapping[str, float]) -> str:
        g = e.tables.get
        if g("model") is None:
            return NOT_MEASURED
        scratch = {"numbers": [], "clauses": [], "details": []}
        return part(g("heads"), g("value_swap"), g("intervention"), g("model"),
                    g("ideal_intervention"), successful_seeds(g("model"), t), t, scratch)[0]
    return status


RULES = {
    "3": (("success_l_acc", "w01_factor", "w02_max", "value_swap_gap", "collapse_beyond",
           "most", "few"), lambda e, t: combined_status([_part(k)(e, t) for k in PARTS])),
    "3a": (("success_l_acc", "w01_factor", "w02_max", "most", "few"), _part("3a")),
    "3b": (("success_l_acc", "value_swap_gap", "most", "few"), _part("3b")),
    "3c": (("success_l_acc", "collapse_beyond", "most", "few"), _part("3c")),
}


# --- what the report says ----------------------------------------------------------------------

def summary(ev: Saved, v: Verdict) -> list[tuple[str, str, str]]:
    """The summary's finding: (status, label, text)."""
    if v.status == NOT_MEASURED:
        return [(v.status, "Finding 3, the mechanism",
                 "Not measured: no head analysis was saved.")]
    parts = ", ".join(f"({k[1]}) {status}" for k, (_, status) in zip(v.part_keys, v.parts))
    parts = f"Sub-claims {parts} (question 3 names them)." if parts else ""
    design = {HELD: "For model design: the attention ratio is the quantity to watch or "
                    "constrain; the value vectors matter less.",
              NOT_HELD: "For model design: attention ratios alone do not explain these heads; "
                        "look at the value/output weights too.",
              MIXED: "For model design: the attention ratio matters, but not every part of the "
                     "claimed mechanism held.",
              INCONCLUSIVE: "For model design: the parts that could be decided agree, but not "
                            "every part could be; do not rely on the mechanism yet."}[v.status]
    return [(v.status, "Finding 3, the mechanism", f"{v.finding} {parts} {design}")]


def numbers(ev: Saved, v: Verdict) -> list[tuple[str, str]]:
    return list(v.numbers)


def figures(ev: Saved, v: Verdict) -> list[Block]:
    return analysis_figures(ev, [
        ("attention_mass", "Where each head's EOS query looks: attention mass on 0, 1, 2, EOS "
         "and BOS."),
        ("attention_examples", "The raw attention row of each head's EOS query on four fixed "
         "strings, for the first seeds: every slot of the string, colour = share of the row."),
        ("intervention_w02_0", "One head intervened at w02 = 0, w01 swept: head s-acc (fixed "
         "and refitted readout) and model l-acc, mean with a spread band over seeds and heads."),
        ("intervention_heatmaps", "The whole (w01, w02) grid, mean over seeds and heads: head "
         "s-acc with the readout fixed before and refitted under the intervention, and model "
         "l-acc with one head or every head intervened; circles mark the measured (w01, w02) of "
         "each head."),
        ("value_swap", "s-acc of each head against its hybrids: its attention with another "
         "head's value/output weights (left), its values with another head's attention "
         "(middle); on the diagonal, the swap changed nothing. Right: only the hybrids of "
         "unequal heads, which can tell attention from values; above the diagonal, the hybrid "
         "scores closer to the head that gave its attention.")])


def closing(ev: Saved, v: Verdict) -> list[Block]:
    return []


def controls_text() -> list[str]:
    """The methods' description of this question's controls."""
    return [f"rule {k}: positive `{p}`, negative `{n}`" for k, (p, n) in CONTROLS.items()]
