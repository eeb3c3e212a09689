"""The catalogue a biologist keeps (issue 18) through the API: rename, merge, move photos (split), photo
metadata (form fields and EXIF), scoped identification, near-duplicates and the audit log.

TestClient on the tiny torch-free bundle with a gallery of textured synthetic photos (no ../shared).
"""

from __future__ import annotations

import csv
import io
import shutil
import threading

import numpy as np
import pytest
from helpers import jpeg_bytes, texture, tiny_bundle, view

pytest.importorskip("onnx")
pytest.importorskip("fastapi")

KEY = "s3cret"
H = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from whaleid.workflows import build_gallery

    root = tmp_path_factory.mktemp("catalogue-api")
    bundle = tiny_bundle(root / "bundle", thresholds={"embedding": 0.5, "local": 0.5, "fused": 0.5}, seed=21)
    (root / "photos").mkdir()
    rows = []
    for w in range(4):
        for j in range(2):
            (root / "photos" / f"w{w}_{j}.jpg").write_bytes(jpeg_bytes(view(texture(w), 10 * w + j)))
            rows.append((f"w{w}_{j}.jpg", f"w{w}"))
    with open(root / "gallery.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "whale_id"), *rows])
    build_gallery(bundle, root / "photos", root / "gallery.csv", progress=False, local_features=True)
    return bundle


@pytest.fixture
def client(base, tmp_path):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    shutil.copytree(base / "gallery", tmp_path / "gallery")
    with TestClient(create_app(Settings(bundle=base, gallery_dir=tmp_path / "gallery", api_key=KEY))) as c:
        yield c


def top(c, data: bytes, **params) -> list[str]:
    r = c.post("/identify", files={"file": ("q.jpg", data, "image/jpeg")}, params={"scoring": "local", **params})
    assert r.status_code == 200, r.text
    return [p["whale_id"] for p in r.json()["predictions"]]


def spare(w: int) -> bytes:
    return jpeg_bytes(view(texture(w), 10 * w + 7))


def photos_of(c, whale_id: str) -> list[dict]:
    r = c.get(f"/gallery/{whale_id}")
    return r.json()["images"] if r.status_code == 200 else []


def test_rename_keeps_photos_and_matches_and_is_audited(client):
    before = [p["sha256"] for p in photos_of(client, "w1")]
    r = client.patch("/gallery/w1", json={"whale_id": "HW-0042"}, headers=H)
    assert r.status_code == 200 and r.json()["whale_id"] == "HW-0042"
    assert client.get("/gallery/w1").status_code == 404
    assert [p["sha256"] for p in photos_of(client, "HW-0042")] == before
    assert top(client, spare(1))[0] == "HW-0042"  # the FAISS and LNBNN indexes follow
    taken = client.patch("/gallery/HW-0042", json={"whale_id": "w2"}, headers=H)
    assert taken.status_code == 409 and taken.json()["code"] == "whale_id_taken"
    assert client.patch("/gallery/nobody", json={"whale_id": "x"}, headers=H).status_code == 404
    assert client.patch("/gallery/HW-0042", json={"whale_id": "new_whale"}, headers=H).status_code == 422
    assert client.patch("/gallery/HW-0042", json={"whale_id": "x"}).status_code == 401  # writes need the key
    entry = client.get("/audit").json()["entries"][0]
    assert entry["operation"] == "rename" and entry["details"] == {"whale_id": "w1", "new_whale_id": "HW-0042"}
    assert entry["actor"].startswith("key:") and KEY not in str(entry)


def test_merge_moves_every_photo_and_the_merged_whale_disappears(client):
    a, b = photos_of(client, "w0"), photos_of(client, "w3")
    r = client.post("/gallery/w0/merge", json={"into": "w3"}, headers=H)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["moved_image_ids"]) == sorted(p["image_id"] for p in a)
    assert client.get("/gallery/w0").status_code == 404
    assert {p["sha256"] for p in photos_of(client, "w3")} == {p["sha256"] for p in a + b}
    assert top(client, spare(0))[0] == "w3" and "w0" not in top(client, spare(0), k=10)
    assert client.get("/ready").json()["gallery_size"] == 3
    assert client.post("/gallery/w3/merge", json={"into": "w3"}, headers=H).status_code == 422
    assert client.post("/gallery/w0/merge", json={"into": "w3"}, headers=H).status_code == 404  # already merged


