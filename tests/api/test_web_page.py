"""The web page at `/`, in a real browser: Debian's headless Chromium driven by Playwright, against the real stack.

A person's path through it: (enter the key,) submit a tiny job, watch its progress reach 100, play the MP4,
submit a long one and cancel it, delete it. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.web import STATIC
from tests.conftest import LATE
from wanq.stack import Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Quiet and self-contained: no sandbox (root in CI), no GPU, nothing fetched from the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Debian's chromium is not installed (`make install` installs it: apt-get install chromium)",
)


def test_the_page_and_its_assets_are_served(api: httpx.Client) -> None:
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text and '<label for="prompt">' in page.text
    script = api.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"] and "Authorization" in script.text
    assert api.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert api.get("/static/nothing.js").status_code == 404


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _fill_tiny_job(page: Any, prompt: str, steps: int) -> None:
    page.select_option("#model", "tiny-t2v-a14b")
    page.fill("#prompt", prompt)
    page.fill("#size", "64x64")
    page.fill("#seed", "11")
    if not page.is_visible("#num_frames"):
        page.click("#advanced summary")
    page.fill("#num_frames", "9")
    page.fill("#steps", str(steps))
    page.fill("#fps", "8")


def _submit(page: Any, known: set[str]) -> str:
    page.click("#submit-button")
    page.wait_for_function(
        "known => [...document.querySelectorAll('#jobs li.job')].some(li => !known.includes(li.dataset.id))", arg=sorted(known)
    )
    ids = page.eval_on_selector_all("#jobs li.job", "items => items.map(li => li.dataset.id)")
    (new,) = set(ids) - known
    return str(new)


@needs_chromium
def test_submit_watch_play_cancel_delete_in_chromium(
    stack: Stack, api: httpx.Client, browser: Any, artifacts: Path, api_key_for_page: str | None
) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 1300})
    page.set_default_timeout(60_000)
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # "Delete …?"
    page.goto(f"{stack.api_url}/")

    # 1. The key, when the server wants one: entered once, kept in localStorage.
    if api_key_for_page:
        # The page opens the key panel by itself once the API answers 401; open it either way.
        page.evaluate("document.querySelector('#key-panel').open = true")
        page.fill("#api-key", api_key_for_page)
        page.click("#key-form button[type=submit]")
        assert page.evaluate("localStorage.getItem('wanq.apiKey')") == api_key_for_page
    page.wait_for_selector('#model option[value="tiny-t2v-a14b"]', state="attached")
    known = set(page.eval_on_selector_all("#jobs li.job", "items => items.map(li => li.dataset.id)"))

    # Every control a person fills has a label (or an aria-label).
    unlabeled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
             .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map(el => el.id)"""
    )
    assert unlabeled == []

    # 2. A tiny job: its progress bar moves through intermediate values and reaches 100, then the MP4 plays.
    _fill_tiny_job(page, "a paper boat on a rainy street", steps=6)
    page.evaluate(
        """() => {
             window.progressSeen = [];
             new MutationObserver(records => records.forEach(r => {
               if (r.target.tagName === 'PROGRESS') window.progressSeen.push(Number(r.target.getAttribute('value')));
             })).observe(document.querySelector('#jobs'), {subtree: true, attributes: true, attributeFilter: ['value']});
           }"""
    )
    done_id = _submit(page, known)
    known.add(done_id)
    item = f'li[data-id="{done_id}"]'
    page.wait_for_function("sel => document.querySelector(sel + ' progress').value === 100", arg=item, timeout=120_000)
    assert page.get_attribute(item, "data-status") == "completed"
    assert page.inner_text(f"{item} .badge") == "done"
    seen = page.evaluate("window.progressSeen")
    assert seen[-1] == 100 and seen == sorted(seen) and any(0 < p < 100 for p in seen), seen
    # The <video> has the MP4 (fetched with the key) decoded far enough to show a frame; the thumbnail is its poster.
    page.wait_for_function("sel => document.querySelector(sel + ' video').readyState >= 2", arg=item, timeout=60_000)
    media = page.eval_on_selector(
        f"{item} video", "v => ({src: v.src, poster: v.poster, w: v.videoWidth, h: v.videoHeight, error: v.error})"
    )
    assert media["src"].startswith("blob:") and media["poster"].startswith("blob:") and media["error"] is None, media
    assert (media["w"], media["h"]) == (64, 64)
    assert page.get_attribute(f"{item} a.download", "download") == f"{done_id}.mp4"
    video = api.get(f"/v1/videos/{done_id}").json()
    assert (video["size"], video["num_frames"], video["num_inference_steps"], video["seed"]) == ("64x64", 9, 6, 11)

    # 3. A long job (100 steps), canceled from its card while it runs.
    _fill_tiny_job(page, "a slow pan over a mountain lake, to be canceled", steps=100)
    long_id = _submit(page, known)
    long_item = f'li[data-id="{long_id}"]'
    page.wait_for_function("sel => document.querySelector(sel).dataset.status === 'in_progress'", arg=long_item)
    page.click(f"{long_item} button.cancel")
    page.wait_for_function("sel => document.querySelector(sel).dataset.status === 'canceled'", arg=long_item)
    assert page.inner_text(f"{long_item} .badge") == "canceled"
    assert api.get(f"/v1/videos/{long_id}").json()["status"] == "canceled"
    assert page.is_hidden(f"{long_item} button.cancel")

    # 4. Delete: the card leaves the page and the job leaves the server.
    page.click(f"{long_item} button.delete")
    page.wait_for_selector(long_item, state="detached")
    assert api.get(f"/v1/videos/{long_id}").status_code == 404
    page.screenshot(path=str(artifacts / "web-page.png"), full_page=True)

    # 5. A phone's width: nothing sticks out sideways.
    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(artifacts / "web-page-phone.png"))
    assert script_errors == []
    page.close()


