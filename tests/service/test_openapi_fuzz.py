"""Schemathesis against a real uvicorn: the OpenAPI document and the service agree, and nothing gets a 5xx.

The run, equivalent to (from ``tests/service/fuzz``, ``PYTHONPATH=.`` for the hooks)::

    st --config-file schemathesis.toml run http://127.0.0.1:PORT/openapi.json \\
        --checks all --seed 24 --max-examples 8 --phases examples,coverage,fuzzing,stateful

Every check is on, none is turned off: no 5xx, status codes, content types, response headers and
bodies as declared, schema-valid requests accepted (2xx, 304, or 404 for a drawn id) and
schema-invalid ones refused (4xx, see ``fuzz/schemathesis.toml`` for the two lists), unsupported
methods answered 405 with ``Allow``, writes refused without the API key (the server runs with
``WHALEID_API_KEY``, the document declares it as a security scheme and schemathesis sends it), and
the stateful checks (a deleted whale is gone, a created one is there). Two checks have nothing to
check here and pass without effect: ``object_level_authorization`` (one key, no per-user
resources) and ``missing_required_header`` (no operation requires a header). The photo fields get
real PNG and JPEG photos from ``fuzz/whaleid_hooks.py``; the stateful phase follows the document's
links from ``POST /gallery`` to the routes that take the returned whale and image ids.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from live_server import Server
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

FUZZ = Path(__file__).parent / "fuzz"
SEED = 24
MAX_EXAMPLES = 8


def _requests(metrics: str, method: str, route: str, status: int) -> float:
    """The service's count of ``method route`` requests answered ``status`` (from ``/metrics``)."""
    want = {"method": method, "route": route, "status": str(status)}
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "whaleid_requests"
        for sample in family.samples
        if sample.name == "whaleid_requests_total" and all(sample.labels.get(k) == v for k, v in want.items())
    )


def test_schemathesis_finds_no_5xx_and_no_disagreement_with_the_document(real_bundle, gallery_copy, tmp_path):
    # 3 photos at most a request: the coverage phase sends maxItems photos (and one more, refused with 413)
    key = "fuzz-key-24"
    env = {"WHALEID_MAX_FILES": "3", "WHALEID_API_KEY": key}
    srv = Server(real_bundle, gallery_copy, tmp_path / "server.log", env=env).start()
    try:
        st = Path(sys.executable).with_name("st")
        cmd = [
            str(st),
            "--config-file",
            str(FUZZ / "schemathesis.toml"),
            "--no-color",
            "run",
            srv.url + "/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ]
        env = {**os.environ, "PYTHONPATH": str(FUZZ), "WHALEID_FUZZ_API_KEY": key}
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        took = time.perf_counter() - t0
        out = run.stdout + run.stderr
        (tmp_path / "schemathesis.log").write_text(out)
        assert run.returncode == 0, out[-12000:]
        summary = re.search(r"(\d+) generated, (\d+) passed", out)
        assert summary and int(summary.group(1)) >= 150 and summary.group(1) == summary.group(2), out[-3000:]
        print(f"schemathesis: {summary.group(0)} in {took:.1f} s")
        metrics = httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()
    # it reached past validation and 404s: photos enrolled and identified, the returned ids followed
    assert _requests(metrics, "POST", "/gallery", 201) >= 1
    assert _requests(metrics, "POST", "/identify", 200) >= 1
    assert _requests(metrics, "GET", "/gallery/{whale_id}", 200) >= 1
    assert _requests(metrics, "GET", "/gallery/{whale_id}/images/{image_id}", 200) >= 1
    assert _requests(metrics, "DELETE", "/gallery/{whale_id}", 200) >= 1
    # and refused what it should: unsupported methods, writes without the key, schema-invalid requests
    assert _requests(metrics, "OPTIONS", "/gallery", 405) >= 1
    assert _requests(metrics, "POST", "/gallery", 401) >= 1
    assert _requests(metrics, "POST", "/identify", 400) + _requests(metrics, "POST", "/identify", 422) >= 1
    server_errors = [
        sample.labels
        for family in text_string_to_metric_families(metrics)
        if family.name == "whaleid_requests"
        for sample in family.samples
        if sample.name == "whaleid_requests_total" and sample.labels["status"].startswith("5")
    ]
    assert not server_errors
