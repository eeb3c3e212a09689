"""Shared helpers of the benchmarks: timing, percentiles, tables, JSON results with the machine's description,
and the photos the benchmarks feed (real Kaggle 2019 photos from ``../shared``, or synthetic ones).

Every benchmark measures the things it compares in the same run and prints their ratios; absolute times
depend on the machine and on what else runs on it, so the JSON records the machine, the library versions
and the load average before and after the run.

This module imports numpy, Pillow and ``core`` only (never torch, onnxruntime or faiss), so a benchmark
pays for the libraries it measures and nothing else.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
#: Real photos (Kaggle 2019 Humpback Whale Identification), read in place and never copied.
FLUKES = REPO.parent / "shared" / "data" / "flukes"

#: Distributions whose versions every result records (missing ones are left out).
PACKAGES = (
    "whaleid",
    "numpy",
    "torch",
    "torchvision",
    "timm",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "faiss-cpu",
    "faiss-gpu",
    "opencv-python-headless",
    "fastapi",
    "uvicorn",
    "httpx",
)


# -- machine ----------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :func:`platform.processor` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total memory of the machine in GiB (``/proc/meminfo``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs (``nvidia-smi``), empty when there is none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (and the runtime version of modules already imported)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    for module in ("torch", "onnxruntime", "faiss"):
        mod = sys.modules.get(module)
        if mod is not None and getattr(mod, "__version__", None):
            out[f"{module} (imported)"] = str(mod.__version__)
    return out


def git_commit() -> str | None:
    """The checkout's commit (read-only ``git rev-parse``), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (another busy process shows here), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """What the numbers were measured on: CPU model, cores, memory, GPUs, versions, date, load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_gib": memory_gib(),
        "gpus": gpu_names(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": load_average(),
    }


def preload_cuda_libraries(providers) -> None:
    """Let onnxruntime find the CUDA/cuDNN libraries of the nvidia pip packages (``onnxruntime.preload_dlls``)."""
    if "CUDAExecutionProvider" not in providers:
        return
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - the session will say what is missing
            print(f"NOTE: onnxruntime.preload_dlls() failed: {exc}", file=sys.stderr)


# -- process memory ---------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    """Resident memory of this process in MiB (``VmRSS``), or None where ``/proc`` is absent."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process in MiB since the last :func:`reset_peak_rss` (``VmHWM``)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux: write 5 to ``/proc/self/clear_refs``). True when it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- timing -----------------------------------------------------------------------------------


def time_ms(fn: Callable, *args, **kwargs) -> float:
    """Wall time of one call of ``fn`` in milliseconds (``time.perf_counter``)."""
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1e3


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``; NaN when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else math.nan


def summarize(values_ms: Sequence[float]) -> dict:
    """``n``, ``mean``, ``p50``, ``p95``, ``min`` and ``max`` of timings in milliseconds (rounded to 0.001)."""
    v = np.asarray(values_ms, dtype=np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "p50": None, "p95": None, "min": None, "max": None}
    return {
        "n": int(len(v)),
        "mean": round(float(v.mean()), 3),
        "p50": round(percentile(v, 50), 3),
        "p95": round(percentile(v, 95), 3),
        "min": round(float(v.min()), 3),
        "max": round(float(v.max()), 3),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded to 3 decimals; None when either is missing or ``b`` is 0."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


# -- tables and results -----------------------------------------------------------------------


def fmt(value) -> str:
    """A table cell: floats with 2 decimals below 10, 1 below 1000, none above (two significant digits below
    0.01), None as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2g}"
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; cells are formatted with :func:`fmt` unless already strings."""
    cells = [[(c if isinstance(c, str) else fmt(c)).replace("|", "\\|") for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, rule, *body])


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Print ``title`` and a markdown table; returns the table's text (kept in the JSON result)."""
    table = markdown_table(headers, rows)
    print(f"\n{title}\n\n{table}\n", flush=True)
    return f"{title}\n\n{table}"


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_result(path: str | Path, benchmark: str, machine: dict, config: dict, results: dict, tables: list[str]):
    """Write a benchmark's JSON atomically: benchmark name, command line, machine, config, results, tables.

    Returns:
        The path written.
    """
    from core.fileio import atomic_write_text

    machine = {**machine, "load_average_end": load_average()}
    payload = {
        "benchmark": benchmark,
        "command": " ".join(["python", *sys.argv]),
        "machine": machine,
        "config": config,
        "results": results,
        "tables": tables,
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"results written to {out}", flush=True)
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (except None and False) and keeps the description's line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: ``--out`` and ``--threads``."""
    p = argparse.ArgumentParser(
        prog=f"python benchmarks/{name}.py", description=description, formatter_class=_HelpFormatter
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON result file.")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Intra-op threads of torch / onnxruntime / FAISS (default: the libraries' own choice, all cores).",
    )
    return p


def parse_hw(text: str) -> tuple[int, int]:
    """``"256x512"`` → ``(256, 512)`` (height, width in pixels)."""
    try:
        h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x512, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"height and width must be positive, got {text!r}")
    return h, w


