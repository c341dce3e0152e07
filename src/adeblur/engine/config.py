"""Training configurations: YAML files checked against a typed schema before anything runs.

A config is a tree of dataclasses (:class:`TrainingConfig` at the root). :func:`load_config` reads a
YAML file, applies ``--set key=value`` overrides and validates every key and type: an unknown key (with a
suggestion), a wrong type or an impossible value is a one-line :class:`~adeblur.errors.ConfigError`
naming the key, never a silent default. docs/training.md lists every key; ``configs/`` holds one file
per trainable setup.

YAML 1.1 (PyYAML) reads ``1e-3`` as a *string*; the loader here reads it as the float everybody means.
Relative paths in a config are relative to the current working directory; ``~`` and ``$VARIABLES`` are
expanded.

>>> config = config_from_dict({"name": "demo", "model": {"name": "nafnet-lite"}, "steps": 10,
...                            "data": {"train": [{"type": "synthetic"}]}})
>>> config.optimizer.name, config.data.batch_size, config.data.train[0].kind
('adamw', 8, 'local')
>>> config_from_dict({"name": "demo", "model": {"name": "nafnet-lite"}, "steps": 10, "stpes": 3,
...                   "data": {"train": [{"type": "synthetic"}]}})
Traceback (most recent call last):
...
adeblur.errors.ConfigError: config: unknown key 'stpes' (did you mean 'steps'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from adeblur.errors import ConfigError

__all__ = [
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PoolConfig",
    "ScheduleConfig",
    "SourceConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_yaml_value",
]

SOURCE_TYPES = ("synthetic", "paired", "gopro", "hide", "realblur", "reloblur")


@dataclass
class ModelConfig:
    """The network: a registered model name and options overriding its registered defaults."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """The training loss.

    ``auto``: ``m2aenet`` (Eq. 7: reconstruction + 0.01 mask CE + reblur) for M2AENet models,
    ``adaptive-sampling`` (per-stage supervision, then REINFORCE on the policy heads; TPAMI Sec. 3.1.1)
    for saphnet-as / dmphn-as models, else ``reconstruction`` (L1 + (1 - SSIM) + 0.1 FFT, Eq. 8).
    ``l1`` and ``mse`` (DMPHN's loss) are plain; ``psnr`` is NAFNet's PSNR loss (minus the mean
    per-image PSNR). ``options`` go to the loss (e.g. ``fft_weight``,
    ``mask_weight``, ``tv_weight``; ``pretrain_steps``, ``baseline``: see
    :class:`~adeblur.losses.AdaptiveSamplingLoss`).
    """

    name: Literal["auto", "m2aenet", "adaptive-sampling", "reconstruction", "l1", "mse", "psnr"] = "auto"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceConfig:
    """One training or validation source.

    ``synthetic``: sharp images blurred on the fly (``images``: folders and/or files; none = dead leaves),
    ``kind`` local, global or mixed; ``options`` are :class:`~adeblur.data.synthetic.SyntheticBlurDataset`
    keywords (``local_options``, ``global_options``, ``global_fraction``). A file layout (``paired``,
    ``gopro``, ``hide``, ``realblur``, ``reloblur``) reads ``root`` (``split`` where the layout has
    splits); ``options`` go to its reader (e.g. ``mask_root``). ``weight``: share of the training samples
    drawn from this source (the M2AENet paper mixes GoPro and ReLoBlur 1:1).
    """

    type: Literal["synthetic", "paired", "gopro", "hide", "realblur", "reloblur"]
    root: str | None = None
    images: list[str] | None = None
    kind: Literal["local", "global", "mixed"] = "local"
    split: str | None = None
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolConfig:
    """Generated pairs kept in memory and reused, so the CPU trains the model instead of making data.

    ``size`` pairs (0: no pool, every step gets fresh pairs); every ``reuse`` steps one fresh batch
    replaces the oldest batch of the pool, so each pair is used about ``reuse`` times (each time with
    a random flip/rotation when ``data.augment``).
    """

    size: int = 0
    reuse: int = 4


@dataclass
class DataConfig:
    """Where training and validation pairs come from and how they are batched."""

    train: list[SourceConfig]
    val: SourceConfig | None = None
    val_count: int | None = 32
    val_size: int | None = 256
    patch_size: int = 256
    crop: Literal["random", "blur-aware"] = "random"
    augment: bool = True
    batch_size: int = 8
    workers: int = 0
    synthesize_on: Literal["device", "loader"] = "device"
    pool: PoolConfig = field(default_factory=PoolConfig)


@dataclass
class OptimizerConfig:
    """The optimiser (``adam``, ``adamw`` or ``sgd``) and its hyper-parameters."""

    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """The learning rate as a function of the step: ``constant``, ``cosine`` (to ``min_lr`` at the last
    step) or ``step`` (times ``gamma`` every ``step_size`` steps); optional linear warm-up."""

    name: Literal["constant", "cosine", "step"] = "cosine"
    min_lr: float = 0.0
    step_size: int | None = None
    gamma: float = 0.5
    warmup_steps: int = 0


@dataclass
class TrainingConfig:
    """A whole training run (the root of a YAML config)."""

    name: str
    model: ModelConfig
    data: DataConfig
    steps: int
    seed: int = 0
    output: str | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float | None = None
    ema_decay: float | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    threads: int | None = None
    log_every: int = 50
    val_every: int = 1000
    checkpoint_every: int = 1000
    keep_last: int = 3
    best_metric: Literal["auto", "psnr", "ssim", "psnr_w", "ssim_w"] = "auto"

    @property
    def run_dir(self) -> Path:
        """The run's folder: ``output``, or ``runs/<name>``."""
        return Path(self.output) if self.output else Path("runs") / self.name


# --- YAML --------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``2E5`` (no dot, YAML 1.2 style) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml_value(text: str) -> Any:
    """Read one ``--set`` value as YAML: ``3`` -> 3, ``1e-3`` -> 0.001, ``[0.9, 0.9]`` -> list, ``null``.

    >>> parse_yaml_value("1e-3"), parse_yaml_value("[0.9, 0.9]"), parse_yaml_value("cosine")
    (0.001, [0.9, 0.9], 'cosine')
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot read value {text!r}: {_one_line_yaml_error(error)}") from None


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainingConfig:
    """Read a YAML config, apply ``key=value`` overrides (dotted keys, list items by index), validate.

    Raises:
        ConfigError: missing or unreadable file, invalid YAML, unknown keys, wrong types or values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {_one_line_yaml_error(error)}") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(data).__name__}")
    return config_from_dict(apply_overrides(data, overrides))


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``"a.b.c=value"`` set (value read by :func:`parse_yaml_value`).

    >>> apply_overrides({"data": {"train": [{"weight": 1}]}}, ["data.train.0.weight=2", "steps=5"])
    {'data': {'train': [{'weight': 2}]}, 'steps': 5}
    """
    data = _deep_copy(data)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {override!r}")
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {where!r} is not an item of a list of {len(node)}")
                if last:
                    node[int(part)] = parse_yaml_value(text)
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = parse_yaml_value(text)
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])!r} is not a mapping")
    return data


# --- validation --------------------------------------------------------------------------------


def config_from_dict(data: Mapping[str, Any]) -> TrainingConfig:
    """Validate a plain dict (as read from YAML) into a :class:`TrainingConfig`."""
    config = _build(TrainingConfig, data, "")
    _check_values(config)
    return config


def config_to_dict(config: Any) -> Any:
    """The config as plain JSON/YAML data (tuples become lists); :func:`config_from_dict` inverts it."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(item) for item in config]
    if isinstance(config, dict):
        return {key: config_to_dict(value) for key, value in config.items()}
    return config


