"""A new scoring mode is one registration (issue 19): the service, ``predict``, ``calibrate`` and
``compare-modes`` all accept a toy mode registered here, with no other change.

The toy mode ranks the identities RANSAC verified by ``inliers / (inliers + 10)`` (no coefficients),
so every score it returns can be checked by hand from the evidence the response carries.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

import pytest
from helpers import jpeg_bytes, texture, tiny_bundle, view

from index import modes
from index.modes import Evidence, RankedIdentity, ScoringMode

pytest.importorskip("onnx")
pytest.importorskip("fastapi")

TOY = "inliers_only"


class InliersOnly(ScoringMode):
    name = TOY
    summary = "verified identities by inliers / (inliers + 10)"
    needs_local_features = True

    def match_scope(self, manifest) -> str:
        return "all"

    def candidates(self, ev: Evidence, manifest, k: int) -> list[int]:
        return ev.verified

    def entries(self, ev: Evidence, ids: Sequence[int], params, manifest, explain=False) -> list[RankedIdentity]:
        out = []
        for i in ids:
            n = ev.inliers(i)
            out.append(RankedIdentity(ev.names[i], i, n / (n + 10.0), inliers=n, image_id=ev.matches[i].image_id))
        return out


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory):
    from whaleid.workflows import build_gallery

    modes.register(InliersOnly)
    root = tmp_path_factory.mktemp("toy-mode")
    bundle = tiny_bundle(root / "bundle", thresholds={"embedding": 0.6}, seed=5)
    gallery_imgs, queries = root / "gallery", root / "queries"
    gallery_imgs.mkdir()
    queries.mkdir()
    rows, truth = [], []
    for w in range(5):
        base = texture(w)
        for j in range(2):
            (gallery_imgs / f"w{w}_{j}.jpg").write_bytes(jpeg_bytes(view(base, 10 * w + j)))
            rows.append((f"w{w}_{j}.jpg", f"whale-{w}"))
        (queries / f"q{w}.jpg").write_bytes(jpeg_bytes(view(base, 10 * w + 7)))
        truth.append((f"q{w}.jpg", f"whale-{w}"))
    for n in range(2):
        (queries / f"new{n}.jpg").write_bytes(jpeg_bytes(texture(200 + n)))
        truth.append((f"new{n}.jpg", "new_whale"))
    for name, data in (("gallery.csv", rows), ("queries.csv", truth)):
        with open(root / name, "w", newline="") as fh:
            csv.writer(fh).writerows([("image", "whale_id"), *data])
    build_gallery(bundle, gallery_imgs, root / "gallery.csv", progress=False, local_features=True)
    yield bundle, queries, root
    modes.unregister(TOY)


def test_a_registered_mode_is_calibrated_compared_served_and_predicted(toy_bundle):
    from fastapi.testclient import TestClient

    from core.manifest import load_manifest
    from service.config import Settings
    from service.main import create_app
    from whaleid.predict import predict_folder
    from whaleid.workflows import calibrate, compare_modes

    bundle, queries, root = toy_bundle
    assert modes.names() == ["embedding", "local", "fused", "edge_fused", TOY]

    rep = calibrate(bundle, queries, root / "queries.csv", mode=TOY, progress=False)
    assert rep["mode"] == TOY and rep["queries"] == 7 and "params" not in rep  # the toy mode has none
    assert load_manifest(bundle).thresholds[TOY].value == pytest.approx(rep["saved_threshold"])
    # each known query's own whale is verified with many inliers, the new whales' photos match nobody
    assert rep["top1_known"] == 1.0 and rep["map5"] == 1.0

    cmp = compare_modes(bundle, queries, root / "queries.csv", progress=False)
    assert cmp[TOY]["map5"] == 1.0 and {"embedding", "local", "fused", TOY} <= set(cmp)

    with TestClient(create_app(Settings(bundle=bundle))) as c:
        assert TOY in c.get("/ready").json()["scoring_modes"]
        photo = (queries / "q2.jpg").read_bytes()
        body = c.post("/identify", params={"scoring": TOY}, files={"file": ("q2.jpg", photo, "image/jpeg")}).json()
        first = body["predictions"][0]
        assert body["scoring"] == TOY and first["whale_id"] == "whale-2"
        n = first["evidence"]["inliers"]
        assert n >= 20 and first["score"] == round(n / (n + 10.0), 5)  # the toy formula, by hand
        bad = c.post("/identify", params={"scoring": "no_such_mode"}, files={"file": ("q2.jpg", photo, "image/jpeg")})
        assert bad.status_code == 422 and "no_such_mode" in bad.json()["detail"]
        served = {}
        for p in sorted(queries.iterdir()):
            r = c.post("/identify", params={"scoring": TOY}, files={"file": (p.name, p.read_bytes(), "image/jpeg")})
            served[p.name] = [x["whale_id"] for x in r.json()["predictions"]]

    summary = predict_folder(bundle, queries, root / "sub.csv", scoring=TOY, progress=False)
    assert summary["scoring"] == TOY
    with open(root / "sub.csv") as fh:
        predicted = {r["Image"]: r["Id"].split() for r in csv.DictReader(fh)}
    assert predicted == served


def test_unknown_modes_are_refused_with_the_known_names(tmp_path):
    from core.errors import ConfigError
    from service.config import Settings

    with pytest.raises(ConfigError, match="unknown scoring mode 'nope' .*embedding, local, fused"):
        modes.get("nope")
    tiny = tiny_bundle(tmp_path / "b")
    with pytest.raises(ValueError, match="WHALEID_SCORING='nope' is not a scoring mode"):
        Settings(bundle=tiny, scoring="nope")
    with pytest.raises(ValueError, match="lower-case name"):

        @modes.register
        class Bad(ScoringMode):
            name = "Bad-Name"
