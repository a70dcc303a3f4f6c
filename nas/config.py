"""Experiment configuration: a TOML file, validated against one schema, overridable with --set.

Every key is declared once, as a field of its section's frozen dataclass (type, default, check, help), so
an unknown key, a wrong type or an impossible value is one clear error naming the file and the key, and
code receives typed sections (`exp.objective.recall_floor`), never the raw table.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from nas.errors import NasError

TUNERS = ("random", "bayesian", "hyperband", "autokeras")
TIE_BREAKS = ("pr_auc", "roc_auc", "neg_params", "neg_latency_ms")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
_REQUIRED = object()


def key(default: Any = _REQUIRED, check: Callable[[Any], str | None] | None = None, help: str = ""):
    """One config key: its default (none: required), a check returning an error text or None, a help line."""
    meta = {"check": check, "help": help}
    return field(metadata=meta) if default is _REQUIRED else field(default=default, metadata=meta)


def _between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    def check(v):
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            return f"expected a value in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {v!r}"
        return None

    return check


def _one_of(options: Iterable[str]):
    options = tuple(options)
    return lambda v: None if v in options else f"expected one of {', '.join(options)}, got {v!r}"


def _at_least(lo: float):
    return lambda v: None if v >= lo else f"expected a value >= {lo:g}, got {v!r}"


_nonneg, _positive = _at_least(0), (lambda v: None if v > 0 else f"expected a value > 0, got {v!r}")


def _weights_file(v) -> str | None:
    """The name only: a finished run's frozen experiment stays readable (export, report) after the file has
    moved; a search checks that the file is there before it starts (nas.search.lifecycle)."""
    if v == "" or str(v).endswith((".weights.h5", ".weights.npz")):
        return None
    return f"expected a weights file ending in .weights.h5 (Keras) or .weights.npz (`make pretrained`), got {v!r}"


def _numbers(v, n: int, what: str) -> str | None:
    if len(v) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return f"expected {what}, got {list(v)!r}"
    return None


def _split_fractions(v):
    if problem := _numbers(v, 3, "three numbers [train, val, test]"):
        return problem
    if any(x <= 0 for x in v):
        return f"every fraction must be > 0, got {list(v)!r}"
    if abs(sum(v) - 1.0) > 1e-6:
        return f"fractions must sum to 1, got {list(v)!r} (sum {sum(v):g})"
    return None


def _percentiles(v):
    if problem := _numbers(v, 2, "two numbers [low, high]"):
        return problem
    return None if 0 <= v[0] < v[1] <= 100 else f"expected 0 <= low < high <= 100, got {list(v)!r}"


def _image_size(v):
    return None if 16 <= v <= 1024 else f"expected an input size in pixels between 16 and 1024, got {v!r}"


def _folds(v):
    return None if v == 0 or 2 <= v <= 20 else f"expected 0 (one train/val split) or 2 to 20 folds, got {v!r}"


@dataclass(frozen=True, kw_only=True)
class ExperimentSection:
    name: str = key(check=lambda v: None if v.strip() and "/" not in v else "expected a non-empty name without '/'",
                    help="name of the experiment; runs go to results/<name>/")
    description: str = key("")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    path: str = key(help="folder with class folders or a labels.csv")
    positive: str = key("positive", help="label (or folder) name of the positive class")
    negative: str = key("negative", help="label (or folder) name of the negative class")
    image_size: int = key(64, _image_size, "square input size the frames are resized to")
    split: tuple[float, ...] = key((0.7, 0.15, 0.15), _split_fractions, "train/val/test fractions")
    seed: int = key(0, help="seed of the split")
    clip_percentiles: tuple[float, ...] = key((0.5, 99.5), _percentiles, "intensity clip before scaling to [0, 1]")
    skip_bad: bool = key(False, help="skip unreadable or invalid frames (counted in the log) instead of stopping")
    signal: str = key("", help="name of the signal to classify in files holding several (default: the one named HAADF, "
                      "else the only image)")
    pixel_size_nm: float = key(0.0, _nonneg, "resample every frame so a model pixel covers this many nm (0: resize "
                               "whole frames); frames need a pixel size")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    space: str = key(help="search-space YAML file")
    tuner: str = key("random", _one_of(TUNERS))
    seed: int = key(1, help="seed of the tuner and of model initialisation")
    batch_size: int = key(32, _positive)
    max_consecutive_failures: int = key(3, _positive)
    distribution: str = key("none", _one_of(("none", "mirrored")),
                            "mirrored: each trial on all local GPUs with tf.distribute.MirroredStrategy")
    recycle_every: int = key(0, _nonneg, "run trials in worker processes replaced every K trials; 0: in this process")
    recycle_memory_mb: float = key(64.0, _nonneg, "with recycle_every: a worker also hands over once its resident memory "
                                   "grew this much since its first trial (a process keeps the memory high-water mark of the largest models it trained; a fresh one returns it); 0: off")
    hyperband_factor: int = key(3, _at_least(2))
    bayesian_initial_points: int = key(2, _positive)
    precision: str = key("float32", _one_of(PRECISIONS), "arithmetic of training: float32, mixed_bfloat16, or auto "
                         "(bfloat16 where the processor has native units and a short probe shows it faster)")
    cost_aware: bool = key(False, help="propose by expected improvement per predicted second (Gaussian process, "
                           "search.tuner bayesian), and never a trial predicted not to finish its folds before the "
                           "time budget ends (bayesian or random); see nas/search/costs.py")
    noise_aware: bool = key(False, help="with cost_aware: the Gaussian process behind its proposals models noisy "
                            "scores (a length scale per hyperparameter and a fitted noise term) instead of KerasTuner's "
                            "isotropic, noise-free one; see nas.ktadapter.noise_aware_process")
    cost_cooling: bool = key(False, help="with cost_aware: divide expected improvement by cost^a, a falling from 1 when "
                             "the Gaussian process takes over to 0 at the time budget's end (or the last trial): cheap trials "
                             "early, the expected best late (CArBO); with KerasTuner's process it changes nothing, "
                             "use it with noise_aware")
    checkpoint_every_s: float = key(0.0, _nonneg, "write the running trial's epoch checkpoint at most this often "
                                    "(seconds; 0: after every epoch); a stop or the deadline always writes one")


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    recall_floor: float = key(0.9, _between(0.0, 1.0, lo_open=True), "recall the threshold must reach on validation data")
    recall_confidence: float = key(0.0, _between(0.0, 0.999), "0: val recall itself must reach the floor; e.g. 0.9: "
                                   "its one-sided 90% lower bound must (a threshold that holds its recall on new frames)")
    tie_break: str = key("pr_auc", _one_of(TIE_BREAKS), "second figure that orders trials with equal objective")
    folds: int = key(0, _folds, "0: one train/val split; K: K-fold cross-validated selection over train+val, "
                     "grouped by the group column, each trial scored on its pooled out-of-fold probabilities")
    racing: bool = key(True, help="under cross-validation, stop a trial after a fold once it cannot beat the incumbent")


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    max_trials: int = key(6, _positive)
    epochs: int = key(4, _positive)
    time_budget: float = key(0, _nonneg, "seconds; 0 means no time limit")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    early_stopping_patience: int = key(0, _nonneg, "epochs without improvement before a trial stops; 0 disables")
    class_weight: str = key("auto", _one_of(("auto", "session", "none")))
    init_weights: str = key("", _weights_file, "a Keras .weights.h5 file (an earlier run's RUN/trials/<id>/best.weights.h5, "
                            "or .../fold-0/... under cross-validation) or a .weights.npz (`make pretrained`) that every "
                            "trial whose network has the same layers starts from instead of random weights; others start "
                            "fresh. Empty: none")


@dataclass(frozen=True, kw_only=True)
class ConstraintsConfig:
    max_params: int = key(0, _nonneg, "trials with more parameters are infeasible and never win; 0: no limit")
    max_latency_ms: float = key(0.0, _nonneg, "trials slower per frame at batch 1 are infeasible; 0: no limit")


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    flips: bool = key(False, help="random horizontal and vertical flips (label-preserving for HAADF frames)")
    rot90: bool = key(False, help="random 90-degree rotations (label-preserving)")
    shift: float = key(0.0, _between(0.0, 0.25), "largest random shift, as a fraction of the frame; can push a particle out of frame")
    intensity: float = key(0.0, _between(0.0, 0.5), "random contrast and brightness jitter, as a fraction")
    noise: float = key(0.0, _between(0.0, 0.5), "extra shot-like noise: std at full intensity, scaling with sqrt(intensity)")
    blur: float = key(0.0, _between(0.0, 2.0), "Gaussian blur of up to this sigma (input pixels) on half the frames: probe sharpness")
    scale: float = key(0.0, _between(0.0, 0.3), "zoom by up to this fraction in or out on half the frames: magnification")
    tta: bool = key(False, help="test-time augmentation: predictions (validation, out-of-fold, the export) are the mean over "
                    "the 8 flips and turns of each frame")


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    bootstrap: int = key(1000, _nonneg, "bootstrap resamples for the test intervals")


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: one typed section per TOML table; functions take the section they use."""

    experiment: ExperimentSection
    data: DataConfig
    search: SearchConfig
    objective: ObjectiveConfig
    budget: BudgetConfig
    training: TrainingConfig
    constraints: ConstraintsConfig
    augment: AugmentConfig
    export: ExportConfig
    source: str = ""
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def values(self) -> dict[str, dict[str, Any]]:
        """The full table, defaults filled in, as TOML would hold it."""
        return {s: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(self, s)).items()}
                for s in SECTIONS}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.values)

    def with_values(self, section: str, key: str, value: Any) -> Experiment:
        raw = copy.deepcopy(self.values)
        raw[section][key] = value
        return build(raw, self.source, self.overrides)


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Experiment)[f.name] for f in dataclasses.fields(Experiment)
                             if f.name not in ("source", "overrides")}