@needs_chromium
def test_extend_remix_and_an_image_in_chromium(
    stack: Stack, api: httpx.Client, browser: Any, artifacts: Path, api_key_for_page: str | None
) -> None:
    # A finished video and a finished image, made over the API; the page shows both.
    made = api.post(
        "/v1/videos",
        json={
            "prompt": "a windmill at noon",
            "model": "tiny-t2v-a14b",
            "size": "64x64",
            "num_frames": 9,
            "fps": 8,
            "num_inference_steps": 2,
        },
    ).json()
    image = api.post(
        "/v1/images/generations",
        json={"prompt": "a windmill, still", "model": "tiny-ti2v-5b", "size": "64x64", "num_inference_steps": 2},
    )
    assert image.status_code == 200, image.text
    image_id = image.json()["data"][0]["id"]
    deadline = time.monotonic() + 120
    while api.get(f"/v1/videos/{made['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)

    page = browser.new_page(viewport={"width": 1000, "height": 1300})
    page.set_default_timeout(60_000)
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    if api_key_for_page:
        page.add_init_script(f"localStorage.setItem('wanq.apiKey', {json.dumps(api_key_for_page)})")
    page.goto(f"{stack.api_url}/")
    source = f'li[data-id="{made["id"]}"]'
    page.wait_for_selector(f"{source} button.extend", state="visible")

    # The image job: its PNG shown in place of a player, downloadable as a PNG; no Extend for an image.
    still = f'li[data-id="{image_id}"]'
    page.locator(still).scroll_into_view_if_needed()  # media load as a card scrolls into view
    page.wait_for_function("sel => document.querySelector(sel + ' img.still').naturalWidth === 64", arg=still)
    assert page.is_hidden(f"{still} video") and page.is_hidden(f"{still} button.extend")
    assert page.get_attribute(f"{still} a.download", "download") == f"{image_id}.png"

    # Extend: a prompt, an image-to-video model (only those are offered), seconds to add.
    known = set(page.eval_on_selector_all("#jobs li.job", "items => items.map(li => li.dataset.id)"))
    page.locator(source).scroll_into_view_if_needed()
    page.click(f"{source} button.extend")
    offered = page.eval_on_selector_all(f"{source} .followup select option", "options => options.map(o => o.value)")
    assert set(offered) == {"tiny-i2v-a14b", "tiny-ti2v-5b"}
    page.fill(f"{source} .followup textarea", "the sails start to turn")
    page.select_option(f"{source} .followup select", "tiny-i2v-a14b")
    page.fill(f"{source} .followup input[name=seconds]", "1")
    ext_id = _submit_followup(page, source, known)
    known.add(ext_id)
    ext = f'li[data-id="{ext_id}"]'
    page.wait_for_function("sel => document.querySelector(sel).dataset.status === 'completed'", arg=ext, timeout=120_000)
    assert f"extends {made['id']} by 8 frames" in page.inner_text(f"{ext} .meta") and "17 frames" in page.inner_text(
        f"{ext} .meta"
    )
    page.locator(ext).scroll_into_view_if_needed()
    page.wait_for_function("sel => document.querySelector(sel + ' video').readyState >= 2", arg=ext)
    duration = page.eval_on_selector(f"{ext} video", "v => v.duration")
    assert abs(duration - 17 / 8) < 0.2, duration

    # Remix: a new prompt, the same settings and seed.
    page.click(f"{source} button.remix")
    assert page.is_hidden(f"{source} .followup select")
    page.fill(f"{source} .followup textarea", "a windmill at night")
    remix_id = _submit_followup(page, source, known)
    remix = f'li[data-id="{remix_id}"]'
    page.wait_for_function("sel => document.querySelector(sel).dataset.status === 'completed'", arg=remix, timeout=120_000)
    assert f"remix of {made['id']}" in page.inner_text(f"{remix} .meta")
    video = api.get(f"/v1/videos/{remix_id}").json()
    assert (video["prompt"], video["seed"], video["remixed_from_video_id"]) == ("a windmill at night", made["seed"], made["id"])
    page.screenshot(path=str(artifacts / "web-page-extend.png"), full_page=True)
    assert script_errors == []
    page.close()


@needs_chromium
def test_n_videos_from_one_submit_in_chromium(
    stack: Stack, api: httpx.Client, browser: Any, artifacts: Path, api_key_for_page: str | None
) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 1300})
    page.set_default_timeout(60_000)
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    if api_key_for_page:
        page.add_init_script(f"localStorage.setItem('wanq.apiKey', {json.dumps(api_key_for_page)})")
    page.goto(f"{stack.api_url}/")
    page.wait_for_selector('#model option[value="tiny-t2v-a14b"]', state="attached")
    known = set(page.eval_on_selector_all("#jobs li.job", "items => items.map(li => li.dataset.id)"))
    assert page.input_value("#n") == "1" and page.get_attribute("#n", "min") == "1"

    # Three videos, one request: three cards, seeds 11, 12, 13, each an ordinary job that completes.
    _fill_tiny_job(page, "three paper boats", steps=2)
    page.fill("#n", "3")
    page.click("#submit-button")
    page.wait_for_function(
        "known => [...document.querySelectorAll('#jobs li.job')].filter(li => !known.includes(li.dataset.id)).length === 3",
        arg=sorted(known),
    )
    new = [i for i in page.eval_on_selector_all("#jobs li.job", "items => items.map(li => li.dataset.id)") if i not in known]
    assert page.inner_text("#message").startswith("Submitted 3 videos:")
    seeds = {i: api.get(f"/v1/videos/{i}").json()["seed"] for i in new}
    assert sorted(seeds.values()) == [11, 12, 13], seeds
    # Named in seed order in the message, as the answer's video_ids gave them.
    assert page.inner_text("#message") == "Submitted 3 videos: " + ", ".join(sorted(new, key=seeds.__getitem__)) + "."
    for video_id in new:
        page.wait_for_function(
            "sel => document.querySelector(sel).dataset.status === 'completed'", arg=f'li[data-id="{video_id}"]', timeout=120_000
        )
    page.screenshot(path=str(artifacts / "web-page-n.png"), full_page=True)
    assert script_errors == []
    page.close()


