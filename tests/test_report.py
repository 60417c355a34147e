"""The verdict rules on small hand-made tables, and report.html / report.md built from a run
directory that holds only saved tables and figures (no weights: the report never retrains)."""

from __future__ import annotations

import base64
import json
import re
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from count01.cli import main
from count01.config import Config
from count01.files import write_json
from count01.measure.controls import rule_controls
from count01.present.report import SECTIONS, ReportError, judge, read_evidence
from count01.questions import QUESTIONS
from count01.questions import base as V
from count01.questions import q1 as Q1
from count01.questions import q2 as Q2
from count01.questions import q3 as Q3
from count01.questions import q4 as Q4
from count01.questions import q5 as Q5
from count01.study import build_report

SETS = ("iid", "hard", "exhaustive", "long", "noisy")
GRID01 = (1e-3, 1e-1, 1.0, 10.0, 1e3)
GRID02 = (0.0, 1e-3, 1.0, 1e3)
FIGURES = ("heads_table", "attention_mass", "intervention_heatmaps", "intervention_w02_0",
           "aggregation", "value_swap", "attention_examples")


def fake_tables(n_seeds: int = 16, n_heads: int = 2, s_acc=1.0, w01: float = 1.0,
                w02: float = 0.05, uniform_l_acc: float = 1.0, swap_follows: str = "attention",
                collapse: str = "beyond", failed: tuple[int, ...] = ()) -> dict[str, pd.DataFrame]:
    """The CSV tables of `analysis` for a model whose properties are set by hand.

    s_acc: a number or a function (seed, head) -> number. failed: seeds whose hard l-acc is 0.5.
    swap_follows: a hybrid scores as the head that gave its "attention" or its "values".
    collapse: away from w01 = 1 the model's l-acc falls "beyond" the ideal counter's (to about
    0.1), as far as the "ideal" counter's (0.5), or not at all ("none").
    """
    acc = s_acc if callable(s_acc) else (lambda seed, head: s_acc)
    seeds, heads = range(n_seeds), range(n_heads)
    model = [{"set": s, "seed": i, "l_acc": 0.5 if (i in failed and s == "hard") else 1.0,
              "valid": 1.0, "auc": 1.0} for s in SETS for i in seeds]
    head_rows = [{"set": s, "seed": i, "head": h, "head_auc": max(acc(i, h), 0.5),
                  "s_acc": acc(i, h), "s_threshold": 0.0, "probe_s_acc": 1.0, "w01": w01,
                  "w02": w02, "w_eos": 0.5, "w_bos": 0.5, "mass_0": 0.3, "mass_1": 0.3,
                  "mass_2": 0.1, "mass_eos": 0.2, "mass_bos": 0.1}
                 for s in SETS for i in seeds for h in heads]
    inter = []
    for mode in ("each", "all"):
        for a in GRID01:
            for b in GRID02:
                for i in seeds:
                    for h in heads:
                        off = collapse != "none" and a != 1.0
                        low = {"beyond": 0.1, "ideal": 0.5, "none": 1.0}[collapse]
                        inter.append({"set": "hard", "intervened": mode, "w01": a, "w02": b,
                                      "seed": i, "head": h,
                                      "s_acc_fixed": 0.5 if off else 1.0,
                                      "s_acc_refit": 0.5 if off else 1.0, "head_auc": 1.0,
                                      "l_acc": low + 0.02 * ((i + h) % 3) if off else 1.0,
                                      "valid": 1.0, "auc": 1.0})
    ideal = [{"set": "hard", "intervened": "each", "w01": a, "w02": 0.0, "seed": 0, "head": h,
              "s_acc_fixed": 1.0 if a == 1.0 else 0.5, "s_acc_refit": 1.0, "head_auc": 1.0,
              "l_acc": 1.0 if a == 1.0 else 0.5, "valid": 1.0, "auc": 1.0}
             for a in GRID01 for h in heads]
    agg = []
    for s in ("iid", "hard"):
        for i in seeds:
            whole = {"learned": 1.0, "uniform": uniform_l_acc, "fitted": 1.0}
            agg += [{"scheme": k, "head": -1, "seed": i, "set": s, "l_acc": v, "valid": 1.0,
                     "auc": 1.0} for k, v in whole.items()]
            for h in heads:
                agg += [{"scheme": "single", "head": h, "seed": i, "set": s, "l_acc": 0.6,
                         "valid": 1.0, "auc": 1.0},
                        {"scheme": "leave_one_out", "head": h, "seed": i, "set": s,
                         "l_acc": 1.0, "valid": 1.0, "auc": 1.0}]
    alpha = [{"seed": i, "head": h, "mean_norm": 1.0, "alpha_learned": 1.0,
              "alpha_uniform": 1.0, "alpha_fitted": 1.0} for i in seeds for h in heads]
    swap = [{"set": "hard", "seed": i, "attn_head": a, "ov_head": b, "swapped": a != b,
             "s_acc": acc(i, a) if swap_follows == "attention" else acc(i, b),
             "head_auc": 1.0} for i in seeds for a in heads for b in heads]
    minimal = [{"seed": i, "n_heads": 1, "heads": "0", "l_acc_threshold": 0.99, "set": "hard"}
               for i in seeds]
    return {"model": pd.DataFrame(model), "heads": pd.DataFrame(head_rows),
            "intervention": pd.DataFrame(inter), "aggregation": pd.DataFrame(agg),
            "alpha": pd.DataFrame(alpha), "value_swap": pd.DataFrame(swap),
            "minimal_heads": pd.DataFrame(minimal), "ideal_intervention": pd.DataFrame(ideal)}