_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list"}


def _accepted(annotation: Any) -> tuple[type, ...]:
    """The Python types a TOML value may have for a field of this annotation."""
    if annotation is float:
        return (int, float)
    if typing.get_origin(annotation) is tuple:
        return (list, tuple)
    return (annotation,)


def _check_key(source: str, section: str, name: str, f: dataclasses.Field, annotation: Any, value: Any) -> Any:
    types = _accepted(annotation)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types if t is not tuple)
        raise NasError(f"{source}: {section}.{name} must be a {names}, got {value!r}")
    if (check := f.metadata.get("check")) and (problem := check(value)):
        raise NasError(f"{source}: {section}.{name}: {problem}")
    return tuple(value) if isinstance(value, list) else value


def _section(source: str, section: str, table: dict[str, Any]) -> Any:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in table:
        if name not in known:
            raise NasError(f"{source}: unknown key {section}.{name}; expected one of: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name in table:
            values[name] = _check_key(source, section, name, f, hints[name], table[name])
        elif f.default is dataclasses.MISSING:
            raise NasError(f"{source}: missing required key {section}.{name}")
    return cls(**values)


def build(raw: dict[str, Any], source: str, overrides: Iterable[str] = ()) -> Experiment:
    """Check a parsed config, fill defaults, and return the typed Experiment; NasError names source and key."""
    if not isinstance(raw, dict):
        raise NasError(f"{source}: expected a TOML table at the top level")
    for section, table in raw.items():
        if section not in SECTIONS:
            raise NasError(f"{source}: unknown section [{section}]; expected one of: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise NasError(f"{source}: [{section}] must be a table, got {type(table).__name__}")
    for section in ("experiment", "data", "search"):  # required keys live there: report them in this order
        raw.setdefault(section, {})
    sections = {s: _section(source, s, raw.get(s, {})) for s in SECTIONS}
    return Experiment(**sections, source=source, overrides=tuple(overrides))


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
        section, name, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise NasError(f"--set {text!r}: [{section}] is not a table in {source}")
        raw[section][name] = value
    if resolve_paths:
        here = Path(base) if base else Path.cwd()
        for section, name in (("data", "path"), ("search", "space"), ("training", "init_weights")):
            value = raw.get(section, {}).get(name)
            if isinstance(value, str) and (value or name != "init_weights"):  # empty: no initial weights
                raw[section][name] = str((here / Path(value).expanduser()).resolve())
    return build(raw, source, overrides)


def diff(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], ignore: Iterable[str] = ()) -> list[str]:
    """Readable differences between two validated configs, as 'section.key: old -> new' lines."""
    ignore = set(ignore)
    lines = []
    for section in sorted(set(old) | set(new)):
        for name in sorted(set(old.get(section, {})) | set(new.get(section, {}))):
            if f"{section}.{name}" in ignore:
                continue
            a, b = old.get(section, {}).get(name), new.get(section, {}).get(name)
            if a != b:
                lines.append(f"{section}.{name}: {a!r} -> {b!r}")
    return lines
