"""The service end to end: a real uvicorn on 127.0.0.1 with a bundle built from real photos."""

from __future__ import annotations

import csv
import re
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import ODD_IMAGES
from live_server import Server

pytestmark = pytest.mark.slow


def identify(url, path, **params):
    with open(path, "rb") as fh:
        return httpx.post(
            url + "/identify", files={"file": (path.name, fh.read(), "image/jpeg")}, params=params, timeout=60
        )


def enrol(url, paths, whale_id=None, headers=None):
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    data = {"whale_id": whale_id} if whale_id else {}
    return httpx.post(url + "/gallery", files=files, data=data, headers=headers or {}, timeout=60)


def test_identify_a_real_photo(shared_server, real_subset):
    img, whale = real_subset["gallery_rows"][4]
    r = identify(shared_server.url, real_subset["images"] / img)
    assert r.status_code == 200, r.text
    body = r.json()
    preds = body["predictions"]
    assert len(preds) == 5
    assert [p["rank"] for p in preds] == [1, 2, 3, 4, 5]
    ids = [p["whale_id"] for p in preds]
    assert len(set(ids)) == 5
    known = [p for p in preds if p["whale_id"] != "new_whale"]
    assert all(known[i]["score"] >= known[i + 1]["score"] for i in range(len(known) - 1))
    assert all("evidence" in p and p["evidence"]["best_image_id"] > 0 for p in known)
    assert len(body["boxes"]) == 5 and all(len(b) == 4 for b in body["boxes"])
    assert body["threshold"] == 0.5 and body["scoring"] == "embedding"
    assert {"decode", "boxes", "embed", "search", "total"} <= set(body["timing_ms"])
    # the photo is in the gallery: its own whale comes first
    assert ids[0] == whale


