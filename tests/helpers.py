"""Small helpers for tests: encode synthetic arrays as image bytes."""

from __future__ import annotations

import io
from pathlib import Path

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
