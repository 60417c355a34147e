"""The study's fixed numbers (SPEC 4 and 5), in one place: every module, table and caption that
judges a run reads them from here, so a change here changes them all at once.

Changing one after results were seen is a rule change: record it in `verdicts.HISTORY`.
"""

SUCCESS_SET = "hard"  # |#1 - #0| <= 1: where counting, not a rough majority, decides
SUCCESS_L_ACC = 0.99  # a run succeeded if its l-acc on SUCCESS_SET is at least this
IDEAL_SETS = ("hard", "long", "noisy", "exhaustive")  # the ideal solution also generalises
RESTART_CHANCE = 0.99  # restarts are counted for this chance of at least one success
# early stopping, rule 1 (fixed before any training trajectory was looked at): give up on a seed
# whose SUCCESS_SET l-acc is at most EARLY_STOP_L_ACC (chance is 0.5 on the class-balanced set)
# at a checkpoint at or after EARLY_STOP_FROM of its steps
EARLY_STOP_L_ACC, EARLY_STOP_FROM = 0.6, 0.25
# A later rule is chosen on checkpoints, so it is chosen on one half of a training-path grid and
# tested on the other (fixed before the trajectories of the full study's grid were looked at,
# 2026-11-30): the design half is the configurations at even positions of the sweep's grid order
# (a checkerboard over the grid: every head count, optimiser and init_scale has configurations
# in both halves), the held-out half those at odd positions. On the design half, a candidate
# (one quantity of paths.early_quantities, a threshold on it, a first step as a fraction of the
# run) is admissible if it wrongly stops at most EARLY_STOP_WRONG of the half's successful
# runs; the admissible candidate that saves the most seed-steps is chosen.
EARLY_STOP_WRONG = 0.01
