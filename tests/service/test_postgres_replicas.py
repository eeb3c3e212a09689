"""Two real service processes on one PostgreSQL store (``WHALEID_STORE_URL``): a change made through one
replica is served by the other within a second; under a concurrent load, a replica killed with
``kill -9`` and a database restart, no acknowledged enrolment is lost, the only 5xx is 503 while the
database is down, and both replicas' indexes equal the store afterwards.

Real servers (``tests/pg_cluster.py``: skipped with the reason when PostgreSQL or psycopg is missing),
the tiny torch-free bundle and synthetic photos (no ``../shared``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import REPO, jpeg_bytes, texture, view

pytest.importorskip("onnx")
pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from replicas import replica_bundle

    return replica_bundle(tmp_path_factory.mktemp("pg-replicas") / "bundle")


@pytest.fixture
def replicas(bundle, tmp_path):
    from pg_cluster import database_for
    from replicas import Replicas

    group = Replicas(tmp_path, bundle, database_for(tmp_path)).start()
    yield group
    group.stop()


def _store(url: str, bundle):
    from core.manifest import load_manifest
    from index.store import open_store

    return open_store(url, load_manifest(bundle).model.embedding_dim)


def _names_answered(client, base: str, data: bytes) -> list[str]:
    r = client.post(base + "/identify", files={"file": ("q.jpg", data)})
    assert r.status_code == 200, r.text
    return [p["whale_id"] for p in r.json()["predictions"]]


def _until(cond, timeout_s: float, step_s: float = 0.02) -> float:
    """Seconds until ``cond()`` holds (AssertionError after ``timeout_s``)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - t0


def test_enrol_through_one_replica_identify_through_the_other_within_a_second(replicas):
    import httpx

    a, b = replicas.urls
    enrolled, query = jpeg_bytes(view(texture(7), 1)), jpeg_bytes(view(texture(7), 2))  # not the same bytes
    with httpx.Client(timeout=30) as c:
        assert "W7" not in _names_answered(c, b, query)  # B has searched (its index is loaded) before
        r = c.post(a + "/gallery", files=[("files", ("p.jpg", enrolled))], data={"whale_id": "W7"})
        assert r.status_code == 201, r.text
        seen_s = _until(lambda: "W7" in _names_answered(c, b, query), 1.0)  # from B's own FAISS index
        assert c.get(b + "/gallery/W7").json()["images"][0]["image_id"] == r.json()["image_ids"][0]
        r = c.delete(b + "/gallery/W7")
        assert r.status_code == 200, r.text
        gone_s = _until(lambda: "W7" not in _names_answered(c, a, query), 1.0)
        assert c.get(a + "/gallery/W7").status_code == 404
    print(f"change feed: enrolment seen by the other replica after {seen_s:.3f} s, deletion after {gone_s:.3f} s")


def _check_after_load(res, replicas, bundle) -> None:
    """Every 201 in the store; no 5xx but 503; both replicas' saved indexes equal the store."""
    from replicas import index_matches_store

    assert res.server_errors() == {"identify": 0, "enrol": 0}, res.summary()
    store = _store(replicas.store_url, bundle)
    try:
        stored = store.stored_photos()
        missing = [a for a in res.acknowledged if a not in stored]
        assert not missing, f"{len(missing)} acknowledged enrolments are not in the store: {missing[:5]}"
        time.sleep(1.5)  # the change feed's last wake-ups
        replicas.stop()  # a graceful stop saves each replica's index, tagged with its generation
        for server in replicas.servers:
            ok, why = index_matches_store(server.gallery, store, bundle)
            assert ok, f"{server.gallery}: {why}"
    finally:
        store.close()


