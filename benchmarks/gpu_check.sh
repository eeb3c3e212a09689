#!/usr/bin/env bash
# All four benchmarks on a CUDA machine, within about 8 minutes (each step has its own time limit, so one
# slow step cannot starve the others, and every step that finishes leaves its JSON):
#
#   embedder       DenseNet121 at 256x512 (random weights, exported to ONNX): onnxruntime on the CUDA
#                  provider vs torch eager / channels_last / channels_last + AMP on the GPU; batch 1, 5, 32.
#                  Keeps the model as a bundle for the next step.
#   identify       /identify against a server started on that bundle (CUDA provider when onnxruntime has
#                  it), 100 photos enrolled first, one client per scoring mode, then 8 clients.
#   training       training step of DenseNet121 + ArcFace, batch 32, eager / channels_last, each with and
#                  without AMP, at 64x128 and 256x512.
#   gallery_scale  FAISS Flat / HNSW32 / IVF at 10k, 100k, 1M (Flat and IVF on the GPU with faiss-gpu;
#                  HNSW has no GPU version and stays on the CPU).
#
# Usage: bash benchmarks/gpu_check.sh [RESULTS_DIR]
#   RESULTS_DIR  default: $OUT when set (the device runner's output folder), else
#                benchmarks/results/gpu-<UTC time>. Gets gpu.txt, environment.txt, <step>.json, <step>.log.
#   PYTHON=...   interpreter (default: .venv/bin/python when present, else python3).
#   IMAGES=DIR   photos for embedder/identify (default: ../shared/data/flukes/images; synthetic when absent).
#
# The environment needs the train and dev extras plus the GPU builds of onnxruntime and FAISS (see
# benchmarks/README.md). Without them the script still runs, on what it finds, and says so: read
# environment.txt and the "providers" / "device" fields of the JSON before quoting a number as a GPU one.
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
RESULTS=${1:-${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
IMAGE_ARGS=()
if [[ -n "${IMAGES:-}" ]]; then IMAGE_ARGS=(--images "$IMAGES"); fi
export HF_HUB_OFFLINE=1
START=$(date +%s)

log() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - START))s] $*"; }

if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"; then
  echo "nvidia-smi failed: this is not a CUDA machine" >&2
  exit 2
fi
log "GPU: $(head -n 1 "$RESULTS/gpu.txt")"

"$PY" - <<'EOF' 2>&1 | tee "$RESULTS/environment.txt"
import torch

print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
try:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    providers = ort.get_available_providers()
    print("onnxruntime", ort.__version__, providers)
    if "CUDAExecutionProvider" not in providers:
        print("WARNING: onnxruntime has no CUDA provider (install onnxruntime-gpu): ONNX numbers will be CPU ones")
except Exception as exc:
    print("WARNING: onnxruntime is not importable:", exc)
try:
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    print("faiss", faiss.__version__, "GPUs", gpus)
    if not gpus:
        print("WARNING: this FAISS has no GPU support (install faiss-gpu): gallery_scale runs on the CPU")
except Exception as exc:
    print("WARNING: faiss is not importable:", exc)
EOF

FAILED=()
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  log "$name (limit ${limit} s)"
  timeout -k 15 "$limit" "$@" 2>&1 | tee "$RESULTS/$name.log"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    log "$name FAILED (exit $rc; 124 = over its time limit); see $RESULTS/$name.log"
    FAILED+=("$name")
  fi
}

CUDA_ORT=(--providers CUDAExecutionProvider CPUExecutionProvider)

# 110 + 100 + 90 + 160 s = 460 s at most, plus about 15 s of checks above: within 8 minutes.
step embedder 110 "$PY" benchmarks/embedder.py --backbone densenet121 --input-size 256 512 \
  --device cuda --amp "${CUDA_ORT[@]}" --batch-sizes 1 5 32 --repeats 50 --warmup 5 --photos 8 \
  "${IMAGE_ARGS[@]}" --save-bundle "$WORK/bundle" --out "$RESULTS/embedder.json"

if [[ -f "$WORK/bundle/manifest.json" ]]; then
  step identify 100 "$PY" benchmarks/identify.py --bundle "$WORK/bundle" --enrol 100 --photos 20 \
    --requests 50 --concurrency 8 --concurrent-requests 200 --bare-repeats 30 "${CUDA_ORT[@]}" \
    "${IMAGE_ARGS[@]}" --server-env WHALEID_PROVIDERS='["CUDAExecutionProvider","CPUExecutionProvider"]' \
    --out "$RESULTS/identify.json"
else
  log "identify skipped: the embedder step wrote no bundle"
  FAILED+=(identify)
fi

step training 90 "$PY" benchmarks/train_step.py --backbone densenet121 --device cuda --amp \
  --sizes 64x128 256x512 --batch-size 32 --steps 20 --warmup 5 --out "$RESULTS/training.json"

step gallery_scale 160 "$PY" benchmarks/gallery_scale.py --gpu --sizes 10000 100000 1000000 \
  --out "$RESULTS/gallery_scale.json"

log "results in $RESULTS: $(cd "$RESULTS" && ls -- *.json 2>/dev/null | tr '\n' ' ')"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  log "failed or cut short: ${FAILED[*]}"
  exit 1
fi
log "all four benchmarks finished"
