"""The sweep file and its grid: every combination of [grid] values over [base] is one
configuration (`Point`), named by a stable, readable id (`config_id`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, Count01Error, read_toml

NOT_IN_GRID = ("seed", "n_seeds")  # a sweep varies seeds through `seeds`, not a grid axis


class SweepError(Count01Error):
    pass



@dataclass(frozen=True)
class Point:
    """One configuration of the grid."""

    id: str
    grid: dict[str, Any]  # this configuration's value of every grid field
    cfg: Config


@dataclass(frozen=True)
class Sweep:
    base: dict[str, Any]  # Config fields, including n_seeds
    grid: dict[str, list]  # Config field -> values, in file order
    skip: list[dict[str, Any]] = field(default_factory=list)  # combinations left out

    @classmethod
    def from_toml(cls, path: str | Path) -> Sweep:
        path = Path(path)
        return cls.from_dict(read_toml(path, "sweep", SweepError), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "sweep") -> Sweep:
        """A sweep without [grid] is one configuration (its [base]) x seeds, and says so when it
        runs; a sweep with nothing at all in it is refused (an empty or wrong file)."""
        if not data:
            raise SweepError(f"{source} is empty: give seeds = N, a [base] and a [grid] table "
                             "(see examples/sweep.toml)")
        unknown = sorted(set(data) - {"seeds", "base", "grid", "skip"})
        if unknown:
            raise SweepError(f"{source}: unknown key(s) {', '.join(unknown)} (expected seeds, "
                             "[base], [grid], [[skip]])")
        for table in ("base", "grid"):
            if not isinstance(data.get(table, {}), dict):
                raise SweepError(f"{source}: {table} must be a table ([{table}])")
        base, grid = dict(data.get("base", {})), dict(data.get("grid", {}))
        given = {where: d.pop(key) for where, d, key in (
            ("seeds", dict(data), "seeds"), ("base.seeds", base, "seeds"),
            ("base.n_seeds", base, "n_seeds"), ("grid.seeds", grid, "seeds")) if key in d}
        if len(given) > 1:
            raise SweepError(f"{source}: the number of seeds is given twice ({', '.join(given)})")
        if given:
            base["n_seeds"] = next(iter(given.values()))
        for name, values in grid.items():
            if name in NOT_IN_GRID:
                raise SweepError(f"{source}: {name} cannot be a grid axis; set seeds = N (and "
                                 "seed in [base]) instead")
            if name in base:
                raise SweepError(f"{source}: {name} is both in [base] and in [grid]")
            if not isinstance(values, list) or not values:
                raise SweepError(f"{source}: grid.{name} must be a non-empty list, got {values!r}")
        skip = data.get("skip", [])
        if not isinstance(skip, list) or not all(isinstance(x, dict) and x for x in skip):
            raise SweepError(f"{source}: skip must be a list of tables ([[skip]]) of grid values")
        for x in skip:
            if set(x) - set(grid):
                raise SweepError(f"{source}: skip names {', '.join(sorted(set(x) - set(grid)))}, "
                                 "not a grid field")
        sweep = cls(base, grid, [dict(x) for x in skip])
        sweep.points(source)  # every configuration is checked before anything trains
        return sweep

    def points(self, source: str = "sweep") -> list[Point]:
        """Every configuration, in grid order (the last grid field varies fastest). Values are
        compared once converted to Config values, so 2 and 2.0 (or false and "false") repeat a
        configuration: two would train into one run directory and double its rows."""
        out: dict[str, Point] = {}
        given: dict[str, str] = {}  # id -> the grid values as written, to name a repeat
        used = [False] * len(self.skip)
        for combo in itertools.product(*self.grid.values()):
            values = dict(zip(self.grid, combo))
            hits = [all(values[k] == v for k, v in x.items()) for x in self.skip]
            used = [a or b for a, b in zip(used, hits)]
            if any(hits):
                continue
            where = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "base"
            try:
                cfg = Config.from_dict(self.base | values, source=f"{source} ({where})")
                cfg.analysable()  # every run of a sweep is analysed
            except Count01Error as e:
                raise SweepError(str(e)) from None
            values = {k: getattr(cfg, k) for k in values}  # coerced: 1 -> 1.0 for floats
            point = Point(config_id(cfg, values), values, cfg)
            if point.id in out:
                raise SweepError(f"{source}: the grid repeats a configuration: {given[point.id]} "
                                 f"and {where} are the same once converted")
            out[point.id], given[point.id] = point, where
        if not all(used):
            raise SweepError(f"{source}: skip {self.skip[used.index(False)]} matches no "
                             "combination of the grid")
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "grid": self.grid} | ({"skip": self.skip} if self.skip else {})


def config_id(cfg: Config, grid: dict[str, Any]) -> str:
    """A stable, readable directory name: the grid values, then a hash of the whole config."""
    digest = hashlib.sha1(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:8]
    label = "_".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in grid.items())
    return re.sub(r"[^A-Za-z0-9.=_+-]", "-", label or "base") + "-" + digest