def fake_run(run: Path, **kw) -> Path:
    """A run directory with config.json and analysis/ (tables, metrics.json, PNG figures) but
    no weights at all."""
    tables = fake_tables(**kw)
    n_heads = int(tables["heads"]["head"].max()) + 1
    n_seeds = int(tables["model"]["seed"].max()) + 1
    cfg = Config(heads=n_heads, d_head=4, n_seeds=n_seeds, steps=60)
    write_json(run / "config.json", cfg.to_dict())
    a = run / "analysis"
    (a / "figures").mkdir(parents=True)
    for name, df in tables.items():
        df.to_csv(a / f"{name}.csv", index=False)
    write_json(a / "metrics.json", {"sweep_set": "hard", "grid": {"w01": list(GRID01),
                                                                   "w02": list(GRID02)},
                                    "seconds": {"heads": 1.0}})
    pixels = np.linspace(0, 1, 12 * 16 * 3).reshape(12, 16, 3)
    for name in FIGURES:
        matplotlib.image.imsave(a / "figures" / f"{name}.png", pixels)
    return run


def verdicts_of(tables: dict[str, pd.DataFrame]) -> dict[int, str]:
    t = tables
    return {1: Q1.verdict(t["heads"], t["model"]).status,
            2: Q2.verdict(t["aggregation"], t["model"]).status,
            3: q3_of_tables(t).status}


# --- the rules ------------------------------------------------------------------------------------

def q3_of_tables(t: dict[str, pd.DataFrame]) -> V.Verdict:
    return Q3.verdict(t["heads"], t["value_swap"], t["intervention"], t["model"],
                t["ideal_intervention"])


def q3_of(**kw) -> V.Verdict:
    return q3_of_tables(fake_tables(**kw))


def q1_of(**kw) -> V.Verdict:
    t = fake_tables(**kw)
    return Q1.verdict(t["heads"], t["model"])


def test_q1_holds_when_every_head_separates_and_fails_when_none_does():
    assert q1_of(s_acc=1.0).status == V.HELD
    assert q1_of(s_acc=0.6).status == V.NOT_HELD
    assert q1_of(s_acc=lambda seed, head: 1.0 if head == 0 else 0.6,
                 n_heads=2, n_seeds=40).status == V.MIXED


def test_q1_is_inconclusive_on_too_few_heads_or_a_share_whose_interval_straddles():
    few = q1_of(n_seeds=3)  # 6 heads, all separating: below the minimum of 8
    assert few.status == V.INCONCLUSIVE and few.previous == {1: V.HELD}
    eight = q1_of(n_seeds=4)  # 8 of 8: Wilson 95% lower end 0.68 < 0.75
    assert eight.status == V.INCONCLUSIVE
    assert "Wilson 95% CI 0.68-1.00" in dict(eight.numbers)[
        "heads with s-acc >= 0.9 (hard), the deciding share"]
    assert q1_of(n_seeds=6).status == V.HELD  # 12 of 12: lower end 0.76


def test_q1_judges_only_seeds_that_succeeded_and_names_the_others():
    t = fake_tables(s_acc=lambda seed, head: 0.5 if seed == 3 else 1.0, failed=(3,))
    v = Q1.verdict(t["heads"], t["model"])
    assert v.status == V.HELD
    assert "left out (failed): [3]" in dict(v.numbers)["seeds judged"]