def test_enrol_identify_delete(server, real_subset):
    whale, photos = next(iter(real_subset["spare"].items()))
    paths = [real_subset["images"] / p for p in photos]
    r = enrol(server.url, paths, whale_id="ZZ-test-whale")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["whale_id"] == "ZZ-test-whale" and body["images_added"] == 2 and body["images_total"] == 2
    assert body["gallery_size"] == 41
    for p in paths:
        top = identify(server.url, p).json()["predictions"][0]
        assert top["whale_id"] == "ZZ-test-whale", (p.name, top)
        # the uploaded bytes are an enrolled photo: certain, whatever the model's similarity
        assert top["score"] == 1.0 and top["evidence"]["exact_photo"] is True
    # same bytes again: not added twice
    again = enrol(server.url, paths[:1], whale_id="ZZ-test-whale").json()
    assert again["images_added"] == 0 and again["duplicates"] == 1 and again["images_total"] == 2
    assert body["also_enrolled_as"] == [] and again["also_enrolled_as"] == []
    # the same photo under another whale is stored (a biologist may mean it) but flagged
    other = enrol(server.url, paths[:1], whale_id="ZZ-other-whale").json()
    assert other["images_added"] == 1 and other["also_enrolled_as"] == ["ZZ-test-whale"]
    assert httpx.delete(server.url + "/gallery/ZZ-other-whale").status_code == 200
    listing = httpx.get(server.url + "/gallery", params={"q": "ZZ-"}).json()
    assert listing["total"] == 1 and listing["whales"][0]["images"] == 2
    detail = httpx.get(server.url + "/gallery/ZZ-test-whale").json()
    thumb = httpx.get(server.url + detail["images"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert httpx.delete(server.url + "/gallery/ZZ-test-whale").status_code == 200
    assert httpx.get(server.url + "/gallery/ZZ-test-whale").status_code == 404
    for p in paths:
        ids = [x["whale_id"] for x in identify(server.url, p).json()["predictions"]]
        assert "ZZ-test-whale" not in ids


def test_enrol_without_id_gets_a_readable_one_and_photo_deletion(server, real_subset):
    photos = list(real_subset["spare"].values())[1]
    r = enrol(server.url, [real_subset["images"] / photos[0]])
    assert r.status_code == 201
    wid = r.json()["whale_id"]
    assert re.fullmatch(r"whale-\d{5}", wid)
    image_id = r.json()["image_ids"][0]
    d = httpx.delete(f"{server.url}/gallery/{wid}/images/{image_id}")
    assert d.status_code == 200 and d.json()["identity_deleted"] is True
    assert httpx.delete(f"{server.url}/gallery/{wid}/images/{image_id}").status_code == 404


def test_odd_images_get_their_expected_status(shared_server):
    with open(ODD_IMAGES / "MANIFEST.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        r = identify(shared_server.url, ODD_IMAGES / row["file"])
        m = re.match(r"(\d{3})\b", row["expected"])
        expected = int(m.group(1)) if m else 200
        assert r.status_code == expected, (row["file"], r.status_code, r.text[:300])
        if expected != 200:
            assert r.json()["detail"], row["file"]
        else:
            assert len(r.json()["predictions"]) == 5


def test_bad_requests_are_4xx_with_stable_details(shared_server, real_subset):
    url = shared_server.url
    r = httpx.post(url + "/identify", timeout=30)
    assert r.status_code == 400 and r.json()["detail"] == "no photo: send it as the multipart form field 'file'"
    r = httpx.post(url + "/identify", files={"file": ("e.jpg", b"", "image/jpeg")})
    assert r.status_code == 400 and r.json()["detail"] == "empty upload: the file has no bytes"
    img = real_subset["images"] / real_subset["gallery_rows"][0][0]
    assert identify(url, img, k=0).status_code == 422
    assert identify(url, img, k=21).status_code == 422
    assert len(identify(url, img, k=12).json()["predictions"]) == 12
    assert identify(url, img, scoring="local").status_code == 422  # no local features in this bundle
    two = [("file", ("a.jpg", img.read_bytes(), "image/jpeg")), ("file", ("b.jpg", img.read_bytes(), "image/jpeg"))]
    r = httpx.post(url + "/identify", files=two, timeout=60)
    assert r.status_code == 422
    assert r.json()["detail"] == "one photo per request in the field 'file' (got 2); POST /gallery takes several"
    r = httpx.post(
        url + "/gallery", files=[("files", ("a.jpg", img.read_bytes(), "image/jpeg"))], data={"whale_id": "new_whale"}
    )
    assert r.status_code == 422 and "reserved" in r.json()["detail"]
    assert httpx.get(url + "/gallery/no-such-whale").status_code == 404


def test_ready_and_metrics(shared_server):
    ready = httpx.get(shared_server.url + "/ready").json()
    assert ready["gallery_size"] == 40 and ready["gallery_images"] == 120
    assert ready["embedding_dim"] == 128 and ready["providers"] == ["CPUExecutionProvider"]
    assert ready["gpu"] is None and ready["detector"] is False
    assert httpx.get(shared_server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(shared_server.url + "/metrics").text
    assert "whaleid_gallery_identities 40.0" in text and "whaleid_request_seconds_bucket" in text
    assert httpx.get(shared_server.url + "/openapi.json").json()["paths"]["/identify"]["post"]["summary"]


def _chunked_upload(url: str, total_bytes: int, chunk: int = 256 * 1024) -> tuple[int, int]:
    """POST /identify a multipart body of ``total_bytes`` with chunked encoding (no Content-Length).

    Returns (status, bytes sent before the server answered)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    boundary = "whaleidboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    sock.sendall(
        (
            f"POST /identify HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
        ).encode()
    )
    sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
    sent, payload = 0, b"\xff" * chunk
    try:
        while sent < total_bytes:
            sock.sendall(b"%x\r\n%s\r\n" % (len(payload), payload))
            sent += len(payload)
            if select.select([sock], [], [], 0)[0]:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except ConnectionResetError:
        pass
    sock.close()
    return int(data.split(b" ")[1]), sent


def test_30_mb_upload_is_refused_while_streaming_and_memory_stays_flat(server):
    limit = 20 * 1024 * 1024
    before = server.rss_kib()
    status, sent = _chunked_upload(server.url, 30 * 1024 * 1024)
    assert status == 413
    assert sent < 30 * 1024 * 1024  # answered before the body was complete
    # an honest Content-Length over the limit is refused at once
    r = httpx.post(
        server.url + "/identify", files={"file": ("big.jpg", b"\xff" * (30 * 1024 * 1024), "image/jpeg")}, timeout=60
    )
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    after = server.rss_kib()
    assert after - before < 15 * 1024, (before, after)  # far below the 30 MB upload
    assert sent >= limit - 1024 * 1024  # it was the limit that stopped it, not an early failure
    assert httpx.get(server.url + "/ready").status_code == 200


def test_api_key_guards_writes(real_bundle, gallery_copy, tmp_path, real_subset):
    srv = Server(real_bundle, gallery_copy, tmp_path / "key.log", env={"WHALEID_API_KEY": "s3cret"}).start()
    try:
        photo = [real_subset["images"] / next(iter(real_subset["spare"].values()))[0]]
        r = enrol(srv.url, photo, whale_id="keyed")
        assert r.status_code == 401 and r.json() == {
            "detail": "missing API key: send it in the X-API-Key header",
            "code": "missing_api_key",
        }
        r = enrol(srv.url, photo, whale_id="keyed", headers={"X-API-Key": "wrong"})
        assert r.status_code == 403 and r.json() == {"detail": "invalid API key", "code": "invalid_api_key"}
        assert httpx.delete(srv.url + "/gallery/" + real_subset["gallery_rows"][0][1]).status_code == 401
        assert enrol(srv.url, photo, whale_id="keyed", headers={"X-API-Key": "s3cret"}).status_code == 201
        # reads stay open
        assert identify(srv.url, photo[0]).status_code == 200
        assert httpx.get(srv.url + "/gallery/keyed").status_code == 200
    finally:
        srv.stop()


def test_kill_9_during_enrolments_loses_nothing_acknowledged(server, real_subset):
    photos = [real_subset["images"] / p for ps in real_subset["spare"].values() for p in ps]
    acknowledged: list[tuple[str, int]] = []
    stop = threading.Event()

    def enrol_loop():
        i = 0
        while not stop.is_set():
            p = photos[i % len(photos)]
            try:
                r = enrol(server.url, [p], whale_id=f"kill-{i:04d}")
            except httpx.HTTPError:
                return
            if r.status_code == 201:
                acknowledged.append((f"kill-{i:04d}", r.json()["image_ids"][0]))
            i += 1

    t = threading.Thread(target=enrol_loop)
    t.start()
    time.sleep(4.0)
    server.kill9()
    stop.set()
    t.join(30)
    assert len(acknowledged) >= 3
    server.start()
    for wid, image_id in acknowledged:
        r = httpx.get(f"{server.url}/gallery/{wid}")
        assert r.status_code == 200, (wid, r.text)
        assert image_id in [im["image_id"] for im in r.json()["images"]]
    assert httpx.get(server.url + "/ready").json()["gallery_size"] >= 40 + len(acknowledged)


def test_concurrent_identify_and_enrol_match_a_serial_run(server, real_subset):
    queries = [real_subset["images"] / img for img, _ in real_subset["gallery_rows"][::9]][:8]
    original = {w for _, w in real_subset["gallery_rows"]}
    serial = {}
    for q in queries:
        preds = identify(server.url, q, k=20, threshold=-1).json()["predictions"]
        serial[q.name] = [(p["whale_id"], p["score"]) for p in preds if p["whale_id"] in original]
    spare = [real_subset["images"] / p for ps in real_subset["spare"].values() for p in ps]
    errors: list[str] = []
    checked = [0]
    deadline = time.time() + 30

    def client(q):
        while time.time() < deadline:
            r = identify(server.url, q, k=20, threshold=-1)
            if r.status_code != 200:
                errors.append(f"identify {r.status_code} {r.text[:200]}")
                continue
            got = [(p["whale_id"], p["score"]) for p in r.json()["predictions"] if p["whale_id"] in original]
            want = serial[q.name][: len(got)]
            if [w for w, _ in got] != [w for w, _ in want] or any(
                abs(a[1] - b[1]) > 1e-4 for a, b in zip(got, want, strict=True)
            ):
                errors.append(f"{q.name}: {got[:3]} != {want[:3]}")
            checked[0] += 1

    def enroller():
        i = 0
        while time.time() < deadline:
            r = enrol(server.url, [spare[i % len(spare)]], whale_id=f"conc-{i:04d}")
            if r.status_code != 201:
                errors.append(f"enrol {r.status_code} {r.text[:200]}")
            i += 1

    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(client, q) for q in queries] + [pool.submit(enroller)]
        for f in futures:
            f.result()
    assert not errors, errors[:5]
    assert checked[0] >= 16
    # concurrent requests were micro-batched into shared onnxruntime calls
    metrics = httpx.get(server.url + "/metrics").text
    single = float(re.search(r'whaleid_inference_batch_requests_bucket\{le="1.0"\} (\S+)', metrics).group(1))
    total = float(re.search(r"whaleid_inference_batch_requests_count (\S+)", metrics).group(1))
    assert single < total
