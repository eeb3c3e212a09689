"""The embedding network: a timm backbone built by name, then the 3rd-place neck.

``EmbeddingNet`` = backbone (``timm.create_model(name, num_classes=0)``, global average pool) →
BatchNorm1d → Dropout(0.5) → Linear → BatchNorm1d → L2 normalisation; 512-d by default
(3rd-place solution of the Kaggle 2019 Humpback Whale Identification competition, DenseNet121 +
ArcFace). Only this network is exported; the head that trains it (:mod:`training.heads`) owns the
class centres and stays behind.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from training.config import ModelConfig
from training.pretrained import check_normalisation, create_pip_backbone, is_pip_source

log = logging.getLogger(__name__)


def create_backbone(name: str, pretrained: bool | str = False) -> nn.Module:
    """Build a timm backbone by name with its classifier removed (``num_classes=0``, pooled output).

    Args:
        name: a timm model name, e.g. ``densenet121``.
        pretrained: ``False``: random init. ``pip:NAME`` (e.g. ``pip:efficientnet-lite0``): ImageNet
            weights shipped by an installed package (:mod:`training.pretrained`, works offline). A
            path: weights loaded from that local file (``pretrained_cfg_overlay=dict(file=...)``).
            ``True``: timm's hub; when that fails (offline, ``HF_HUB_OFFLINE=1``) a warning is logged
            and the weights stay random.

    Raises:
        ConfigError: unknown model name (the message lists close names), a missing weights file, or
            a ``pip:`` source whose package is not installed or does not fit ``name``.
    """
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"unknown backbone {name!r}; close timm names: {close or 'none'} (see timm.list_models())")
    if is_pip_source(pretrained):
        return create_pip_backbone(name, pretrained, num_classes=0)
    if isinstance(pretrained, str) and pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(f"pretrained weights file {path} does not exist")
        return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)})
    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as exc:  # hub unreachable, offline mode, missing weights
            log.warning("could not load pretrained %s weights (%s); using random init", name, str(exc)[:200])
    else:
        log.warning("backbone %s starts from random weights (model.pretrained is false)", name)
    return timm.create_model(name, pretrained=False, num_classes=0)


def pooled_features(backbone: nn.Module) -> int:
    """Width of a timm backbone's pooled output (``num_classes=0``): ``head_hidden_size`` when the model
    has a head stage after pooling (e.g. MobileNetV3's 1280-d ``conv_head``), else ``num_features``."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


class EmbeddingNet(nn.Module):
    """Backbone → BN → dropout → FC → BN → L2-normalised embedding.

    Input ``(n, 3, H, W) float32`` normalised as the manifest says; output ``(n, embedding_dim)
    float32`` with unit L2 norm.
    """

    def __init__(self, backbone: nn.Module, embedding_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        features = pooled_features(backbone)
        self.neck = nn.Sequential(
            nn.BatchNorm1d(features),
            nn.Dropout(dropout),
            nn.Linear(features, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )
        self.embedding_dim = embedding_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The neck's output before normalisation, ``(n, embedding_dim)``."""
        return self.neck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(x).float(), dim=1)


def build_embedding_net(cfg: ModelConfig) -> EmbeddingNet:
    """The one factory for embedding networks: any timm backbone name plus the neck.

    With ``cfg.init_from`` (a bundle such as ``starter/``, its ``model.onnx``, or a ``.pt`` state dict)
    the whole network, backbone and neck, starts from those weights (:func:`load_init_weights`).

    Raises:
        ConfigError: see :func:`create_backbone`; a ``pip:`` source whose normalisation differs from
            ``cfg.mean``/``cfg.std``; an ``init_from`` file that is missing or does not fit.
    """
    check_normalisation(cfg.pretrained, cfg.mean, cfg.std)
    pretrained = False if cfg.init_from else cfg.pretrained
    net = EmbeddingNet(create_backbone(cfg.backbone, pretrained), cfg.embedding_dim, cfg.dropout)
    if cfg.init_from:
        load_init_weights(net, cfg.init_from)
    return net


def freeze_prefixes(model: EmbeddingNet, prefixes: list[str]) -> int:
    """Freeze backbone parameters whose name starts with one of ``prefixes`` (and their BatchNorms).

    Returns:
        Number of parameters frozen.

    Raises:
        ConfigError: a prefix that matches nothing (lists the top-level names).
    """
    for p in model.parameters():
        p.requires_grad_(True)
    frozen = 0
    names = [n for n, _ in model.backbone.named_parameters()]
    for prefix in prefixes:
        hits = [n for n in names if n.startswith(prefix)]
        if not hits:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"freeze prefix {prefix!r} matches no backbone parameter; some names: {tops[:12]}")
    for n, p in model.backbone.named_parameters():
        if any(n.startswith(prefix) for prefix in prefixes):
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def set_frozen_bn_eval(model: EmbeddingNet, prefixes: list[str]) -> None:
    """Put BatchNorm modules inside frozen prefixes in eval mode (running statistics kept)."""
    for n, m in model.backbone.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(n.startswith(p) for p in prefixes):
            m.eval()


def onnx_state_dict(path: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors named ``names`` among an ONNX model's initializers (copies, float32 as stored).

    A bundle exported with ``fine_tunable`` (``whaleid export --fine-tunable``) keeps every parameter
    and BatchNorm statistic as an initializer under its PyTorch name; a default export folds the
    BatchNorms into the convolutions, and those names are then missing.
    """
    import onnx
    from onnx import numpy_helper

    wanted = set(names)
    graph = onnx.load(str(path)).graph
    return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer if i.name in wanted}


def load_init_weights(net: EmbeddingNet, source: str | Path) -> None:
    """Initialise ``net`` (backbone and neck) from a bundle folder, its ``model.onnx``, or a ``.pt``
    state dict, strictly: every parameter and BatchNorm statistic must be there with its shape
    (``num_batches_tracked`` counters excepted: they keep the network's own).

    Raises:
        ConfigError: the file is missing, or a tensor is missing or mis-shaped (the message names the
            first few and says how to export a bundle that can be fine-tuned).
    """
    path = Path(source)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise ConfigError(f"model.init_from: {path} does not exist")
    own = net.state_dict()
    if path.suffix == ".onnx":
        state = onnx_state_dict(path, list(own))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):
            state.setdefault(k, v)
    missing = [k for k in own if k not in state]
    if missing:
        raise ConfigError(
            f"model.init_from: {path} lacks {len(missing)} of the network's {len(own)} tensors, e.g. "
            f"{missing[:3]} (a bundle to fine-tune from is exported with `whaleid export --fine-tunable`)"
        )
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"model.init_from: {path} does not fit this network: {exc}") from exc
    log.info("embedding network initialised from %s", path)
