"""The API's behaviour in seconds: FastAPI's TestClient on a tiny deterministic ONNX embedder built here
(no torch at run time, no ``../shared``), a gallery of textured synthetic photos with local features.

The same behaviours run end to end on real photos and a real uvicorn in ``test_api.py`` (slow tier);
this file is the fast tier's copy, so most of the service is checked in the README's test command.
"""

from __future__ import annotations

import csv
import re

import pytest
from helpers import jpeg_bytes, texture, tiny_bundle, view

pytest.importorskip("onnx")
pytest.importorskip("fastapi")

WHALES = 6


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A bundle whose gallery holds 2 views of whales w0..w5; spare views and new whales for queries."""
    from whaleid.workflows import build_gallery

    root = tmp_path_factory.mktemp("api-fast")
    bundle = tiny_bundle(root / "bundle", thresholds={"embedding": 0.5, "local": 0.5, "fused": 0.5}, seed=11)
    (root / "gallery").mkdir()
    rows = []
    for w in range(WHALES):
        for j in range(2):
            (root / "gallery" / f"w{w}_{j}.jpg").write_bytes(jpeg_bytes(view(texture(w), 10 * w + j)))
            rows.append((f"w{w}_{j}.jpg", f"w{w}"))
    with open(root / "gallery.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "whale_id"), *rows])
    build_gallery(bundle, root / "gallery", root / "gallery.csv", progress=False, local_features=True)
    spare = {w: jpeg_bytes(view(texture(w), 10 * w + 5)) for w in range(WHALES)}
    new = [jpeg_bytes(texture(300 + n)) for n in range(3)]
    enrolled = (root / "gallery" / "w3_0.jpg").read_bytes()
    return {"bundle": bundle, "root": root, "spare": spare, "new": new, "enrolled": enrolled}


@pytest.fixture
def client(photos, tmp_path):
    """A client on a private copy of the gallery (tests may change it)."""
    import shutil

    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    shutil.copytree(photos["bundle"] / "gallery", tmp_path / "gallery")
    with TestClient(create_app(Settings(bundle=photos["bundle"], gallery_dir=tmp_path / "gallery"))) as c:
        yield c


def identify(c, data: bytes, **params):
    return c.post("/identify", files={"file": ("q.jpg", data, "image/jpeg")}, params=params)


def enrol(c, datas, whale_id=None, headers=None):
    files = [("files", (f"p{i}.jpg", d, "image/jpeg")) for i, d in enumerate(datas)]
    return c.post("/gallery", files=files, data={"whale_id": whale_id} if whale_id else {}, headers=headers or {})


@pytest.mark.parametrize("mode", ["local", "fused"])
def test_each_mode_names_the_whale_with_its_evidence(client, photos, mode):
    body = identify(client, photos["spare"][2], scoring=mode, explain="true").json()
    preds = body["predictions"]
    assert body["scoring"] == mode and body["threshold"] == 0.5 and len(preds) == 5
    assert [p["rank"] for p in preds] == [1, 2, 3, 4, 5] and len({p["whale_id"] for p in preds}) == 5
    first = preds[0]
    assert first["whale_id"] == "w2" and first["evidence"]["inliers"] >= 20
    pairs = first["evidence"]["keypoint_pairs"]
    assert len(pairs) == first["evidence"]["inliers"] and all(len(p) == 2 and len(p[0]) == 2 for p in pairs)
    assert {"decode", "boxes", "embed", "search", "local", "total"} <= set(body["timing_ms"])
    known = [p for p in preds if p["whale_id"] != "new_whale"]
    assert all(a["score"] >= b["score"] for a, b in zip(known, known[1:], strict=False))


def test_embedding_mode_ranks_by_cosine_and_a_new_whale_comes_first(client, photos):
    body = identify(client, photos["new"][0], threshold=1.0).json()  # nothing reaches a threshold of 1.0
    preds = body["predictions"]
    assert body["scoring"] == "embedding" and preds[0]["whale_id"] == "new_whale" and preds[0]["score"] == 1.0
    assert all(p["evidence"]["embedding_similarity"] == p["score"] for p in preds[1:])
    assert "local" not in body["timing_ms"]  # the embedding mode extracts no local features


def test_enrol_identify_duplicates_listing_thumbnail_delete(client, photos):
    new = photos["new"][1:3]
    r = enrol(client, new, whale_id="ZZ-test")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["whale_id"] == "ZZ-test" and body["images_added"] == 2 and body["images_total"] == 2
    assert body["gallery_size"] == WHALES + 1 and body["also_enrolled_as"] == []
    top = identify(client, new[0]).json()["predictions"][0]
    assert top["whale_id"] == "ZZ-test" and top["score"] == 1.0 and top["evidence"]["exact_photo"] is True
    again = enrol(client, new[:1], whale_id="ZZ-test").json()
    assert again["images_added"] == 0 and again["duplicates"] == 1 and again["images_total"] == 2
    other = enrol(client, new[:1], whale_id="ZZ-other").json()
    assert other["images_added"] == 1 and other["also_enrolled_as"] == ["ZZ-test"]
    listing = client.get("/gallery", params={"q": "ZZ-"}).json()
    assert listing["total"] == 2 and [w["whale_id"] for w in listing["whales"]] == ["ZZ-other", "ZZ-test"]
    detail = client.get("/gallery/ZZ-test").json()
    thumb = client.get(detail["images"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    cached = client.get(detail["images"][0]["thumbnail_url"], headers={"If-None-Match": thumb.headers["etag"]})
    assert cached.status_code == 304
    assert client.delete("/gallery/ZZ-test").status_code == 200
    assert client.get("/gallery/ZZ-test").status_code == 404
    assert "ZZ-test" not in [p["whale_id"] for p in identify(client, new[0]).json()["predictions"]]


def test_enrol_without_id_and_photo_deletion(client, photos):
    r = enrol(client, [photos["new"][0]])
    wid, image_id = r.json()["whale_id"], r.json()["image_ids"][0]
    assert r.status_code == 201 and re.fullmatch(r"whale-\d{5}", wid)
    d = client.delete(f"/gallery/{wid}/images/{image_id}")
    assert d.status_code == 200 and d.json()["identity_deleted"] is True
    assert client.delete(f"/gallery/{wid}/images/{image_id}").status_code == 404


def test_bad_requests_are_4xx_with_stable_details(client, photos):
    img = photos["spare"][0]
    r = client.post("/identify")
    assert r.status_code == 400 and r.json()["detail"] == "no photo: send it as the multipart form field 'file'"
    r = client.post("/identify", files={"file": ("e.jpg", b"", "image/jpeg")})
    assert r.status_code == 400 and r.json()["detail"] == "empty upload: the file has no bytes"
    assert identify(client, b"not a photo at all").status_code == 415
    assert identify(client, img, k=0).status_code == 422 and identify(client, img, k=21).status_code == 422
    assert len(identify(client, img, k=12).json()["predictions"]) == WHALES + 1  # every whale and new_whale
    r = identify(client, img, scoring="no_such_mode")
    assert r.status_code == 422 and "no_such_mode" in r.json()["detail"]
    two = [("file", ("a.jpg", img, "image/jpeg")), ("file", ("b.jpg", img, "image/jpeg"))]
    r = client.post("/identify", files=two)
    assert r.status_code == 422
    assert r.json()["detail"] == "one photo per request in the field 'file' (got 2); POST /gallery takes several"
    # options sent as form fields are refused, not silently ignored (a new user's trial sent -F scoring=fused)
    r = client.post("/identify", files={"file": ("a.jpg", img, "image/jpeg")}, data={"scoring": "fused", "k": "1"})
    assert (
        r.status_code == 422
        and r.json()["detail"] == "'k', 'scoring' go in the URL, not the form: POST /identify?k=..."
    )
    r = client.post("/identify", files={"file": ("a.jpg", img, "image/jpeg")}, data={"whale_id": "x"})
    assert (
        r.status_code == 422
        and r.json()["detail"] == "unknown form field(s) 'whale_id': send the photo alone, as 'file'"
    )
    r = enrol(client, [img], whale_id="new_whale")
    assert r.status_code == 422 and "reserved" in r.json()["detail"]
    assert client.get("/gallery/no-such-whale").status_code == 404
    # a bad photo among good ones stores nothing
    r = enrol(client, [img, b"broken"], whale_id="ZZ-half")
    assert r.status_code == 415 and client.get("/gallery/ZZ-half").status_code == 404


def test_ready_health_metrics(client):
    ready = client.get("/ready").json()
    assert ready["gallery_size"] == WHALES and ready["gallery_images"] == 2 * WHALES
    assert ready["embedding_dim"] == 16 and ready["scoring_modes"] == ["embedding", "local", "fused"]
    assert ready["detector"] is False and ready["gpu"] is None
    assert client.get("/health").json() == {"status": "ok"}
    text = client.get("/metrics").text
    assert f"whaleid_gallery_identities {WHALES}.0" in text


def test_api_key_guards_writes(photos, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    shutil.copytree(photos["bundle"] / "gallery", tmp_path / "gallery")
    settings = Settings(bundle=photos["bundle"], gallery_dir=tmp_path / "gallery", api_key="s3cret")
    with TestClient(create_app(settings)) as c:
        r = enrol(c, [photos["new"][0]], whale_id="keyed")
        assert r.status_code == 401 and r.json() == {
            "detail": "missing API key: send it in the X-API-Key header",
            "code": "missing_api_key",
        }
        r = enrol(c, [photos["new"][0]], whale_id="keyed", headers={"X-API-Key": "wrong"})
        assert r.status_code == 403 and r.json() == {"detail": "invalid API key", "code": "invalid_api_key"}
        assert c.delete("/gallery/w0").status_code == 401
        assert enrol(c, [photos["new"][0]], whale_id="keyed", headers={"X-API-Key": "s3cret"}).status_code == 201
        assert identify(c, photos["new"][0]).status_code == 200 and c.get("/gallery/keyed").status_code == 200
