"""Declarative search spaces: a small YAML language for CNN families, validated, then built with KerasTuner.

A value in a space file is either a constant (``kernel_size: 3``) or a searched dimension:

    {choice: [8, 16, 32]}                          one of a list
    {int: [1, 4]}            {int: [8, 64], step: 8}      an integer range (sampling: linear | log)
    {float: [0.0, 0.5]}      {float: [1.0e-4, 1.0e-2], sampling: log}

Sections and keys are fixed (SPACE_SCHEMA); anything else is an error that names the file and the key.
An optional ``warm_start:`` list names known-good configurations (dotted keys) that the search tries first,
so a short budget starts from a good model instead of from random draws.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas.errors import NasError

BLOCK_TYPES = ("conv", "residual", "separable")


@dataclass(frozen=True)
class Param:
    """What one key accepts: the value kind and its allowed values or bounds."""

    kind: type  # int, float, str or bool
    default: Any
    options: tuple | None = None
    low: float | None = None
    high: float | None = None


SPACE_SCHEMA: dict[str, dict[str, Param]] = {
    "stem": {
        "filters": Param(int, 0, low=0, high=512),  # 0: no stem
        "kernel_size": Param(int, 3, low=1, high=9),
        "strides": Param(int, 1, low=1, high=4),
        # fold each k x k block of pixels into k*k channels before the first layer: a 128 px frame enters a
        # 64 px network with every pixel kept (blur and smear live in the finest pixels; see models.py)
        "space_to_depth": Param(int, 1, low=1, high=4),
    },
    "blocks": {
        "type": Param(str, "conv", options=BLOCK_TYPES),
        "count": Param(int, 2, low=1, high=8),
        "filters": Param(int, 16, low=1, high=1024),
        "growth": Param(float, 2.0, low=1.0, high=4.0),
        "kernel_size": Param(int, 3, low=1, high=9),
        "normalization": Param(str, "batch", options=("none", "batch", "layer", "group")),
        "activation": Param(str, "relu", options=("relu", "gelu", "swish", "elu")),
        "pooling": Param(str, "max", options=("max", "avg", "none")),
        "dropout": Param(float, 0.0, low=0.0, high=0.9),
        # training only: each frame's feature statistics after the first two blocks mixed with another frame's
        # (MixStyle) with this probability; 0 off (see models.MixStyle)
        "mixstyle": Param(float, 0.0, low=0.0, high=1.0),
    },
    "head": {
        "pooling": Param(str, "avg", options=("avg", "max", "flatten")),
        "dense": Param(int, 0, low=0, high=2048),
        "dropout": Param(float, 0.0, low=0.0, high=0.9),
    },
    "optimizer": {
        "name": Param(str, "adam", options=("adam", "adamw", "sgd", "rmsprop")),
        "learning_rate": Param(float, 1e-3, low=1e-6, high=1.0),
        "weight_decay": Param(float, 0.0, low=0.0, high=0.5),
        "schedule": Param(str, "constant", options=("constant", "cosine")),  # cosine: decays to 0 over the trial
    },
    # the training loss: binary cross-entropy against targets t smoothed to eps/2 and 1 - eps/2
    # (label_smoothing eps), scaled by (1 - p_t)^gamma where focal_gamma > 0 (p_t = t p + (1 - t)(1 - p): frames
    # the model already gets right weigh less than the negatives it confuses); both 0: plain cross-entropy
    "loss": {
        "focal_gamma": Param(float, 0.0, low=0.0, high=5.0),
        "label_smoothing": Param(float, 0.0, low=0.0, high=0.3),
    },
    "autokeras": {
        "block_type": Param(str, "vanilla", options=("vanilla", "resnet", "xception")),
        "normalize": Param(bool, False),
        "augment": Param(bool, False),
        "dropout": Param(float, 0.0, low=0.0, high=0.9),
    },
}
# Sections that override the experiment's own settings per trial: only the keys a space file names become
# dimensions (a key it leaves out keeps the experiment's value), so a space can search the input size, the
# training length or an augmentation strength without restating the rest.
OVERRIDES: dict[str, dict[str, Param]] = {
    "input": {"image_size": Param(int, 64, low=16, high=1024)},  # each size gets its own frame cache
    "training": {"epochs": Param(int, 4, low=1, high=1000)},  # the cosine schedule spans the trial's own epochs
    "augment": {
        "flips": Param(bool, False), "rot90": Param(bool, False),
        "shift": Param(float, 0.0, low=0.0, high=0.25), "intensity": Param(float, 0.0, low=0.0, high=0.5),
        "noise": Param(float, 0.0, low=0.0, high=0.5), "blur": Param(float, 0.0, low=0.0, high=2.0),
        "scale": Param(float, 0.0, low=0.0, high=0.3),
    },
}
TOP_KEYS = {"name", "description", "warm_start", *SPACE_SCHEMA, *OVERRIDES}


@dataclass(frozen=True)
class Dimension:
    """A searched (or constant) value, named by its dotted key, e.g. 'blocks.filters'."""

    name: str
    param: Param
    constant: Any = None
    choice: tuple | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    sampling: str = "linear"

    @property
    def searched(self) -> bool:
        return self.constant is None

    def register(self, hp) -> Any:
        """Declare this dimension on a KerasTuner HyperParameters object and return its value."""
        if not self.searched:
            return self.constant
        if self.choice is not None:
            return hp.Choice(self.name, list(self.choice))
        if self.param.kind is int:
            return hp.Int(self.name, int(self.low), int(self.high), step=int(self.step) if self.step else None, sampling=self.sampling)
        return hp.Float(self.name, float(self.low), float(self.high), step=self.step, sampling=self.sampling)


def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


def _check_scalar(value: Any, param: Param, source: str, key: str) -> Any:
    kind = param.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise NasError(f"{_where(source, key)}: expected a {kind.__name__}, got {value!r}")
    if param.options is not None and value not in param.options:
        raise NasError(f"{_where(source, key)}: expected one of {', '.join(map(str, param.options))}, got {value!r}")
    if param.low is not None and not (param.low <= value <= param.high):
        raise NasError(f"{_where(source, key)}: expected a value in [{param.low:g}, {param.high:g}], got {value!r}")
    return value


def check_value(key: str, value: Any, source: str) -> Any:
    """A value for a dotted key of the space language (e.g. 'blocks.normalization'), checked as a space file's
    constant would be: the key must exist, the value its kind, option or range."""
    section, _, name = key.partition(".")
    param = {**SPACE_SCHEMA, **OVERRIDES}.get(section, {}).get(name)
    if param is None:
        raise NasError(f"{source}: unknown key {key!r}; a dotted key of the space language, e.g. blocks.normalization")
    return _check_scalar(value, param, source, key)


def _parse_dimension(name: str, raw: Any, param: Param, source: str) -> Dimension:
    if not isinstance(raw, dict):
        return Dimension(name, param, constant=_check_scalar(raw, param, source, name))
    kinds = [k for k in ("choice", "int", "float") if k in raw]
    if len(kinds) != 1:
        raise NasError(f"{_where(source, name)}: expected a constant or exactly one of choice/int/float, got {raw!r}")
    kind = kinds[0]
    extra = set(raw) - {kind, "step", "sampling"}
    if extra:
        raise NasError(f"{_where(source, name)}: unknown field(s) {', '.join(sorted(extra))}; expected step or sampling")
    if kind == "choice":
        options = raw["choice"]
        if not isinstance(options, list) or not options:
            raise NasError(f"{_where(source, name)}: choice must be a non-empty list, got {options!r}")
        if len(set(map(repr, options))) != len(options):
            raise NasError(f"{_where(source, name)}: choice lists a value twice: {options!r}")
        if set(raw) != {"choice"}:
            raise NasError(f"{_where(source, name)}: step and sampling apply to int and float ranges, not choice")
        values = tuple(_check_scalar(v, param, source, name) for v in options)
        return Dimension(name, param, choice=values)
    if param.kind not in (int, float):
        raise NasError(f"{_where(source, name)}: a {kind} range needs a numeric key; use choice for {param.kind.__name__} values")
    if kind == "int" and param.kind is not int:
        raise NasError(f"{_where(source, name)}: expected a float range for this key, got an int range")
    if kind == "float" and param.kind is not float:
        raise NasError(f"{_where(source, name)}: expected an int range for this key, got a float range")
    bounds = raw[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise NasError(f"{_where(source, name)}: {kind} range must be [min, max], got {bounds!r}")
    low, high = (_check_scalar(b, param, source, name) for b in bounds)
    if low > high:
        raise NasError(f"{_where(source, name)}: range min {low!r} > max {high!r}")
    sampling = raw.get("sampling", "linear")
    if sampling not in ("linear", "log"):
        raise NasError(f"{_where(source, name)}: sampling must be linear or log, got {sampling!r}")
    if sampling == "log" and low <= 0:
        raise NasError(f"{_where(source, name)}: log sampling needs min > 0, got {low!r}")
    step = raw.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
            raise NasError(f"{_where(source, name)}: step must be a number > 0, got {step!r}")
        if kind == "int" and int(step) != step:
            raise NasError(f"{_where(source, name)}: an int range needs an integer step, got {step!r}")
        if sampling == "log":
            raise NasError(f"{_where(source, name)}: use step or log sampling, not both")
    return Dimension(name, param, low=low, high=high, step=step, sampling=sampling)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: one Dimension per key, constants included."""

    name: str
    description: str
    dimensions: dict[str, Dimension]
    sections: frozenset[str]
    source: str
    text: str
    warm_start: tuple[dict[str, Any], ...] = ()

    @property
    def fingerprint(self) -> str:
        """A hash of what the space means (not its comments), so resume can refuse a changed space."""
        meaning = {k: repr(v) for k, v in sorted(self.dimensions.items())}
        if self.warm_start:
            meaning["warm_start"] = repr(self.warm_start)
        return hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()[:16]

    def searched(self) -> list[Dimension]:
        return [d for d in self.dimensions.values() if d.searched]

    def sizes(self, default: int) -> tuple[int, ...]:
        """Every input size a trial may use (each needs a frame cache)."""
        dim = self.dimensions.get("input.image_size")
        if dim is None:
            return (default,)
        if not dim.searched:
            return (dim.constant,)
        if dim.choice is None:
            raise NasError(f"{self.source}: input.image_size: expected a constant or a choice of sizes (each size "
                           "is cached), got a range")
        return tuple(dim.choice)

    def resolve(self, hp) -> dict[str, Any]:
        """All values of one trial, constants and searched ones, registered on `hp` as a side effect."""
        return {name: dim.register(hp) for name, dim in self.dimensions.items()}

    @staticmethod
    def resolve_for_log(values: dict[str, Any]) -> dict[str, Any]:
        """Values as TensorBoard HParams accepts them (bool, number or string)."""
        return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}

    def size_hint(self) -> float:
        """Number of distinct configurations (inf when a float range is continuous)."""
        total = 1.0
        for d in self.searched():
            if d.choice is not None:
                total *= len(d.choice)
            elif d.step:
                total *= math.floor((d.high - d.low) / d.step) + 1
            elif d.param.kind is int:
                total *= d.high - d.low + 1
            else:
                return math.inf
        return total