def test_q2_holds_only_when_uniform_weighting_breaks_the_answers():
    assert verdicts_of(fake_tables(uniform_l_acc=0.7))[2] == V.HELD
    assert verdicts_of(fake_tables(uniform_l_acc=1.0))[2] == V.NOT_HELD
    assert verdicts_of(fake_tables(uniform_l_acc=1.0, n_seeds=8))[2] == V.INCONCLUSIVE


def unequal(seed: int, head: int) -> float:
    """Head 0 perfect, head 1 weaker: a value swap between them can tell which part travels."""
    return (1.0, 0.92)[head]


def test_q3_combines_attention_values_and_collapse():
    assert q3_of(s_acc=unequal).status == V.HELD
    assert q3_of(s_acc=unequal, w02=0.9, swap_follows="values",
                 collapse="ideal").status == V.NOT_HELD
    v = q3_of(s_acc=unequal, w02=0.9)
    assert v.status == V.MIXED
    assert [s for _, s in v.parts] == [V.NOT_HELD, V.HELD, V.HELD]


def test_q3_is_inconclusive_when_a_part_cannot_be_decided_and_the_others_agree():
    v = q3_of(s_acc=lambda seed, head: 0.92 if (seed, head) == (0, 1) else 1.0)
    assert [s for _, s in v.parts] == [V.HELD, V.INCONCLUSIVE, V.HELD]  # one seed of hybrids
    assert v.status == V.INCONCLUSIVE


def test_value_swap_holds_when_hybrids_follow_their_attention_not_their_values():
    assert q3_of(s_acc=unequal).parts[1][1] == V.HELD
    v = q3_of(s_acc=unequal, swap_follows="values")
    assert v.parts[1][1] == V.NOT_HELD
    assert "0/32 (0%)" in v.finding  # 16 seeds x 2 hybrids, none closer to its attention donor


def test_value_swap_between_equally_good_heads_is_inconclusive():
    v = q3_of(s_acc=1.0)  # every hybrid scores 1.0 whichever head gave what
    assert v.parts[1][1] == V.INCONCLUSIVE
    assert "cannot tell attention from values" in v.finding
    assert v.previous[2] == V.HELD  # version 2 judged on (a) and (c) alone


def test_value_swap_of_version_1_is_kept_for_the_history():
    v = q3_of(s_acc=unequal, swap_follows="values")  # values travel: |change| 0.08 > 0.05
    assert v.previous[1] == V.MIXED and v.parts[1][1] == V.NOT_HELD


def test_q3_collapse_is_judged_against_the_ideal_counter():
    assert q3_of(collapse="beyond").parts[2][1] == V.HELD
    assert q3_of(collapse="ideal").parts[2][1] == V.NOT_HELD  # what an ideal counter does too
    assert q3_of(collapse="none").parts[2][1] == V.NOT_HELD
    t = fake_tables()
    del t["ideal_intervention"]
    v = Q3.verdict(t["heads"], t["value_swap"], t["intervention"], t["model"])
    assert v.parts[2][1] == V.NOT_MEASURED


def test_q3_collapse_reports_that_the_ranking_survives():
    v = q3_of()
    numbers = dict(v.numbers)
    assert numbers["w01 = 0.001, w02 = 0: model AUC"].startswith("1.000")
    assert numbers["w01 = 0.001, w02 = 0: ideal counter, model l-acc / head s-acc (fixed)"] == \
        "0.500 / 0.500"
    assert any("still ranks" in d for d in v.details)


def success(rates: list[tuple[int, int]], sizes: list[list[int]] | None = None):
    from count01.stats import wilson

    rows, minimal = [], []
    for h, (k, n) in zip((1, 2, 4, 8), rates):
        lo, hi = wilson(k, n)
        rows.append({"config_id": f"heads={h}", "heads": h, "n_runs": n, "n_success": k,
                     "rate": k / n, "ci_low": float(lo), "ci_high": float(hi)})
    for h, s in zip((1, 2, 4, 8), sizes or []):
        for size, count in pd.Series(s).value_counts().items():
            minimal.append({"config_id": f"heads={h}", "size": float(size), "n_runs": count})
    return pd.DataFrame(rows), pd.DataFrame(minimal) if minimal else None


