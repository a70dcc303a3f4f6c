"""Experiment configuration: a TOML file, validated against one schema, overridable with --set.

Every key the tool understands is declared once in SCHEMA with its type, default and constraint, so an
unknown key, a wrong type or an impossible value is one clear error that names the file and the key.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from nas.errors import NasError

TUNERS = ("random", "bayesian", "hyperband", "autokeras")
TIE_BREAKS = ("pr_auc", "roc_auc", "neg_params", "neg_latency_ms")


@dataclass(frozen=True)
class Key:
    """One config key: its type, default, and a check that returns an error text or None."""

    types: tuple[type, ...]
    default: Any
    check: Callable[[Any], str | None] | None = None
    help: str = ""


def _between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    def check(v):
        bad_lo = v <= lo if lo_open else v < lo
        bad_hi = v >= hi if hi_open else v > hi
        if bad_lo or bad_hi:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            return f"expected a value in {left}{lo}, {hi}{right}, got {v!r}"
        return None

    return check


def _one_of(options: Iterable[str]):
    options = tuple(options)

    def check(v):
        return None if v in options else f"expected one of {', '.join(options)}, got {v!r}"

    return check


def _nonneg(v):
    return None if v >= 0 else f"expected a value >= 0, got {v!r}"


def _positive(v):
    return None if v > 0 else f"expected a value > 0, got {v!r}"


def _split_fractions(v):
    if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return f"expected three numbers [train, val, test], got {v!r}"
    if any(x <= 0 for x in v):
        return f"every fraction must be > 0, got {v!r}"
    if abs(sum(v) - 1.0) > 1e-6:
        return f"fractions must sum to 1, got {v!r} (sum {sum(v):g})"
    return None


def _percentiles(v):
    if len(v) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return f"expected two numbers [low, high], got {v!r}"
    lo, hi = v
    if not 0 <= lo < hi <= 100:
        return f"expected 0 <= low < high <= 100, got {v!r}"
    return None


def _image_size(v):
    return None if 16 <= v <= 1024 else f"expected an input size in pixels between 16 and 1024, got {v!r}"


NUM = (int, float)
SCHEMA: dict[str, dict[str, Key]] = {
    "experiment": {
        "name": Key((str,), None, lambda v: None if v.strip() and "/" not in v else "expected a non-empty name without '/'", "name of the experiment; runs go to results/<name>/"),
        "description": Key((str,), ""),
    },
    "data": {
        "path": Key((str,), None, None, "folder with class folders or a labels.csv"),
        "positive": Key((str,), "positive", None, "label (or folder) name of the positive class"),
        "negative": Key((str,), "negative", None, "label (or folder) name of the negative class"),
        "image_size": Key((int,), 64, _image_size, "square input size the frames are resized to"),
        "split": Key((list,), [0.7, 0.15, 0.15], _split_fractions, "train/val/test fractions"),
        "seed": Key((int,), 0, None, "seed of the split"),
        "clip_percentiles": Key((list,), [0.5, 99.5], _percentiles, "intensity clip before scaling to [0, 1]"),
        "skip_bad": Key((bool,), False, None, "skip unreadable or invalid frames (counted in the log) instead of stopping"),
        "signal": Key((str,), "", None, "name of the signal to classify in files holding several (default: the one named HAADF, else the only image)"),
        "pixel_size_nm": Key(NUM, 0.0, _nonneg, "resample every frame so a model pixel covers this many nm (0: resize whole frames); frames need a pixel size"),
    },
    "search": {
        "space": Key((str,), None, None, "search-space YAML file"),
        "tuner": Key((str,), "random", _one_of(TUNERS)),
        "seed": Key((int,), 1, None, "seed of the tuner and of model initialisation"),
        "batch_size": Key((int,), 32, _positive),
        "max_consecutive_failures": Key((int,), 3, _positive),
        "distribution": Key((str,), "none", _one_of(("none", "mirrored")), "mirrored: each trial on all local GPUs with tf.distribute.MirroredStrategy"),
        "recycle_every": Key((int,), 0, _nonneg, "run trials in worker processes replaced every K trials (TF leaks ~10 MB per fit); 0: in this process"),
        "hyperband_factor": Key((int,), 3, lambda v: None if v >= 2 else f"expected >= 2, got {v!r}"),
        "bayesian_initial_points": Key((int,), 2, _positive),
    },
    "objective": {
        "recall_floor": Key(NUM, 0.9, _between(0.0, 1.0, lo_open=True), "recall the threshold must reach on validation data"),
        "recall_confidence": Key(NUM, 0.0, _between(0.0, 0.999), "0: val recall itself must reach the floor; e.g. 0.9: "
                                 "its one-sided 90% lower bound must (a threshold that holds its recall on new frames)"),
        "tie_break": Key((str,), "pr_auc", _one_of(TIE_BREAKS), "second figure that orders trials with equal objective"),
    },
    "budget": {
        "max_trials": Key((int,), 6, _positive),
        "epochs": Key((int,), 4, _positive),
        "time_budget": Key(NUM, 0, _nonneg, "seconds; 0 means no time limit"),
    },
    "training": {
        "early_stopping_patience": Key((int,), 0, _nonneg, "epochs without improvement before a trial stops; 0 disables"),
        "class_weight": Key((str,), "auto", _one_of(("auto", "none"))),
    },
    "constraints": {
        "max_params": Key((int,), 0, _nonneg, "trials with more parameters are infeasible and never win; 0: no limit"),
        "max_latency_ms": Key(NUM, 0.0, _nonneg, "trials slower per frame at batch 1 are infeasible; 0: no limit"),
    },
    "augment": {
        "flips": Key((bool,), False, None, "random horizontal and vertical flips (label-preserving for HAADF frames)"),
        "rot90": Key((bool,), False, None, "random 90-degree rotations (label-preserving)"),
        "shift": Key(NUM, 0.0, _between(0.0, 0.25), "largest random shift, as a fraction of the frame; can push a particle out of frame"),
        "intensity": Key(NUM, 0.0, _between(0.0, 0.5), "random contrast and brightness jitter, as a fraction"),
        "noise": Key(NUM, 0.0, _between(0.0, 0.5), "extra shot-like noise: std at full intensity, scaling with sqrt(intensity)"),
    },
    "export": {
        "bootstrap": Key((int,), 1000, _nonneg, "bootstrap resamples for the test intervals"),
    },
}
REQUIRED = {("experiment", "name"), ("data", "path"), ("search", "space")}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # TOML true is not a number here
    return isinstance(value, types)


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def validate(raw: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Check a parsed config against SCHEMA and fill defaults; raise NasError naming source and key."""
    if not isinstance(raw, dict):
        raise NasError(f"{source}: expected a TOML table at the top level")
    out: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise NasError(f"{source}: unknown section [{section}]; expected one of: {', '.join(SCHEMA)}")
        if not isinstance(table, dict):
            raise NasError(f"{source}: [{section}] must be a table, got {type(table).__name__}")
        for key in table:
            if key not in SCHEMA[section]:
                raise NasError(
                    f"{source}: unknown key {section}.{key}; expected one of: {', '.join(SCHEMA[section])}"
                )
    for section, keys in SCHEMA.items():
        table = raw.get(section, {})
        out[section] = {}
        for key, spec in keys.items():
            if key not in table:
                if (section, key) in REQUIRED:
                    raise NasError(f"{source}: missing required key {section}.{key}")
                out[section][key] = copy.deepcopy(spec.default)
                continue
            value = table[key]
            if not _type_ok(value, spec.types):
                raise NasError(
                    f"{source}: {section}.{key} must be a {_type_name(spec.types)}, got {value!r}"
                )
            if spec.check is not None and (problem := spec.check(value)):
                raise NasError(f"{source}: {section}.{key}: {problem}")
            out[section][key] = value
    return out


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse one --set KEY=VALUE; the value is TOML (so 0.95, true, "x" and [1, 2] all work)."""
    if "=" not in text:
        raise NasError(f"--set {text!r}: expected KEY=VALUE, for example budget.max_trials=10")
    dotted, value_text = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise NasError(f"--set {text!r}: expected a dotted key SECTION.KEY, for example objective.recall_floor")
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()  # a bare word is taken as a string: --set search.tuner=bayesian
    return parts[0], parts[1], value


@dataclass(frozen=True)
class Experiment:
    """A validated experiment; `values` is the full table with defaults filled in."""

    values: dict[str, dict[str, Any]]
    source: str
    overrides: tuple[str, ...] = ()

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    @property
    def name(self) -> str:
        return self.values["experiment"]["name"]

    def to_toml(self) -> str:
        return tomli_w.dumps(self.values)

    def with_values(self, section: str, key: str, value: Any) -> Experiment:
        raw = copy.deepcopy(self.values)
        raw[section][key] = value
        return Experiment(validate(raw, self.source), self.source, self.overrides)


def load_experiment(path: str | Path, overrides: Iterable[str] = (), *, resolve_paths: bool = True,
                    base: str | Path | None = None) -> Experiment:
    """Read, override and validate an experiment file.

    Relative data and space paths are resolved against `base` (default: the current directory) and stored
    absolute, so the frozen copy in a run folder still points at the same files from anywhere.
    """
    path = Path(path)
    overrides = tuple(overrides)
    source = str(path)
    if not path.is_file():
        raise NasError(f"{source}: experiment file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise NasError(f"{source}: not valid TOML: {exc}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise NasError(f"--set {text!r}: [{section}] is not a table in {source}")
        raw[section][key] = value
    values = validate(raw, source)
    if resolve_paths:
        here = Path(base) if base else Path.cwd()
        for section, key in (("data", "path"), ("search", "space")):
            values[section][key] = str((here / Path(values[section][key]).expanduser()).resolve())
    return Experiment(values, source, overrides)


def diff(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], ignore: Iterable[str] = ()) -> list[str]:
    """Readable differences between two validated configs, as 'section.key: old -> new' lines."""
    ignore = set(ignore)
    lines = []
    for section in sorted(set(old) | set(new)):
        for key in sorted(set(old.get(section, {})) | set(new.get(section, {}))):
            if f"{section}.{key}" in ignore:
                continue
            a, b = old.get(section, {}).get(key), new.get(section, {}).get(key)
            if a != b:
                lines.append(f"{section}.{key}: {a!r} -> {b!r}")
    return lines
