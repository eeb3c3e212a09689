"""Embedder speed: onnxruntime vs torch eager vs torch channels_last on the same batches.

The inputs are the TTA crops of real photos (``../shared/data/flukes/images``; synthetic photos when it is
absent), preprocessed by ``core.preprocess`` exactly as the service does, at the model's input size. A batch
of 5 is one photo's 5 TTA boxes (what ``/identify`` sends to the network); a batch of 1 is its first box.
Each timed call goes from a host float32 array to a host float32 array, for every variant. The variants
are timed in turn within each repetition (round robin), so a change of load on the machine hits them all.

Two sources of the model:

* ``--bundle DIR``: the bundle's ``model.onnx``; torch runs the bundle's training run
  (``manifest.training.run_dir``) when its checkpoint is still there, else a randomly initialised network
  of the same architecture (times only: no agreement check).
* ``--backbone NAME --input-size H W`` (default ``densenet121`` at 256x512): a randomly initialised
  ``EmbeddingNet`` exported to ONNX in a temporary folder by the code path of ``whaleid export``
  (``training.export._export_onnx``), so torch and onnxruntime run the same weights and their largest
  absolute difference is reported. ``--save-bundle DIR`` keeps that model as a servable bundle (empty
  gallery, manual thresholds, local features enabled) for ``benchmarks/identify.py``.

Example::

    python benchmarks/embedder.py                                    # densenet121, 256x512, random weights
    python benchmarks/embedder.py --bundle artifacts/quickstart/bundle
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import (
    base_parser,
    load_photos,
    machine_info,
    preload_cuda_libraries,
    print_table,
    ratio,
    summarize,
    time_ms,
    write_result,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: never wait for the hub

ORT = "onnxruntime"


def parse_args(argv=None):
    p = base_parser("embedder", __doc__)
    p.add_argument("--bundle", type=Path, help="Bundle folder (model.onnx + manifest.json) to measure.")
    p.add_argument("--backbone", default="densenet121", help="timm backbone of the random-weight model.")
    p.add_argument("--input-size", nargs=2, type=int, default=[256, 512], metavar=("H", "W"), help="Model input.")
    p.add_argument("--embedding-dim", type=int, default=512, help="Embedding dimension of the random-weight model.")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 5], help="Batch sizes (5 = one photo's TTA).")
    p.add_argument("--repeats", type=int, default=20, help="Timed calls per variant and batch size.")
    p.add_argument("--warmup", type=int, default=3, help="Untimed calls per variant and batch size first.")
    p.add_argument("--photos", type=int, default=4, help="Photos whose TTA crops make the batches.")
    p.add_argument("--images", type=Path, help="Folder of photos (default: ../shared/data/flukes/images).")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="Device of the torch variants.")
    p.add_argument(
        "--providers",
        nargs="+",
        default=["CPUExecutionProvider"],
        help="onnxruntime providers in order, e.g. CUDAExecutionProvider CPUExecutionProvider.",
    )
    p.add_argument("--amp", action="store_true", help="Also time torch channels_last under fp16 autocast (CUDA).")
    p.add_argument("--save-bundle", type=Path, help="Keep the random-weight model as a bundle in this folder.")
    return p.parse_args(argv)


# -- inputs -----------------------------------------------------------------------------------


def tta_pool(photos, preprocess, tta) -> tuple[np.ndarray, int]:
    """The TTA crops of every photo, concatenated: ``(n_photos * n_boxes, 3, H, W) float32``, and ``n_boxes``.

    Photos go through the service's path without a detector: decode, the policy's full-frame boxes, crops.
    """
    from index.embedder import PhotoEmbedder

    embedder = PhotoEmbedder(lambda b: b, preprocess, tta)
    crops = []
    for photo in photos:
        pixels = photo.pixels()
        crops.append(embedder.batch_for(pixels, embedder.boxes_for(pixels)))
    return np.concatenate(crops), len(crops[0])


def batches_of(pool: np.ndarray, n_boxes: int, batch: int) -> list[np.ndarray]:
    """One batch of ``batch`` crops starting at each photo's first box (wrapping around the pool)."""
    starts = range(0, len(pool), n_boxes)
    return [np.ascontiguousarray(np.take(pool, range(s, s + batch), axis=0, mode="wrap")) for s in starts]


# -- models -----------------------------------------------------------------------------------