def test_q4_rules_on_success_rates_and_minimal_solutions():
    all_ok, same = success([(100, 100)] * 4, [[1] * 100] * 4)
    assert Q4.verdict(all_ok, same).status == V.NOT_HELD
    assert Q4.verdict(*success([(20, 32), (32, 32), (32, 32), (32, 32)])).status == V.HELD
    varied = success([(100, 100)] * 4, [[1] * 98 + [2] * 2] + [[1] * 100] * 3)
    assert Q4.verdict(*varied).status == V.MIXED
    assert Q4.verdict(None, None).status == V.NOT_MEASURED


def test_q4_without_failures_in_few_seeds_is_inconclusive():
    v = Q4.verdict(*success([(8, 8)] * 4, [[1] * 8] * 4))  # a failure rate up to 0.32 not excluded
    assert v.status == V.INCONCLUSIVE and v.previous == {1: V.NOT_HELD, 2: V.INCONCLUSIVE}
    assert "below 0.32" in v.finding
    assert Q4.verdict(*success([(31, 32), (32, 32), (32, 32), (32, 32)])).status == V.INCONCLUSIVE


def test_q4_holds_when_configurations_miss_the_ideal_solution_and_names_the_regimes():
    table, minimal = success([(32, 32)] * 4, [[1] * 32] * 4)
    table["n_ideal"] = [32, 32, 32, 16]  # every run succeeds; one head count rarely generalises
    v = Q4.verdict(table, minimal)
    assert v.status == V.HELD and v.previous[2] == V.INCONCLUSIVE  # success alone: cannot tell
    regimes = " ".join(v.details)
    assert "1 of 4 configurations are bad in more than 5%" in regimes
    assert "3 mostly reach the ideal solution (below 50%): heads = 1; heads = 2; heads = 4" in regimes
    assert "1 are in between or too close to tell (the interval holds 50%): heads = 8" in regimes
    table["n_ideal"] = 32
    assert Q4.verdict(table, minimal).status == V.INCONCLUSIVE  # 32 seeds cannot bound 5%


def test_q4_names_the_configuration_whose_solutions_differ_in_size():
    v = Q4.verdict(*success([(32, 32)] * 4, [[1] * 32] * 3 + [[1] * 31 + [2]]))
    assert "at heads = 8, 31 runs need 1 head and 1 run needs 2 heads" in v.finding
    assert "heads = 1," not in v.finding


def test_by_evidence_decides_only_when_the_interval_clears_the_threshold():
    assert V.by_evidence(12, 12, 8) == V.HELD
    assert V.by_evidence(11, 12, 8) == V.INCONCLUSIVE  # 0.92, lower end 0.65
    assert V.by_evidence(0, 14, 8) == V.NOT_HELD
    assert V.by_evidence(0, 7, 8) == V.INCONCLUSIVE
    assert V.by_evidence(50, 100, 8) == V.MIXED
    assert V.by_evidence(0, 0, 8) == V.NOT_MEASURED


def test_combined_status_counts_inconclusive_parts_only_when_the_decided_ones_agree():
    assert V.combined_status([V.HELD, V.INCONCLUSIVE]) == V.INCONCLUSIVE
    assert V.combined_status([V.HELD, V.NOT_HELD, V.INCONCLUSIVE]) == V.MIXED
    assert V.combined_status([V.HELD, V.NOT_MEASURED]) == V.HELD


def test_sensitivity_finds_the_flip_where_a_threshold_crosses_the_data():
    t = fake_tables(w02=0.3)  # suppression fails at w02_max = 0.25, holds from 0.3 up
    text, table = V.sensitivity("3a", V.Evidence(t), QUESTIONS)
    assert text.startswith("flips: held at w02_max = 0.3")
    assert set(table["threshold"]) == {"success_l_acc", "w01_factor", "w02_max", "most", "few"}
    flip = table[(table["threshold"] == "w02_max") & (table["status"] == V.HELD)]
    assert flip["value"].min() >= 0.3
    assert V.sensitivity("1", V.Evidence(fake_tables(n_seeds=40)), QUESTIONS)[0] == "robust"


def test_every_rule_has_a_history_ending_at_its_version():
    for q in QUESTIONS:
        assert [h[0] for h in q.HISTORY] == list(range(1, q.VERSION + 1))
    assert Q3.HISTORY[1][2] is True and "38bdcc5" in Q3.HISTORY[1][1]


def test_spread_reports_median_iqr_and_range():
    got = V.spread([0.0, 1.0, 2.0, 3.0, 4.0], 1)
    assert got == "median 2.0 [IQR 1.0-3.0], range 0.0-4.0, n = 5"


