"""``whaleid catalogue export|import`` and ``whaleid reindex`` on a tiny ONNX embedder and synthetic photos
(torch-free, no ``../shared``): a round trip keeps whales, photos, metadata and rankings; importing twice
changes nothing; a corrupt archive is refused before anything is written; a reindex onto another model
keeps every whale and photo and finds each photo's own whale first."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile

import pytest
from helpers import jpeg_bytes, texture, tiny_bundle, view

pytest.importorskip("onnx")

WHALES = 6
MODES = {"embedding": 0.5, "local": 0.5, "fused": 0.5}


def _photos(folder, whales, per_whale=2, seed_base=0):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for w in whales:
        for j in range(per_whale):
            name = f"w{w}_{j}.jpg"
            (folder / name).write_bytes(jpeg_bytes(view(texture(w), 10 * w + j + seed_base)))
            rows.append((name, f"w{w}", None))
    return rows


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A bundle whose gallery holds 2 views of w0..w5 (w5 renamed to 'Humphrey'), with hand-set metadata."""
    from index.bundle import open_bundle
    from whaleid.workflows import build_gallery

    root = tmp_path_factory.mktemp("catalogue")
    bundle = tiny_bundle(root / "bundle", thresholds=MODES, seed=11)
    rows = _photos(root / "photos", range(WHALES))
    with open(root / "gallery.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "whale_id"), *[r[:2] for r in rows]])
    build_gallery(bundle, root / "photos", root / "gallery.csv", progress=False, local_features=True)
    meta = {"taken_at": "2019-07-14T09:31:05-04:00", "latitude": -25.1, "longitude": 153.2, "location": "Hervey Bay"}
    with open_bundle(bundle) as ob:
        g = ob.gallery
        g.update_metadata("w1", g.store.images_of("w1")[0].image_id, meta, actor="key-ab12")
        g.update_metadata("w2", g.store.images_of("w2")[1].image_id, {"notes": "left fluke tip torn"})
        g.rename("w5", "Humphrey", actor="key-ab12")
    queries = [jpeg_bytes(view(texture(w), 10 * w + 7)) for w in range(WHALES)] + [jpeg_bytes(texture(300))]
    archive = root / "catalogue.zip"
    from whaleid.catalogue import export_catalogue

    stats = export_catalogue(bundle, archive, progress=False)
    return {"root": root, "bundle": bundle, "archive": archive, "queries": queries, "meta": meta, "export": stats}


def _state(bundle, gallery_dir=None):
    """Whales with photo counts, photos (whale, sha256, source, box, metadata), generation, counts."""
    from index.bundle import open_bundle

    with open_bundle(bundle, gallery_dir) as ob:
        s = ob.gallery.store
        whales = {r.whale_id: r.n_images for r in s.list_identities(limit=1000)}
        photos = sorted(
            (w, r.sha256, r.source, tuple(r.box_xyxy_px), json.dumps(r.metadata, sort_keys=True), r.has_original)
            for w in whales
            for r in s.images_of(w)
        )
        return {
            "whales": whales,
            "photos": photos,
            "generation": s.generation,
            "images": s.count_images(include_flipped=True),
            "identities": s.count_identities(include_flipped=True),
        }


def _rankings(bundle, gallery_dir, queries):
    from index.build import FOLDER_LIMITS
    from index.bundle import open_bundle

    with open_bundle(bundle, gallery_dir) as ob:
        ident = ob.identifier(FOLDER_LIMITS)
        return {
            mode: [
                [(p["whale_id"], p["score"]) for p in ident.identify(q, scoring=mode)["predictions"]] for q in queries
            ]
            for mode in MODES
        }


def test_export_writes_a_checked_archive(source):
    assert source["export"]["identities"] == WHALES and source["export"]["photos"] == 2 * WHALES
    assert source["export"]["photos_left_out"] == 0
    with zipfile.ZipFile(source["archive"]) as zf:
        cat = json.loads(zf.read("catalogue.json"))
        sums = dict(reversed(line.split("  ")) for line in zf.read("checksums.sha256").decode().splitlines())
        assert sorted(zf.namelist()) == sorted([*sums, "checksums.sha256"])
        assert len([n for n in sums if n.startswith("photos/")]) == 2 * WHALES
    assert cat["format"] == "whaleid-catalogue" and cat["version"] == 1 and cat["model"]["embedding_dim"] == 16
    assert [i["whale_id"] for i in cat["identities"]] == ["Humphrey", "w0", "w1", "w2", "w3", "w4"]
    w1 = [p for p in cat["photos"] if p["whale_id"] == "w1"]
    assert w1[0]["metadata"] == source["meta"] and w1[1]["metadata"] == {} and w1[0]["source"] == "w1_0.jpg"
    ops = [(a["operation"], a["actor"]) for a in cat["audit"]]
    assert ops[-3:] == [("edit_metadata", "key-ab12"), ("edit_metadata", None), ("rename", "key-ab12")]
    assert [op for op, _ in ops].count("enrol") == WHALES


def test_round_trip_keeps_whales_photos_metadata_and_rankings(source, tmp_path):
    from whaleid.catalogue import AUDIT_SIDECAR, import_catalogue

    before = _state(source["bundle"])
    res = import_catalogue(source["bundle"], source["archive"], tmp_path / "g", progress=False)
    assert res["photos_added"] == 2 * WHALES and res["whales_created"] == WHALES and res["photos_skipped"] == 0
    after = _state(source["bundle"], tmp_path / "g")
    assert after["whales"] == before["whales"] == {"Humphrey": 2, **{f"w{w}": 2 for w in range(5)}}
    assert after["photos"] == before["photos"]  # sha256, source, box, metadata, original bytes kept
    assert _rankings(source["bundle"], tmp_path / "g", source["queries"]) == _rankings(
        source["bundle"], None, source["queries"]
    )
    kept = [json.loads(line) for line in (tmp_path / "g" / AUDIT_SIDECAR).read_text().splitlines()]
    assert res["audit_entries_kept"] == len(kept) == WHALES + 3
    assert kept[-1]["operation"] == "rename" and kept[-1]["details"]["new_whale_id"] == "Humphrey"
    assert all(k["imported_from"].startswith("catalogue.zip (exported ") for k in kept)


def test_import_twice_changes_nothing(source, tmp_path, monkeypatch):
    from whaleid.catalogue import AUDIT_SIDECAR, import_catalogue

    monkeypatch.setattr("whaleid.catalogue.GROUP_PHOTOS", 1)  # a transaction per photo: whales span several
    res = import_catalogue(source["bundle"], source["archive"], tmp_path / "g", progress=False)
    first = _state(source["bundle"], tmp_path / "g")
    assert res["whales_created"] == WHALES and first["photos"] == _state(source["bundle"])["photos"]
    history = (tmp_path / "g" / AUDIT_SIDECAR).read_bytes()
    res = import_catalogue(source["bundle"], source["archive"], tmp_path / "g", progress=False)
    assert res["photos_added"] == 0 and res["photos_skipped"] == 2 * WHALES and res["audit_entries_kept"] == 0
    assert _state(source["bundle"], tmp_path / "g") == first
    assert (tmp_path / "g" / AUDIT_SIDECAR).read_bytes() == history


def _rewrite(src, dst, change):
    """Copy an archive member by member; ``change(name, data)`` returns new bytes, or None to drop it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def _last_photo(path):
    """The archive's last photo member (w4's: a lazy import would have written the other whales first)."""
    with zipfile.ZipFile(path) as zf:
        return [i for i in zf.infolist() if i.filename.startswith("photos/")][-1]


def _flip_stored_byte(src, dst):
    """Flip one byte inside the last photo's data, in the zip file itself (its CRC no longer matches)."""
    shutil.copy(src, dst)
    info = _last_photo(dst)
    raw = bytearray(dst.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    dst.write_bytes(bytes(raw))


def _version_2(name, data):
    if name == "catalogue.json":
        return json.dumps({**json.loads(data), "version": 2}).encode()
    return data


def _resum(path):
    """Rewrite checksums.sha256 to match the members (so that only the defect under test remains)."""
    import hashlib

    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    sums = "".join(
        f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(members.items()) if n != "checksums.sha256"
    )
    members["checksums.sha256"] = sums.encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)