def random_model(backbone: str, embedding_dim: int, input_hw: tuple[int, int]):
    """A randomly initialised ``EmbeddingNet`` in eval mode (seeded)."""
    import torch

    from training.config import ModelConfig
    from training.model import build_embedding_net

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, pretrained=False, embedding_dim=embedding_dim, input_size=list(input_hw))
    logging.getLogger("training.model").setLevel(logging.ERROR)  # "random weights" is the point here
    return build_embedding_net(cfg).eval()


def bundle_torch_model(manifest) -> tuple[object, str, bool]:
    """The torch model of a bundle: ``(model, description, same_weights_as_onnx)``."""
    run_dir = manifest.training.get("run_dir")
    if run_dir and Path(run_dir).is_dir():
        try:
            from training.export import load_run

            _, model, _ = load_run(run_dir)
            return model.eval(), f"the bundle's training run {run_dir}", True
        except Exception as exc:  # noqa: BLE001 - fall back to random weights below, saying why
            print(f"NOTE: cannot load the run {run_dir} ({str(exc)[:200]})", file=sys.stderr)
    h, w = manifest.preprocess.input_size
    model = random_model(manifest.model.architecture, manifest.model.embedding_dim, (h, w))
    print(
        "NOTE: the bundle's training run is not available: torch runs random weights of the same architecture "
        "(times only; no torch/onnxruntime agreement check)",
        file=sys.stderr,
    )
    return model, f"random weights of {manifest.model.architecture} (the bundle's run is not available)", False


def torch_runner(model, device: str, channels_last: bool, amp: bool):
    """A callable ``(n, 3, H, W) float32 array -> (n, d) float32 array`` on a private copy of ``model``."""
    import torch

    dev = torch.device(device)
    net = copy.deepcopy(model).to(dev).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            x = torch.from_numpy(batch).to(dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return net(x).float().cpu().numpy()  # .cpu() waits for the device

    return run


def save_bundle(onnx_path: Path, out: Path, backbone: str, embedding_dim: int, input_hw, preprocess, tta) -> Path:
    """A servable bundle of the random-weight model: ``model.onnx`` + ``manifest.json`` (empty gallery)."""
    import shutil

    from core.fileio import sha256_file
    from core.manifest import LocalFeatureSpec, Manifest, ModelSpec, ThresholdSpec
    from training.export import OPSET

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, out / "model.onnx")
    sha = sha256_file(out / "model.onnx")
    Manifest(
        model_version=f"{backbone}-random-{sha[:8]}",
        model=ModelSpec(sha256=sha, architecture=backbone, embedding_dim=embedding_dim, opset=OPSET),
        preprocess=preprocess,
        tta=tta,
        thresholds={"embedding": ThresholdSpec(value=0.5, rule="manual")},
        local_features=LocalFeatureSpec(),
        training={"note": "random weights, written by benchmarks/embedder.py --save-bundle", "input_size": input_hw},
    ).save(out)
    return out


