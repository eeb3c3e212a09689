"""The quickstart's printed examples use photos the gallery does not hold (issue 23: the identify
example was an enrolled photo, always an exact match with score 1.0, and the enrol example filed that
same photo under a second whale id)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import jpeg_bytes, tiny_bundle

pytest.importorskip("onnx")
pytest.importorskip("faiss")


def test_examples_are_photos_the_gallery_does_not_hold(tmp_path, monkeypatch):
    from whaleid.quickstart import curl_examples, example_photos
    from whaleid.workflows import build_gallery

    bundle = tiny_bundle(tmp_path / "bundle")
    photos = tmp_path / "images"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        (photos / name).write_bytes(jpeg_bytes(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)))
    (photos / "b_copy.jpg").write_bytes((photos / "b.jpg").read_bytes())  # the same bytes as an enrolled photo
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "whale_id"), ("a.jpg", "w1"), ("b.jpg", "w2"), ("d.jpg", "new_whale")])
    build_gallery(bundle, photos, tmp_path / "labels.csv", progress=False)

    # a.jpg and b.jpg (and b_copy.jpg, same bytes) are enrolled; c.jpg and d.jpg are not
    query, new = example_photos(bundle, photos)
    assert (query.name, new.name) == ("c.jpg", "d.jpg")
    text = curl_examples("127.0.0.1", 8000, query, new)
    assert f"curl -F file=@{query} http://127.0.0.1:8000/identify" in text
    assert f"curl -F files=@{new} -F whale_id=my-whale-1 http://127.0.0.1:8000/gallery" in text
    assert "a.jpg" not in text and "b.jpg" not in text
    # what to expect: d.jpg is labelled new_whale; the enrol id is one the gallery does not hold
    from whaleid.quickstart import example_context

    note, enrol_id = example_context(bundle, tmp_path / "labels.csv", new)
    assert "new_whale should come first" in note and enrol_id == "my-whale-1"
    build_gallery(bundle, photos, _labels(tmp_path, [("c.jpg", "my-whale-1"), ("a.jpg", "w1")]), progress=False)
    note, enrol_id = example_context(bundle, tmp_path / "labels2.csv", photos / "a.jpg")
    assert note == "(a new photo of whale w1: expect it near the top)" and enrol_id == "my-whale-2"
    text = curl_examples("127.0.0.1", 8000, query, new, enrol_id, note)
    assert "-F whale_id=my-whale-2 " in text and note in text and "?scoring=fused" in text
    # relative paths are printed absolute: the examples work from any terminal
    rel = query.relative_to(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert f"curl -F file=@{tmp_path / rel} " in curl_examples("127.0.0.1", 8000, rel, new)


def test_the_enrol_example_is_a_photo_labelled_new_whale_and_a_busy_port_is_refused_early(tmp_path):
    import socket

    from core.errors import ConfigError
    from whaleid.quickstart import check_port_free, example_photos
    from whaleid.workflows import build_gallery

    bundle = tiny_bundle(tmp_path / "bundle")
    photos = tmp_path / "images"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        (photos / name).write_bytes(jpeg_bytes(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)))
    labels = _labels(tmp_path, [("a.jpg", "w1"), ("e.jpg", "new_whale")])
    build_gallery(bundle, photos, labels, progress=False)
    # b, c and d are not listed (they may show known whales): e, labelled new_whale, is identified, then
    # enrolled (the only listed new_whale photo serves both)
    assert example_photos(bundle, photos, labels) == (photos / "e.jpg", photos / "e.jpg")
    labels2 = _labels(tmp_path, [("a.jpg", "w1"), ("d.jpg", "new_whale"), ("e.jpg", "new_whale")])
    assert example_photos(bundle, photos, labels2) == (photos / "d.jpg", photos / "e.jpg")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port} .*--port {port + 1}"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again


def _labels(folder, rows):
    path = folder / "labels2.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "whale_id"), *rows])
    return path


def test_no_unheld_photo_gives_placeholders(tmp_path):
    from whaleid.quickstart import curl_examples

    text = curl_examples("127.0.0.1", 8000, None, None)
    assert "file=@fluke.jpg" in text and "files=@my-fluke.jpg" in text


def test_the_step_4_estimate_scales_with_the_photos_listed(tmp_path):
    from whaleid.quickstart import _own_estimate

    def labels(n):
        path = tmp_path / f"labels{n}.csv"
        path.write_text("Image,Id\n" + "".join(f"p{i}.jpg,w{i % 7}\n" for i in range(n)))
        return path

    # 5 + 0.045 n to 10 + 0.1 n seconds: 60 photos 7.7-16 s; 3,280 photos 152.6-338 s, shown in minutes
    assert _own_estimate(labels(60)) == "about 8-16 s for 60 photos on 2 cores, less with more cores"
    assert _own_estimate(labels(3280)) == "about 3-6 minutes for 3280 photos on 2 cores, less with more cores"
    assert _own_estimate(tmp_path / "missing.csv") == "about 0.05 to 0.1 s a photo on 2 cores"
