"""Export a training run as a bundle: ``model.onnx`` (the embedding network only) and ``manifest.json``.

Every export is verified, as timm verifies its own: ``onnx.checker``, then onnxruntime against
torch on a batch of real photos at batch sizes 1, 2 and 7 (the photos' TTA crops, preprocessed by
``core.preprocess`` exactly as the service will). The export fails when the largest absolute
difference exceeds ``atol`` (1e-4). ``fp16`` additionally writes half-precision weights (inputs and
outputs stay float32) and reports the smallest cosine between fp16 and fp32 embeddings.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import core
from core.errors import ConfigError
from core.fileio import sha256_file
from core.manifest import Manifest, ModelSpec, ThresholdSpec, load_manifest
from core.preprocess import load_image_file
from training.config import TrainConfig, from_dict, preprocess_spec
from training.evaluate import tta_policy
from training.model import EmbeddingNet, build_embedding_net
from training.runtime import CHECKPOINT_DIR, FINAL, LAST, load_checkpoint, prepare_split

log = logging.getLogger(__name__)

OPSET = 18
ATOL = 1e-4
VERIFY_BATCHES = (1, 2, 7)


class ExportError(RuntimeError):
    """The exported model does not reproduce the torch model (or cannot be written)."""


@dataclass
class ExportReport:
    bundle: Path
    max_abs_diff: dict[int, float]
    fp16_min_cosine: float | None = None


def load_run(run_dir: str | Path) -> tuple[TrainConfig, EmbeddingNet, dict]:
    """The config and trained embedding network of a run (``final.pt``, else ``last.pt``), in eval mode.

    Raises:
        ConfigError: no checkpoint in the run folder.
    """
    run = Path(run_dir)
    for name in (FINAL, LAST):
        path = run / CHECKPOINT_DIR / name
        if path.exists():
            ckpt = load_checkpoint(path)
            break
    else:
        raise ConfigError(f"{run} has no checkpoint ({CHECKPOINT_DIR}/{FINAL} or {LAST}); train it first")
    cfg = from_dict(TrainConfig, ckpt["config"])
    cfg.model.pretrained = False  # the checkpoint holds the weights
    cfg.model.init_from = None
    model = build_embedding_net(cfg.model)
    model.load_state_dict(ckpt["embedding"])
    model.eval()
    return cfg, model, ckpt


def verification_batch(cfg: TrainConfig, run_dir: Path, n: int = 7) -> np.ndarray:
    """``(n, 3, H, W) float32`` inputs from real photos of the run (their TTA crops), or noise when
    the photos are not reachable."""
    from index.embedder import PhotoEmbedder

    split = prepare_split(cfg, run_dir)
    photos = (split.train + [p for p, _ in split.queries()])[: max(2, n)]
    embedder = PhotoEmbedder(lambda b: b, preprocess_spec(cfg), tta_policy(cfg))
    batches = []
    for p in photos:
        try:
            pixels = load_image_file(Path(cfg.data.images) / p.image).pixels
        except Exception:  # noqa: BLE001 - fall back to noise below
            continue
        batches.append(embedder.batch_for(pixels, embedder.boxes_for(pixels, p.box)))
        if sum(len(b) for b in batches) >= n:
            break
    if not batches:
        log.warning("no photo of the run is readable: verifying the export on random inputs")
        h, w = cfg.model.input_size
        return np.random.default_rng(0).normal(size=(n, 3, h, w)).astype(np.float32)
    return np.concatenate(batches)[:n]


def _export_onnx(model: EmbeddingNet, path: Path, input_hw: tuple[int, int], optimize: bool = True) -> None:
    dummy = torch.zeros(2, 3, *input_hw)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        (dummy,),
        input_names=["input"],
        output_names=["embedding"],
        dynamic_shapes={"x": {0: batch}},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
        optimize=optimize,
    )
    program.save(str(path), external_data=False)


def _ort(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify_onnx(model: EmbeddingNet, path: Path, inputs: np.ndarray, atol: float = ATOL) -> dict[int, float]:
    """Max absolute difference between torch and onnxruntime at batch sizes 1, 2 and 7.

    Raises:
        ExportError: ``onnx.checker`` fails, or a difference is above ``atol``.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejects {path}: {exc}") from exc
    session = _ort(path)
    diffs = {}
    for n in VERIFY_BATCHES:
        x = np.resize(inputs, (n, *inputs.shape[1:])).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = session.run(None, {"input": x})[0]
        diffs[n] = float(np.abs(out - ref).max())
    bad = {n: d for n, d in diffs.items() if not d <= atol}
    if bad:
        raise ExportError(f"onnxruntime differs from torch by more than {atol}: {bad}")
    return diffs


