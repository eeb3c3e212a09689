"""Training augmentation of the box crop, with albumentations.

The list is the 3rd-place solution's (Kaggle 2019 Humpback Whale Identification): average blur,
motion blur, add, multiply, grayscale, and scale / translate / shear / rotate; the crop itself
comes from a jittered box (:func:`training.data.jitter_box`).

Every sample is augmented with a generator seeded by ``(seed, epoch, sample index)``, so a run
resumed from a checkpoint, or run with more DataLoader workers, sees the same augmentations.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home for a version check

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from training.config import AugmentConfig  # noqa: E402


def build_augment(cfg: AugmentConfig) -> A.Compose:
    """The training transform applied to a ``(H, W, 3) uint8`` crop (shape kept)."""
    return A.Compose(
        [
            A.Affine(
                scale=tuple(cfg.scale),
                translate_percent=(-cfg.translate, cfg.translate),
                rotate=(-cfg.rotate_deg, cfg.rotate_deg),
                shear=(-cfg.shear_deg, cfg.shear_deg),
                border_mode=cv2.BORDER_REFLECT_101,
                p=cfg.affine_p,
            ),
            A.OneOf([A.Blur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=cfg.blur_p),
            # imgaug's Add: a constant added to every pixel (brightness only, no contrast change)
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.0, p=cfg.add_p),
            # imgaug's Multiply: every pixel multiplied by one factor
            A.MultiplicativeNoise(multiplier=(0.8, 1.2), per_channel=False, elementwise=False, p=cfg.multiply_p),
            A.ToGray(num_output_channels=3, p=cfg.grayscale_p),
        ],
        seed=0,
    )


def augment(transform: A.Compose, crop: np.ndarray, seed: int) -> np.ndarray:
    """Apply ``transform`` to one crop with its own seed (reproducible per sample)."""
    transform.set_random_seed(seed)
    return transform(image=crop)["image"]