def test_two_clients_merging_the_same_whale_one_wins_nothing_half_done(client):
    results = []

    def merge():
        results.append(client.post("/gallery/w2/merge", json={"into": "w1"}, headers=H).status_code)

    threads = [threading.Thread(target=merge) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 404]  # the second sees the whale gone
    assert len(photos_of(client, "w1")) == 4 and client.get("/gallery/w2").status_code == 404
    assert [e["operation"] for e in client.get("/audit").json()["entries"]].count("merge") == 1


def test_move_photos_splits_a_whale_and_an_emptied_whale_goes(client):
    w1 = photos_of(client, "w1")
    r = client.post("/gallery/w1/move", json={"image_ids": [w1[0]["image_id"]], "to": "w1-calf"}, headers=H)
    assert r.status_code == 200 and r.json()["created"] is True and r.json()["source_deleted"] is False
    assert [p["image_id"] for p in photos_of(client, "w1-calf")] == [w1[0]["image_id"]]
    assert [p["image_id"] for p in photos_of(client, "w1")] == [w1[1]["image_id"]]
    bad = client.post("/gallery/w1/move", json={"image_ids": [w1[0]["image_id"]], "to": "w2"}, headers=H)
    assert bad.status_code == 404 and bad.json()["code"] == "unknown_image"  # no longer w1's
    r = client.post("/gallery/w1/move", json={"image_ids": [w1[1]["image_id"]], "to": "w2"}, headers=H)
    assert r.json()["source_deleted"] is True and client.get("/gallery/w1").status_code == 404
    assert len(photos_of(client, "w2")) == 3
    assert client.post("/gallery/w2/move", json={"image_ids": [], "to": "x"}, headers=H).status_code == 422


def _exif_jpeg(pixels: np.ndarray) -> bytes:
    """A JPEG whose EXIF says 2019-07-14 09:31:05 at UTC-04:00, 25°17'S 152°53'E (Hervey Bay)."""
    from PIL import Image

    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif.get_ifd(0x8769).update({0x9003: "2019:07:14 09:31:05", 0x9011: "-04:00"})
    exif.get_ifd(0x8825).update({1: "S", 2: (25.0, 17.0, 0.0), 3: "E", 4: (152.0, 53.0, 0.0)})
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_metadata_from_exif_and_the_form_edited_and_validated(client):
    data = _exif_jpeg(view(texture(50), 1))
    r = client.post(
        "/gallery",
        files=[("files", ("hb.jpg", data, "image/jpeg"))],
        data={"whale_id": "HB-1", "location": "Hervey Bay", "photographer": "A. Field"},
        headers=H,
    )
    assert r.status_code == 201, r.text
    meta = {k: v for k, v in photos_of(client, "HB-1")[0]["metadata"].items() if v is not None}
    assert meta == {
        "taken_at": "2019-07-14T09:31:05-04:00",  # the EXIF offset kept
        "latitude": pytest.approx(-25.2833333, abs=1e-6),
        "longitude": pytest.approx(152.8833333, abs=1e-6),
        "location": "Hervey Bay",
        "photographer": "A. Field",
    }
    assert photos_of(client, "HB-1")[0]["has_original"] is True
    image_id = photos_of(client, "HB-1")[0]["image_id"]
    r = client.patch(
        f"/gallery/HB-1/images/{image_id}", json={"notes": "nick on the left tip", "photographer": None}, headers=H
    )
    assert r.status_code == 200 and r.json()["notes"] == "nick on the left tip" and r.json()["photographer"] is None
    for bad in ({"latitude": 95}, {"taken_at": "last summer"}, {"colour": "grey"}):
        assert client.patch(f"/gallery/HB-1/images/{image_id}", json=bad, headers=H).status_code == 422, bad
    r = client.post(
        "/gallery",
        files=[("files", ("x.jpg", data, "image/jpeg"))],
        data={"whale_id": "HB-2", "taken_at": "last summer"},
        headers=H,
    )
    assert r.status_code == 422 and "taken_at" in r.json()["detail"]
    assert client.get("/gallery/HB-2").status_code == 404  # nothing stored
    body = client.post("/identify", files={"file": ("q.jpg", data, "image/jpeg")}, data={"encounter_id": "E-7"}).json()
    assert body["photo_metadata"]["encounter_id"] == "E-7" and body["photo_metadata"]["taken_at"].startswith(
        "2019-07-14"
    )


