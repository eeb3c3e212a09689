"""A light fluke box regressor: timm backbone built by name → pooled features → 4 box fractions.

The whole photo is resized to the detector's input size (aspect not kept) and the network
predicts ``(x0, y0, x1, y1)`` as fractions of the photo's width and height (sigmoid outputs,
sorted so ``x1 >= x0`` and ``y1 >= y0``). Loss: L1 on the fractions plus generalised IoU
(Rezatofighi et al., CVPR 2019). Trained on the public boxes of ``../shared/data/flukes``
(``boxes.csv`` and ``playground2018/boxes.csv``, pixels of the stored photos: the 1st-place
solution's mask-derived boxes). Scored by mean IoU on held-out photos beside the full-frame
baseline (the box a bundle without a detector uses).

``whaleid train-detector`` trains it; ``whaleid export-detector`` writes ``detector.onnx`` into a
bundle and switches the bundle's TTA policy to boxes around the detected fluke.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.boxes import box_iou, full_frame
from core.errors import ConfigError
from core.fileio import atomic_write_json, sha256_file
from core.manifest import DetectorSpec, load_manifest
from core.preprocess import PreprocessSpec, crop_resize, normalize
from training.data import ImageCache, read_boxes
from training.model import create_backbone, pooled_features
from training.pretrained import is_pip_source, pip_source

log = logging.getLogger(__name__)

DETECTOR_FILE = "detector.onnx"


@dataclass
class DetectorConfig:
    """Detector training settings.

    Attributes:
        box_csvs: ``(images folder, boxes CSV)`` pairs; every boxed photo is used.
        backbone: timm model name.
        pretrained: the backbone's initial weights, as ``model.pretrained`` (``False``: random;
            ``pip:efficientnet-lite0``: ImageNet, offline). The input normalisation follows the source.
        trunk_blocks: keep only the stem and the first ``trunk_blocks`` stages of an EfficientNet/MobileNet
            backbone (``conv_stem``, ``bn1``, ``blocks``) and read the box from its whole feature map
            (1x1 conv to 32 channels, flattened, then the head) instead of from pooled features; ``None``:
            the whole backbone, pooled.
        head_hidden: width of the head's hidden layer (256; 64 keeps a small detector's file small).
        input_size: ``[H, W]`` the whole photo is resized to, in pixels.
        epochs, batch_size, lr, weight_decay: optimisation (AdamW, warm-up + cosine).
        val_fraction: share of photos held out for the mean IoU.
        seed: split and initialisation.
        cache_max_side_px: photos are cached at this longest side.
    """

    box_csvs: list[list[str]] = field(default_factory=list)
    backbone: str = "resnet18"
    pretrained: bool | str = False
    trunk_blocks: int | None = None
    head_hidden: int = 256
    input_size: list[int] = field(default_factory=lambda: [96, 192])
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    seed: int = 0
    cache_max_side_px: int = 384
    threads: int = 0

    def spec(self) -> PreprocessSpec:
        if is_pip_source(self.pretrained):
            source = pip_source(self.pretrained)
            return PreprocessSpec(input_size=tuple(self.input_size), mean=source.mean, std=source.std)
        return PreprocessSpec(input_size=tuple(self.input_size))

    def architecture(self) -> str:
        """The detector's name in the manifest, e.g. ``resnet18`` or ``tf_efficientnet_lite0[:4]+map``."""
        return self.backbone if self.trunk_blocks is None else f"{self.backbone}[:{self.trunk_blocks}]+map"