def test_spread_of_infinite_ratios_is_infinite_not_nan_and_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = V.spread([1.0, 2.0, np.inf, np.inf, np.inf], 1)
    assert got == "median inf [IQR 2.0-inf], range 1.0-inf, n = 5"


# --- the report -----------------------------------------------------------------------------------

@pytest.fixture
def run(tmp_path, monkeypatch) -> Path:
    """A hand-made run; its reports vary thresholds on 5 points, not 17 (the rendering is what
    these tests check; the sensitivity tests above use the full grid)."""
    monkeypatch.setattr(V, "FACTORS", np.geomspace(0.5, 2.0, 5))
    return fake_run(tmp_path / "run", uniform_l_acc=1.0)


def test_report_html_is_self_contained(run):
    files = build_report(run)
    page = files.html.read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == len(FIGURES) + 1  # and the threshold sensitivity
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_every_section_with_its_verdict(run):
    page = build_report(run).html.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    got = json.loads((run / "verdicts.json").read_text())
    assert [v["question"] for v in got] == [1, 2, 3, 4, 5, 6]
    for v in got:
        assert v["status"] in V.STATUSES
        assert v["rule_version"] == QUESTIONS[v["question"] - 1].VERSION
        assert set(v["controls"]) >= {"positive", "negative"} and "sensitivity" in v
        assert f'id="q{v["question"]}"><h2>' in page
    assert got[3]["status"] == V.NOT_MEASURED  # a lone run has no training path


def test_every_rule_gives_its_positive_control_held_and_its_negative_did_not_hold(run):
    build_report(run)
    for v in json.loads((run / "verdicts.json").read_text()):
        assert v["controls"]["positive"] == V.HELD, v["question"]
        assert v["controls"]["negative"] == V.NOT_HELD, v["question"]
        assert v["evidence"] is True
        for part in v.get("parts", {}).values():
            assert (part["controls"]["positive"], part["controls"]["negative"]) == (
                V.HELD, V.NOT_HELD)
    q2 = json.loads((run / "verdicts.json").read_text())[1]
    sentence = q2["sentence"]  # question 2 in the sentence framing: its own rule and controls
    assert sentence["controls"] == {"positive": V.HELD, "negative": V.NOT_HELD}
    assert sentence["status"] == V.NOT_MEASURED and sentence["framing"] == "sentence"
    assert sentence["rule_version"] == q2["rule_version"] == Q2.VERSION == 4
    md = (run / "report.md").read_text()
    assert "Finding 2, the syntax in the sentence framing" in md
    assert "controls: positive held, negative did not hold" not in md  # the table says it
    assert "positive held, negative did not hold" in md


def test_a_rule_whose_controls_agree_is_marked_not_evidence(run, monkeypatch):
    from count01.measure import controls

    real = controls.rule_controls()
    same = dict(real) | {"1": (real["1"][0], real["1"][0])}  # the ideal counter twice
    monkeypatch.setattr(controls, "rule_controls", lambda: same)
    build_report(run)
    q1 = json.loads((run / "verdicts.json").read_text())[0]
    assert q1["controls"] == {"positive": V.HELD, "negative": V.HELD}
    assert q1["evidence"] is False
    assert "positive held, negative held: not evidence" in (run / "report.md").read_text()


def test_report_lists_each_rule_version_with_its_verdict_under_the_old_rule(run):
    md = build_report(run).md.read_text()
    q3 = md.split("## Q3.")[1].split("## Q4.")[0]
    assert "**Rule history.**" in q3 and "38bdcc5" in q3
    assert "rule version 3" in q3


def test_report_says_when_a_claim_did_not_hold(run):
    files = build_report(run)
    assert files.verdicts[2] == V.NOT_HELD  # uniform weighting answered as well as learned
    md = files.md.read_text()
    q2 = md.split("## Q2.")[1].split("## Q3.")[0]
    assert "did not hold" in q2 and Q2.CLASSIFY_RULE in q2


def test_report_md_links_figures_that_exist(run):
    md = build_report(run).md.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(FIGURES) + 1  # and the threshold sensitivity
    assert all((run / link).exists() for link in links)


def test_a_missing_figure_is_named_in_the_report(run):
    (run / "analysis" / "figures" / "value_swap.png").unlink()
    md = build_report(run).md.read_text()
    assert "(Figure `value_swap.png` was not found" in md


def test_report_is_rebuilt_from_saved_tables_without_weights(run):
    assert not (run / "model.safetensors").exists()
    first = build_report(run).verdicts
    assert build_report(run).verdicts == first
    assert read_evidence(run).kind == "run"