def fp16_copy(src: Path, dst: Path, inputs: np.ndarray) -> float:
    """Write a float16-weight copy of ``src`` (float32 inputs and outputs) and return the smallest
    cosine between its embeddings and ``src``'s on ``inputs``."""
    import onnx
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(half, str(dst))
    a = _ort(src).run(None, {"input": inputs})[0]
    b = _ort(dst).run(None, {"input": inputs})[0]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import timm

    return {
        "whaleid": core.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def export_bundle(
    run_dir: str | Path, out_dir: str | Path, fp16: bool = False, atol: float = ATOL, fine_tunable: bool = False
) -> ExportReport:
    """Export a run's embedding network into a bundle folder (``model.onnx`` + ``manifest.json``).

    ``fine_tunable`` skips the exporter's graph optimisation, so that every parameter and BatchNorm
    statistic stays an initializer under its PyTorch name and ``model.init_from`` can fine-tune from
    the bundle (the starter model); onnxruntime fuses the BatchNorms when it loads the model, as for
    a default export. The file is about 8 % larger.

    The new_whale threshold comes from the run's ``eval.json`` (rule ``max_map5`` or
    ``new_whale_share`` as the run's config says); without it the manifest has no threshold until
    ``whaleid calibrate``. An existing manifest's gallery settings are kept.

    Raises:
        ConfigError: the run has no checkpoint.
        ExportError: verification failed (the bundle's manifest is not written).
    """
    run = Path(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg, model, ckpt = load_run(run)
    spec = preprocess_spec(cfg)
    onnx_path = out / "model.onnx"
    tmp_path = out / ".model.onnx.tmp"
    _export_onnx(model, tmp_path, tuple(cfg.model.input_size), optimize=not fine_tunable)
    inputs = verification_batch(cfg, run, max(VERIFY_BATCHES))
    diffs = verify_onnx(model, tmp_path, inputs, atol)
    tmp_path.replace(onnx_path)
    fp16_cos = None
    precision = "fp32"
    if fp16:
        fp16_cos = fp16_copy(onnx_path, out / "model.fp16.onnx", inputs)
        (out / "model.fp16.onnx").replace(onnx_path)
        precision = "fp16"
    thresholds = {}
    eval_path = run / "eval.json"
    if eval_path.exists():
        import json

        ev = json.loads(eval_path.read_text())
        thresholds["embedding"] = ThresholdSpec(
            value=ev["threshold"],
            rule=ev["threshold_rule"] if ev["threshold_rule"] in ("max_map5", "new_whale_share") else "manual",
            new_whale_share=ev.get("new_whale_share_target") if ev["threshold_rule"] == "new_whale_share" else None,
            val_map5=ev.get("map5"),
        )
    previous = None
    if (out / "manifest.json").exists():
        try:
            previous = load_manifest(out)
        except Exception:  # noqa: BLE001 - an unreadable old manifest is simply replaced
            previous = None
    manifest = Manifest(
        model_version=f"{cfg.model.backbone}-{run.name}-{sha256_file(onnx_path)[:8]}",
        model=ModelSpec(
            sha256=sha256_file(onnx_path),
            architecture=cfg.model.backbone,
            embedding_dim=cfg.model.embedding_dim,
            opset=OPSET,
            precision=precision,
            head=cfg.head.kind,
        ),
        preprocess=spec,
        tta=tta_policy(cfg) if previous is None else previous.tta,
        detector=None if previous is None else previous.detector,
        gallery=previous.gallery if previous is not None else Manifest.model_fields["gallery"].default,
        thresholds=thresholds,
        local_features=None if previous is None else previous.local_features,
        versions=_versions(),
        training={
            "run_dir": str(run.resolve()),
            "global_step": int(ckpt.get("global_step", 0)),
            "input_size": list(cfg.model.input_size),
            "flip_identities": cfg.data.flip_identities,
            "fine_tunable": fine_tunable,
            # the run's initial weights (load_run resets them: the checkpoint holds the weights)
            "pretrained": ckpt["config"]["model"].get("pretrained", False),
            "init_from": ckpt["config"]["model"].get("init_from"),
            "onnx_max_abs_diff": diffs,
            **({"fp16_min_cosine": fp16_cos} if fp16_cos is not None else {}),
        },
    )
    if previous is not None and previous.scoring != "embedding":
        manifest = manifest.model_copy(update={"scoring": previous.scoring})
    manifest.save(out)
    return ExportReport(out, diffs, fp16_cos)
