"""The study's fixed numbers (SPEC 4 and 5), in one place: every module, table and caption that
judges a run reads them from here, so a change here changes them all at once.

Changing one after results were seen is a rule change: record it in the HISTORY of the question
modules that read it (`count01.questions.q1` ...; early stopping's in `questions.q4.STOP_RULE_HISTORY`).
"""

SUCCESS_SET = "hard"  # |#1 - #0| <= 1: where counting, not a rough majority, decides
SUCCESS_L_ACC = 0.99  # a run succeeded if its l-acc on SUCCESS_SET is at least this
IDEAL_SETS = ("hard", "long", "noisy", "exhaustive")  # the ideal solution also generalises
# SPEC 4's division of labour of a seed, and "unsolved" for a seed no head set solves
LABOURS = ("pseudo-ensemble", "divided", "mixed", "unsolved")
RESTART_CHANCE = 0.99  # restarts are counted for this chance of at least one success
# early stopping (train.STOP_RULES; history in questions.q4.STOP_RULE_HISTORY): give up on a seed at
# the first checkpoint at or after a share of its steps where one quantity is beyond a threshold.
# Rule 1 (fixed before any training trajectory was looked at): SUCCESS_SET l-acc at most
# EARLY_STOP_L_ACC (chance is 0.5 on the class-balanced set), from EARLY_STOP_FROM of the steps.
EARLY_STOP_L_ACC, EARLY_STOP_FROM = 0.6, 0.25
# Rule 2 (chosen after the full study's training-path trajectories were seen, on the design half
# below; training's rule): cross-entropy on iid at least EARLY_STOP_LOSS (ln 2: a coin flip
# between 0 and 1), from EARLY_STOP_LOSS_FROM of the steps (the grid's first checkpoint).
EARLY_STOP_LOSS, EARLY_STOP_LOSS_FROM = 0.6931471805599453, 1 / 6
# A later rule is chosen on checkpoints, so it is chosen on one half of a training-path grid and
# tested on the other (fixed before the trajectories of the full study's grid were looked at,
# 2026-11-30): the design half is the configurations at even positions of the sweep's grid order
# (a checkerboard over the grid: every head count, optimiser and init_scale has configurations
# in both halves), the held-out half those at odd positions. On the design half, a candidate
# (one quantity of paths.early_quantities, a threshold on it, a first step as a fraction of the
# run) is admissible if it wrongly stops at most 1% of the half's successful runs; the admissible
# candidate that saves the most seed-steps is chosen. (Rule 2 was chosen so: `paths.halves`.)
