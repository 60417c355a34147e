"""What a study computes (`Plan`) and OUT/study.json, which records it: read by `study`, which
runs the plan, and by the report, which imports no computation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, Count01Error
from .files import read_json

FORMAT = "count01-study/1"
ANALYSED_HEADS = 4  # SPEC's default model: its configuration of the sweep is analysed in depth


class StudyError(Count01Error):
    pass


@dataclass(frozen=True)
class Plan:
    """What a study computes: a sweep over `heads` x `seeds`, with `base` Config fields."""

    mode: str
    seeds: int
    heads: tuple[int, ...] = (1, 2, 4, 8)
    base: dict[str, Any] = field(default_factory=dict)
    grid_size: int = 25  # intervention grid: grid_size log-spaced values of w01 and of w02
    path_seeds: int = 32  # question 4's training-path grid: seeds per configuration,
    path_base: dict[str, Any] = field(default_factory=dict)  # its Config fields
    path_grid: dict[str, list] = field(default_factory=dict)  # and its grid
    noise_grid: dict[str, list] = field(default_factory=dict)  # question 5's noise conditions
    sentence_seeds: int = 16  # question 2 in the sentence framing: seeds,
    sentence_base: dict[str, Any] = field(default_factory=dict)  # its Config fields
    sentence_grid_size: int = 7  # and its intervention grid
    noise_skip: list[dict[str, Any]] = field(default_factory=list)  # combinations left out
    scale_seeds: int = 16  # question 6: seeds per model of the scale sweep,
    scale_base: dict[str, Any] = field(default_factory=dict)  # its Config fields,
    scale_grid: dict[str, list] = field(default_factory=dict)  # its grid (first = small model),
    scale_skip: list[dict[str, Any]] = field(default_factory=list)  # what it leaves out,
    scale_seeds_at: list[dict[str, Any]] = field(default_factory=list)  # models with other seeds
    scale_grid_size: int = 7  # and each model's intervention grid

    @property
    def analysed_heads(self) -> int:
        return ANALYSED_HEADS if ANALYSED_HEADS in self.heads else max(self.heads)

    def sweep_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "base": dict(self.base), "grid": {"heads": list(self.heads)}}

    def path_sweep_dict(self) -> dict[str, Any]:
        return {"seeds": self.path_seeds, "base": dict(self.path_base),
                "grid": {k: list(v) for k, v in self.path_grid.items()}}

    def noise_sweep_dict(self) -> dict[str, Any]:
        """The analysed configuration (its seeds and Config fields) under every noise condition."""
        return {"seeds": self.seeds, "base": dict(self.base) | {"heads": self.analysed_heads},
                "grid": {k: list(v) for k, v in self.noise_grid.items()},
                "skip": [dict(x) for x in self.noise_skip]}

    def scale_sweep_dict(self) -> dict[str, Any]:
        """The analysed configuration as a small model and larger ones (question 6)."""
        return {"seeds": self.scale_seeds,
                "base": dict(self.base) | {"heads": self.analysed_heads} | self.scale_base,
                "grid": {k: list(v) for k, v in self.scale_grid.items()},
                "skip": [dict(x) for x in self.scale_skip],
                "seeds_at": [dict(x) for x in self.scale_seeds_at]}

    def sentence_config(self) -> Config:
        """The analysed configuration in the sentence framing, with lm_loss."""
        return Config.from_dict(self.base | {"heads": self.analysed_heads,
                                             "n_seeds": self.sentence_seeds,
                                             "framing": "sentence", "lm_loss": True}
                                | self.sentence_base, source="study plan (sentence framing)")

    def config(self, heads: int) -> Config:
        return Config.from_dict(self.base | {"heads": heads, "n_seeds": self.seeds},
                                source="study plan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"heads": list(self.heads)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**(data | {"heads": tuple(data["heads"])}))


def read_state(out: Path) -> dict[str, Any]:
    """OUT/study.json, checked to be a study's: a plan, stages with their times, and the
    analysed run as a path inside OUT."""
    path = out / "study.json"
    state = read_json(path)
    try:
        ok = (isinstance(state, dict) and state.get("format") == FORMAT
              and isinstance(Plan.from_dict(state["plan"]).base, dict)
              and all(isinstance(s["seconds"], (int, float)) for s in state["stages"].values())
              and isinstance(state.get("analysed_run", ""), str)
              and isinstance(state.get("versions", {}), dict))
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise StudyError(f"{path} is not a count01 study (format, plan, stages, versions)")
    run = out / state.get("analysed_run", "")
    if not run.resolve().is_relative_to(out.resolve()):
        raise StudyError(f"{path}: analysed_run {run} lies outside the study {out}")
    return state