class BoxRegressor(nn.Module):
    """``(n, 3, H, W) float32`` → ``(n, 4) float32`` box fractions ``(x0, y0, x1, y1)`` in ``[0, 1]``.

    Either a whole timm backbone's pooled features → MLP, or (``trunk_blocks``) the stem and first stages
    of an EfficientNet/MobileNet backbone → 1x1 conv to 32 channels → the flattened feature map of an
    ``input_size`` photo → MLP: the map keeps where the fluke is, which pooling leaves the network to
    encode, and a few ImageNet stages are small enough to ship (``tf_efficientnet_lite0`` through its
    4th stage: 0.25 M weights).

    Raises:
        ConfigError: ``trunk_blocks`` on a backbone without ``conv_stem``/``bn1``/``blocks``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        hidden: int = 256,
        trunk_blocks: int | None = None,
        input_size: tuple[int, int] | list[int] = (96, 192),
    ):
        super().__init__()
        if trunk_blocks is None:
            self.backbone = backbone
            width = pooled_features(backbone)
            self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4))
            return
        if not all(hasattr(backbone, a) for a in ("conv_stem", "bn1", "blocks")):
            raise ConfigError(f"trunk_blocks needs an EfficientNet/MobileNet backbone, not {type(backbone).__name__}")
        trunk = nn.Sequential(backbone.conv_stem, backbone.bn1, *backbone.blocks[:trunk_blocks])
        with torch.no_grad():
            c, h, w = trunk.eval()(torch.zeros(1, 3, *input_size)).shape[1:]
        reduce = nn.Sequential(nn.Conv2d(c, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.backbone = nn.Sequential(trunk, reduce, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32 * h * w, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = torch.sigmoid(self.head(self.backbone(x)).float())
        xs, _ = torch.sort(raw[:, [0, 2]], dim=1)
        ys, _ = torch.sort(raw[:, [1, 3]], dim=1)
        return torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1)


def build_regressor(cfg: DetectorConfig, pretrained: bool | str) -> BoxRegressor:
    """The configured :class:`BoxRegressor`, its backbone initialised from ``pretrained``."""
    return BoxRegressor(create_backbone(cfg.backbone, pretrained), cfg.head_hidden, cfg.trunk_blocks, cfg.input_size)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - GIoU`` of matching rows of two ``(n, 4)`` xyxy box tensors."""
    ix0 = torch.maximum(pred[:, 0], target[:, 0])
    iy0 = torch.maximum(pred[:, 1], target[:, 1])
    ix1 = torch.minimum(pred[:, 2], target[:, 2])
    iy1 = torch.minimum(pred[:, 3], target[:, 3])
    inter = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = area_p + area_t - inter
    iou = inter / union.clamp(min=1e-9)
    cx0 = torch.minimum(pred[:, 0], target[:, 0])
    cy0 = torch.minimum(pred[:, 1], target[:, 1])
    cx1 = torch.maximum(pred[:, 2], target[:, 2])
    cy1 = torch.maximum(pred[:, 3], target[:, 3])
    hull = ((cx1 - cx0) * (cy1 - cy0)).clamp(min=1e-9)
    return (1 - (iou - (hull - union) / hull)).mean()


@dataclass(frozen=True)
class BoxedPhoto:
    folder: str
    image: str
    box: tuple[float, float, float, float]


def load_boxed(cfg: DetectorConfig) -> list[BoxedPhoto]:
    """Every photo with a box in ``cfg.box_csvs`` (missing files skipped)."""
    out = []
    for folder, csv_path in cfg.box_csvs:
        for name, box in read_boxes(csv_path).items():
            if (Path(folder) / name).is_file():
                out.append(BoxedPhoto(str(folder), name, box))
    if not out:
        raise ConfigError("no boxed photo found: check box_csvs (pairs of images folder and boxes CSV)")
    return sorted(out, key=lambda p: (p.folder, p.image))


def split_boxed(photos: list[BoxedPhoto], val_fraction: float, seed: int) -> tuple[list[BoxedPhoto], list[BoxedPhoto]]:
    rng = random.Random(seed)
    shuffled = photos[:]
    rng.shuffle(shuffled)
    n_val = int(round(val_fraction * len(shuffled)))
    return shuffled[n_val:], shuffled[:n_val]


class BoxDataset(Dataset):
    """Whole photos resized to the input size, with the box as fractions; light augmentation in training:
    horizontal flip, a random crop that keeps the whole box, brightness/contrast, grayscale."""

    def __init__(self, photos: list[BoxedPhoto], cfg: DetectorConfig, train: bool):
        self.photos, self.cfg, self.train = photos, cfg, train
        self.spec = cfg.spec()
        self.caches: dict[str, ImageCache] = {}
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.photos)

    def _cache(self, folder: str) -> ImageCache:
        if folder not in self.caches:
            self.caches[folder] = ImageCache(folder, self.cfg.cache_max_side_px)
        return self.caches[folder]

    def __getitem__(self, i: int):
        p = self.photos[i]
        pixels, scale = self._cache(p.folder).get(p.image)
        h, w = pixels.shape[:2]
        box = np.asarray(p.box, np.float32) * scale
        frame = full_frame(w, h)
        if self.train:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, i])
            # random crop of the frame that still contains the whole box
            x0 = rng.uniform(0, max(box[0], 0) * 0.9)
            y0 = rng.uniform(0, max(box[1], 0) * 0.9)
            x1 = w - rng.uniform(0, max(w - box[2], 0) * 0.9)
            y1 = h - rng.uniform(0, max(h - box[3], 0) * 0.9)
            frame = np.array([x0, y0, x1, y1], np.float32)
        crop = crop_resize(pixels, frame, self.spec.input_size, self.spec.interpolation).astype(np.float32)
        fw, fh = frame[2] - frame[0], frame[3] - frame[1]
        target = np.array(
            [(box[0] - frame[0]) / fw, (box[1] - frame[1]) / fh, (box[2] - frame[0]) / fw, (box[3] - frame[1]) / fh],
            np.float32,
        ).clip(0, 1)
        if self.train:
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
                target = np.array([1 - target[2], target[1], 1 - target[0], target[3]], np.float32)
            crop = crop * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)
            if rng.random() < 0.3:
                crop = np.repeat(crop.mean(axis=2, keepdims=True), 3, axis=2)
            crop = crop.clip(0, 255)
        x = normalize(np.ascontiguousarray(crop.astype(np.uint8)), self.spec)
        return torch.from_numpy(x), torch.from_numpy(target)