def test_scoped_identification_never_answers_out_of_scope_whales(client):
    # w0 photographed at Hervey Bay in 2019, w3 in Tonga in 2021; w1 and w2 have no metadata
    for wid, place, lat, lon, day in (
        ("w0", "Hervey Bay", -25.28, 152.88, "2019-08-01"),
        ("w3", "Tonga", -18.65, -173.98, "2021-09-10"),
    ):
        for p in photos_of(client, wid):
            fields = {"location": place, "latitude": lat, "longitude": lon, "taken_at": day}
            assert client.patch(f"/gallery/{wid}/images/{p['image_id']}", json=fields, headers=H).status_code == 200
    scopes = [
        ({"scope_location": "hervey bay"}, {"w0"}),
        ({"scope_bbox": "-30,150,-20,155"}, {"w0"}),
        ({"scope_near": "-18.6,-174.0,50"}, {"w3"}),
        ({"scope_from": "2020-01-01"}, {"w3"}),
        ({"scope_from": "2019-01-01", "scope_to": "2019-12-31"}, {"w0"}),
        ({"scope_location": "Antarctica"}, set()),
    ]
    for params, allowed in scopes:
        for mode in ("embedding", "local", "fused"):
            for w in range(4):
                r = client.post(
                    "/identify", files={"file": ("q.jpg", spare(w), "image/jpeg")}, params={"scoring": mode, **params}
                )
                body = r.json()
                named = {p["whale_id"] for p in body["predictions"]} - {"new_whale"}
                assert named <= allowed, (params, mode, w, named)
                assert body["scope"]["whales_in_scope"] == len(allowed)
        # an in-scope whale's own photo is still found
        for w in allowed:
            assert top(client, spare(int(w[1])), **params)[0] == w
    photo = {"file": ("q.jpg", spare(0), "image/jpeg")}
    swapped = client.post("/identify", files=photo, params={"scope_bbox": "10,0,5,1"})
    assert swapped.status_code == 200 and swapped.json()["scope"]["whales_in_scope"] == 0  # a box nothing is in
    assert client.post("/identify", files=photo, params={"scope_from": "0"}).status_code == 422  # a number, no date
    assert client.post("/identify", files=photo, params={"scope_bbox": "1.2.3,0,5,1"}).status_code == 422


def test_near_duplicates_are_reported_and_exact_copies_stay_also_enrolled_as(client):
    from PIL import Image

    original = client.app.state.service.store.original_of(photos_of(client, "w0")[0]["image_id"])
    img = Image.open(io.BytesIO(original))
    buf = io.BytesIO()
    img.resize((img.width // 2, img.height // 2)).save(buf, format="JPEG", quality=70)  # resized, re-saved
    r = client.post(
        "/gallery", files=[("files", ("copy.jpg", buf.getvalue(), "image/jpeg"))], data={"whale_id": "dup"}, headers=H
    )
    near = r.json()["near_duplicates"]
    assert r.status_code == 201 and near and near[0]["whale_id"] == "w0" and near[0]["bits"] <= 8
    unrelated = [("files", ("new.jpg", jpeg_bytes(texture(77)), "image/jpeg"))]
    other = client.post("/gallery", files=unrelated, data={"whale_id": "dup2"}, headers=H)
    assert other.json()["near_duplicates"] == []  # an unrelated photo is near nothing
    again = client.post(
        "/gallery", files=[("files", ("same.jpg", original, "image/jpeg"))], data={"whale_id": "dup3"}, headers=H
    )
    assert again.json()["also_enrolled_as"] == ["w0"] and all(
        n["whale_id"] != "w0" for n in again.json()["near_duplicates"]
    )