def test_report_of_a_run_without_analysis_marks_questions_not_measured(tmp_path):
    run = tmp_path / "bare"
    cfg = Config(n_seeds=2)
    write_json(run / "config.json", cfg.to_dict())
    write_json(run / "metrics.json", {"eval": [{"set": "hard", "seed": s, "l_acc": 1.0,
                                                "valid": 1.0, "auc": 1.0} for s in (0, 1)]})
    files = build_report(run)
    assert set(files.verdicts.values()) == {V.NOT_MEASURED}


def test_report_of_a_sentence_run_judges_question_2_in_the_sentence_framing(tmp_path):
    from count01.measure.analysis import analyze
    from count01.train import train

    cfg = Config(n_seeds=2, steps=30, framing="sentence", max_len=6, long_max_len=8,
                 exhaustive_len=4, eval_size=128)
    train(cfg, tmp_path / "s", progress=False)
    analyze(tmp_path / "s", grid_size=2, progress=False)
    ev = read_evidence(tmp_path / "s")
    assert V.SENTENCE + "aggregation" in ev.tables and ev.sentence_dir == tmp_path / "s"
    q2 = judge(ev, rule_controls())[2]
    assert q2.sentence.framing == "sentence" and "No run was trained" not in q2.sentence.finding


def test_report_of_a_directory_without_results_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ReportError):
        build_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a study, sweep or run directory" in err


def test_cli_report_prints_every_verdict(run, capsys):
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out
    assert all(f"Q{q}: " in out for q in (1, 2, 3, 4))


def test_q4_numbers_name_minimal_head_set_sizes_from_a_saved_table():
    table, minimal = success([(8, 8), (0, 8)], [[1] * 7 + [2], []])
    minimal = pd.concat([minimal, pd.DataFrame([{"config_id": "heads=2", "size": np.nan,
                                                 "n_runs": 8}])]).astype({"size": "Float64"})
    text = dict(Q4.verdict(table, minimal).numbers)
    assert "1 head: 7, 2 heads: 1" in text["heads = 1"] and "no set: 8" in text["heads = 2"]


def labour(rows: list[tuple[int, int, int, int]]) -> pd.DataFrame:
    """Noise conditions with (pseudo-ensemble, divided, mixed, unsolved) seeds each."""
    return pd.DataFrame([{"config_id": f"noise={i}", "configuration": f"noise={i}",
                          "n_runs": sum(r), "n_pseudo_ensemble": r[0], "n_divided": r[1],
                          "n_mixed": r[2], "n_unsolved": r[3]} for i, r in enumerate(rows)])


def test_q5_holds_when_the_division_of_labour_differs_between_noise_conditions():
    v = Q5.verdict(labour([(30, 2, 0, 0), (8, 24, 0, 0)]))
    assert v.status == V.HELD
    assert "pseudo-ensemble share runs from 8/32 at noise=1 to 30/32 at noise=0" in v.finding


def test_q5_does_not_hold_when_one_class_dominates_every_condition():
    assert Q5.verdict(labour([(32, 0, 0, 0), (31, 0, 1, 0), (30, 1, 0, 1)])).status == V.NOT_HELD


@pytest.mark.parametrize("rows", [[(6, 0, 0, 0), (7, 0, 0, 0)],  # too few seeds
                                  [(20, 12, 0, 0), (18, 14, 0, 0)],  # overlapping, not dominant
                                  [(32, 0, 0, 0)]])  # one condition
def test_q5_is_inconclusive_on_thin_or_undecided_evidence(rows):
    assert Q5.verdict(labour(rows)).status == V.INCONCLUSIVE


def test_separating_heads_by_config_reads_the_head_count_from_results_whatever_the_grid():
    """A sweep whose grid does not vary heads has no heads column in its heads table."""
    runs = pd.DataFrame({"config_id": ["a", "a", "b"], "seed": [0, 1, 0], "heads": [2, 2, 2],
                         "success": [True, True, False]})
    heads = pd.DataFrame({"config_id": ["a"] * 4 + ["b"] * 2, "seed": [0, 0, 1, 1, 0, 0],
                          "head": [0, 1, 0, 1, 0, 1], "set": "hard",
                          "s_acc": [1.0, 0.95, 0.5, 1.0, 0.5, 0.5], "noise": 0.25})
    (label, value), = Q1.separating_heads_by_config(heads, runs)
    assert "heads = 2" in label and value.startswith("3/4")
