"""``whaleid predict`` ranks exactly as ``POST /identify`` does, in every scoring mode (issue 23).

A tiny torch-free bundle (a one-matrix ONNX embedder, SIFT local features) and a gallery of
textured synthetic photos; queries are other views of enrolled whales, new whales, a photo that is
in the gallery (exact-photo rule) and an unreadable file. Before the shared pipeline
(``index/identify.py``), ``predict`` ranked by the embedding alone whatever the bundle's mode.
"""

from __future__ import annotations

import csv
import json

import pytest
from helpers import jpeg_bytes, texture, tiny_bundle, view

from index.fluke_check import FlukeChecker

pytest.importorskip("onnx")
pytest.importorskip("fastapi")

MODES = ("embedding", "local", "fused")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from whaleid.workflows import build_gallery

    root = tmp_path_factory.mktemp("predict-vs-service")
    bundle = tiny_bundle(
        root / "bundle", scoring="fused", thresholds={"embedding": 0.6, "local": 0.5, "fused": 0.3}, seed=3
    )
    gallery_imgs, queries = root / "gallery", root / "queries"
    gallery_imgs.mkdir()
    queries.mkdir()
    rows = []
    for w in range(6):
        base = texture(w)
        for j in range(2):
            name = f"w{w}_{j}.jpg"
            (gallery_imgs / name).write_bytes(jpeg_bytes(view(base, 10 * w + j)))
            rows.append((name, f"whale-{w}"))
        if w < 4:  # a third view of whales 0..3 is a query
            (queries / f"q_known_{w}.jpg").write_bytes(jpeg_bytes(view(base, 10 * w + 7)))
    for n in range(2):  # whales never enrolled
        (queries / f"q_new_{n}.jpg").write_bytes(jpeg_bytes(texture(100 + n)))
    (queries / "q_exact.jpg").write_bytes((gallery_imgs / "w5_1.jpg").read_bytes())
    (queries / "q_broken.jpg").write_bytes(b"not a photo")
    with open(root / "gallery.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "whale_id"), *rows])
    build_gallery(bundle, gallery_imgs, root / "gallery.csv", progress=False, local_features=True)
    return bundle, queries, root


def service_top5(bundle, queries, mode: str | None) -> dict[str, list]:
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    out = {}
    with TestClient(create_app(Settings(bundle=bundle))) as c:
        for photo in sorted(queries.iterdir()):
            params = {"scoring": mode} if mode else {}
            r = c.post("/identify", params=params, files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
            if r.status_code != 200:
                out[photo.name] = "refused"
                assert (photo.name, r.status_code) == ("q_broken.jpg", 415)  # not an image
                continue
            body = r.json()
            out[photo.name] = ([[p["whale_id"], p["score"]] for p in body["predictions"]], body["looks_like_fluke"])
    return out


def predict_top5(bundle, queries, root, mode: str | None) -> tuple[dict, dict]:
    from whaleid.predict import predict_folder, read_log

    out_csv = root / f"sub-{mode}.csv"
    summary = predict_folder(bundle, queries, out_csv, scoring=mode, progress=False)
    log = read_log(out_csv.with_suffix(".jsonl"))
    got = {
        name: ("refused" if rec.get("error") else (rec["predictions"], rec["looks_like_fluke"]))
        for name, rec in log.items()
    }
    return got, summary


@pytest.mark.parametrize("mode", [None, *MODES])
def test_predict_gives_the_services_top5(setup, mode):
    bundle, queries, root = setup
    service = service_top5(bundle, queries, mode)
    predicted, summary = predict_top5(bundle, queries, root, mode)
    assert predicted == service
    # the summary names what was used: the bundle's default mode (fused) and its threshold
    expected_mode = mode or "fused"
    thresholds = {"embedding": 0.6, "local": 0.5, "fused": 0.3}
    assert summary["scoring"] == expected_mode and summary["threshold"] == thresholds[expected_mode]
    assert summary["model_version"] == "tiny-linear-test"
    assert summary["photos"] == 8 and summary["unreadable"] == 1
    # hand-checked: the photo that is in the gallery names its whale first with score 1.0
    assert service["q_exact.jpg"][0][0] == ["whale-5", 1.0]
    assert service["q_broken.jpg"] == "refused"
    if expected_mode != "embedding":
        # SIFT finds the other view of each known whale (genuine matches have many inliers)
        assert [service[f"q_known_{w}.jpg"][0][0][0] for w in range(4)] == [f"whale-{w}" for w in range(4)]


def test_predict_resumes_only_with_the_same_settings(setup):
    bundle, queries, root = setup
    from whaleid.predict import predict_folder

    out_csv = root / "resume.csv"
    first = predict_folder(bundle, queries, out_csv, scoring="embedding", progress=False)
    again = predict_folder(bundle, queries, out_csv, scoring="embedding", progress=False)
    other = predict_folder(bundle, queries, out_csv, scoring="local", progress=False)
    assert (first["predicted_now"], again["predicted_now"], other["predicted_now"]) == (8, 0, 8)
    lines = [json.loads(x) for x in out_csv.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["scoring"] for r in lines] == ["embedding"] * 8 + ["local"] * 8


@pytest.mark.parametrize("mode", MODES)
def test_pseudo_labels_are_the_services_confident_top1(setup, mode, monkeypatch):
    import functools

    from fastapi.testclient import TestClient

    import index.identify
    from service.config import Settings
    from service.main import create_app
    from whaleid.predict import pseudo_label

    bundle, queries, root = setup
    # the synthetic textures do not look like fluke photos: judge them by the gallery reference only
    monkeypatch.setattr(index.identify, "FlukeChecker", functools.partial(FlukeChecker, photo_model=None))
    min_conf = {"embedding": 0.6, "local": 0.5, "fused": 0.3}[mode]
    res = pseudo_label(bundle, queries, root / f"pseudo-{mode}.csv", min_conf, progress=False, scoring=mode)
    with open(root / f"pseudo-{mode}.csv", newline="") as fh:
        got = [(r["image"], r["whale_id"], float(r["confidence"])) for r in csv.DictReader(fh)]
    expected = []
    with TestClient(create_app(Settings(bundle=bundle))) as c:
        for photo in sorted(queries.iterdir()):
            r = c.post(
                "/identify",
                params={"scoring": mode, "threshold": min_conf, "k": 1},
                files={"file": (photo.name, photo.read_bytes())},
            )
            if r.status_code != 200:
                continue
            top = r.json()["predictions"][0]
            if (
                top["whale_id"] != "new_whale"
                and not top["evidence"].get("exact_photo")
                and r.json()["looks_like_fluke"]
            ):
                expected.append((photo.name, top["whale_id"], top["score"]))
    assert got == expected and res["labelled"] == len(expected) and res["scoring"] == mode
    assert all(name != "q_exact.jpg" for name, _, _ in got)  # a gallery photo is no new label
    if mode != "embedding":
        assert {name for name, _, _ in got} >= {f"q_known_{w}.jpg" for w in range(4)}
