"""The interactive API page: Swagger UI over ``/openapi.json`` at ``GET /docs``.

The Swagger UI files come from the pinned ``flask-swagger-ui`` package (its ``dist/``
folder: Swagger UI 5, which reads OpenAPI 3.1; requirements.txt), served by this
blueprint from the installed package: the page references only ``/docs/...`` and
``/openapi.json`` on the reader itself, no CDN, and the validator badge (a call to an
outside service) is off. The page's own start-up script is a file here
(``serve/static/docs-init.js``), so that the page runs under a Content-Security-Policy of
``'self'`` scripts.

Like ``/openapi.json``, the page and its assets need no API key; "Authorize" in the page
takes a key for the "Try it out" calls, which go to this reader.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flask import Blueprint, Response, send_file

from serve.errors import ApiError

bp = Blueprint("docs", __name__)

SWAGGER_PACKAGE = "flask_swagger_ui"
_HERE = Path(__file__).resolve().parent

# name -> (file, content type); nothing else is served under /docs/.
ASSETS: dict[str, tuple[str, str]] = {
    "swagger-ui.css": ("dist/swagger-ui.css", "text/css"),
    "index.css": ("dist/index.css", "text/css"),
    "swagger-ui-bundle.js": ("dist/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui-standalone-preset.js": ("dist/swagger-ui-standalone-preset.js",
                                        "text/javascript"),
    "favicon-32x32.png": ("dist/favicon-32x32.png", "image/png"),
    "favicon-16x16.png": ("dist/favicon-16x16.png", "image/png"),
    "docs-init.js": ("", "text/javascript"),  # ours, serve/static/
}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>recs-engine reader: API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="stylesheet" href="/docs/index.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui" data-url="/openapi.json"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/docs-init.js"></script>
</body>
</html>
"""


def asset_path(name: str) -> Path:
    """The file behind ``/docs/<name>`` (KeyError when it is not one of ``ASSETS``)."""
    rel, _ = ASSETS[name]
    if not rel:
        return _HERE / "static" / name
    return Path(str(resources.files(SWAGGER_PACKAGE).joinpath(rel)))


def _secured(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@bp.get("/docs")
def page() -> Response:
    return _secured(Response(PAGE, content_type="text/html; charset=utf-8"))


@bp.get("/docs/<name>")
def asset(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, "not_found", f"no such file under /docs: {name!r}", "name")
    resp = send_file(asset_path(name), mimetype=ASSETS[name][1], max_age=3600)
    return _secured(resp)
