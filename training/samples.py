"""Training samples: the dataset (box jitter, augmentation, mirror, normalisation) and the resumable,
DDP-sharded batch sampler."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from core.boxes import full_frame
from core.preprocess import crop_resize, normalize
from training.augment import augment, build_augment
from training.config import TrainConfig, preprocess_spec
from training.data import ImageCache, Photo, jitter_box


class TrainDataset(Dataset):
    """Training samples ``(photo, class, flipped)`` → ``(3, H, W) float32`` tensors and class ids.

    A sample is the photo's box (or the full frame) with jitter, cropped and resized in one step,
    augmented, mirrored when ``flipped``, then normalised exactly as ``core.preprocess`` does.
    """

    def __init__(self, samples: list[tuple[Photo, int, bool]], cache: ImageCache, cfg: TrainConfig, seed: int):
        self.samples = samples
        self.cache = cache
        self.spec = preprocess_spec(cfg)
        self.aug_cfg = cfg.augment
        self.transform = build_augment(cfg.augment)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        photo, label, flipped = self.samples[i]
        pixels, scale = self.cache.get(photo.image)
        h, w = pixels.shape[:2]
        box = full_frame(w, h) if photo.box is None else np.asarray(photo.box, np.float32) * scale
        rng = np.random.default_rng([self.seed, self.epoch, i])
        box = jitter_box(box, w, h, self.aug_cfg.box_jitter, rng)
        crop = crop_resize(pixels, box, self.spec.input_size, self.spec.interpolation)
        crop = augment(self.transform, crop, int(rng.integers(2**31 - 1)))
        if flipped:
            crop = np.ascontiguousarray(crop[:, ::-1])
        return torch.from_numpy(normalize(crop, self.spec)), label


class EpochBatchSampler(Sampler):
    """Batches of a seeded permutation per epoch, sharded across DDP ranks, resumable mid-epoch.

    Every rank sees ``len(self)`` batches of ``batch_size`` indices (the last, partial global
    batch is dropped so ranks stay in step).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return max(1, self.n // (self.batch_size * self.world))

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        while len(perm) < self.batch_size * self.world:  # tiny data sets: repeat
            perm += perm
        per_batch = self.batch_size * self.world
        for b in range(self.start_batch, len(self)):
            chunk = perm[b * per_batch : (b + 1) * per_batch]
            yield chunk[self.rank :: self.world]
