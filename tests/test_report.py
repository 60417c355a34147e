"""The verdict rules on small hand-made tables, and report.html / report.md built from a run
directory that holds only saved tables and figures (no weights: the report never retrains)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from count01 import verdicts as V
from count01.cli import main
from count01.config import Config
from count01.report import SECTIONS, ReportError, build_report, collect
from count01.runs import write_json

SETS = ("iid", "hard", "exhaustive", "long", "noisy")
GRID01 = (1e-3, 1e-1, 1.0, 10.0, 1e3)
GRID02 = (0.0, 1e-3, 1.0, 1e3)
FIGURES = ("heads_table", "attention_mass", "intervention_heatmaps", "intervention_w02_0",
           "aggregation", "value_swap", "attention_examples")


def fake_tables(n_seeds: int = 4, n_heads: int = 2, s_acc=1.0, w01: float = 1.0,
                w02: float = 0.05, uniform_l_acc: float = 1.0, swap_follows: str = "attention",
                collapse: bool = True, failed: tuple[int, ...] = ()) -> dict[str, pd.DataFrame]:
    """The CSV tables of `analysis` for a model whose properties are set by hand.

    s_acc: a number or a function (seed, head) -> number. failed: seeds whose hard l-acc is 0.5.
    swap_follows: a hybrid scores as the head that gave its "attention" or its "values".
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
                        off = collapse and a != 1.0
                        inter.append({"set": "hard", "intervened": mode, "w01": a, "w02": b,
                                      "seed": i, "head": h,
                                      "s_acc_fixed": 0.5 if off else 1.0,
                                      "s_acc_refit": 0.5 if off else 1.0, "head_auc": 1.0,
                                      "l_acc": 0.5 + 0.1 * ((i + h) % 3) if off else 1.0,
                                      "valid": 1.0, "auc": 1.0})
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
            "minimal_heads": pd.DataFrame(minimal)}


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
    return {1: V.q1(t["heads"], t["model"]).status,
            2: V.q2(t["aggregation"], t["model"]).status,
            3: V.q3(t["heads"], t["value_swap"], t["intervention"], t["model"]).status}


# --- the rules ------------------------------------------------------------------------------------

def test_q1_holds_when_every_head_separates_and_fails_when_none_does():
    assert V.q1(*(fake_tables(s_acc=1.0)[k] for k in ("heads", "model"))).status == V.HELD
    assert V.q1(*(fake_tables(s_acc=0.6)[k] for k in ("heads", "model"))).status == V.NOT_HELD
    half = fake_tables(s_acc=lambda seed, head: 1.0 if head == 0 else 0.6)
    assert V.q1(half["heads"], half["model"]).status == V.MIXED


def test_q1_judges_only_seeds_that_succeeded_and_names_the_others():
    t = fake_tables(s_acc=lambda seed, head: 0.5 if seed == 3 else 1.0, failed=(3,))
    v = V.q1(t["heads"], t["model"])
    assert v.status == V.HELD
    assert "left out (failed): [3]" in dict(v.numbers)["seeds judged"]


def test_q2_holds_only_when_uniform_weighting_breaks_the_answers():
    assert verdicts_of(fake_tables(uniform_l_acc=0.7))[2] == V.HELD
    assert verdicts_of(fake_tables(uniform_l_acc=1.0))[2] == V.NOT_HELD


def q3_of(**kw) -> V.Verdict:
    t = fake_tables(**kw)
    return V.q3(t["heads"], t["value_swap"], t["intervention"], t["model"])


def unequal(seed: int, head: int) -> float:
    """Head 0 perfect, head 1 weaker: a value swap between them can tell which part travels."""
    return (1.0, 0.92)[head]


def test_q3_combines_attention_values_and_collapse():
    assert q3_of(s_acc=unequal).status == V.HELD
    assert q3_of(s_acc=unequal, w02=0.9, swap_follows="values",
                 collapse=False).status == V.NOT_HELD
    v = q3_of(s_acc=unequal, w02=0.9)
    assert v.status == V.MIXED
    assert [s for _, s in v.parts] == [V.NOT_HELD, V.HELD, V.HELD]


def test_value_swap_holds_when_hybrids_follow_their_attention_not_their_values():
    assert q3_of(s_acc=unequal).parts[1][1] == V.HELD
    v = q3_of(s_acc=unequal, swap_follows="values")
    assert v.parts[1][1] == V.NOT_HELD
    assert "0/8 (0%)" in v.finding  # 4 seeds x 2 hybrids, none closer to its attention donor


