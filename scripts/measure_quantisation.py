"""Does int8 quantisation keep the starter model's embedding, and is it faster here?

Quantises a bundle's ``model.onnx`` with onnxruntime's two post-training methods: dynamic (weights int8,
activations quantised on the fly: convolutions become ``ConvInteger``) and static (QDQ, per-channel int8
weights, uint8 activations calibrated on ``--calib`` real photos). Each model then embeds the same
``--test`` real photos (whole photos resized to the bundle's input size, normalised by its manifest),
and the script prints per model: file size, median time of a batch of 10 (the 5 TTA boxes of a photo
and of its mirror, what enrolment runs per photo) on this machine, the cosine of each embedding to the
fp32 one, and how often each photo's nearest other test photo stays the same. Calibration and test
photos are disjoint. Torch-free.

    .venv/bin/python scripts/measure_quantisation.py starter --out /tmp/quant
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from core.manifest import load_manifest

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flukes" / "playground2018" / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--images", type=Path, default=PHOTOS)
    ap.add_argument("--out", type=Path, required=True, help="folder for the quantised models")
    ap.add_argument("--calib", type=int, default=64, help="photos for static calibration")
    ap.add_argument("--test", type=int, default=200, help="photos embedded by every model")
    args = ap.parse_args()
    manifest = load_manifest(args.bundle)
    h, w = manifest.preprocess.input_size
    mean = np.asarray(manifest.preprocess.mean, np.float32)
    std = np.asarray(manifest.preprocess.std, np.float32)
    files = sorted(args.images.glob("*.jpg"))
    if len(files) < args.calib + args.test:
        raise SystemExit(f"need {args.calib + args.test} photos in {args.images}, found {len(files)}")

    def load(f: Path) -> np.ndarray:
        x = np.asarray(Image.open(f).convert("RGB").resize((w, h), Image.BILINEAR), np.float32) / 255.0
        return ((x - mean) / std).transpose(2, 0, 1)

    calib = np.stack([load(f) for f in files[: args.calib]])
    test = np.stack([load(f) for f in files[args.calib : args.calib + args.test]])
    src = args.bundle / "model.onnx"
    name = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: calib[i : i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    args.out.mkdir(parents=True, exist_ok=True)
    pre = args.out / "preprocessed.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    dynamic, static = args.out / "dynamic-int8.onnx", args.out / "static-qdq-int8.onnx"
    quantize_dynamic(str(pre), str(dynamic), weight_type=QuantType.QInt8)
    quantize_static(
        str(pre),
        str(static),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )

    def embed(path: Path) -> tuple[np.ndarray, float]:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batch = test[:10]
        for _ in range(3):
            sess.run(None, {name: batch})
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            sess.run(None, {name: batch})
            times.append(time.perf_counter() - t0)
        out = sess.run(None, {name: test})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True), 1e3 * float(np.median(times))

    ref, ref_ms = embed(src)
    nn_ref = np.argsort(-(ref @ ref.T), 1)[:, 1]
    print(f"{len(test)} test photos at {h}x{w}, calibration on {len(calib)} others; batch of 10, median of 15 runs")
    print("| model | file MB | batch of 10, ms | x fp32 time | cosine to fp32: mean / min | same nearest photo |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, path in (("fp32 (shipped)", src), ("dynamic int8", dynamic), ("static QDQ int8", static)):
        emb, ms = (ref, ref_ms) if path == src else embed(path)
        cos = (emb * ref).sum(1)
        same = float(np.mean(np.argsort(-(emb @ emb.T), 1)[:, 1] == nn_ref))
        print(
            f"| {label} | {path.stat().st_size / 1e6:.1f} | {ms:.0f} | {ms / ref_ms:.2f} | "
            f"{cos.mean():.3f} / {cos.min():.3f} | {same:.1%} |"
        )


if __name__ == "__main__":
    main()