def _build(cls: type, data: Any, where: str) -> Any:
    label = where or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: expected a mapping of keys, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{label}: unknown key {_join(where, key)!r}{hint}")
    values = {}
    for name, spec in fields.items():
        key = _join(where, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], key)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config: missing key {key!r}")
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError as error:
                errors.append(error)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"config key {key!r}: expected {_type_name(hint)}, got {_describe(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {_describe(value)}")
        return [_convert(args[0], item, f"{key}.{i}") for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected a list of {len(args)} values, got {_describe(value)}")
        return tuple(_convert(arg, item, f"{key}.{i}") for i, (arg, item) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {_describe(value)}")
        return value
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config schema: unsupported type {hint!r} for {key}")  # a bug in the schema


def _check_values(config: TrainingConfig) -> None:
    """Checks of values the types cannot express, each naming its key."""

    def positive(key: str, value: float | None, *, allow_zero: bool = False) -> None:
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            raise ConfigError(f"config key {key!r}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    from adeblur.models import list_models

    models = {spec.name: spec for spec in list_models()}
    spec = models.get(config.model.name)
    if spec is None:
        raise ConfigError(f"config key 'model.name': unknown model {config.model.name!r}; known: {', '.join(models)}")
    if not spec.trainable:
        raise ConfigError(f"config key 'model.name': model {config.model.name!r} has nothing to train")
    unknown = sorted(set(config.model.options) - set(spec.options()))
    if unknown:
        raise ConfigError(
            f"config key 'model.options': {config.model.name!r} has no option {unknown[0]!r}; "
            f"options: {', '.join(spec.options())}"
        )
    if not config.name or "/" in config.name or config.name.startswith("."):
        raise ConfigError(f"config key 'name': must be a plain run name (no '/'), got {config.name!r}")
    for key in ("steps", "log_every", "val_every", "checkpoint_every", "keep_last"):
        positive(key, getattr(config, key))
    positive("threads", config.threads)
    positive("grad_clip", config.grad_clip)
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ConfigError(f"config key 'ema_decay': must be in (0, 1), got {config.ema_decay}")
    positive("optimizer.lr", config.optimizer.lr)
    positive("optimizer.weight_decay", config.optimizer.weight_decay, allow_zero=True)
    positive("optimizer.eps", config.optimizer.eps)
    for i, beta in enumerate(config.optimizer.betas):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"config key 'optimizer.betas.{i}': must be in [0, 1), got {beta}")
    schedule = config.schedule
    positive("schedule.min_lr", schedule.min_lr, allow_zero=True)
    positive("schedule.warmup_steps", schedule.warmup_steps, allow_zero=True)
    positive("schedule.gamma", schedule.gamma)
    if schedule.name == "step" and schedule.step_size is None:
        raise ConfigError("config key 'schedule.step_size': required by the 'step' schedule")
    positive("schedule.step_size", schedule.step_size)
    data = config.data
    if not data.train:
        raise ConfigError("config key 'data.train': needs at least one source")
    for i, source in enumerate(data.train):
        _check_source(source, f"data.train.{i}")
        positive(f"data.train.{i}.weight", source.weight)
    if data.val is not None:
        _check_source(data.val, "data.val")
    positive("data.val_count", data.val_count)
    positive("data.val_size", data.val_size)
    positive("data.patch_size", data.patch_size)
    positive("data.batch_size", data.batch_size)
    positive("data.workers", data.workers, allow_zero=True)
    positive("data.pool.size", data.pool.size, allow_zero=True)
    positive("data.pool.reuse", data.pool.reuse)
    if 0 < data.pool.size < data.batch_size:
        raise ConfigError(
            f"config key 'data.pool.size': must be 0 or at least data.batch_size ({data.batch_size}), "
            f"got {data.pool.size}"
        )


def _check_source(source: SourceConfig, key: str) -> None:
    if source.type == "synthetic":
        if source.root is not None:
            raise ConfigError(f"config key '{key}.root': synthetic sources take 'images' (folders or files), not 'root'")
        if source.split is not None:
            raise ConfigError(f"config key '{key}.split': synthetic sources have no splits")
    else:
        if source.root is None:
            raise ConfigError(f"config key '{key}.root': a {source.type} source needs the dataset folder")
        if source.images is not None:
            raise ConfigError(f"config key '{key}.images': only synthetic sources take 'images'")


def expand_path(path: str) -> Path:
    """``~`` and ``$VARIABLES`` expanded; relative paths stay relative to the working directory."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(hint: Any) -> str:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    names = [getattr(arg, "__name__", str(arg)) for arg in args]
    return " or ".join(names) + (" or null" if type(None) in typing.get_args(hint) else "")


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(item) for item in data]
    return data


def _one_line_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())
