"""The questions of SPEC 1, one module each (q1 ... q6), and the registry the report iterates
over. A question module holds its rule in words, thresholds (THRESHOLDS, VARIED, MIN_UNITS),
version HISTORY and VERSION, controls (CONTROLS: rule -> (positive, negative) hand-built model of
`count01.measure.controls`; READS: rule -> the analysis tables it reads), the functions that judge it
(`verdict`, `of_evidence`, RULES) and the report's prose and captions for it (`summary`,
`numbers`, `figures`, `closing`, `controls_text`); `base` holds what every rule uses. Adding a
question: write its module and add it to QUESTIONS."""

from __future__ import annotations

from . import q1, q2, q3, q4, q5, q6
from .base import rule_functions, thresholds

QUESTIONS = (q1, q2, q3, q4, q5, q6)  # in SPEC 1's order: the report's sections follow it
THRESHOLDS = thresholds(QUESTIONS)  # every threshold of every rule, as the rules read them
RULES = rule_functions(QUESTIONS)  # rule key -> (the thresholds it reads, its status function)
# rule key -> (positive, negative) hand-built model of `count01.measure.controls`
RULE_CONTROLS = {k: pair for q in QUESTIONS for k, pair in q.CONTROLS.items()}
# rule key -> the analysis tables it judges by (what `controls.control_tables` computes)
RULE_READS = {k: tables for q in QUESTIONS for k, tables in q.READS.items()}