def _submit_followup(page: Any, card: str, known: set[str]) -> str:
    page.click(f"{card} .followup button[type=submit]")
    page.wait_for_function(
        "known => [...document.querySelectorAll('#jobs li.job')].some(li => !known.includes(li.dataset.id))", arg=sorted(known)
    )
    ids = page.eval_on_selector_all("#jobs li.job", "items => items.map(li => li.dataset.id)")
    (new,) = set(ids) - known
    return str(new)


@pytest.fixture
def api_key_for_page(stack: Stack) -> str | None:
    return stack.env.get("WANQ_DEV_ADMIN_KEY")


@pytest.fixture
def keyed_server() -> Iterator[tuple[str, list[str | None]]]:
    """The page's files, and 401 with OpenAI's error body on every API call: a server that wants a key."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/v1/"):
                seen.append(self.headers.get("Authorization"))
                body = json.dumps({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}).encode()
                self._send(401, "application/json", body)
                return
            name = "index.html" if self.path == "/" else self.path.removeprefix("/static/")
            kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[-1]]
            self._send(200, kind, (STATIC / name).read_bytes())

        def _send(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@needs_chromium
def test_the_page_asks_for_a_key_and_sends_it(browser: Any, keyed_server: tuple[str, list[str | None]]) -> None:
    url, seen = keyed_server
    page = browser.new_page()
    page.goto(f"{url}/")
    page.wait_for_function("document.querySelector('#message').textContent.includes('needs an API key')")
    assert page.evaluate("document.querySelector('#key-panel').open") is True
    assert set(seen) == {None}

    page.fill("#api-key", "wq_typed_once")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("document.querySelector('#message').textContent.includes('refused this API key')")
    assert "Incorrect API key provided" in page.inner_text("#message")
    assert "Bearer wq_typed_once" in seen
    assert page.inner_text("#key-state") == "saved (…once)"

    # Kept across a reload, never shown back in the field.
    seen.clear()
    page.reload()
    page.wait_for_function("document.querySelector('#message').textContent.includes('refused this API key')")
    assert set(seen) == {"Bearer wq_typed_once"} and page.input_value("#api-key") == ""
    page.close()


@needs_chromium
def test_a_running_jobs_preview_and_the_new_form_fields_in_chromium(
    stack: Stack, api: httpx.Client, browser: Any, artifacts: Path, api_key_for_page: str | None, tmp_path: Path
) -> None:
    # A fault-injected worker of this test's own (tests/faulty.py): every step of a `[[fault:sleep@1]]` prompt takes
    # 0.5 s, so the job runs long enough for its previews to be shown while it runs.
    from tests.faulty import Workers

    workers = Workers(stack, tmp_path / "runs.jsonl")
    page = browser.new_page(viewport={"width": 1000, "height": 1300})
    page.set_default_timeout(60_000)
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    if api_key_for_page:
        page.add_init_script(f"localStorage.setItem('wanq.apiKey', {json.dumps(api_key_for_page)})")
    try:
        workers.start(1)
        page.goto(f"{stack.api_url}/")
        page.wait_for_selector(f'#model option[value="{LATE}"]', state="attached")
        known = set(page.eval_on_selector_all("#jobs li.job", "items => items.map(li => li.dataset.id)"))

        # 1. A job with previews every 2 of 20 steps and the tiny decoder, from the form's advanced fields.
        _fill_tiny_job(page, "a lantern drifting on a dark river [[fault:sleep@1]]", steps=20)
        page.select_option("#model", LATE)
        page.fill("#preview_every", "2")
        page.select_option("#decoder", "tiny")
        running_id = _submit(page, known)
        known.add(running_id)
        item = f'li[data-id="{running_id}"]'
        # The card shows the latest preview, live: a muted, looping, autoplaying <video> of the preview variant.
        page.wait_for_function(
            "sel => { const v = document.querySelector(sel + ' video.preview'); return v.readyState >= 2 && v.dataset.step; }",
            arg=item,
            timeout=120_000,
        )
        assert page.get_attribute(item, "data-status") == "in_progress" and page.is_visible(f"{item} video.preview")
        shown = page.eval_on_selector(
            f"{item} video.preview",
            "v => ({src: v.src, muted: v.muted, loop: v.loop, autoplay: v.autoplay, w: v.videoWidth, step: Number(v.dataset.step)})",
        )
        assert shown["src"].startswith("blob:") and shown["muted"] and shown["loop"] and shown["autoplay"], shown
        assert shown["w"] == 32 and shown["step"] % 2 == 0, shown  # one frame per latent frame, at half the size
        first = shown["step"]
        # Refreshed as newer previews come
        page.wait_for_function(
            "([sel, step]) => Number(document.querySelector(sel + ' video.preview').dataset.step) > step",
            arg=[item, first],
            timeout=60_000,
        )
        assert "Preview after step" in page.inner_text(f"{item} .preview-box figcaption")
        page.screenshot(path=str(artifacts / "web-page-preview.png"), full_page=True)
        video = api.get(f"/v1/videos/{running_id}").json()
        assert (video["preview_every"], video["decoder"], video["num_inference_steps"]) == (2, "tiny", 20), video
        # Canceled: the card keeps its last preview (the job has no video to replace it)
        page.click(f"{item} button.cancel")
        page.wait_for_function("sel => document.querySelector(sel).dataset.status === 'canceled'", arg=item)
        assert page.is_visible(f"{item} video.preview")

        # 2. Interpolation and upscaling from the form reach the job (a worker without those stages may refuse it:
        # what is checked here is the request the page made).
        _fill_tiny_job(page, "a lantern, interpolated and upscaled", steps=1)
        page.fill("#preview_every", "")
        page.select_option("#decoder", "")
        page.select_option("#interpolate", "2")
        page.select_option("#upscale", "2")
        post_id = _submit(page, known)
        posted = api.get(f"/v1/videos/{post_id}").json()
        assert (posted["interpolate"], posted["upscale"], posted["decoder"], posted["preview_every"]) == (2, 2, "full", None)
        assert script_errors == []
    finally:
        page.close()
        workers.stop_all()
