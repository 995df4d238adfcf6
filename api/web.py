"""The web page: `/` serves index.html, `/static/*` its script and style. Static files only; the page talks to
the same public API as every other client, with the key the person enters.

Also `/docs` (Swagger UI) and `/redoc` (ReDoc), from copies of their bundles under static/docs/ (its README says
which versions): a host without internet access shows them all the same."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/static/docs"

# The page loads nothing from elsewhere and runs no inline script; videos and thumbnails arrive as blob: URLs
# (fetched with the Authorization header, which a <video src> could not send).
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _docs_csp(html: str) -> str:
    """Nothing from elsewhere either. FastAPI's Swagger page starts the UI with one inline script: admitted by its hash
    only. Both UIs set inline styles; ReDoc runs its search index in a blob: worker."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ).replace("script-src 'self' ;", "script-src 'self';")


def _page(made: HTMLResponse) -> tuple[str, dict[str, str]]:
    html = bytes(made.body).decode()
    return html, {"Content-Security-Policy": _docs_csp(html), "X-Content-Type-Options": "nosniff"}


def install(app: FastAPI) -> None:
    """The page, its files and the two documentation UIs (the app is made with docs_url=None, redoc_url=None)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    url, icon = app.openapi_url or "/openapi.json", f"{DOCS_ASSETS}/favicon-32x32.png"
    js, css = f"{DOCS_ASSETS}/swagger-ui-bundle.js", f"{DOCS_ASSETS}/swagger-ui.css"
    swagger = _page(
        get_swagger_ui_html(
            openapi_url=url, title=f"{app.title} — API docs", swagger_js_url=js, swagger_css_url=css, swagger_favicon_url=icon
        )
    )
    redoc_js = f"{DOCS_ASSETS}/redoc.standalone.js"
    redoc = _page(
        get_redoc_html(
            openapi_url=url,
            title=f"{app.title} — API reference",
            redoc_js_url=redoc_js,
            redoc_favicon_url=icon,
            with_google_fonts=False,
        )
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(swagger[0], headers=swagger[1])

    @app.get("/redoc", include_in_schema=False)
    def reference() -> HTMLResponse:
        return HTMLResponse(redoc[0], headers=redoc[1])
