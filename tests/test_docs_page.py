"""The reader's interactive API page (``/docs``, serve/docs.py) against a real reader.

The page and every file it references are served by the reader itself (no CDN, no
outside URL), need no API key (as /openapi.json needs none, also when reads do), and
the Swagger UI files are the pinned package's 5.x (the first to read OpenAPI 3.1). A
browser test renders it in headless Chromium and finds the document's operations.
"""

from __future__ import annotations

import re
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from serve.app import create_app
from serve.docs import ASSETS, asset_path
from tests.test_serve import publish_fixture

CHROMIUM = "/usr/bin/chromium"


class _Refs(HTMLParser):
    """Every src and href of a page, and every inline script's text."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.refs += [attrs[a] for a in ("src", "href") if attrs.get(a)]
        self._in_script = tag == "script" and not attrs.get("src")

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts.append(data)

    def handle_endtag(self, tag):
        self._in_script = False


@pytest.fixture
def app(settings, dsn):
    publish_fixture(dsn)
    app = create_app({"SETTINGS": settings, "TESTING": True})  # reads need a key
    yield app
    app.extensions["recs"].store.close()


def test_page_and_every_asset_load_locally_without_a_key(app):
    client = app.test_client()  # no key
    assert client.get("/api/v1/trending").status_code == 401  # reads need one
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.content_type == "text/html; charset=utf-8"
    html = page.get_data(as_text=True)
    assert "//" not in html.replace("<!DOCTYPE html>", "")  # no scheme, no outside host
    parser = _Refs()
    parser.feed(html)
    assert parser.inline_scripts == []  # runs under the page's CSP (script-src 'self')
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    refs = parser.refs
    assert {"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/docs-init.js"} \
        <= set(refs)
    for ref in refs:
        assert ref.startswith("/docs/"), ref
        resp = client.get(ref)
        assert resp.status_code == 200, ref
        name = ref.rsplit("/", 1)[1]
        assert resp.content_type.split(";")[0] == ASSETS[name][1]
        assert resp.get_data() == asset_path(name).read_bytes()
    # The start-up script points Swagger UI at this reader's document, which answers
    # without a key, and turns the outside validator off.
    init = client.get("/docs/docs-init.js").get_data(as_text=True)
    assert 'root.getAttribute("data-url")' in init and "validatorUrl: null" in init
    assert 'data-url="/openapi.json"' in html
    doc = client.get("/openapi.json")
    assert doc.status_code == 200 and doc.get_json()["openapi"].startswith("3.1")
    assert "/docs" in doc.get_json()["paths"]


def test_swagger_ui_is_the_pinned_5x_from_the_package():
    bundle = asset_path("swagger-ui-bundle.js")
    assert "site-packages" in str(bundle) and bundle.parent.name == "dist"
    assert (bundle.parent / "VERSION").read_text().strip().startswith("v5.")
    pins = Path(__file__).resolve().parent.parent / "requirements.txt"
    assert re.search(r"^flask-swagger-ui==\d+\.\d+\.\d+$", pins.read_text(), re.M)
    # No URL of a CDN anywhere in what the page loads.
    for name in ASSETS:
        text = asset_path(name).read_bytes().decode("utf-8", "replace")
        for cdn in ("unpkg.com", "cdn.jsdelivr", "cdnjs.cloudflare"):
            assert cdn not in text, (name, cdn)


def test_unknown_asset_is_a_json_404_naming_the_field(app):
    assert app.test_client().get("/docs/..%2Fapp.py").status_code == 404
    resp = app.test_client().get("/docs/app.py")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["field"] == "name"
    resp = app.test_client().get("/docs/swagger-ui.js.map")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    assert app.test_client().post("/docs").status_code == 405


@pytest.mark.browser
def test_the_page_renders_the_documents_operations(app):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    outside: list[str] = []
    errors: list[str] = []
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                page = browser.new_page()
                page.on("request", lambda r: None if r.url.startswith(base)
                        or r.url.startswith("data:") else outside.append(r.url))
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{base}/docs")
                page.wait_for_selector(".opblock", timeout=30_000)
                text = page.inner_text("#swagger-ui")
            finally:
                browser.close()
    finally:
        server.shutdown()
    assert "recs-engine reader" in text
    for path in ("/api/v1/recommendations/{user_id}", "/api/v1/events", "/openapi.json"):
        assert path in text
    assert outside == [] and errors == []