CORRUPT = {
    "flipped byte": (lambda s, d: _flip_stored_byte(s, d), "cannot be read (Bad CRC-32"),
    "altered photo": (
        lambda s, d: _rewrite(s, d, lambda n, b: b[:-1] + bytes([b[-1] ^ 1]) if n == _last_photo(s).filename else b),
        "does not match its sha256",
    ),
    "no catalogue.json": (
        lambda s, d: _rewrite(s, d, lambda n, b: None if n == "catalogue.json" else b),
        "member catalogue.json is missing",
    ),
    "version 2": (
        lambda s, d: (_rewrite(s, d, _version_2), _resum(d)),
        "has format version 2; this whaleid reads version 1",
    ),
    "photo missing": (
        lambda s, d: (_rewrite(s, d, lambda n, b: b if not n.startswith("photos/") else None), _resum(d)),
        "member photos/",
    ),
    "truncated": (lambda s, d: d.write_bytes(s.read_bytes()[: s.stat().st_size // 2]), "not a zip archive"),
}


@pytest.mark.parametrize("defect", list(CORRUPT))
def test_a_corrupt_archive_is_refused_and_changes_nothing(source, tmp_path, defect):
    from core.errors import CorruptArtifactError, ManifestError
    from index.bundle import open_bundle
    from whaleid.catalogue import import_catalogue

    make, message = CORRUPT[defect]
    bad = tmp_path / "bad.zip"
    make(source["archive"], bad)
    target = tmp_path / "g"
    import_catalogue(source["bundle"], source["archive"], target, progress=False)
    with open_bundle(source["bundle"], target) as ob:  # a target lacking photos an import of `bad` would add
        ob.gallery.remove_identity("w3")
    before = _state(source["bundle"], target)
    history = (target / "catalogue-audit.jsonl").read_bytes()
    with pytest.raises((CorruptArtifactError, ManifestError)) as err:
        import_catalogue(source["bundle"], bad, target, progress=False)
    assert message in err.value.detail
    assert _state(source["bundle"], target) == before and "w3" not in before["whales"]
    assert (target / "catalogue-audit.jsonl").read_bytes() == history


def test_cli_refuses_a_corrupt_archive_in_one_line(source, tmp_path):
    from typer.testing import CliRunner

    from whaleid.cli import app

    bad = tmp_path / "bad.zip"
    _rewrite(source["archive"], bad, _version_2)
    _resum(bad)
    res = CliRunner().invoke(
        app, ["catalogue", "import", str(source["bundle"]), "--archive", str(bad), "--gallery-dir", str(tmp_path / "g")]
    )
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"error: catalogue archive {bad} has format version 2; this whaleid reads version 1 (a newer whaleid wrote it?)"
    ]


def test_cli_export_then_import(source, tmp_path):
    from typer.testing import CliRunner

    from whaleid.cli import app

    runner, bundle = CliRunner(), str(source["bundle"])
    out = runner.invoke(app, ["catalogue", "export", bundle, "--out", str(tmp_path / "c.zip")])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["photos"] == 2 * WHALES
    args = ["catalogue", "import", bundle, "--archive", str(tmp_path / "c.zip"), "--gallery-dir", str(tmp_path / "g")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["photos_added"] == 2 * WHALES
    assert _state(source["bundle"], tmp_path / "g")["whales"] == _state(source["bundle"])["whales"]


def test_photos_without_bytes_fail_the_export_unless_allowed(source, tmp_path):
    from core.errors import ConfigError
    from index.build import build_gallery
    from index.bundle import open_bundle
    from whaleid.catalogue import export_catalogue

    old = _photos(tmp_path / "p", [0, 1])
    new = _photos(tmp_path / "p", [2])
    with open_bundle(source["bundle"], tmp_path / "g") as ob:
        build_gallery(ob.gallery, ob.embedder, tmp_path / "p", old, originals=False, progress=False)
        build_gallery(ob.gallery, ob.embedder, tmp_path / "p", new, progress=False)
    with pytest.raises(ConfigError, match=r"^4 of 6 photos have no original bytes in the store .* --allow-missing"):
        export_catalogue(source["bundle"], tmp_path / "a.zip", tmp_path / "g", progress=False)
    assert not (tmp_path / "a.zip").exists()
    res = export_catalogue(source["bundle"], tmp_path / "a.zip", tmp_path / "g", allow_missing=True, progress=False)
    assert (res["identities"], res["photos"], res["photos_left_out"]) == (1, 2, 4)


def test_reindex_onto_another_model_keeps_every_whale_and_finds_each_photo(source, tmp_path):
    from core.errors import ConfigError
    from core.manifest import load_manifest
    from index.build import FOLDER_LIMITS
    from index.bundle import open_bundle
    from whaleid.catalogue import AUDIT_SIDECAR, reindex

    new = tiny_bundle(tmp_path / "new", dim=24, seed=5, thresholds=MODES)
    m = load_manifest(new)
    m.model_copy(update={"gallery": m.gallery.model_copy(update={"include_flipped": True})}).save(new)
    with pytest.raises(ConfigError, match="the new gallery folder is the old one"):
        reindex(source["bundle"] / "gallery", new, out=source["bundle"] / "gallery", progress=False)
    res = reindex(source["bundle"] / "gallery", new, progress=False)
    assert (res["photos"], res["photos_added"], res["whales_created"]) == (2 * WHALES, 2 * WHALES, WHALES)
    old_state, new_state = _state(source["bundle"]), _state(new)
    assert new_state["whales"] == old_state["whales"]
    assert [p[:2] + p[3:] for p in new_state["photos"]] == [p[:2] + p[3:] for p in old_state["photos"]]
    assert new_state["identities"] == 2 * WHALES and new_state["images"] == 4 * WHALES  # the mirrors, per the manifest
    assert len((new / "gallery" / AUDIT_SIDECAR).read_text().splitlines()) == WHALES + 3
    with open_bundle(new) as ob:
        assert ob.gallery.store.all_embeddings()[2].shape == (4 * WHALES, 24)
        ident = ob.identifier(FOLDER_LIMITS)
        for w in range(WHALES):
            wid = "Humphrey" if w == 5 else f"w{w}"
            for j in range(2):
                data = (source["root"] / "photos" / f"w{w}_{j}.jpg").read_bytes()
                assert ident.identify(data)["predictions"][0]["whale_id"] == wid
                prep = ident.prepare(data)
                query, _ = ident.embeddings_of(prep, ob.embedder.embed_fn(prep.inputs))
                assert ob.gallery.search(query, 1)[0][0].whale_id == wid  # by the new embeddings, not the exact rule
    again = reindex(source["bundle"], new, progress=False)  # the old bundle's folder works too
    assert again["photos_added"] == 0 and again["photos_skipped"] == 2 * WHALES and _state(new) == new_state
