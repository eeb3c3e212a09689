"""Small helpers for tests: encode synthetic arrays as image bytes."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLUKES = SHARED / "data" / "flukes"
ODD_IMAGES = SHARED / "data" / "odd-images"


def png_bytes(arr: np.ndarray, mode: str | None = None, **save) -> bytes:
    """Encode an array as PNG bytes (tiny synthetic test images)."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 95, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, **save)
    return buf.getvalue()


def tiny_bundle(folder: Path, hw=(32, 64), dim=16, scoring="embedding", thresholds=None, seed=0) -> Path:
    """A servable bundle without torch: a one-matrix ONNX "embedder" (flatten, matmul), local features on.

    ``thresholds``: ``mode -> new_whale threshold`` (default: 0.5 for ``embedding`` only).
    Needs the ``onnx`` package (the train extra); the caller skips without it.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from core.boxes import TTAPolicy
    from core.fileio import sha256_file
    from core.manifest import LocalFeatureSpec, Manifest, ModelSpec, ThresholdSpec
    from core.preprocess import PreprocessSpec

    h, w = hw
    weight = np.random.default_rng(seed).normal(size=(3 * h * w, dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["embedding"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    thresholds = thresholds or {"embedding": 0.5}
    Manifest(
        model_version="tiny-linear-test",
        model=ModelSpec(sha256=sha256_file(folder / "model.onnx"), architecture="tiny-linear", embedding_dim=dim),
        preprocess=PreprocessSpec(input_size=hw),
        tta=TTAPolicy.default(),
        scoring=scoring,
        thresholds={m: ThresholdSpec(value=v, rule="manual") for m, v in thresholds.items()},
        local_features=LocalFeatureSpec(n_keypoints=100, crop_width_px=256),
    ).save(folder)
    return folder


def texture(seed: int, hw=(160, 320)) -> np.ndarray:
    """A photo of random ellipses and lines (plenty of SIFT keypoints), ``(H, W, 3) uint8``."""
    rng = np.random.default_rng(seed)
    img = np.full((*hw, 3), rng.integers(60, 200, 3), np.uint8)
    for _ in range(40):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, hw[1])), int(rng.integers(0, hw[0])))
        axes = (int(rng.integers(4, 30)), int(rng.integers(4, 20)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
        p2 = (int(rng.integers(0, hw[1])), int(rng.integers(0, hw[0])))
        cv2.line(img, centre, p2, c[::-1], int(rng.integers(1, 4)))
    return img


def view(img: np.ndarray, seed: int) -> np.ndarray:
    """Another photo of the same pattern: shifted by a few pixels, brightness changed, noise added."""
    rng = np.random.default_rng(1000 + seed)
    dx, dy = (int(v) for v in rng.integers(-8, 9, 2))
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    out = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 4, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


#: Tips, notch and a whale's nicks ``(centre x, half-width, depth)`` of a drawn fluke, photo pixels.
FLUKE_TIPS = ((40.0, 60.0), (200.0, 112.0), (360.0, 60.0))


def drawn_fluke(nicks, scale: float = 1.0, angle_deg: float = 0.0, size=(400, 260), seed: int = 0) -> np.ndarray:
    """A white-sky photo ``(h, w, 3) uint8`` of a dark fluke whose trailing edge has a 12 px notch at
    x = 200 and the given nicks, scaled and rotated about the photo's centre (as tests/index/test_edge.py)."""
    x = np.arange(40.0, 361.0)
    y = 60.0 + 40.0 * (1.0 - np.abs(x - 200.0) / 160.0) ** 1.5 + 12.0 * np.clip(1.0 - np.abs(x - 200.0) / 10.0, 0, None)
    for cx, half, depth in nicks:
        y += depth * np.clip(1.0 - np.abs(x - cx) / half, 0.0, None)
    below = np.array([(330, 95), (250, 140), (215, 200), (185, 200), (150, 140), (70, 95)], np.float64)
    outline = np.vstack([np.stack([x, y], axis=1), below])
    w, h = size
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, scale)
    pts = outline @ m[:, :2].T + m[:, 2]
    img = np.clip(np.random.default_rng(seed).normal(238, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], (40, 45, 50), lineType=cv2.LINE_AA, shift=4)
    return img
