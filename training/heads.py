"""Training heads. A head owns the class centres and is never exported: the service only sees embeddings.

* :class:`MarginHead` with an :class:`ArcMargin` step is ArcFace (Deng et al., "ArcFace: Additive
  Angular Margin Loss for Deep Face Recognition", CVPR 2019): ``s * cos(theta_y + m)`` for the
  target class, ``s * cos(theta_j)`` for the others, softmax cross-entropy. With
  :class:`CosMargin` it is CosFace (``s * (cos(theta_y) - m)``).
* :class:`BinaryHead` is the 1st-place per-class binary classifier: a sigmoid per identity.

The loss follows the pattern of pytorch-metric-learning: normalise, clamp the cosine, modify only
the target logit. It stays finite at ``cos = +-1``: the sine is ``sqrt(clamp(1 - cos^2, eps))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-7


class ArcMargin:
    """ArcFace's target logit: ``cos(theta + m)``; where ``theta + m > pi`` it falls back to
    ``cos(theta) - m * sin(m)`` so the logit keeps decreasing with ``theta`` (insightface's rule)."""

    def __call__(self, cos: torch.Tensor, margin: float) -> torch.Tensor:
        sin = torch.sqrt(torch.clamp(1.0 - cos * cos, min=_EPS))
        phi = cos * math.cos(margin) - sin * math.sin(margin)
        return torch.where(cos > math.cos(math.pi - margin), phi, cos - margin * math.sin(margin))


class CosMargin:
    """CosFace's target logit: ``cos(theta) - m``."""

    def __call__(self, cos: torch.Tensor, margin: float) -> torch.Tensor:
        return cos - margin


MARGINS = {"arcface": ArcMargin, "cosface": CosMargin}


class MarginHead(nn.Module):
    """Class centres ``(num_classes, in_features)`` and a margin softmax loss.

    Args:
        in_features: embedding dimension.
        num_classes: identities (x2 with flipped identities).
        scale: logit scale ``s``.
        margin: margin ``m`` (radians for ArcFace).
        kind: ``"arcface"`` or ``"cosface"``.
    """

    def __init__(
        self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.5, kind: str = "arcface"
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.scale = float(scale)
        self.margin = float(margin)
        self.step = MARGINS[kind]()

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(n, num_classes)`` cosines between L2-normalised embeddings and centres, clamped to [-1, 1]."""
        cos = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        return cos.clamp(-1.0, 1.0)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = None) -> torch.Tensor:
        """Scaled logits with the margin applied to the target class only."""
        m = self.margin if margin is None else margin
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels.view(-1, 1))
        modified = cos.scatter(1, labels.view(-1, 1), self.step(target, m))
        return self.scale * modified

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = None):
        """Returns ``(loss, scores)``: the mean softmax cross-entropy of the margin logits, and the
        ``(n, num_classes)`` cosines without margin (for accuracy)."""
        m = self.margin if margin is None else margin
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels.view(-1, 1))
        logits = self.scale * cos.scatter(1, labels.view(-1, 1), self.step(target, m))
        return F.cross_entropy(logits, labels), cos.detach()


class BinaryHead(nn.Module):
    """A sigmoid per identity on the cosine to its centre (1st place's "2-class classification for
    each whale class"): ``logit_j = s * (cos_j - b_j)``, binary cross-entropy against one-hot labels.

    Negatives dominate (one positive per row), so the positive term is weighted by ``num_classes - 1``
    unless ``pos_weight`` is given.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        scale: float = 30.0,
        margin: float = 0.5,
        kind: str = "binary",
        pos_weight: float | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.bias = nn.Parameter(torch.full((num_classes,), 0.5))
        self.scale = float(scale)
        self.margin = float(margin)
        self.pos_weight = float(pos_weight) if pos_weight else float(max(num_classes - 1, 1)) ** 0.5

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        return cos.clamp(-1.0, 1.0)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = None):
        """Returns ``(loss, logits)``. Labels of ``-1`` mark photos of no class (all negatives)."""
        logits = self.scale * (self.cosine(embeddings) - self.bias)
        target = torch.zeros_like(logits)
        valid = labels >= 0
        target[valid.nonzero().squeeze(1), labels[valid]] = 1.0
        loss = F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=torch.full_like(logits[0], self.pos_weight)
        )
        return loss, logits


HEADS = {"arcface": MarginHead, "cosface": MarginHead, "binary": BinaryHead}


def build_head(kind: str, in_features: int, num_classes: int, scale: float, margin: float) -> nn.Module:
    """The one factory for heads (``arcface``, ``cosface``, ``binary``)."""
    try:
        cls = HEADS[kind]
    except KeyError:
        raise ValueError(f"unknown head {kind!r}; known: {sorted(HEADS)}") from None
    return cls(in_features, num_classes, scale=scale, margin=margin, kind=kind)