def test_value_swap_between_equally_good_heads_is_not_evidence_either_way():
    v = q3_of(s_acc=1.0)  # every hybrid scores 1.0 whichever head gave what
    assert v.parts[1][1] == V.NOT_MEASURED
    assert "cannot tell attention from values" in v.finding
    assert v.status == V.HELD  # judged on (a) and (c) alone


def test_q3_collapse_reports_that_the_ranking_survives():
    v = q3_of()
    numbers = dict(v.numbers)
    assert numbers["w01 = 0.001, w02 = 0: model AUC"].startswith("1.000")
    assert any("still ranks" in d for d in v.details)


def test_q3_collapse_needs_growing_spread():
    t = fake_tables()
    t["intervention"]["l_acc"] = np.where(t["intervention"]["w01"] == 1.0, 1.0, 0.5)  # no spread
    v = V.q3(t["heads"], t["value_swap"], t["intervention"], t["model"])
    assert dict(v.parts)["(c) collapse with growing spread at extreme w01"] == V.NOT_HELD


def success(rates: list[tuple[int, int]], sizes: list[list[int]] | None = None):
    from count01.paths import wilson

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
    all_ok, same = success([(32, 32)] * 4, [[1] * 32] * 4)
    assert V.q4(all_ok, same).status == V.NOT_HELD
    assert V.q4(*success([(28, 32), (32, 32), (32, 32), (32, 32)])).status == V.HELD
    assert V.q4(*success([(31, 32), (32, 32), (32, 32), (32, 32)])).status == V.MIXED
    varied = success([(32, 32)] * 4, [[1] * 30 + [2] * 2] + [[1] * 32] * 3)
    assert V.q4(*varied).status == V.MIXED
    assert V.q4(None, None).status == V.NOT_MEASURED


def test_q4_names_the_configuration_whose_solutions_differ_in_size():
    v = V.q4(*success([(32, 32)] * 4, [[1] * 32] * 3 + [[1] * 31 + [2]]))
    assert "at heads = 8, 31 runs need 1 head and 1 run needs 2 heads" in v.finding
    assert "heads = 1," not in v.finding


def test_spread_reports_median_iqr_and_range():
    got = V.spread([0.0, 1.0, 2.0, 3.0, 4.0], 1)
    assert got == "median 2.0 [IQR 1.0-3.0], range 0.0-4.0, n = 5"


# --- the report -----------------------------------------------------------------------------------

@pytest.fixture
def run(tmp_path) -> Path:
    return fake_run(tmp_path / "run", uniform_l_acc=1.0)


def test_report_html_is_self_contained(run):
    files = build_report(run)
    page = files.html.read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == len(FIGURES)
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_every_section_with_its_verdict(run):
    page = build_report(run).html.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    got = json.loads((run / "verdicts.json").read_text())
    assert list(got) == ["Q1", "Q2", "Q3", "Q4"]
    for q, v in got.items():
        assert v["status"] in (V.HELD, V.NOT_HELD, V.MIXED, V.NOT_MEASURED)
        assert f'id="q{q[1]}"><h2>' in page


def test_report_says_when_a_claim_did_not_hold(run):
    files = build_report(run)
    assert files.verdicts[2] == V.NOT_HELD  # uniform weighting answered as well as learned
    md = files.md.read_text()
    q2 = md.split("## Q2.")[1].split("## Q3.")[0]
    assert "did not hold" in q2 and V.Q2_RULE in q2


def test_report_md_links_figures_that_exist(run):
    md = build_report(run).md.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(FIGURES)
    assert all((run / link).exists() for link in links)


def test_a_missing_figure_is_named_in_the_report(run):
    (run / "analysis" / "figures" / "value_swap.png").unlink()
    md = build_report(run).md.read_text()
    assert "(Figure `value_swap.png` was not found" in md


def test_report_is_rebuilt_from_saved_tables_without_weights(run):
    assert not (run / "model.safetensors").exists()
    first = build_report(run).verdicts
    assert build_report(run).verdicts == first
    assert collect(run).kind == "run"


def test_report_of_a_run_without_analysis_marks_questions_not_measured(tmp_path):
    run = tmp_path / "bare"
    cfg = Config(n_seeds=2)
    write_json(run / "config.json", cfg.to_dict())
    write_json(run / "metrics.json", {"eval": [{"set": "hard", "seed": s, "l_acc": 1.0,
                                                "valid": 1.0, "auc": 1.0} for s in (0, 1)]})
    files = build_report(run)
    assert files.verdicts[1] == files.verdicts[2] == files.verdicts[3] == V.NOT_MEASURED
    assert files.verdicts[4] != V.NOT_MEASURED  # the run's own seeds still give a success rate


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