@pytest.mark.slow
def test_a_concurrent_load_over_both_replicas_loses_nothing(replicas, bundle):
    from replicas import run_load

    res = run_load(replicas.urls, duration_s=20, identify_clients=8, enrol_clients=2)
    print("load 20 s:", res.summary())
    assert res.statuses["enrol"][201] >= 4 and res.statuses["identify"][200] >= 20
    assert set(res.statuses["enrol"]) == {201} and set(res.statuses["identify"]) == {200}
    _check_after_load(res, replicas, bundle)


@pytest.mark.slow
def test_a_replica_killed_during_enrolments_loses_no_acknowledged_one(replicas, bundle):
    from replicas import run_load

    events = [(4.0, replicas.servers[0].kill9), (6.0, lambda: replicas.restart(0))]
    res = run_load(replicas.urls, duration_s=14, identify_clients=2, enrol_clients=2, events=events)
    print("kill -9 of replica 0:", res.summary())
    restarted_at = max(t for t, kind, status in res.timeline if status == 0)  # the last unanswered request
    assert any(t > restarted_at and kind == "enrol" and s == 201 for t, kind, s in res.timeline)
    _check_after_load(res, replicas, bundle)


@pytest.mark.slow
def test_a_database_restart_answers_503_then_succeeds(bundle, tmp_path):
    from pg_cluster import PgCluster
    from replicas import Replicas, run_load

    cluster = PgCluster()  # its own server: this test stops it
    try:
        group = Replicas(tmp_path, bundle, cluster.create_database("restart")).start()
        try:
            outage: list[float] = []
            answers = []

            def down():
                import httpx

                outage.append(time.monotonic())
                cluster.stop()
                answers.append(httpx.get(group.urls[1] + "/ready", timeout=30))

            def up():
                cluster.start()
                outage.append(time.monotonic())

            res = run_load(group.urls, 14, identify_clients=2, enrol_clients=2, events=[(4.0, down), (7.0, up)])
            print("database restart:", res.summary())
            assert res.statuses["enrol"][503] >= 1 and res.statuses["identify"][503] >= 1  # during the outage
            ready = answers[0]  # what a health check sees meanwhile
            assert ready.status_code == 503 and ready.headers["retry-after"] == "2"
            assert ready.json()["code"] == "store_unavailable"
            t_up = outage[1] - outage[0] + 4.0
            after = [s for t, kind, s in res.timeline if kind == "enrol" and t > t_up + 1.0]
            assert after and set(after) == {201}, after  # the same replicas work again, without a restart
            _check_after_load(res, group, bundle)
        finally:
            group.stop()
    finally:
        cluster.remove()


@pytest.mark.slow
def test_the_compose_nginx_config_spreads_requests_and_skips_a_dead_replica(replicas, tmp_path):
    """``docker/nginx/replicas.conf`` (what ``docker compose --profile postgres`` runs) in front of the
    two replicas, with only their addresses and the port changed: enrol and identify through it, then
    through it again with one replica killed."""
    import shutil
    import subprocess

    import httpx

    from service.process import free_port

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    port = free_port()
    conf = (REPO / "docker" / "nginx" / "replicas.conf").read_text()
    for name, url in zip(("replica-a:8000", "replica-b:8000"), replicas.urls, strict=True):
        conf = conf.replace(name, url.removeprefix("http://"))
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (tmp_path / "site.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path};\n include {tmp_path}/site.conf;\n}}\n"
    )
    proc = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"])
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=30) as c:
            _until(lambda: _answers(c, base + "/ready"), 10)
            enrolled, query = jpeg_bytes(view(texture(9), 1)), jpeg_bytes(view(texture(9), 2))
            r = c.post(base + "/gallery", files=[("files", ("p.jpg", enrolled))], data={"whale_id": "W9"})
            assert r.status_code == 201, r.text
            time.sleep(0.5)  # the other replica's change feed
            assert all("W9" in _names_answered(c, base, query) for _ in range(6))  # both replicas answer it
            replicas.servers[0].kill9()
            assert all("W9" in _names_answered(c, base, query) for _ in range(6))  # nginx skips the dead one
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(client, url: str) -> bool:
    import httpx

    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False
