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

log = logging.getLogger(__name__)


def create_backbone(name: str, pretrained: bool | str = False) -> nn.Module:
    """Build a timm backbone by name with its classifier removed (``num_classes=0``, pooled output).

    Args:
        name: a timm model name, e.g. ``densenet121``.
        pretrained: ``False``: random init. A path: weights loaded from that local file
            (``pretrained_cfg_overlay=dict(file=...)``). ``True``: timm's hub; when that fails
            (offline, ``HF_HUB_OFFLINE=1``) a warning is logged and the weights stay random.

    Raises:
        ConfigError: unknown model name (the message lists close names), or a missing weights file.
    """
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"unknown backbone {name!r}; close timm names: {close or 'none'} (see timm.list_models())")
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
    """The one factory for embedding networks: any timm backbone name plus the neck."""
    return EmbeddingNet(create_backbone(cfg.backbone, cfg.pretrained), cfg.embedding_dim, cfg.dropout)


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