# -- photos -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """One photo as uploaded: its file name and encoded bytes."""

    name: str
    data: bytes

    def pixels(self) -> np.ndarray:
        """``(H, W, 3) uint8`` upright RGB, decoded exactly as the service decodes an upload."""
        from core.preprocess import decode_image

        return decode_image(self.data).pixels


@dataclass(frozen=True)
class PhotoSet:
    photos: list[Photo]
    source: str
    synthetic: bool


def synthetic_photo(seed: int, size_hw: tuple[int, int] = (360, 768)) -> bytes:
    """A JPEG of a dark fluke-like shape on a sea-coloured, noisy background (for machines without ../shared)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    h, w = size_hw
    sea = np.empty((h, w, 3), np.float32)
    sea[...] = np.array([40, 90, 130], np.float32) + np.linspace(0, 40, h, dtype=np.float32)[:, None, None]
    sea += rng.normal(0, 18, size=(h, w, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(sea, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cx, cy, span = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6), w * rng.uniform(0.25, 0.4)
    tips = [(cx - span, cy - h * 0.15), (cx + span, cy - h * 0.12)]
    notch = (cx, cy + h * 0.05)
    draw.polygon(
        [tips[0], (cx - span * 0.3, cy + h * 0.1), notch, (cx + span * 0.3, cy + h * 0.1), tips[1]], (20, 20, 25)
    )
    for _ in range(40):  # pale scars: texture for SIFT
        x, y = rng.uniform(cx - span * 0.8, cx + span * 0.8), rng.uniform(cy - h * 0.1, cy + h * 0.08)
        r = rng.uniform(2, 7)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(150, 255, 3)))
    buf = io.BytesIO()
    img.filter(ImageFilter.GaussianBlur(0.8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def load_photos(n: int, images: Path | None = None, include_large: bool = False, seed: int = 0) -> PhotoSet:
    """``n`` photos to feed a benchmark, chosen at random (seeded) and read into memory.

    Args:
        n: how many photos.
        images: a folder of photos; default: the real Kaggle 2019 photos in ``../shared/data/flukes/images``.
            When the folder is absent, synthetic photos are used and a message says so.
        include_large: also pick the few photos kept at their original resolution (up to 5959 px wide,
            listed in ``ORIGINAL_RESOLUTION.txt``); by default they are left out so the decode time is that
            of a typical 768 px upload.
        seed: seeds the choice.
    """
    folder = Path(images) if images else FLUKES / "images"
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts) if folder.is_dir() else []
    if not files:
        print(
            f"NOTE: no photos in {folder} (../shared is absent?): using {n} SYNTHETIC photos instead of real ones",
            file=sys.stderr,
            flush=True,
        )
        photos = [Photo(f"synthetic-{i:04d}.jpg", synthetic_photo(seed + i)) for i in range(n)]
        return PhotoSet(photos, "synthetic (benchmarks/common.py synthetic_photo, 360x768 JPEG)", True)
    large_list = folder.parent / "ORIGINAL_RESOLUTION.txt"
    if not include_large and large_list.is_file():
        large = set(large_list.read_text().split())
        files = [p for p in files if p.name not in large]
    chosen = random.Random(seed).sample(files, min(n, len(files)))
    while len(chosen) < n:  # fewer photos than asked: reuse them
        chosen.append(chosen[len(chosen) % len(files)])
    photos = [Photo(p.name, p.read_bytes()) for p in chosen]
    mean_kb = sum(len(p.data) for p in photos) / len(photos) / 1024
    return PhotoSet(photos, f"{len(photos)} photos from {folder} (mean {mean_kb:.0f} KiB)", False)