# -- main -------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = machine_info()
    import torch

    from core.boxes import TTAPolicy
    from core.manifest import load_manifest
    from core.preprocess import PreprocessSpec
    from index.embedder import OnnxModel, load_embedder_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    preload_cuda_libraries(args.providers)
    tmp = tempfile.TemporaryDirectory(prefix="whaleid-bench-embedder-")
    same_weights = True
    if args.bundle:
        manifest = load_manifest(args.bundle)
        preprocess, tta = manifest.preprocess, manifest.tta
        ort_model = load_embedder_model(args.bundle, manifest, args.providers, args.threads)
        model, torch_source, same_weights = bundle_torch_model(manifest)
        source = f"bundle {args.bundle} ({manifest.model_version}, {manifest.model.architecture})"
        arch = manifest.model.architecture
    else:
        from training.export import _export_onnx

        hw = (int(args.input_size[0]), int(args.input_size[1]))
        preprocess, tta = PreprocessSpec(input_size=hw), TTAPolicy.default()
        model = random_model(args.backbone, args.embedding_dim, hw)
        onnx_path = Path(tmp.name) / "model.onnx"
        print(f"exporting {args.backbone} ({hw[0]}x{hw[1]}) to ONNX as `whaleid export` does ...", flush=True)
        _export_onnx(model, onnx_path, hw)
        ort_model = OnnxModel(onnx_path, args.providers, args.threads)
        torch_source = f"random weights of {args.backbone} (the model exported to ONNX)"
        source = f"random-weight {args.backbone}, exported to ONNX by training.export._export_onnx"
        arch = args.backbone
        if args.save_bundle:
            save_bundle(onnx_path, args.save_bundle, args.backbone, args.embedding_dim, list(hw), preprocess, tta)
            print(f"bundle saved to {args.save_bundle}", flush=True)
    if args.bundle and args.save_bundle:
        print("NOTE: --save-bundle applies to the random-weight model only; ignored with --bundle", file=sys.stderr)
    missing = [p for p in args.providers if p not in ort_model.providers]
    if missing:
        print(f"WARNING: onnxruntime providers {missing} are unavailable; running on {ort_model.providers}")

    photos = load_photos(args.photos, args.images)
    pool, n_boxes = tta_pool(photos.photos, preprocess, tta)
    h, w = preprocess.input_size
    variants = {ORT: ort_model}
    variants["torch eager"] = torch_runner(model, args.device, channels_last=False, amp=False)
    variants["torch channels_last"] = torch_runner(model, args.device, channels_last=True, amp=False)
    if args.amp:
        if args.device == "cuda":
            variants["torch channels_last + AMP fp16"] = torch_runner(model, args.device, channels_last=True, amp=True)
        else:
            print("NOTE: --amp is measured on CUDA only; ignored on the CPU", file=sys.stderr)
    print(f"inputs: {photos.source}; {n_boxes} TTA boxes per photo at {h}x{w}", flush=True)

    rows, table_rows, ratios = [], [], {}
    for batch in args.batch_sizes:
        batches = batches_of(pool, n_boxes, batch)
        reference = np.asarray(variants[ORT](batches[0]), np.float32)
        diffs = {}
        for name, fn in variants.items():
            out = np.asarray(fn(batches[0]), np.float32)
            diffs[name] = float(np.abs(out - reference).max()) if same_weights else None
            for i in range(args.warmup):
                fn(batches[i % len(batches)])
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.repeats):
            x = batches[r % len(batches)]
            for name, fn in variants.items():
                times[name].append(time_ms(fn, x))
        stats = {name: summarize(t) for name, t in times.items()}
        base = stats[ORT]["p50"]
        for name in variants:
            s = stats[name]
            row = {
                "batch": batch,
                "variant": name,
                "ms_per_batch": s,
                "ms_per_image_p50": round(s["p50"] / batch, 3),
                "ratio_to_onnxruntime": ratio(s["p50"], base),
                "max_abs_diff_vs_onnxruntime": diffs[name],
            }
            rows.append(row)
            table_rows.append(
                [batch, name, s["p50"], s["p95"], row["ms_per_image_p50"], row["ratio_to_onnxruntime"], diffs[name]]
            )
        eager, cl = stats["torch eager"]["p50"], stats["torch channels_last"]["p50"]
        ratios[f"batch_{batch}"] = {
            "torch_eager / onnxruntime": ratio(eager, base),
            "torch_channels_last / onnxruntime": ratio(cl, base),
            "torch_eager / torch_channels_last": ratio(eager, cl),
        }
    title = (
        f"Embedder, {arch} at {h}x{w}, {args.device} torch vs onnxruntime {ort_model.providers[0]}, "
        f"{args.repeats} timed calls each (p50/p95 ms; ratio = variant p50 / onnxruntime p50)"
    )
    table = print_table(
        title,
        ["batch", "variant", "ms/batch p50", "p95", "ms/image", "x onnxruntime", "max abs diff vs ORT"],
        table_rows,
    )
    for key, rs in ratios.items():
        print(f"{key}: " + ", ".join(f"{k} = {v}" for k, v in rs.items()))
    config = {
        "source": source,
        "torch_model": torch_source,
        "architecture": arch,
        "input_size": [h, w],
        "batch_sizes": args.batch_sizes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "inputs": photos.source,
        "synthetic_inputs": photos.synthetic,
        "tta_boxes_per_photo": n_boxes,
        "torch_device": args.device,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_providers": ort_model.providers,
        "threads_requested": args.threads,
        "timing": "host float32 array in -> host float32 array out, variants in round robin",
    }
    results = {"rows": rows, "ratios": ratios}
    write_result(args.out, "embedder", machine, config, results, [table])
    tmp.cleanup()
    return results


if __name__ == "__main__":
    main()
