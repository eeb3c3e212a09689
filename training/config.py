"""Training configuration: typed dataclasses loaded from YAML, with ``key=value`` overrides.

Unknown keys are errors (a typo never becomes a new key silently). The resolved configuration is
saved into the run folder as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ConfigError
from core.preprocess import PreprocessSpec
from index.ranking import DEFAULT_NEW_WHALE_SHARE


@dataclass
class DataConfig:
    """Where the photos are and how validation is split off (by identity).

    Attributes:
        images: folder of photos.
        labels: CSV with ``Image,Id`` (Kaggle) or ``image,whale_id`` columns; ``new_whale`` rows are
            never a class, ``unknown`` rows are ignored.
        boxes: optional CSV ``image,x0,y0,x1,y1`` (pixels of the stored photos).
        extra_labels: pseudo-label CSVs (``whaleid pseudo-label``): used for training only, never scored.
        val_open_fraction: share of identities held out whole (their photos must be answered new_whale).
        val_closed_fraction: share of identities with >= 2 photos that lose one photo to validation.
        val_new_whale_fraction: share of ``new_whale`` photos used as validation queries.
        max_images: keep at most this many labelled photos (0: all), chosen at random (seeded).
        flip_identities: a horizontally flipped photo is a different identity (classes doubled).
        new_whale_negatives: with the binary head, train on the new_whale photos not used for
            validation as negatives of every class (1st place).
        cache_max_side_px: photos are cached in memory downscaled to this longest side (0: no cache).
        num_workers: DataLoader worker processes.
    """

    images: str = ""
    labels: str = ""
    boxes: str | None = None
    extra_labels: list[str] = field(default_factory=list)
    val_open_fraction: float = 0.15
    val_closed_fraction: float = 0.5
    val_new_whale_fraction: float = 1.0
    max_images: int = 0
    flip_identities: bool = True
    new_whale_negatives: bool = True
    cache_max_side_px: int = 512
    num_workers: int = 0


@dataclass
class ModelConfig:
    """The embedding network (timm backbone + neck) and its input contract.

    Attributes:
        backbone: any timm model name (``densenet121``, ``resnet18``, ``legacy_senet154``...).
        pretrained: ``False`` (random init), ``True`` (timm's hub; random init with a warning when
            offline), ``pip:efficientnet-lite0`` (also ``-lite1``, ``-lite2``: ImageNet weights from
            an installed package, offline; ``training.pretrained``) or the path of a local weights file.
        init_from: an ``EmbeddingNet`` state dict (backbone + neck, e.g. ``starter/embedding.pt``) to
            fine-tune from; overrides ``pretrained``.
        embedding_dim: output dimension of the neck.
        dropout: dropout of the neck (0.5 in the 3rd-place recipe).
        input_size: ``[H, W]`` in pixels.
        mean, std, interpolation: preprocessing, written to the manifest.
    """

    backbone: str = "densenet121"
    pretrained: bool | str = False
    init_from: str | None = None
    embedding_dim: int = 512
    dropout: float = 0.5
    input_size: list[int] = field(default_factory=lambda: [256, 512])
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    interpolation: Literal["bilinear", "bicubic", "lanczos", "nearest"] = "bilinear"


@dataclass
class HeadConfig:
    """The training head (never exported).

    Attributes:
        kind: ``arcface`` (additive angular margin), ``cosface`` (additive cosine margin) or
            ``binary`` (a sigmoid per identity, 1st place).
        scale: logit scale ``s``.
        margin_rad: ArcFace margin ``m`` in radians (0.5 in the 3rd-place recipe); for CosFace the
            cosine margin.
        margin_warmup_epochs: ``m`` rises linearly from 0 over these epochs (0: full margin at once).
    """

    kind: Literal["arcface", "cosface", "binary"] = "arcface"
    scale: float = 30.0
    margin_rad: float = 0.5
    margin_warmup_epochs: float = 0.0


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up then cosine), per stage.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: peak learning rate of the backbone.
        head_lr_mult: the head's learning rate is ``lr * head_lr_mult``.
        weight_decay: 5e-4 in the 3rd-place recipe.
        warmup_epochs: linear warm-up length (fractions allowed).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        batch_size: photos per step (per process under DDP).
        grad_clip: clip the gradient norm at this value (0: off).
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 3e-4
    head_lr_mult: float = 10.0
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    batch_size: int = 32
    grad_clip: float = 5.0


@dataclass
class StageConfig:
    """One training stage (1st place: stage 1 on well-photographed whales, stage 2 on all).

    Attributes:
        name: label in logs.
        epochs: length of the stage.
        min_images: identities with at least this many photos are classes (1: all).
        freeze: backbone parameter-name prefixes frozen in this stage (e.g. ``features.conv0``,
            ``features.denseblock1``); BatchNorm statistics of frozen modules are frozen too.
        lr_mult: multiplies ``optim.lr`` for this stage.
    """

    name: str = "stage1"
    epochs: float = 10.0
    min_images: int = 2
    freeze: list[str] = field(default_factory=list)
    lr_mult: float = 1.0


@dataclass
class AugmentConfig:
    """Training augmentation of the box crop (3rd-place list). Probabilities in ``[0, 1]``."""

    box_jitter: float = 0.1
    affine_p: float = 0.7
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    translate: float = 0.05
    rotate_deg: float = 10.0
    shear_deg: float = 8.0
    blur_p: float = 0.2
    add_p: float = 0.3
    multiply_p: float = 0.3
    grayscale_p: float = 0.3


@dataclass
class EvalConfig:
    """Validation: centroid gallery, multi-box TTA, threshold rules.

    Attributes:
        every_epochs: evaluate after every this many epochs of the last stage (0: only at the end).
        tta: ``default`` (5 boxes) or ``single`` (the base box only).
        new_whale_share: target share for the ``new_whale_share`` threshold rule (0.276 on Kaggle 2019).
        threshold_rule: which rule's threshold is saved as the model's threshold.
        batch_boxes: boxes per forward pass.
    """

    every_epochs: float = 0.0
    tta: Literal["default", "single"] = "default"
    new_whale_share: float = DEFAULT_NEW_WHALE_SHARE
    threshold_rule: Literal["max_map5", "new_whale_share"] = "max_map5"
    batch_boxes: int = 128


@dataclass
class TrainConfig:
    """Everything ``whaleid train`` needs.

    Attributes:
        run_dir: output folder (checkpoints, metrics, resolved config).
        seed: seeds Python, NumPy and torch, and the data split.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp, channels_last: used on CUDA only.
        max_steps: stop after this many optimiser steps in total (0: no limit; for tests).
        checkpoint_every_steps: also checkpoint every this many steps (0: at epoch ends only).
        threads: torch intra-op threads on the CPU (0: torch's default).
    """

    run_dir: str = "runs/whaleid"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    max_steps: int = 0
    checkpoint_every_steps: int = 0
    log_every_steps: int = 10
    threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    eval: EvalConfig = field(default_factory=EvalConfig)


def _resolve_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)], True
    return [tp], False


def _coerce(value: Any, tp, where: str):
    """Build a value of type ``tp`` from YAML data, checking types strictly."""
    options, optional = _resolve_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    errors = []
    for opt in options:
        origin = typing.get_origin(opt)
        try:
            if dataclasses.is_dataclass(opt):
                return from_dict(opt, value, where)
            if origin is list:
                (item,) = typing.get_args(opt)
                if not isinstance(value, list):
                    raise ConfigError(f"{where}: expected a list, got {value!r}")
                return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
            if origin is Literal:
                if value not in typing.get_args(opt):
                    raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(opt))}")
                return value
            if opt is bool:
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}: expected true or false, got {value!r}")
                return value
            if opt is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{where}: expected a number, got {value!r}")
                return float(value)
            if opt is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{where}: expected an integer, got {value!r}")
                return value
            if opt is str:
                if not isinstance(value, str):
                    raise ConfigError(f"{where}: expected a string, got {value!r}")
                return value
            raise ConfigError(f"{where}: unsupported type {opt}")
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0] if len(errors) == 1 else ConfigError("; ".join(str(e) for e in errors))


def from_dict(cls, data: Any, where: str = "config"):
    """Build dataclass ``cls`` from a mapping; unknown keys raise with close-match suggestions.

    Raises:
        ConfigError: unknown key, wrong type or invalid choice (the message gives the key path).
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place.

    List items are addressed by index: ``stages.0.epochs=3``.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    path, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw)
    keys = path.strip().split(".")
    node: Any = data
    for k in keys[:-1]:
        if isinstance(node, list):
            node = node[int(k)]
        else:
            node = node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML config (defaults when ``path`` is None) and apply ``key=value`` overrides.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type.
    """
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    base = to_dict(from_dict(TrainConfig, data))
    for ov in overrides or []:
        apply_override(base, ov)
    return from_dict(TrainConfig, base)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    from core.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def preprocess_spec(cfg: TrainConfig) -> PreprocessSpec:
    """The preprocessing of ``cfg``'s model (input size, mean, std, interpolation): the manifest's contract."""
    m = cfg.model
    return PreprocessSpec(
        input_size=tuple(m.input_size), mean=tuple(m.mean), std=tuple(m.std), interpolation=m.interpolation
    )
