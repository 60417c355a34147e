"""The run configuration: one small dataclass, readable from TOML, overridable from the CLI;
and the token ids it sizes the vocabulary by (SPEC 2), torch-free so the report can name them.

Every field is plain data so a config round-trips through JSON and TOML unchanged; `validate`
turns a bad value into one clear `ConfigError` line instead of a failure deep in training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

POS_EMBEDS = ("none", "learned", "sinusoidal")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine")
NOISE_PATTERNS = ("iid", "bursty")
FRAMINGS = ("classify", "sentence")
ADDED_FIELDS = ("optimizer", "schedule", "warmup", "noise_pattern", "burst_len", "p_one",
                "early_stop", "framing", "lm_loss", "noise_symbols", "layers", "d_mlp")
# ^ younger than the first sweeps
MAX_NOISE_SYMBOLS = 6  # noise ids 2, 5..9: every token a single character (language.parse)
SEED_MAX = 2**63 - 1  # seeds are hashed as uint64 and stored as int64 (JSON, Parquet)
ZERO, ONE, TWO, EOS, BOS = 0, 1, 2, 3, 4  # token ids (SPEC 2); noise symbols 5, 6, ... after them


def noise_ids(k: int) -> tuple[int, ...]:
    """Token ids of the k noise symbols: 2, then 5, 6, ..., k + 3 (SPEC 2)."""
    return (TWO,) + tuple(range(5, k + 4))


def _physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float(1 << 40)


MEMORY = _physical_memory()


def _tuples(n: int, kinds: int = 3) -> float:
    """How many count tuples of `kinds` kinds sum to at most n: C(n + kinds, kinds)."""
    return float(math.comb(n + kinds, kinds))


def _gb(n: float) -> str:
    return f"{n / 2**30:.3g} GB"


class Count01Error(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2."""


class ConfigError(Count01Error):
    pass


