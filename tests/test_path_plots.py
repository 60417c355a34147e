"""count01.present.path_plots: the training-path figures draw from their tables, ratios of 0 and
inf included, and stay readable with many configurations."""

import numpy as np
import pandas as pd
from test_analysis import readable_alone
from test_paths import _runs

from count01.measure.paths import minimal_heads_table, success_table
from count01.present import path_plots
from count01.present.path_plots import plot_trajectories


def test_trajectories_with_ratios_of_zero_and_infinity_still_draw(tmp_path):
    traj = pd.DataFrame({"seed": [0, 0], "step": [0, 10], "hard_l_acc": [0.5, 0.5]})
    htraj = pd.DataFrame({"seed": 0, "head": 0, "step": [0, 10], "s_acc": [0.5, 0.5],
                          "w01": [1.0, np.inf], "w02": [0.0, 1.0]})
    files = plot_trajectories(traj, htraj, {0: False}, "extreme", tmp_path / "t")
    assert all(p.stat().st_size > 1000 for p in files)


def test_figures_of_many_configurations_are_rows_and_readable_alone(monkeypatch, tmp_path):
    runs = _runs({f"h{i}": [True, i % 3 == 0, False] for i in range(1, 21)})
    drawn = {}
    monkeypatch.setattr(path_plots, "save",
                        lambda fig, path, **kw: drawn.setdefault(path.name, fig) and [])
    path_plots.plot_success(success_table(runs, ["heads"]), ["heads"], tmp_path / "success_rate")
    path_plots.plot_minimal_heads(minimal_heads_table(runs, ["heads"]), ["heads"],
                                  tmp_path / "minimal_heads")
    for name, fig in drawn.items():
        assert not readable_alone(fig), f"{name} lacks {readable_alone(fig)}"
        assert fig.get_size_inches()[0] <= 8  # rows, not a 20-column strip