def mean_iou(pred_frac: np.ndarray, target_frac: np.ndarray) -> float:
    return float(box_iou(pred_frac, target_frac).mean())


def evaluate_detector(model: BoxRegressor, photos: list[BoxedPhoto], cfg: DetectorConfig) -> dict:
    """Mean IoU on ``photos`` beside the full-frame baseline's (the whole photo as the box)."""
    ds = BoxDataset(photos, cfg, train=False)
    preds, targets = [], []
    model.eval()
    with torch.no_grad():
        for x, t in DataLoader(ds, batch_size=64):
            preds.append(model(x).numpy())
            targets.append(t.numpy())
    p, t = np.concatenate(preds), np.concatenate(targets)
    full = np.tile(np.array([[0, 0, 1, 1]], np.float32), (len(t), 1))
    iou = box_iou(p, t)
    return {
        "photos": len(t),
        "mean_iou": float(iou.mean()),
        "median_iou": float(np.median(iou)),
        "iou_over_0.5": float((iou > 0.5).mean()),
        "full_frame_mean_iou": mean_iou(full, t),
    }


def train_detector(cfg: DetectorConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train the box regressor; writes ``detector.pt``, ``detector.json`` (config + validation IoU)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_set, val_set = split_boxed(load_boxed(cfg), cfg.val_fraction, cfg.seed)
    model = build_regressor(cfg, cfg.pretrained)
    ds = BoxDataset(train_set, cfg, train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(ds) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warm = steps_per_epoch

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    bar = tqdm(total=total, desc="detector", unit="step", disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    history = []
    for epoch in range(cfg.epochs):
        ds.epoch = epoch
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        for x, t in DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g):
            pred = model(x)
            loss = F.l1_loss(pred, t) + giou_loss(pred, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (epoch + 1) % 5 == 0 or epoch + 1 == cfg.epochs:
            val = evaluate_detector(model, val_set, cfg)
            history.append({"epoch": epoch + 1, **val})
            bar.write(
                f"epoch {epoch + 1}: val mean IoU {val['mean_iou']:.3f} (full frame {val['full_frame_mean_iou']:.3f})"
            )
    bar.close()
    report = {
        "config": asdict(cfg),
        "train_photos": len(train_set),
        "val_photos": len(val_set),
        "train_seconds": round(time.time() - t0, 1),
        "val": history[-1],
        "history": history,
        "val_images": [[p.folder, p.image] for p in val_set],
    }
    torch.save({"model": model.state_dict(), "config": asdict(cfg)}, out / "detector.pt")
    atomic_write_json(out / "detector.json", report)
    return report


def load_detector(run_dir: str | Path) -> tuple[BoxRegressor, DetectorConfig, dict]:
    run = Path(run_dir)
    if not (run / "detector.pt").exists():
        raise ConfigError(f"{run} has no detector.pt: run `whaleid train-detector` first")
    ckpt = torch.load(run / "detector.pt", map_location="cpu", weights_only=False)
    cfg = DetectorConfig(**ckpt["config"])
    model = build_regressor(cfg, False)  # the weights come from the checkpoint
    model.load_state_dict(ckpt["model"])
    model.eval()
    report = json.loads((run / "detector.json").read_text()) if (run / "detector.json").exists() else {}
    return model, cfg, report


def export_detector(run_dir: str | Path, bundle: str | Path, atol: float = 1e-4) -> dict:
    """Write ``detector.onnx`` into a bundle (verified against torch) and record it in the manifest.

    The manifest's TTA policy base becomes ``detector``: the service and ``build-gallery`` then embed
    boxes around the detected fluke.

    Raises:
        ConfigError: no detector run; ManifestError: no bundle.
    """
    import onnx
    import onnxruntime as ort

    model, cfg, report = load_detector(run_dir)
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    path = bundle / DETECTOR_FILE
    h, w = cfg.input_size
    program = torch.onnx.export(
        model,
        (torch.zeros(2, 3, h, w),),
        input_names=["input"],
        output_names=["box"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
        opset_version=18,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    x = np.random.default_rng(0).normal(size=(3, 3, h, w)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    diff = float(np.abs(ref - got).max())
    if diff > atol:
        path.unlink()
        raise RuntimeError(f"detector.onnx differs from torch by {diff:.2e} (> {atol})")
    spec = DetectorSpec(
        sha256=sha256_file(path),
        architecture=cfg.architecture(),
        preprocess=cfg.spec(),
        val_mean_iou=report.get("val", {}).get("mean_iou"),
    )
    manifest.with_detector(spec).save(bundle)
    return {"detector": str(path), "max_abs_diff": diff, "val_mean_iou": spec.val_mean_iou}


def write_boxes_csv(rows: list[tuple[str, np.ndarray]], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "x0", "y0", "x1", "y1"])
        for name, b in rows:
            w.writerow([name, *(round(float(v), 1) for v in b)])
