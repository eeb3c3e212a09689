"""Batch prediction: the class-balance swap by hand, a valid resumable submission on real photos."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from whaleid.predict import ClassBalance, class_balance, predict_folder, read_log

NW = "new_whale"


def test_class_balance_swaps_by_hand():
    rows = [
        [("A", 0.90), ("B", 0.80), ("C", 0.1)],  # 0: A-B gap 0.10 < 0.3, B nobody's top-1, A claimed 3x -> swap
        [("A", 0.90), ("D", 0.85)],  # 1: same, D nobody's top-1 -> swap
        [("A", 0.95), ("E", 0.50)],  # 2: gap 0.45 >= 0.3 -> kept
        [("F", 0.70), ("A", 0.65)],  # 3: F claimed once (< 3 photos) -> kept
        [("G", 0.60), ("F", 0.58)],  # 4: F is top-1 of row 3 -> kept
        [("A", 0.60), (NW, 0.55)],  # 5: second entry is new_whale -> never swapped
    ]
    # claims (top-1 or top-2): A in rows 0, 1, 2, 3, 5 = 5; F in rows 3, 4 = 2; G 1
    out, swapped = class_balance(rows, ClassBalance(margin=0.3, min_claims=3))
    assert swapped == [0, 1]
    assert [r[0][0] for r in out] == ["B", "D", "A", "F", "G", "A"]
    # a stricter rule: A must be claimed by 6 photos -> nothing swaps
    assert class_balance(rows, ClassBalance(margin=0.3, min_claims=6))[1] == []


@pytest.mark.slow
def test_predict_real_folder_valid_submission_and_resume(real_bundle, flukes_dir, tmp_path):
    images = flukes_dir / "images"
    out = tmp_path / "submission.csv"
    log = tmp_path / "submission.jsonl"
    n_photos = len([p for p in images.iterdir() if p.suffix.lower() == ".jpg"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "whaleid", "predict", str(real_bundle), "--images", str(images), "--out", str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 64):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # interrupted mid-run
    proc.wait(10)
    before = read_log(log)
    assert 64 <= len(before) < n_photos
    res = predict_folder(real_bundle, images, out, progress=False)
    assert res["resumed"] == len(before) and res["predicted_now"] == n_photos - len(before)
    assert len(read_log(log)) == n_photos
    assert log.read_text().count("\n") == n_photos  # nothing predicted twice
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_photos and {r["Image"] for r in rows} == {p.name for p in images.iterdir()}
    for r in rows:
        labels = r["Id"].split(" ")
        assert len(labels) == 5 and len(set(labels)) == 5, r
    assert any(NW in r["Id"].split(" ") for r in rows)
