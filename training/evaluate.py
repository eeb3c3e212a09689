"""Validation of a torch embedding network on the split, through the same code as a bundle.

The network is wrapped as an ``(n, 3, H, W) -> (n, d)`` function and handed to
:class:`index.embedder.PhotoEmbedder`; the gallery is a real :class:`index.gallery.Gallery`
(centroids of every training photo x its TTA boxes, flipped identities included but never
answered) in a temporary folder; ranking, new_whale insertion and threshold rules are
:mod:`index.evaluate`'s. ``whaleid evaluate BUNDLE`` runs the same steps on onnxruntime.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from core.boxes import TTAPolicy
from index.embedder import PhotoEmbedder
from index.evaluate import EvalReport, evaluate_embedder
from index.ranking import NEW_WHALE
from training.config import TrainConfig
from training.data import Photo, Split
from training.metrics import map_at_k


def torch_embed_fn(model: torch.nn.Module, device: torch.device, amp: bool = False, channels_last: bool = False):
    """Wrap a network as ``(n, 3, H, W) float32 ndarray -> (n, d) float32 ndarray`` (eval mode, no grad)."""

    def fn(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.no_grad(),
            torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"),
        ):
            return model(x).float().cpu().numpy()

    return fn


def tta_policy(cfg: TrainConfig) -> TTAPolicy:
    """The TTA policy of a run: 5 boxes around a photo's labelled box, 5 fixed crops when it has none.

    Its ``base`` is ``full_frame``: a bundle says ``detector`` only when it carries a detector."""
    return TTAPolicy.single() if cfg.eval.tta == "single" else TTAPolicy.default()


def evaluate_model(
    model: torch.nn.Module, cfg: TrainConfig, split: Split, device: torch.device, progress: bool = True
) -> EvalReport:
    """Evaluate a torch embedding network on a run's split (see the module docstring)."""
    from training.config import preprocess_spec

    was_training = model.training
    model.eval()
    try:
        embedder = PhotoEmbedder(
            torch_embed_fn(model, device, cfg.amp),
            preprocess_spec(cfg),
            tta_policy(cfg),
            batch_boxes=cfg.eval.batch_boxes,
        )
        report, _ = evaluate_embedder(
            embedder,
            cfg.data.images,
            split,
            cfg.data.flip_identities,
            cfg.eval.new_whale_share,
            cfg.eval.threshold_rule,
            progress=progress,
        )
    finally:
        model.train(was_training)
    return report


def frequency_baseline(train: Sequence[Photo], queries: Sequence[tuple[Photo, str]]) -> float:
    """MAP@5 of answering every query ``new_whale`` then the 4 identities with most training photos."""
    counts = Counter(p.whale_id for p in train if p.whale_id != NEW_WHALE)
    top4 = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:4]]
    preds = [[NEW_WHALE, *top4] for _ in queries]
    return map_at_k(preds, [t for _, t in queries])