def parse_space(text: str, source: str = "<space>") -> SearchSpace:
    """Parse and validate a space from YAML text."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NasError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise NasError(f"{source}: expected a mapping of sections (stem, blocks, head, optimizer, loss, autokeras)")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise NasError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; expected: {', '.join(sorted(TOP_KEYS))}")
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise NasError(f"{source}: name must be a non-empty string")
    dims: dict[str, Dimension] = {}
    sections = frozenset(s for s in SPACE_SCHEMA if s in raw)
    if not sections & {"blocks", "autokeras"}:
        raise NasError(f"{source}: a space needs a blocks section (KerasTuner) or an autokeras section")
    for section, params in {**SPACE_SCHEMA, **OVERRIDES}.items():
        table = raw.get(section) or {}
        if not isinstance(table, dict):
            raise NasError(f"{source}: {section} must be a mapping, got {table!r}")
        for key in table:
            if key not in params:
                raise NasError(f"{source}: unknown key {section}.{key}; expected one of: {', '.join(params)}")
        for key, param in params.items():
            dotted = f"{section}.{key}"
            if section in OVERRIDES and key not in table:
                continue
            dims[dotted] = _parse_dimension(dotted, table.get(key, param.default), param, source)
    starts = _parse_warm_start(raw.get("warm_start"), dims, source)
    return SearchSpace(name, str(raw.get("description", "")), dims, sections, source, text, starts)


def _parse_warm_start(raw: Any, dims: dict[str, Dimension], source: str) -> tuple[dict[str, Any], ...]:
    """Each entry fixes some searched keys; the others take their first choice or lower bound (KerasTuner's
    default). Every value must be one the dimension could draw, so a warm start never leaves the space."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise NasError(f"{source}: warm_start must be a list of mappings of dotted keys to values, got {raw!r}")
    searched = {n: d for n, d in dims.items() if d.searched}
    starts = []
    for i, entry in enumerate(raw):
        where = f"warm_start[{i}]"
        values = {}
        for key, dim in searched.items():
            value = entry.get(key, dim.choice[0] if dim.choice is not None else dim.low)
            value = _check_scalar(value, dim.param, source, f"{where}.{key}")
            if dim.choice is not None and value not in dim.choice:
                raise NasError(f"{source}: {where}.{key}: expected one of {', '.join(map(str, dim.choice))}, got {value!r}")
            if dim.choice is None and not dim.low <= value <= dim.high:
                raise NasError(f"{source}: {where}.{key}: expected a value in [{dim.low:g}, {dim.high:g}], got {value!r}")
            values[key] = value
        for key in entry:
            if key not in searched:
                what = "a constant in this space" if key in dims else "not a key of this space"
                raise NasError(f"{source}: {where}.{key}: {what}; warm_start sets searched keys only")
        starts.append(values)
    return tuple(starts)


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise NasError(f"{path}: search-space file not found")
    return parse_space(path.read_text(), str(path))


def trial_values(space: SearchSpace, searched: dict) -> dict:
    """A trial's full configuration: the space's constants plus the trial's searched values."""
    values = {}
    for name, dim in space.dimensions.items():
        if not dim.searched:
            values[name] = dim.constant
        elif name in searched:
            values[name] = searched[name]
        else:
            raise NasError(f"trial has no value for {name}; was the space changed after the search?")
    return values
