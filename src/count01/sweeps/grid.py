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
    # grid values -> "seeds": the configurations each entry matches train that many seeds
    # instead of n_seeds (a cheap configuration can afford more than a costly one)
    seeds_at: list[dict[str, Any]] = field(default_factory=list)

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
        unknown = sorted(set(data) - {"seeds", "base", "grid", "skip", "seeds_at"})
        if unknown:
            raise SweepError(f"{source}: unknown key(s) {', '.join(unknown)} (expected seeds, "
                             "[base], [grid], [[skip]], [[seeds_at]])")
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
        skip, seeds_at = data.get("skip", []), data.get("seeds_at", [])
        for name, tables, extra in (("skip", skip, set()), ("seeds_at", seeds_at, {"seeds"})):
            if not isinstance(tables, list) or not all(isinstance(x, dict) and set(x) - extra
                                                       for x in tables):
                raise SweepError(f"{source}: {name} must be a list of tables ([[{name}]]) of "
                                 "grid values")
            for x in tables:
                if set(x) - set(grid) - extra:
                    raise SweepError(f"{source}: {name} names "
                                     f"{', '.join(sorted(set(x) - set(grid) - extra))}, "
                                     "not a grid field")
                if extra - set(x):
                    raise SweepError(f"{source}: each seeds_at table needs seeds = N, got {x}")
        sweep = cls(base, grid, [dict(x) for x in skip], [dict(x) for x in seeds_at])
        sweep.points(source)  # every configuration is checked before anything trains
        return sweep

    def points(self, source: str = "sweep") -> list[Point]:
        """Every configuration, in grid order (the last grid field varies fastest). Values are
        compared once converted to Config values, so 2 and 2.0 (or false and "false") repeat a
        configuration: two would train into one run directory and double its rows."""
        out: dict[str, Point] = {}
        given: dict[str, str] = {}  # id -> the grid values as written, to name a repeat
        used = [False] * len(self.skip)
        more = [{k: v for k, v in x.items() if k != "seeds"} for x in self.seeds_at]
        used_more = [False] * len(more)
        for combo in itertools.product(*self.grid.values()):
            values = dict(zip(self.grid, combo))
            hits = [all(values[k] == v for k, v in x.items()) for x in self.skip]
            used = [a or b for a, b in zip(used, hits)]
            if any(hits):
                continue
            where = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "base"
            matched = [all(values[k] == v for k, v in m.items()) for m in more]
            used_more = [a or b for a, b in zip(used_more, matched)]
            seeds = [{"n_seeds": x["seeds"]} for x, hit in zip(self.seeds_at, matched) if hit]
            if len(seeds) > 1:
                raise SweepError(f"{source}: seeds_at gives {where} its seeds twice")
            try:
                cfg = Config.from_dict(self.base | values | (seeds[0] if seeds else {}),
                                       source=f"{source} ({where})")
            except Count01Error as e:
                raise SweepError(str(e)) from None
            values = {k: getattr(cfg, k) for k in values}  # coerced: 1 -> 1.0 for floats
            point = Point(config_id(cfg, values), values, cfg)
            if point.id in out:
                raise SweepError(f"{source}: the grid repeats a configuration: {given[point.id]} "
                                 f"and {where} are the same once converted")
            out[point.id], given[point.id] = point, where
        for name, tables, hit in (("skip", self.skip, used),
                                  ("seeds_at", self.seeds_at, used_more)):
            if not all(hit):
                raise SweepError(f"{source}: {name} {tables[hit.index(False)]} matches no "
                                 "combination of the grid")
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        return ({"base": self.base, "grid": self.grid} | ({"skip": self.skip} if self.skip else {})
                | ({"seeds_at": self.seeds_at} if self.seeds_at else {}))


def config_id(cfg: Config, grid: dict[str, Any]) -> str:
    """A stable, readable directory name: the grid values, then a hash of the whole config."""
    digest = hashlib.sha1(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:8]
    label = "_".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in grid.items())
    return re.sub(r"[^A-Za-z0-9.=_+-]", "-", label or "base") + "-" + digest

