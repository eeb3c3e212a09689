"""``/docs`` and ``/redoc`` work on a closed network: every asset comes from the installed package (issue 23).

FastAPI's default pages load Swagger UI from a CDN and were blank without internet.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import tiny_bundle

pytest.importorskip("onnx")
pytest.importorskip("fastapi_offline")

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("docs") / "bundle")


def urls_in(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_only_local_assets(bundle, page):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    with TestClient(create_app(Settings(bundle=bundle))) as c:
        r = c.get(page)
        assert r.status_code == 200
        urls = urls_in(r.text)
        assert "/openapi.json" in urls
        assets = [u for u in urls if u != "/openapi.json"]
        assert assets and all(u.startswith("/docs-assets/") for u in assets), urls
        assert "cdn" not in r.text and "fonts.googleapis" not in r.text
        for u in assets:
            got = c.get(u)
            assert got.status_code == 200 and len(got.content) > 1000, u
        if page == "/docs":  # Swagger UI 5 renders OpenAPI 3.1 (4.x refuses it)
            js = c.get("/docs-assets/swagger-ui-bundle.js").text
            assert re.search(r'"5\.\d+\.\d+"', js)
            assert c.get("/openapi.json").json()["openapi"].startswith("3.1")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: install Debian's chromium package")
def test_swagger_ui_renders_with_the_network_cut(bundle, tmp_path):
    pytest.importorskip("playwright")
    from live_server import Server
    from playwright.sync_api import sync_playwright

    srv = Server(bundle, tmp_path / "gallery", tmp_path / "server.log").start()
    outside: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless=new", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()

            def route(r):
                if r.request.url.startswith(srv.url):
                    return r.continue_()
                outside.append(r.request.url)
                return r.abort()

            page.route("**/*", route)
            page.goto(f"{srv.url}/docs")
            page.get_by_text("/identify").first.wait_for(timeout=30_000)
            browser.close()
    finally:
        srv.stop()
    assert outside == []