def read_toml(path: Path, what: str, error: type[Count01Error]) -> dict[str, Any]:
    """A TOML file's tables, or one line naming the file and what is wrong with it."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid TOML: {e}") from None
    except OSError as e:  # a directory, unreadable
        raise error(f"cannot read {what} file {path}: {e.strerror or e}") from None


@dataclass(frozen=True)
class Config:
    # --- task (SPEC 2) ---
    min_len: int = 1
    max_len: int = 32
    noise: float = 0.25
    noise_symbols: int = 1  # K: the noise mass split equally over ids 2, 5, ..., K + 3
    noise_pattern: str = "iid"  # iid | bursty (noise in runs of mean length burst_len)
    burst_len: float = 4.0
    p_one: float = 0.5  # P(1) / (P(0) + P(1)) among counted digits
    class_balanced: bool = False
    bos: bool = True
    framing: str = "classify"  # classify: [BOS] x EOS | sentence: [BOS] x EOS y EOS (SPEC 2)
    lm_loss: bool = False  # sentence only: also train the next token at every string position
    # --- model (SPEC 3) ---
    heads: int = 4
    d_model: int = 16
    d_head: int | None = None  # None: d_model // heads (then d_model must divide evenly)
    pos_embed: str = "none"
    layernorm: bool = False
    init_scale: float = 1.0  # weights ~ N(0, (init_scale / sqrt(fan_in))^2)
    layers: int = 1  # L attention blocks (SPEC 1, Q6)
    d_mlp: int = 0  # an MLP (GELU) of this width after each block's attention; 0: attention-only
    # --- training ---
    seed: int = 0  # seeds seed, seed + 1, ..., seed + n_seeds - 1 train as one batched model
    n_seeds: int = 8
    steps: int = 3000
    batch_size: int = 256
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9)
    lr: float = 1e-2
    schedule: str = "constant"  # constant | cosine (to 0 at `steps`), after `warmup` linear steps
    warmup: int = 0
    weight_decay: float = 0.0
    checkpoint_every: int = 250
    early_stop: bool = False  # give up on seeds that train.STOP_RULE judges failing
    # --- evaluation (SPEC 2) ---
    eval_seed: int = 1_000_003
    eval_size: int = 8192
    exhaustive_len: int = 12
    long_max_len: int = 64  # the `long` set draws lengths max_len + 1 .. long_max_len
    noisy_noise: float = 0.5

    @property
    def d_head_(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.heads

    @property
    def d_vocab(self) -> int:
        """Token ids 0, 1, 2, EOS = 3, BOS = 4, then noise symbols 5..K+3 (SPEC 2)."""
        return self.noise_symbols + 4

    @property
    def n_ctx(self) -> int:
        """Positions a positional embedding must cover: BOS + the longest `long` string + EOS,
        and in the `sentence` framing the answer y and the closing EOS."""
        longest = max(self.long_max_len, self.exhaustive_len, self.max_len)
        return longest + 2 + 2 * (self.framing == "sentence")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.n_seeds))

    @property
    def count_path(self) -> bool:
        """Without positional embedding and with one layer, everything at the EOS query depends
        only on counts (an MLP acts on the query's residual alone). With L >= 2 the keys of later
        layers depend on each prefix: the token path."""
        return self.pos_embed == "none" and self.layers == 1

    def validate(self) -> Config:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        positive = ["max_len", "layers", "heads", "d_model", "n_seeds", "steps", "batch_size",
                    "checkpoint_every", "eval_size", "exhaustive_len"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_mlp < 0:
            raise ConfigError(f"d_mlp must be >= 0 (0: attention-only), got {self.d_mlp}")
        if self.lm_loss and (self.layers > 1 or self.d_mlp):
            raise ConfigError("lm_loss with layers > 1 or an MLP (d_mlp > 0) is not built: every "
                              "query row has a fast path for one attention-only layer only")
        if self.d_head is not None and self.d_head <= 0:
            raise ConfigError(f"d_head must be positive, got {self.d_head}")
        if self.min_len < 1 or self.min_len > self.max_len:
            raise ConfigError(f"min_len must be in 1..max_len ({self.max_len}), got {self.min_len}")
        if self.d_head is None and self.d_model % self.heads:
            raise ConfigError(f"d_model ({self.d_model}) is not divisible by heads ({self.heads});"
                              " set d_head explicitly")
        for name in ("noise", "noisy_noise"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 1 <= self.noise_symbols <= MAX_NOISE_SYMBOLS:
            raise ConfigError(f"noise_symbols must be in 1..{MAX_NOISE_SYMBOLS}, got "
                              f"{self.noise_symbols}")
        if self.noise_pattern not in NOISE_PATTERNS:
            raise ConfigError(f"noise_pattern must be one of {', '.join(NOISE_PATTERNS)}, got "
                              f"{self.noise_pattern!r}")
        if not 0.0 < self.p_one < 1.0:
            raise ConfigError(f"p_one must be in (0, 1), got {self.p_one}")
        shortest = max(self.noise, self.noisy_noise) / (1.0 - max(self.noise, self.noisy_noise))
        if self.noise_pattern == "bursty" and not self.burst_len >= max(1.0, shortest):
            raise ConfigError(f"burst_len must be >= 1 and >= noise / (1 - noise) ({shortest:.3g} "
                              f"for the larger of noise and noisy_noise), got {self.burst_len}")
        if self.framing not in FRAMINGS:
            raise ConfigError(f"framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        if self.lm_loss and self.framing != "sentence":
            raise ConfigError("lm_loss needs framing = sentence (classify has no string to model)")
        if self.framing == "sentence" and self.layernorm and self.lm_loss:
            raise ConfigError("lm_loss with layernorm is not built: every query row of a "
                              "LayerNorm model has no fast path (use layernorm = false)")
        if self.pos_embed not in POS_EMBEDS:
            raise ConfigError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got {self.pos_embed!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, name)!r}")
        if not 0 <= self.warmup <= self.steps:
            raise ConfigError(f"warmup must be in 0..steps ({self.steps}), got {self.warmup}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.init_scale > 0:
            raise ConfigError(f"init_scale must be positive, got {self.init_scale}")
        for name in ("seed", "eval_seed"):  # seeds are hashed as uint64 and stored as int64
            if not 0 <= getattr(self, name) <= SEED_MAX - (self.n_seeds if name == "seed" else 0):
                raise ConfigError(f"{name} must be in 0..{SEED_MAX}"
                                  + (" - n_seeds" if name == "seed" else "")
                                  + f", got {getattr(self, name)}")
        if self.long_max_len <= self.max_len:
            raise ConfigError(f"long_max_len ({self.long_max_len}) must exceed max_len ({self.max_len})")
        if self.exhaustive_len > 14 and not self.count_path:
            raise ConfigError("exhaustive_len above 14 needs the count path (pos_embed = none, "
                              "one layer)")
        needs = self.memory_needs()
        if sum(needs.values()) > MEMORY:
            fields_, most = max(needs.items(), key=lambda kv: kv[1])
            raise ConfigError(f"this config needs about {_gb(sum(needs.values()))}, more than "
                              f"this machine's {_gb(MEMORY)} of memory; the most ({_gb(most)}) "
                              f"goes with {fields_}")
        return self

    def memory_needs(self) -> dict[str, float]:
        """Rough peak bytes of the largest allocations a run makes, keyed by the fields that drive
        each, so an impossible size is refused before anything is allocated. Generous (x4 for
        temporaries and autograd) but only to an order of magnitude: it guards, it does not plan."""
        s, h, d, dh, f32 = self.n_seeds, self.heads, self.d_model, self.d_head_, 4
        n_pos = self.n_ctx if self.pos_embed != "none" else 0
        v, digits = self.d_vocab, self.noise_symbols + 2  # digits: 0, 1 and the noise symbols
        layers, mlp = self.layers, self.d_mlp
        params = ((2 * v + n_pos + 4) * d + layers * (h * dh * (4 * d + 3) + mlp * (2 * d + 1))
                  + (layers - 1) * 5 * d)
        slots = v if self.count_path else self.max_len + 2  # what the EOS query reads per example
        per_slot = h * (3 * dh + 2) + d + mlp
        if layers > 1:  # every position of every layer but the last, each attending to all
            per_slot = layers * (h * (3 * dh + 2 + slots) + 3 * d + mlp)
        long_slots = digits if self.count_path else self.long_max_len + 2
        exhaustive = (_tuples(self.exhaustive_len, digits) * digits if self.count_path
                      else float(digits) ** self.exhaustive_len * (self.exhaustive_len + 2))
        rows = (self.max_len + 3 if self.lm_loss else 2) if self.framing == "sentence" else 1
        batch = 4 * s * self.batch_size * rows * slots * per_slot * f32  # rows: queries trained
        return {
            "n_seeds, layers, heads, d_model, d_head, d_mlp (weights, AdamW state, checkpoints)":
                8 * s * params * f32,
            "n_seeds, batch_size, layers, heads, d_head, d_mlp (a training batch)": batch,
            "eval_size (the evaluation sets)": 6 * self.eval_size * long_slots * 8 * 4,
            "exhaustive_len, noise_symbols (the exhaustive set)": 4 * exhaustive * 8,
            "max_len, long_max_len (count-triple tables)": 40 * _tuples(self.long_max_len) * 8,
        }

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What names this configuration (sweep ids hash it): every field but those added since
        the first sweeps while they hold their defaults, so older sweeps keep their ids, and
        burst_len under i.i.d. noise, where it changes nothing."""
        return {k: v for k, v in self.to_dict().items()
                if (k not in ADDED_FIELDS or v != getattr(Config, k))
                and not (k == "burst_len" and self.noise_pattern != "bursty")}  # unused then

    def model_dict(self) -> dict[str, Any]:
        """The fields that decide the weights' shapes and meaning (checked when loading)."""
        keys = ("heads", "d_model", "d_head", "pos_embed", "layernorm", "bos")
        more = {k: getattr(self, k) for k in ("layers", "d_mlp")  # absent at their defaults, so
                if getattr(self, k) != getattr(Config, k)}  # older runs' metadata still matches
        return ({k: getattr(self, k) for k in keys} | {"d_head": self.d_head_, "n_ctx": self.n_ctx}
                | more)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown option(s): {', '.join(unknown)}")
        values = {}
        for name, value in data.items():
            values[name] = _coerce(name, known[name].type, value, source)
        return cls(**values).validate()

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        path = Path(path)
        data = read_toml(path, "config", ConfigError)
        flat: dict[str, Any] = {}
        for key, value in data.items():  # sections ([task], [model], ...) are only for reading
            section = value if isinstance(value, dict) else {key: value}
            twice = sorted(set(flat) & set(section))
            if twice:
                raise ConfigError(f"{path}: {', '.join(twice)} given twice (in two sections)")
            flat.update(section)
        return cls.from_dict(flat, source=str(path))

    @classmethod
    def from_json(cls, path: str | Path) -> Config:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.to_dict().items())


def _coerce(name: str, type_: Any, value: Any, source: str) -> Any:
    """Check a value against the field's type; accept ints for floats and strings from the CLI."""
    kind = str(type_)
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("int"):
            if value is None or (isinstance(value, str) and value.lower() == "none"):
                if "None" in kind:
                    return None
                raise ValueError
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unhandled field type {kind}")
    raise ConfigError(f"{source}: {name} expects {kind.replace(' | None', ' or none')}, got {value!r}")
