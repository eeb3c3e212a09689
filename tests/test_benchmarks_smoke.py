"""Smoke tests of benchmarks/: each script runs at a tiny size in a subprocess and writes its JSON.

No timing is asserted (speed claims live in the benchmarks' own output, measured side by side); the tests
check that each script runs, that its JSON has the expected keys, and that the numbers are positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, tiny_bundle

BENCH = REPO / "benchmarks"
MACHINE_KEYS = {"date_utc", "cpu_model", "cpu_cores_logical", "memory_gib", "versions", "load_average_start"}

pytestmark = pytest.mark.slow


def run_benchmark(name: str, *args, timeout_s: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read_result(path, benchmark: str) -> dict:
    data = json.loads(path.read_text())
    assert data["benchmark"] == benchmark
    assert set(data["machine"]) >= MACHINE_KEYS
    assert data["machine"]["cpu_cores_logical"] >= 1
    assert data["tables"] and all("|" in t for t in data["tables"])
    assert data["command"].startswith("python ")
    return data


def positive(stats: dict) -> bool:
    """A ``common.summarize`` dict with n > 0 and positive p50/p95."""
    return stats["n"] > 0 and stats["p50"] > 0 and stats["p95"] >= stats["p50"] * 0.999


def test_every_benchmark_has_help():
    for name in ("embedder", "identify", "gallery_scale", "train_step"):
        out = run_benchmark(name, "--help", timeout_s=60).stdout
        assert f"benchmarks/{name}.py" in out and "--out" in out


def test_gallery_scale_smoke(tmp_path):
    out = tmp_path / "gallery_scale.json"
    proc = run_benchmark(
        "gallery_scale", "--sizes", 2000, "--queries", 40, "--timed-queries", 5, "--centres", 20, "--out", out
    )
    assert "recall@5" in proc.stdout
    rows = read_result(out, "gallery_scale")["results"]["rows"]
    assert [r["index"] for r in rows] == ["flat", "hnsw", "ivf"]
    assert [r["factory"] for r in rows][:2] == ["IDMap2,Flat", "IDMap2,HNSW32"]
    assert rows[2]["factory"].startswith("IVF") and rows[2]["params"]["nprobe"] == 8
    for r in rows:
        assert r["n"] == 2000
        assert positive(r["query_ms"])
        assert r["serialized_mib"] > 0 and r["build_s"] >= 0
        assert 0 <= r["recall_at_k"] <= 1
        assert r["speedup_vs_flat"] > 0
    assert rows[0]["recall_at_k"] == 1.0  # Flat is the ground truth


def test_embedder_smoke_and_saved_bundle(tmp_path):
    from core.manifest import load_manifest
    from index.embedder import load_embedder_model

    out, bundle = tmp_path / "embedder.json", tmp_path / "bundle"
    proc = run_benchmark(
        "embedder",
        *("--backbone", "test_resnet", "--input-size", 32, 64, "--embedding-dim", 16, "--batch-sizes", 1, 5),
        *("--repeats", 2, "--warmup", 1, "--photos", 1, "--save-bundle", bundle, "--out", out),
    )
    assert "torch_eager / onnxruntime" in proc.stdout
    res = read_result(out, "embedder")
    assert res["config"]["input_size"] == [32, 64] and res["config"]["tta_boxes_per_photo"] == 5
    rows = res["results"]["rows"]
    assert {(r["batch"], r["variant"]) for r in rows} == {
        (b, v) for b in (1, 5) for v in ("onnxruntime", "torch eager", "torch channels_last")
    }
    for r in rows:
        assert positive(r["ms_per_batch"]) and r["ms_per_image_p50"] > 0 and r["ratio_to_onnxruntime"] > 0
        assert r["max_abs_diff_vs_onnxruntime"] < 1e-4  # same weights: the export agrees with torch
    for ratios in res["results"]["ratios"].values():
        assert all(v > 0 for v in ratios.values())
    manifest = load_manifest(bundle)  # --save-bundle writes a servable bundle
    assert manifest.preprocess.input_size == (32, 64) and manifest.local_features is not None
    model = load_embedder_model(bundle, manifest, ["CPUExecutionProvider"])
    assert model(np.zeros((2, 3, 32, 64), np.float32)).shape == (2, 16)


def test_training_smoke(tmp_path):
    out = tmp_path / "training.json"
    run_benchmark(
        "train_step",
        *("--backbone", "test_resnet", "--sizes", "32x64", "--batch-size", 2, "--steps", 2, "--warmup", 1),
        *("--classes", 10, "--device", "cpu", "--out", out),
    )
    res = read_result(out, "training")
    rows = res["results"]["rows"]
    assert [r["variant"] for r in rows] == ["eager", "channels_last"]
    for r in rows:
        assert r["input_size"] == [32, 64]
        assert positive(r["step_ms"]) and r["images_per_s"] > 0 and r["ratio_to_eager"] > 0
    assert rows[0]["ratio_to_eager"] == 1.0


def test_identify_smoke_against_a_server_it_starts(tmp_path):
    pytest.importorskip("onnx")
    bundle = tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "identify.json"
    proc = run_benchmark(
        "identify",
        *("--bundle", bundle, "--enrol", 2, "--photos", 2, "--requests", 2, "--warmup", 1),
        *("--concurrency", 2, "--concurrent-requests", 4, "--bare-repeats", 2, "--out", out),
        timeout_s=120,
    )
    assert "throughput" in proc.stdout
    res = read_result(out, "identify")
    cfg, r = res["config"], res["results"]
    assert cfg["enrolled_before"] == 2 and cfg["server"]["gallery_size"] == 2
    assert cfg["server"]["scoring_modes"] == ["embedding", "local", "fused"]
    emb = r["single_client"]["embedding"]
    assert {"decode", "boxes", "embed", "search", "total"} <= set(emb["stages_ms"])
    assert positive(emb["round_trip_ms"]) and positive(emb["stages_ms"]["total"])
    assert r["concurrent"]["clients"] == 2 and r["concurrent"]["requests"] == 4
    assert r["concurrent"]["requests_per_s"] > 0 and positive(r["concurrent"]["latency_ms"])
    assert r["bare_embedder_ms"]["boxes"] == 5 and positive(r["bare_embedder_ms"]["all"])
    assert all(v > 0 for v in r["ratios"]["embedding"].values())
    assert r["ratios"]["concurrent"]["throughput / one_client_throughput"] > 0
    # the bundle has local features: fused is measured, with its added time over embedding
    assert "fused" in r["single_client"], cfg["failed_modes"]
    assert positive(r["single_client"]["fused"]["stages_ms"]["local"])
    assert r["fused_added_ms"]["local_stage_ms"]["p50"] > 0
    assert cfg["fused_shortlist_k"] == 50
