"""Hand-built models whose answers are known (SPEC 6): the controls every verdict rule runs on.

Each model is written from weights, never trained. Every head is a `Head`: the log attention
weight of the EOS query per token kind (a kind left out is never attended) and what one
occurrence of each kind writes on two residual channels, the answer channel (read out as
logit(1) - logit(0)) and the invalid channel (read out as logit(EOS)). Without positional
embedding the EOS query sees every token of a kind alike, so these numbers are the head.

The library (`LIBRARY`):
    ideal          two identical ideal counters: attend equally to 0, 1 and EOS, never to 2 or BOS;
                   write -1 for a 0, +1 for a 1, -1/2 for EOS, so the output is
                   (n1 - n0 - 1/2) / (n0 + n1 + 1): positive iff more 1s than 0s
    split          two heads that each see one digit kind (0s, resp. 1s, and EOS): neither
                   counts alone, their sum does
    bos            an ideal counter and a head with its values that attends only to BOS (whose
                   value is zero): the same values, attention that cannot count
    silent         an ideal counter and a head with its attention but zero values
    noise_valued   counters with w02 = 1 whose noise tokens have zero value: they count without
                   suppressing 2s
    bos_bias       an ideal counter and a BOS-only head pushing, weakly, towards the answer EOS:
                   harmless as learned, invalid answers once heads are rescaled to equal norms
    bos_anchored   a counter that parks most attention on BOS, whose 0s and 1s also push
                   towards EOS while BOS pulls back: pushed to a high w01, the 1s outweigh BOS
                   and it answers EOS (an ideal counter still answers 0 or 1 there)
In the `sentence` framing (SPEC 2) the query at the answer y attends as the EOS query does (the
query is a bias alone) and also sees y; a model that ends the sentence carries an END feature
in the embeddings of the digits 0 and 1, read out as a large logit(EOS) (`END_GAIN`), so fed an
answer it predicts EOS:
    sentence_counter  two identical ideal counters that end the sentence
    never_ends        the same counters without the END feature: they answer, never end
    ending_bias       a loud counter (values x LOUD) that ends the sentence, and a BOS-only head
                      writing a little against the ending: harmless as learned, the sentence
                      left open once heads are rescaled to equal norms (the loud head's)
    answer_bias       bos_bias that ends the sentence: uniform weights break its answers (it
                      answers EOS), never its ending
Seeds of a control differ only in the scale of their values (1 + seed / 10), so norms vary and
answers do not. Each question module's CONTROLS (`count01.questions.RULE_CONTROLS`) names, per
rule, the control that has the property (positive) and the one that lacks it (negative);
`control_tables` computes the tables `analysis` would save, on a small evaluation config, for
the rules to read. Question 4's controls are training-path
tables with known failure counts (`training_paths`): no hand-built model has a training path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pandas as pd
import torch

from ..cache import ATTN
from ..config import Config
from ..language import BOS, EOS, ONE, TWO, ZERO, eval_set
from ..model import Model, weight_shapes
from ..questions import RULE_CONTROLS, RULE_READS, q4, q5, q6
from ..questions.base import CONTROL_RUNS, CONTROL_SEEDS, SENTENCE, Evidence
from ..stats import wilson

NEVER = -1000.0  # log attention weight of a kind a head ignores
GAIN = 100.0  # logit per unit on a channel
END_GAIN = 1e5  # logit(EOS) per unit on the END channel: above any answer logit at y
LOUD = 30.0  # ending_bias's counter: values and norm x LOUD, answer readout unchanged
SET_CONFIG = {"max_len": 16, "long_max_len": 20, "exhaustive_len": 8, "eval_size": 1024}
W01_GRID = np.logspace(-3, 3, 7)  # the intervention's w01 grid for controls (w02 = 0)
SENTENCE_FRAMING = {"framing": "sentence"}


@dataclass(frozen=True)
class Head:
    attend: dict[int, float]  # token kind -> log attention weight of the EOS query
    answer: dict[int, float]  # token kind -> value on the answer channel
    invalid: dict[int, float] = field(default_factory=dict)  # -> value on the invalid channel
    end: dict[int, float] = field(default_factory=dict)  # -> value on the END channel


COUNTER = Head({ZERO: 0.0, ONE: 0.0, EOS: 0.0}, {ZERO: -1.0, ONE: 1.0, EOS: -0.5})
SILENT = Head(COUNTER.attend, {})
# a causal query always sees its own EOS, and attention is measured relative to it: a BOS-only
# head gives EOS a weight of e^-20 of BOS's rather than none
BOS_ONLY = Head({BOS: 0.0, EOS: -20.0}, COUNTER.answer)
ZEROS_ONLY = Head({ZERO: 0.0, EOS: 0.0}, {ZERO: -1.0, EOS: -0.01})  # -0.01: ties answer 0
ONES_ONLY = Head({ONE: 0.0, EOS: 0.0}, {ONE: 1.0, EOS: -0.01})
NOISE_VALUED = Head(COUNTER.attend | {TWO: 0.0}, COUNTER.answer)
BOS_BIAS = Head(BOS_ONLY.attend, {}, {BOS: 0.005})
BOS_ANCHORED = Head(COUNTER.attend | {BOS: math.log(10.0)}, COUNTER.answer,
                    {ZERO: 2.0, ONE: 2.0, BOS: -10.0})
LOUD_COUNTER = Head(COUNTER.attend, {t: LOUD * v for t, v in COUNTER.answer.items()})
AGAINST_END = Head(BOS_ONLY.attend, {}, {}, {BOS: -0.01})


def build(heads: list[Head], seeds: int = CONTROL_SEEDS, eos_bias: float = -GAIN,
          ends: bool = False, **cfg) -> Model:
    """A model of these heads (no positional embedding) with `seeds` seeds; `eos_bias` is b_U
    of the answer EOS (the other invalid tokens get -GAIN); `ends`: the digits 0 and 1 carry the
    END feature (the sentence framing's ending). The residual holds the one-hot token (d_vocab
    dims), then an answer, an invalid and an end channel: d_model = d_head = d_vocab + 3 (8 with
    one noise symbol); a noise symbol the head does not name is ignored."""
    vocab = 4 + cfg.get("noise_symbols", 1)
    answer_, invalid, end, d = vocab, vocab + 1, vocab + 2, vocab + 3
    c = Config(**{"heads": len(heads), "d_model": d, "d_head": d, "n_seeds": seeds,
                  "pos_embed": "none"} | cfg)
    w = {k: torch.zeros((seeds,) + s, dtype=torch.float64) for k, s in weight_shapes(c).items()}
    w["embed.W_E"][:] = torch.eye(vocab, d, dtype=torch.float64)
    for h, head in enumerate(heads):
        w[ATTN + "b_Q"][:, h, 0] = 1.0
        for t in range(vocab):  # scores are divided by sqrt(d_head)
            w[ATTN + "W_K"][:, h, t, 0] = head.attend.get(t, NEVER) * math.sqrt(d)
        for channel, values in ((answer_, head.answer), (invalid, head.invalid),
                                (end, head.end)):
            for t, v in values.items():
                w[ATTN + "W_V"][:, h, t, channel] = v
            w[ATTN + "W_O"][:, h, channel, channel] = 1.0
    w[ATTN + "W_V"] *= (1 + torch.arange(seeds, dtype=torch.float64) / 10).view(-1, 1, 1, 1)
    w["unembed.W_U"][:, answer_, ZERO], w["unembed.W_U"][:, answer_, ONE] = -GAIN, GAIN
    w["unembed.W_U"][:, invalid, EOS] = GAIN
    w["unembed.W_U"][:, end, EOS] = END_GAIN
    if ends:
        w["embed.W_E"][:, ZERO, end] = w["embed.W_E"][:, ONE, end] = 1.0
    w["unembed.b_U"][:, TWO:] = -GAIN
    w["unembed.b_U"][:, EOS] = eos_bias
    return Model(c, w, list(range(seeds)))


def ideal(heads: int = 4, seeds: int = CONTROL_SEEDS, **cfg) -> Model:
    """`heads` identical ideal counters."""
    return build([COUNTER] * heads, seeds, **cfg)


LIBRARY = {
    "ideal": lambda **cfg: ideal(2, **cfg),
    "split": lambda **cfg: build([ZEROS_ONLY, ONES_ONLY], **cfg),
    "bos": lambda **cfg: build([COUNTER, BOS_ONLY], **cfg),
    "silent": lambda **cfg: build([COUNTER, SILENT], **cfg),
    "noise_valued": lambda **cfg: build([NOISE_VALUED] * 2, **cfg),
    "bos_bias": lambda **cfg: build([COUNTER, BOS_BIAS], eos_bias=0.0, **cfg),
    "bos_anchored": lambda **cfg: build([BOS_ANCHORED], eos_bias=0.0, **cfg),
    "sentence_counter": lambda **cfg: build([COUNTER] * 2, ends=True, **cfg | SENTENCE_FRAMING),
    "never_ends": lambda **cfg: build([COUNTER] * 2, **cfg | SENTENCE_FRAMING),
    "ending_bias": lambda **cfg: build([LOUD_COUNTER, AGAINST_END], ends=True,
                                       **cfg | SENTENCE_FRAMING),
    "answer_bias": lambda **cfg: build([COUNTER, BOS_BIAS], eos_bias=0.0, ends=True,
                                       **cfg | SENTENCE_FRAMING),
}



def ideal_intervention(cfg: Config, batch, fit, w01_grid) -> pd.DataFrame:
    """The intervention table (intervened = each, w02 = 0) of an ideal counter with as many heads
    as the model has in all its layers, on `batch`: the reference a trained model's collapse is
    compared with (question 3): one head of that many pushed to an extreme ratio."""
    from .interventions import sweep_columns

    model = ideal(cfg.layers * cfg.heads, seeds=1, **{k: getattr(cfg, k) for k in
                                         ("min_len", "max_len", "noise", "bos",
                                          "noise_symbols")})
    cols = sweep_columns(model, batch, fit, np.asarray(w01_grid), [0.0], heads="each")
    return pd.DataFrame(cols)


@cache
def control_tables(name: str) -> dict[str, pd.DataFrame]:
    """For control `name`, on `hard`: the model table and the tables `analysis` saves that the
    rules it controls read (`questions.RULE_READS`; the intervention with w02 = 0 only); a sentence-framing
    control's tables are named as the study names its sentence run's (SENTENCE)."""
    from .aggregation import aggregate
    from .interventions import sweep_columns, value_swap
    from .metrics import head_table, set_metrics

    model = LIBRARY[name](**SET_CONFIG)
    fit, hard = eval_set(model.cfg, "fit"), eval_set(model.cfg, "hard")
    with torch.no_grad():
        got = set_metrics(model, hard)
    t = {"model": pd.DataFrame([{"set": "hard", "seed": s} | {k: float(v[i]) for k, v in
                                                              got.items()}
                                for i, s in enumerate(model.seeds)])}
    make = {
        "heads": lambda: pd.DataFrame(head_table(model, {"hard": hard}, fit)),
        "aggregation": lambda: pd.DataFrame(aggregate(model, {"hard": hard}, fit)),
        "value_swap": lambda: pd.DataFrame([{"set": "hard"} | r
                                            for r in value_swap(model, hard, fit)]),
        "intervention": lambda: pd.DataFrame(sweep_columns(
            model, hard, fit, W01_GRID, [0.0], heads="each")).assign(set="hard"),
        "ideal_intervention": lambda: ideal_intervention(model.cfg, hard, fit, W01_GRID)}
    for table in {x for rule, pair in RULE_CONTROLS.items() if name in pair
                  for x in RULE_READS[rule]}:
        t[table] = make[table]()
    if model.cfg.framing == "sentence":
        return {SENTENCE + k: v for k, v in t.items()}
    return t


def training_paths(failures: tuple[int, ...], runs: int = CONTROL_RUNS) -> Evidence:
    """Question 4's control: success and minimal-head tables of configurations of `runs` runs
    with these numbers of failures (every success needs one head). Question 4 is about training,
    which no hand-built model has, so its controls are tables whose answers are known."""
    rows, minimal = [], []
    for h, f in enumerate(failures, 1):
        lo, hi = wilson(runs - f, runs)
        rows.append({"config_id": f"heads={h}", "heads": h, "n_runs": runs,
                     "n_success": runs - f, "rate": (runs - f) / runs, "ci_low": float(lo),
                     "ci_high": float(hi)})
        minimal.append({"config_id": f"heads={h}", "size": 1.0, "n_runs": runs - f})
    return Evidence(success=pd.DataFrame(rows), minimal=pd.DataFrame(minimal))


def noise_benchmark(labours: tuple[str, ...], runs: int = CONTROL_RUNS) -> Evidence:
    """Question 5's control: labour tables of noise conditions whose `runs` seeds all divide the
    labour as given, one condition per entry. Like question 4's, it is about training, which no
    hand-built model has, so its controls are tables whose answers are known."""
    from ..criteria import LABOURS

    rows = [{"config_id": f"noise={i}", "configuration": f"noise={i}", "n_runs": runs}
            | {f"n_{name.replace('-', '_')}": runs * (name == labour) for name in LABOURS}
            for i, labour in enumerate(labours)]
    return Evidence(labour=pd.DataFrame(rows))


def scale(models: tuple[str, str]) -> Evidence:
    """Question 6's control: a small and a larger model, each a hand-built model's tables (the
    larger is no larger: what the rule compares is the tables' verdicts)."""
    return Evidence(scale={f"{side}: {name}": control_tables(name)
                           for side, name in zip(("small", "larger"), models)})


def rule_controls() -> dict[str, tuple[Evidence, Evidence]]:
    """rule -> (positive, negative) control evidence, for `questions.base.judge`."""
    out = {k: tuple(Evidence(control_tables(name)) for name in pair)
           for k, pair in RULE_CONTROLS.items()}
    return out | {"4": tuple(training_paths(f) for f in q4.CONTROL_FAILURES),
                  "5": tuple(noise_benchmark(labours) for labours in q5.CONTROL_LABOURS),
                  "6": tuple(scale(pair) for pair in q6.CONTROL_MODELS)}
