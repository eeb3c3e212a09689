"""Faults from public reports on upload services, against a real uvicorn (issue 22): oversized parts of
``POST /gallery``, no space for the upload's temporary file, a busy gallery store, a lying
``Content-Length``, ``filename*`` and path-like names, and the metrics' method label."""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
from live_server import Server

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
BOUNDARY = "whaleidfaults"


def _part_head(field: str, disposition_extra: str, content_type: str = "image/jpeg") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"{disposition_extra}\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            part = sock.recv(65536)
            if not part:
                break
            body += part
    except (ConnectionResetError, TimeoutError):
        return 0, {}, b""
    return int(lines[0].split(" ")[1]), headers, body


def stream_gallery_upload(url: str, parts: list[tuple[bytes, int]], chunk: int = 256 * 1024) -> dict:
    """POST /gallery a multipart body sent chunked (no Content-Length): each part is a real photo's
    bytes followed by ``filler`` zero bytes. Stops sending once the server answers.

    Returns: ``{"status", "json", "sent"}`` (``sent``: body bytes sent before the answer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(
        (
            f"POST /gallery HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
        ).encode()
    )
    sent, zeros, answered = 0, b"\0" * chunk, False

    def send(data: bytes) -> bool:
        nonlocal sent
        sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        sent += len(data)
        return bool(select.select([sock], [], [], 0)[0])

    try:
        for i, (photo, filler) in enumerate(parts):
            answered = send(_part_head("files", f'; filename="big{i}.jpg"') + photo)
            left = filler
            while left > 0 and not answered:
                answered = send(zeros[: min(chunk, left)])
                left -= chunk
            if answered:
                break
            answered = send(b"\r\n")
        if not answered:
            send(f"--{BOUNDARY}--\r\n".encode())
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, _headers, body = _read_response(sock)
    sock.close()
    return {"status": status, "json": json.loads(body) if body else None, "sent": sent}


def test_gallery_refuses_an_oversized_photo_while_it_streams_and_memory_stays_flat(server, real_subset):
    photo = (real_subset["images"] / real_subset["gallery_rows"][0][0]).read_bytes()
    before = server.rss_kib()
    # four at once: a real JPEG followed by 90 MiB of zeros in one part (under the 100 MiB request limit)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: stream_gallery_upload(server.url, [(photo, 90 * MiB)]), range(4)))
    after = server.rss_kib()
    for r in results:
        assert r["status"] == 413 and r["json"]["code"] == "upload_too_large", r
        # answered once the part passed the 20 MiB photo limit, not after the 90 MiB
        assert 20 * MiB <= r["sent"] < 40 * MiB, r["sent"]
    assert after - before < 40 * 1024, (before, after)  # 4 x 90 MiB arrived; memory stayed flat
    # the request limit (100 MiB) holds over several parts each under the photo limit
    r = stream_gallery_upload(server.url, [(photo, 19 * MiB)] * 6)
    assert r["status"] == 413 and r["json"]["code"] == "upload_too_large"
    assert 100 * MiB <= r["sent"] < 110 * MiB, r["sent"]
    assert httpx.get(server.url + "/gallery").json()["total"] == 40  # nothing stored


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_no_space_for_the_upload_temp_file_gets_507_and_ready_reports_the_disks(
    real_bundle, gallery_copy, tmp_path, real_subset
):
    if not _can_mount_tmpfs():
        pytest.skip("needs user namespaces (unshare --user --mount) to give the server a 4 MiB tmpfs")
    small = tmp_path / "small-tmp"
    small.mkdir()
    # the server sees a 4 MiB tmpfs at `small` (its own mount namespace); WHALEID_TMP_DIR points there
    wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    wrap += ['mount -t tmpfs -o size=4m tmpfs "$0" && exec "$@"', str(small)]
    env = {"WHALEID_TMP_DIR": str(small), "WHALEID_MIN_FREE_BYTES": str(6 * MiB)}
    srv = Server(real_bundle, gallery_copy, tmp_path / "small.log", env=env, wrap=wrap).start(ready_path="/health")
    try:
        # readiness: the temporary folder has 4 MiB free, under the 6 MiB asked: 503, both disks reported
        ready = httpx.get(srv.url + "/ready")
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["code"] == "low_disk_space" and body["status"] == "low_disk_space"
        assert body["detail"] == "low disk space: tmp folder has 4 MiB free below WHALEID_MIN_FREE_BYTES (6 MiB)"
        assert body["disk"]["tmp"]["total_bytes"] == 4 * MiB and body["disk"]["tmp"]["path"] == str(small)
        assert body["disk"]["gallery"]["free_bytes"] > 6 * MiB
        # an upload under the byte limit (10 MiB) but larger than the free space: 507, logged with the cause
        photo = real_subset["images"] / next(iter(real_subset["spare"].values()))[0]
        big = photo.read_bytes() + b"\0" * (10 * MiB)
        r = httpx.post(srv.url + "/gallery", files=[("files", ("big.jpg", big, "image/jpeg"))], data={"whale_id": "ZZ"})
        assert r.status_code == 507, r.text
        assert r.json() == {
            "detail": "no space left for the upload's temporary file: nothing was stored",
            "code": "insufficient_storage",
        }
        log = srv.log_path.read_text()
        assert "upload refused: writing its temporary file in " + str(small) in log
        assert "No space left on device" in log
        # nothing stored; the space is back and a photo that fits is enrolled
        assert httpx.get(srv.url + "/gallery/ZZ").status_code == 404
        r = httpx.post(srv.url + "/gallery", files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))])
        assert r.status_code == 201, r.text
    finally:
        srv.stop()


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def test_a_busy_gallery_store_gets_503_with_retry_after_and_reads_go_on(
    real_bundle, gallery_copy, tmp_path, real_subset
):
    env = {"WHALEID_BUSY_TIMEOUT_S": "1"}
    srv = Server(real_bundle, gallery_copy, tmp_path / "busy.log", env=env).start()
    photo = real_subset["images"] / next(iter(real_subset["spare"].values()))[0]
    known = real_subset["gallery_rows"][0]
    files = [("files", (photo.name, photo.read_bytes(), "image/jpeg"))]
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(gallery_copy / "gallery.sqlite"), "8"], stdout=subprocess.PIPE
        )
        assert holder.stdout.readline().strip() == b"locked"  # a second process holds the write lock
        reads: list[int] = []

        def read_meanwhile():
            time.sleep(0.3)
            reads.append(httpx.get(srv.url + "/gallery", timeout=10).status_code)
            reads.append(httpx.get(f"{srv.url}/gallery/{known[1]}", timeout=10).status_code)
            with open(real_subset["images"] / known[0], "rb") as fh:
                r = httpx.post(srv.url + "/identify", files={"file": ("q.jpg", fh.read(), "image/jpeg")}, timeout=10)
            reads.append(r.status_code)

        reader = threading.Thread(target=read_meanwhile)
        t0 = time.perf_counter()
        reader.start()
        r = httpx.post(srv.url + "/gallery", files=files, data={"whale_id": "ZZ-busy"}, timeout=30)
        waited = time.perf_counter() - t0
        reader.join(30)
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "store_busy" and r.headers["retry-after"] == "1"
        assert 1.0 <= waited < 4.0, waited  # WHALEID_BUSY_TIMEOUT_S, not sqlite3's 5 s
        assert reads == [200, 200, 200]  # reads were served while the change waited
        assert "store_busy on POST /gallery" in srv.log_path.read_text()
        assert holder.wait(15) == 0
        # the lock is free: the same request succeeds, nothing was stored half-way before
        r = httpx.post(srv.url + "/gallery", files=files, data={"whale_id": "ZZ-busy"}, timeout=30)
        assert r.status_code == 201 and r.json()["images_total"] == 1, r.text
    finally:
        srv.stop()


def test_a_lying_content_length_gets_a_json_400_and_is_logged(shared_server):
    host, port = shared_server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /gallery HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    body = _part_head("files", '; filename="a.jpg"') + b"\xff" * (2 * MiB)  # 1,000 declared, 2 MiB sent
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(head + body)
    status, headers, raw = _read_response(sock)
    sock.close()
    assert status == 400, raw[:200]
    assert headers["content-type"] == "application/json"
    assert json.loads(raw)["code"] == "invalid_http_request"
    time.sleep(0.3)
    log = shared_server.log_path.read_text()
    assert "invalid_http_request from 127.0.0.1" in log and "POST /gallery, Content-Length 1000" in log
    assert httpx.get(shared_server.url + "/ready").status_code == 200  # the server goes on


def test_filename_star_names_are_accepted_and_path_like_names_are_display_names_only(server, real_subset):
    photos = [real_subset["images"] / p for p in list(real_subset["spare"].values())[2]]
    name = "été fluke №1.jpg"
    body = b"".join(
        [
            _part_head("files", f"; filename*=utf-8''{quote(name)}") + photos[0].read_bytes() + b"\r\n",
            _part_head("files", '; filename="../../etc/passwd.jpg"') + photos[1].read_bytes() + b"\r\n",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="whale_id"\r\n\r\nZZ-names\r\n'.encode(),
            f"--{BOUNDARY}--\r\n".encode(),
        ]
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    r = httpx.post(server.url + "/gallery", content=body, headers=headers, timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["images_added"] == 2
    sources = [im["source"] for im in httpx.get(server.url + "/gallery/ZZ-names").json()["images"]]
    assert sources == [name, "passwd.jpg"]
    # a bad photo's error names it by its display name only
    bad = _part_head("files", '; filename="..\\\\..\\\\x\\\\evil.jpg"') + b"not an image at all" + b"\r\n"
    r = httpx.post(server.url + "/gallery", content=bad + f"--{BOUNDARY}--\r\n".encode(), headers=headers)
    assert r.status_code == 415 and r.json()["detail"].endswith("(file 'evil.jpg')"), r.text


def test_the_metrics_method_label_is_bounded(shared_server):
    for method in ("PROPFIND", "MKCOL", "PROPPATCH", "LOCK", "UNLOCK", "COPY", "MOVE", "SEARCH", "REPORT"):
        for path in ("/", "/gallery", "/identify"):
            httpx.request(method, shared_server.url + path)
    text = httpx.get(shared_server.url + "/metrics").text
    methods = {line.split('method="')[1].split('"')[0] for line in text.splitlines() if 'method="' in line}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert "other" in methods
