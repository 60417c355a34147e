import ast
import inspect
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from count01.cli import main
from count01.config import Config
from count01.files import write_json
from count01.language import EVAL_SETS
from count01.measure import analysis
from count01.measure.analysis import analyze
from count01.model import Model
from count01.present import plots
from count01.runs import save_tensors

FIGURES = ("heads_table", "attention_mass", "intervention_heatmaps", "intervention_w02_0",
           "aggregation", "value_swap", "attention_examples")
GRID = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory as training writes it, with freshly initialised weights."""
    out = tmp_path_factory.mktemp("analysis") / "run"
    cfg = Config(n_seeds=2, heads=2, d_model=8, eval_size=256, exhaustive_len=6, max_len=8,
                 long_max_len=12)
    model = Model.init(cfg)
    write_json(out / "config.json", cfg.to_dict())
    save_tensors(out / "model.safetensors", model.weights, cfg, model.seeds, step=0)
    return out


@pytest.fixture(scope="module")
def analysed(run):
    return analyze(run, grid_size=GRID, progress=False)


def documented_columns() -> dict[str, str]:
    """The module docstring's entry of each file: its text up to the next file name."""
    doc = analysis.__doc__
    names = re.findall(r"^(\w+\.(?:csv|json))", doc, flags=re.M)
    starts = [doc.index("\n" + n) for n in names] + [len(doc)]
    return {n: doc[a:b] for n, a, b in zip(names, starts, starts[1:])}


def test_analyze_writes_every_table_with_its_columns_documented(run, analysed):
    d = run / "analysis"
    docs = documented_columns()
    for name in analysis.FILES:
        assert (d / name).is_file(), name
        assert name in docs, f"{name} is not documented in analysis.py"
        if name.endswith(".csv"):
            cols = pd.read_csv(d / name).columns
            first = docs[name].split("\n")[1:3]  # the column list, right under the file name
            listed = re.findall(r"\w+", docs[name].split("\n", 1)[0] + " ".join(first))
            missing = [c for c in cols if c not in listed]
            assert not missing, f"{name}: columns {missing} not listed in the docstring"


def test_tables_have_a_row_per_unit_of_analysis(run, analysed):
    d = run / "analysis"
    S, H, G = 2, 2, GRID * (GRID + 1)
    assert len(pd.read_csv(d / "model.csv")) == len(EVAL_SETS) * S
    heads = pd.read_csv(d / "heads.csv")
    assert len(heads) == len(EVAL_SETS) * S * H
    inter = pd.read_csv(d / "intervention.csv")
    assert len(inter) == 2 * G * S * H and set(inter["intervened"]) == {"each", "all"}
    assert (inter["set"] == "hard").all() and (inter["w02"] == 0).any()
    agg = pd.read_csv(d / "aggregation.csv")
    assert len(agg) == (3 + 2 * H) * S * len(EVAL_SETS)
    assert len(pd.read_csv(d / "value_swap.csv")) == len(EVAL_SETS) * S * H * H
    assert len(pd.read_csv(d / "alpha.csv")) == S * H
    assert len(pd.read_csv(d / "minimal_heads.csv", keep_default_na=False)) == S
    for col in ("l_acc", "valid", "auc"):
        assert agg[col].between(0, 1).all()


def test_metrics_json_is_strict_json_with_a_summary_per_question(run, analysed):
    text = (run / "analysis" / "metrics.json").read_text()

    def no_nan(c):
        raise AssertionError(f"{c} in metrics.json")

    data = json.loads(text, parse_constant=no_nan)
    assert set(data["summary"]) == {"q1_pseudo_ensemble", "q2_aggregation", "q3_attention",
                                    "minimal_heads"}
    assert data["seeds"] == [0, 1] and data["sweep_set"] == "hard"
    assert len(data["grid"]["w01"]) == GRID and data["grid"]["w02"][0] == 0.0
    assert set(data["seconds"]) >= {"heads", "intervention", "aggregation"}
    assert analysed["summary"]["q2_aggregation"]["learned"]["l_acc"]["mean"] == pytest.approx(
        pd.read_csv(run / "analysis" / "model.csv").query("set == 'hard'")["l_acc"].mean())


