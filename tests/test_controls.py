"""The hand-built controls: each model has the property it is built for, and every verdict rule
tells its positive control from its negative one."""

import pandas as pd
import pytest

from count01.language import eval_set
from count01.measure import controls as C
from count01.measure.metrics import head_table
from count01.questions import RULE_CONTROLS, RULES, THRESHOLDS
from count01.questions import base as V
from count01.questions import q2 as Q2


@pytest.mark.parametrize("name", list(C.LIBRARY))
def test_every_control_answers_every_hard_string_right(name):
    tables = C.control_tables(name)
    model = tables["model" if "model" in tables else V.SENTENCE + "model"]
    assert (model["l_acc"] == 1.0).all() and len(model) == V.CONTROL_SEEDS


def test_ideal_counter_heads_each_separate_with_balanced_attention_and_no_noise():
    h = C.control_tables("ideal")["heads"]
    assert (h["s_acc"] == 1.0).all() and (h["w01"] == 1.0).all() and (h["w02"] == 0.0).all()


def test_split_heads_each_see_one_digit_kind_and_count_only_together():
    h = C.control_tables("split")["heads"].groupby("head")
    assert (h["s_acc"].max() < 0.7).all()  # neither head alone
    assert (h["mass_1"].max()[0], h["mass_0"].max()[1]) == (0.0, 0.0)


def test_the_noise_valued_counter_attends_to_2s_as_to_0s():
    h = C.control_tables("noise_valued")["heads"]
    assert h["w02"].to_list() == pytest.approx([1.0] * len(h)) and (h["s_acc"] == 1.0).all()


def test_the_bos_head_attends_only_to_bos():
    bos = C.build([C.BOS_ONLY], seeds=1, **C.SET_CONFIG)
    (row,) = head_table(bos, {"hard": eval_set(bos.cfg, "hard")})
    assert row["mass_bos"] > 1 - 1e-6


@pytest.mark.parametrize("rule", list(RULE_CONTROLS) + ["4", "5", "6"])
def test_every_rule_gives_its_positive_control_held_and_its_negative_did_not_hold(rule):
    positive, negative = C.rule_controls()[rule]
    status = RULES[rule][1]
    assert status(positive, THRESHOLDS) == V.HELD
    assert status(negative, THRESHOLDS) == V.NOT_HELD


def test_the_ideal_counter_collapses_as_much_as_itself_and_the_anchored_one_beyond():
    ideal = C.control_tables("bos_anchored")["ideal_intervention"]
    anchored = C.control_tables("bos_anchored")["intervention"]
    top = anchored["w01"].max()
    assert anchored.loc[anchored["w01"] == top, "valid"].max() < 0.2  # answers EOS
    assert ideal.loc[ideal["w01"] == top, "valid"].min() == 1.0


def test_the_sentence_controls_end_the_sentence_or_never_do_on_every_set():
    """sentence_counter answers and then ends every sentence; never_ends answers but never
    ends; ending_bias ends as learned, and stops ending once its heads are rescaled to equal
    norms (uniform), while still answering and ranking right."""
    from count01.measure.aggregation import aggregate
    from count01.measure.metrics import set_metrics

    for name, ends in (("sentence_counter", 1.0), ("never_ends", 0.0), ("ending_bias", 1.0)):
        model = C.LIBRARY[name](**C.SET_CONFIG)
        for s in ("hard", "iid", "long", "exhaustive"):
            got = set_metrics(model, eval_set(model.cfg, s))
            assert (got["l_acc"] == 1.0).all() and (got["end"] == ends).all(), (name, s)
            assert (got["sentence"] == ends).all()
        if name == "never_ends":  # no weighting makes it end: no support for question 2 either
            fit, hard = eval_set(model.cfg, "fit"), eval_set(model.cfg, "hard")
            agg = pd.DataFrame(aggregate(model, {"hard": hard}, fit))
            assert (agg["sentence"] == 0.0).all()
            table = pd.DataFrame([{"set": "hard", "seed": s, "l_acc": 1.0} for s in model.seeds])
            assert Q2.sentence_verdict(agg, table).status == V.NOT_HELD
    agg = C.control_tables("ending_bias")[V.SENTENCE + "aggregation"]
    uniform = agg[agg["scheme"] == "uniform"]
    assert (uniform["end"] == 0.0).all() and (uniform["l_acc"] == 1.0).all()
    assert (uniform["auc"] == 1.0).all()


def test_a_model_whose_answers_break_but_whose_ending_holds_does_not_support_question_2():
    """answer_bias (bos_bias that ends the sentence): under uniform weighting it answers EOS
    (sentence accuracy falls) but ends every sentence fed the true answer. Version 3 of the
    sentence rule, on sentence accuracy, called that `held`; the rule on end accuracy must not,
    and sentence_counter, which never fails, must not either."""
    tables = C.control_tables("answer_bias")
    agg = tables[V.SENTENCE + "aggregation"]
    uniform = agg[(agg["scheme"] == "uniform") & (agg["head"] == -1)]
    assert (uniform["end"] == 1.0).all() and (uniform["sentence"] < 0.5).all()
    got = Q2.sentence_verdict(agg, tables[V.SENTENCE + "model"])
    assert got.status == V.NOT_HELD and got.previous[3] == V.HELD
    from count01.measure.aggregation import aggregate

    counter = C.LIBRARY["sentence_counter"](**C.SET_CONFIG)
    fit, hard = eval_set(counter.cfg, "fit"), eval_set(counter.cfg, "hard")
    agg = pd.DataFrame(aggregate(counter, {"hard": hard}, fit))
    model = pd.DataFrame([{"set": "hard", "seed": s, "l_acc": 1.0} for s in counter.seeds])
    assert Q2.sentence_verdict(agg, model).status == V.NOT_HELD


def test_question_6_is_inconclusive_when_a_rule_is_measured_on_one_model_only_and_not_measured_alone():
    from count01.questions import q6

    ideal = C.control_tables("ideal")
    blind = {k: t for k, t in ideal.items() if k != "heads"}  # rules 1 and 3a cannot be judged
    assert q6.outcome(V.HELD, V.HELD) == "carries over"
    assert q6.outcome(V.HELD, V.NOT_HELD) == "changes"
    assert q6.outcome(V.HELD, V.INCONCLUSIVE) == "undecided"
    assert q6.outcome(V.INCONCLUSIVE, V.INCONCLUSIVE) == "left out"  # nothing to carry over
    assert q6.outcome(V.NOT_MEASURED, V.HELD) == "left out"
    got = q6.verdict({"small": ideal, "larger": blind}, THRESHOLDS)
    assert got.status == V.INCONCLUSIVE and "2 undecided" in got.finding
    left = q6.verdict({"small": blind, "larger": ideal}, THRESHOLDS)  # 1, 3a left out
    assert left.status == V.HELD and "3 left out" in left.finding  # and 3b, measured on neither
    assert q6.verdict({"small": ideal}, THRESHOLDS).status == V.NOT_MEASURED
    assert q6.verdict(None, THRESHOLDS).status == V.NOT_MEASURED
