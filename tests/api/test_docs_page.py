"""`/docs` (Swagger UI) and `/redoc` on a host without internet: headless Chromium with every request that leaves
localhost aborted renders both from the package's own copies, and Swagger UI lists the routes. And the schema they
render describes every field a person sends (the create request) and gets back (the video object)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from api.openapi import ModelDefaults, ModelInfo, ModelList
from shared.specs import VideoRequest
from shared.video import Video, VideoDeleted, VideoError, VideoList
from tests.api.test_web_page import CHROMIUM, CHROMIUM_ARGS, needs_chromium
from wanq.stack import Stack

LOCAL = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="module")
def offline_browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _offline_page(browser: Any) -> tuple[Any, Any, list[str], list[str]]:
    """A page whose every request beyond localhost is aborted (and noted), with its console errors noted too."""
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    left: list[str] = []
    errors: list[str] = []

    def route(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname not in LOCAL:
            left.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return context, page, left, errors


def test_the_docs_assets_come_from_the_package(api: httpx.Client) -> None:
    for path, asset in (("/docs", "/static/docs/swagger-ui-bundle.js"), ("/redoc", "/static/docs/redoc.standalone.js")):
        page = api.get(path)
        assert page.status_code == 200 and asset in page.text and "cdn." not in page.text and "googleapis" not in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-eval" not in csp
        script = api.get(asset)
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert api.get("/static/docs/swagger-ui.css").headers["content-type"].startswith("text/css")


@needs_chromium
def test_swagger_ui_lists_the_routes_with_the_network_off(stack: Stack, offline_browser: Any, artifacts: Path) -> None:
    context, page, left, errors = _offline_page(offline_browser)
    try:
        page.goto(f"{stack.api_url}/docs")
        page.wait_for_selector(".opblock-summary-path")
        page.wait_for_function("document.querySelectorAll('.opblock-summary-path').length > 10")
        paths = set(page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path || e.innerText)"))
        methods = page.eval_on_selector_all(".opblock-summary-method", "els => els.map(e => e.innerText)")
        assert {
            "/v1/videos",
            "/v1/videos/{video_id}",
            "/v1/videos/{video_id}/content",
            "/v1/models",
            "/v1/models/{model_id}",
        } <= {p.replace("\u200b", "") for p in paths}, paths
        assert {"GET", "POST", "DELETE"} <= set(methods)
        assert page.is_visible("text=Create a video job")
        # The video object's schema, with its fields' descriptions and ranges, is on the page (under Schemas).
        video = page.locator(
            "section.models article[data-json-schema-level='0']"
            ":has(> .json-schema-2020-12-head .json-schema-2020-12__title:text-is('Video'))"
        )
        video.locator("> .json-schema-2020-12-head button.json-schema-2020-12-expand-deep-button").click()
        video.get_by_text("Denoising steps done.").wait_for()
        assert "[1, 240]" in video.inner_text()  # fps of the MP4: up to 60 generated, times interpolate 4
        page.screenshot(path=str(artifacts / "docs-offline.png"), full_page=False)
    finally:
        context.close()
    assert left == [], f"the docs page reached beyond localhost: {left}"
    assert errors == [], errors


@needs_chromium
def test_redoc_renders_with_the_network_off(stack: Stack, offline_browser: Any, artifacts: Path) -> None:
    context, page, left, errors = _offline_page(offline_browser)
    try:
        page.goto(f"{stack.api_url}/redoc")
        page.wait_for_selector("h2:has-text('Create a video job')")
        assert page.get_by_text("Retrieve one model").count() >= 1
        page.screenshot(path=str(artifacts / "redoc-offline.png"), full_page=False)
    finally:
        context.close()
    assert left == [], f"the ReDoc page reached beyond localhost: {left}"
    # ReDoc's sidebar shows Redocly's logo from their CDN (a URL in its bundle): the page's CSP refuses it, so no
    # request is even tried. Nothing else may fail.
    assert [e for e in errors if "cdn.redoc.ly/redoc/logo-mini.svg" not in e] == [], errors


# Descriptions ---------------------------------------------------------------------------------------


def _undescribed(schema: dict[str, Any]) -> list[str]:
    return [name for name, prop in schema.get("properties", {}).items() if not str(prop.get("description", "")).strip()]


@pytest.mark.parametrize(
    "model",
    [Video, VideoError, VideoList, VideoDeleted, VideoRequest, ModelInfo, ModelDefaults, ModelList],
    ids=lambda m: m.__name__,
)
def test_every_field_a_person_sends_or_gets_back_is_described(model: type) -> None:
    # Straight from the models, so a field added without a description fails here before it reaches /docs.
    missing = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]  # type: ignore[attr-defined]
    assert missing == [], f"{model.__name__} fields without a description: {missing}"


def test_the_served_schema_describes_the_video_and_the_request(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    for name in ("Video", "VideoError", "VideoList", "ModelInfo", "ModelDefaults"):
        assert _undescribed(spec["components"]["schemas"][name]) == [], name
    create = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert _undescribed(create) == [] and len(create["properties"]) >= 15
    # The Wan parameters carry their ranges.
    props = create["properties"]

    def bound(name: str, key: str) -> Any:
        return next((branch[key] for branch in [props[name], *props[name].get("anyOf", [])] if key in branch), None)

    assert bound("fps", "maximum") == 60 and bound("guidance_scale", "maximum") == 30 and bound("num_frames", "minimum") == 5
    assert bound("seed", "maximum") == 2**32 - 1 and bound("flow_shift", "minimum") == 0.01