def test_every_figure_is_written_as_png_and_svg(run, analysed):
    figs = run / "analysis" / "figures"
    for name in FIGURES:
        assert (figs / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = (figs / f"{name}.svg").read_text()
        assert svg.count("<svg") == 1 and len(svg) > 5000
    assert sorted(p.name for p in figs.iterdir()) == sorted(f"{n}.{e}" for n in FIGURES
                                                            for e in ("png", "svg"))


def readable_alone(fig) -> list[str]:
    """What a figure lacks to be read without its caption: a title, named axes (a label or tick
    labels that name the rows / columns) and a key to its colours or lines."""
    texts = lambda labels: any(t.get_text() for t in labels)  # noqa: E731
    axes = [ax for ax in fig.axes if ax.lines or ax.collections or ax.patches or ax.images]
    missing = []
    if not (fig._suptitle and fig._suptitle.get_text()) and not any(a.get_title() for a in axes):
        missing.append("title")
    if not any(a.get_xlabel() or texts(a.get_xticklabels()) for a in axes):
        missing.append("x axis")
    if not any(a.get_ylabel() or texts(a.get_yticklabels()) for a in axes):
        missing.append("y axis")
    colorbar = any(a.get_label() == "<colorbar>" for a in fig.axes)
    if not (fig.legends or any(a.get_legend() for a in fig.axes) or colorbar):
        missing.append("legend or colour bar")
    return missing


def test_every_figure_is_readable_alone(run, analysed, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out, name: drawn.setdefault(name, fig) and [])
    plots.plot_all(run / "analysis")
    assert set(drawn) == set(FIGURES)
    for name, fig in drawn.items():
        assert not readable_alone(fig), f"{name} lacks {readable_alone(fig)}"
        for ax in fig.axes:  # units or a scale named on every labelled axis
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                assert not label or "(" in label, f"{name}: axis '{label}' names no unit"


def test_attention_examples_show_the_raw_eos_row():
    from test_metrics import counting_model

    model = counting_model(heads=2)  # attends equally to each 0, 1 and EOS; never to 2 or BOS
    rows = pd.DataFrame(analysis.attention_examples(model))
    assert set(rows["example"]) == set(range(len(analysis.EXAMPLES)))
    sums = rows.groupby(["seed", "example", "head"])["weight"].sum()
    assert np.allclose(sums, 1.0)
    first = rows[(rows["example"] == 0) & (rows["head"] == 0)]  # BOS 0 1 1 2 0 2 1 EOS
    assert "".join(t for t in first["token"] if t in "012") == analysis.EXAMPLES[0]
    by_kind = first.groupby("token")["weight"]
    assert by_kind.max()["2"] < 1e-12 and by_kind.max()["BOS"] < 1e-12
    assert np.allclose(first.loc[first["token"].isin(["0", "1", "EOS"]), "weight"], 1 / 6)


def test_figures_are_drawn_from_tables_never_from_models():
    tree = ast.parse(inspect.getsource(plots))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "torch" not in imported and not {m for m in imported if "model" in m}
    assert set(inspect.signature(plots.plot_all).parameters) == {"analysis_dir", "set_name"}


def test_cli_analyze_replaces_the_analysis_and_intervene_prints_the_grid(run, analysed, capsys,
                                                                          tmp_path):
    run = Path(shutil.copytree(run, tmp_path / "copy"))  # leave the shared run as it is
    (run / "analysis" / "stale.csv").write_text("x\n")
    assert main(["analyze", str(run), "--grid-size", "2", "--no-figures", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "aggregation:" in out and "minimal heads" in out
    assert not (run / "analysis" / "stale.csv").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".analysis")]
    assert len(pd.read_csv(run / "analysis" / "intervention.csv")) == 2 * 2 * 3 * 2 * 2
    assert not (run / "analysis" / "figures").exists()
    csv = tmp_path / "rows.csv"
    assert main(["intervene", str(run), "--w01", "0.1,1,10", "--w02", "0,1", "--heads", "both",
                 "--out", str(csv)]) == 0
    table = capsys.readouterr().out
    assert len(table.strip().splitlines()) == 1 + 2 * 3 * 2
    header = table.splitlines()[0].split()
    for metric in ("s_acc_fixed", "s_acc_refit", "head_auc", "l_acc", "valid", "auc"):
        assert metric in header and f"{metric}_std" in header  # every metric with its spread
    assert len(pd.read_csv(csv)) == 2 * 3 * 2 * 2 * 2
    # by default the grid of SPEC 5: 25 x 25 log-spaced, w02 also at 0
    assert main(["intervene", str(run)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(rows) == 25 * 26
    assert {r.split()[2] for r in rows} >= {"0.0000", "0.0010", "1000.0000"}
    assert main(["intervene", str(run), "--grid-size", "3", "--w02", "0"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 3


@pytest.mark.parametrize("args, match", [
    (["analyze", "/nonexistent/run"], "no such run directory"),
    (["analyze", "RUN", "--grid-size", "1"], "grid_size must be at least 2"),
    (["analyze", "RUN", "--set", "bogus"], "unknown evaluation set"),
    (["intervene", "RUN", "--w01", "x"], "--w01 expects comma-separated numbers"),
    (["intervene", "RUN", "--w02", "-1"], "w02 grid must be finite weights >= 0"),
    (["intervene", "RUN", "--grid-size", "0"], "grid_size must be at least 2"),
    (["intervene", "RUN", "--grid-size", "1"], "grid_size must be at least 2"),
])
def test_bad_analysis_arguments_fail_cleanly(run, analysed, args, match, capsys):
    args = [str(run) if a == "RUN" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "Traceback" not in err


@pytest.mark.parametrize("framing", ["classify", "sentence"])
def test_analysis_on_the_position_path_equals_analysis_through_the_reference_forward(
        tmp_path, monkeypatch, framing):
    """Every table of `count01 analyze` on a learned-position run is the same (to 1e-9) whether
    the model runs the position path (PosCache) or the reference forward over slots; in the
    `sentence` framing the ending's query too."""
    cfg = Config(pos_embed="learned", n_seeds=2, heads=2, d_model=8, eval_size=256,
                 exhaustive_len=5, max_len=8, long_max_len=12, framing=framing)
    model = Model.init(cfg)
    gen = np.random.default_rng(0)
    weights = {k: w + 0.2 * torch.from_numpy(gen.standard_normal(w.shape)).float()
               for k, w in model.weights.items()}
    out = tmp_path / "run"
    write_json(out / "config.json", cfg.to_dict())
    save_tensors(out / "model.safetensors", weights, cfg, model.seeds, step=0)
    tables = ("model", "heads", "intervention", "aggregation", "alpha", "value_swap",
              "minimal_heads", "attention_examples")
    analyze(out, grid_size=GRID, progress=False, figures=False)
    fast = {t: pd.read_csv(out / "analysis" / f"{t}.csv") for t in tables}
    monkeypatch.setattr(Model, "_pos_run", lambda self, batch, t=None: self.reference_run(batch))
    analyze(out, grid_size=GRID, progress=False, figures=False)
    for t in tables:
        pd.testing.assert_frame_equal(fast[t], pd.read_csv(out / "analysis" / f"{t}.csv"),
                                      check_exact=False, rtol=1e-9, atol=1e-9, obj=t)


def test_analyze_with_three_noise_symbols_reports_w02_per_symbol_and_their_mean(tmp_path):
    from count01.train import train

    cfg = Config(n_seeds=2, heads=2, d_model=8, eval_size=256, exhaustive_len=5, max_len=8,
                 long_max_len=12, steps=60, noise_symbols=3, noise=0.5)
    train(cfg, tmp_path / "run", progress=False)
    analyze(tmp_path / "run", grid_size=GRID, progress=False)
    heads = pd.read_csv(tmp_path / "run" / "analysis" / "heads.csv")
    per = heads[["w02_2", "w02_5", "w02_6"]]
    np.testing.assert_allclose(heads["w02"], per.mean(axis=1), rtol=1e-12)
    assert (per.std(axis=1) > 0).all()  # the symbols have embeddings of their own
    mass = heads[[f"mass_{k}" for k in ("0", "1", "2", "eos", "bos", "5", "6")]].sum(axis=1)
    np.testing.assert_allclose(mass, 1.0, atol=1e-9)
    examples = pd.read_csv(tmp_path / "run" / "analysis" / "attention_examples.csv")
    assert set(examples["token"]) <= {"0", "1", "2", "EOS", "BOS"}
    inter = pd.read_csv(tmp_path / "run" / "analysis" / "intervention.csv")
    assert inter["l_acc"].notna().all()


@pytest.mark.parametrize("pos_embed, framing", [("learned", "classify"),
                                                ("learned", "sentence"), ("none", "classify")])
def test_a_sets_analyses_ride_one_pass_over_it_and_give_the_numbers_of_each_alone(
        monkeypatch, pos_embed, framing):
    """Registered before the set's first pass (`Activations.ride`, as `analyze` does), the
    head table's hits, the aggregation and the value swap are computed on the one pass the
    model's logits take over a set of several slices whose head outputs are not kept (the
    position path's `exhaustive`), and on one over its ending; every number is the one each
    analysis computes alone, on passes of its own."""
    from count01.language import eval_set
    from count01.measure import activations
    from count01.measure.aggregation import aggregate, ride_aggregate
    from count01.measure.interventions import ride_value_swap, value_swap
    from count01.measure.metrics import head_table, ride_head_hits

    cfg = Config(n_seeds=2, heads=2, eval_size=300, max_len=8, long_max_len=12,
                 exhaustive_len=5, pos_embed=pos_embed, framing=framing)
    model = Model.init(cfg).to(torch.float64)
    fit, hard = eval_set(cfg, "fit"), eval_set(cfg, "hard")
    monkeypatch.setattr(activations, "CACHE_ELEMENTS", 1 << 15)  # several slices
    monkeypatch.setattr(activations, "KEEP_ELEMENTS", 0)  # no head outputs kept whole

    def each(shared=None):
        return (head_table(model, {"hard": hard}, fit, shared),
                aggregate(model, {"hard": hard}, fit, shared=shared),
                value_swap(model, hard, fit, shared))

    alone = each()
    shared = activations.Shared(model)
    shared.of(hard).ride_pass()
    ride_head_hits(shared, hard, fit)
    ride_value_swap(shared, hard, fit)
    ride_aggregate(model, {"hard": hard}, fit, None, shared)
    runs = []
    real = activations.run_chunks
    monkeypatch.setattr(activations, "run_chunks",
                        lambda m, b: (runs.append(b), real(m, b))[1])
    a = shared.of(hard)
    sets = [a, a.end] if framing == "sentence" else [a]
    assert all(x.logits.shape[1] == len(hard) for x in sets)  # the model table's: first
    # (on the count path the logits take no pass: the head table's hits run it)
    assert len(list(activations.slices(shared.model, hard))) > 1
    assert each(shared) == alone
    passes = [sum(b is x.batch for b in runs) for x in sets]
    assert passes == [1] * len(sets), passes


def test_analyses_sharing_activations_run_each_set_once_and_give_the_numbers_of_each_alone(
        monkeypatch):
    """One `Shared` serves every analysis: each (model, set) is run by the fast paths once for
    the quantities they share (head table, sweep, aggregation, minimal heads), and every number
    is the one the analysis computes alone."""
    from count01.language import eval_set
    from count01.measure import activations
    from count01.measure.aggregation import aggregate, minimal_heads
    from count01.measure.interventions import sweep_columns
    from count01.measure.metrics import head_table

    cfg = Config(n_seeds=2, heads=2, eval_size=200, max_len=8, long_max_len=12,
                 exhaustive_len=5, pos_embed="learned")
    model = Model.init(cfg).to(torch.float64)
    fit, hard = eval_set(cfg, "fit"), eval_set(cfg, "hard")

    def each(shared=None):
        kw = {} if shared is None else {"shared": shared}
        return (head_table(model, {"hard": hard}, fit, **kw),
                {k: v.tolist() for k, v in sweep_columns(model, hard, fit, [0.1, 10], [0, 1],
                                                         **kw).items()},
                aggregate(model, {"hard": hard}, fit, **kw),
                minimal_heads(model, fit, hard, 0.99, **kw))

    alone = each()
    runs = []
    real = activations.run_chunks
    monkeypatch.setattr(activations, "run_chunks",
                        lambda m, b: (runs.append(b), real(m, b))[1])
    shared = activations.Shared(model)
    assert each(shared) == alone
    # fit and hard: one pass each of the shared quantities, the head outputs and the kind
    # parts (each alone, the four run the two sets 11 times)
    assert len(runs) <= 6, len(runs)
    assert shared.of(fit) is shared.of(fit) and shared.of(fit).batch is fit
