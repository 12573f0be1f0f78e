"""The web UI in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright's
Python package): generate images, chat with streaming, find the images in the gallery, rate
them, open an item's record, regenerate with its seed, compare two items, switch to Chinese.

With ``AIGC_SCREENSHOTS=1`` the screenshots go to docs/screenshots/ (for the README); otherwise
to the test's temporary folder. If ``out/demo/run`` exists (after ``aigc demo``), its VAE is
served too and used for the pictures.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from studio_fixtures import live_server, make_settings

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = ROOT / "out" / "demo" / "run"

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian chromium at /usr/bin/chromium (apt-get install -y "
                              "chromium)"),
]


def test_browser_generate_gallery_rate_chat(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="needs the playwright Python package")
    shots = ROOT / "docs" / "screenshots" if os.environ.get("AIGC_SCREENSHOTS") == "1" \
        else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    extra = (("demo-vae", DEMO_RUN),) if (DEMO_RUN / "checkpoints" / "latest").is_file() else ()
    try:
        import chatterbot_corpus  # noqa: F401  (a richer corpus for the chat picture)
        corpus = None
    except ImportError:
        corpus = "fixture"
    settings = make_settings(tmp_path, model_paths=extra)
    if corpus is None:
        settings = make_settings(tmp_path, model_paths=extra, text_corpus=None)
    model = "demo-vae" if extra else "tiny-vae"

    with live_server(settings) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 820}, locale="en-US")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(base + "/")
        page.wait_for_selector(f"#img-model option[value='{model}']", state="attached")

        # 1. Image page: generate 8 images with a fixed seed.
        page.select_option("#img-model", model)
        page.fill("#img-seed", "42")
        page.fill("#img-n", "8")
        # The VAE takes no prompt: the prompt box is hidden and a note says why.
        assert not page.is_visible("#img-prompt") and page.is_visible("#prompt-note")
        page.click("#gen-button")
        page.wait_for_function("document.querySelectorAll('#results .card img').length == 8")
        page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
        assert "done" in page.inner_text("#job-status")
        # Live progress came from the job's event stream, not from polling the job.
        assert any(re.search(r"/api/jobs/[0-9a-f]{32}/events$", u) for u in requests), requests
        assert not any(re.search(r"/api/jobs/[0-9a-f]{32}$", u) for u in requests), requests
        page.screenshot(path=str(shots / "studio-image.png"))

        # 2. Text page: a streamed chat answer, identical to the non-streamed one (same seed).
        page.click("#tab-text")
        page.fill("#txt-seed", "5")
        page.fill("#chat-input", "Hello, how are you?")
        page.click("#chat-send")
        page.wait_for_selector("#chat-log .msg.assistant .usage")
        answer = page.inner_text("#chat-log .msg.assistant span:first-child")
        ref = httpx.post(base + "/v1/chat/completions", json={
            "model": "ngram-char-6", "seed": 5, "max_tokens": 120, "temperature": 0.8,
            "messages": [{"role": "user", "content": "Hello, how are you?"}]}).json()
        assert answer == ref["choices"][0]["message"]["content"] and answer
        # Marked as cut exactly when the reply stopped at max_tokens.
        cut = page.locator("#chat-log .msg.assistant .cut").count()
        assert cut == (ref["choices"][0]["finish_reason"] == "length"), ref["choices"][0]
        page.fill("#txt-seed", "")  # random seed from here on
        page.fill("#chat-input", "What is your name?")
        page.click("#chat-send")
        page.wait_for_function("document.querySelectorAll('#chat-log .usage').length == 2")
        page.screenshot(path=str(shots / "studio-chat.png"))

        # 3. Gallery: the 8 images are there; rate some, open one, check its record.
        page.click("#tab-gallery")
        page.select_option("#f-kind", "image")
        page.click("#filters button[type=submit]")
        page.wait_for_function("document.querySelectorAll('#gallery .card img').length == 8")
        # Locators re-resolve on every action: a late gallery render replaces the cards.
        cards = page.locator("#gallery .card")
        for i, stars in enumerate([5, 4, 2]):
            cards.nth(i).locator(f".stars [data-star='{stars}']").click()
            page.wait_for_function(
                f"document.querySelectorAll('#gallery .card')[{i}].querySelectorAll('.stars .on').length == {stars}")
        item_id = cards.nth(0).get_attribute("data-id")
        item = httpx.get(f"{base}/api/items/{item_id}").json()
        assert item["stars"] == 5.0 and item["n_ratings"] == 1
        cards.nth(0).click()
        page.wait_for_selector("#detail #regen")
        detail = page.inner_text("#detail")
        assert item["model_sha256"] in detail and str(item["seed"]) in detail
        page.screenshot(path=str(shots / "studio-gallery.png"), full_page=True)

        # 4. Regenerate with this seed: the image page runs a 1-image job with that seed.
        page.click("#regen")
        page.wait_for_function("document.querySelectorAll('#results .card img').length == 1")
        assert page.input_value("#img-seed") == str(item["seed"])
        jobs = httpx.get(f"{base}/api/jobs?status=done").json()["jobs"]
        assert jobs[0]["params"]["seed"] == item["seed"] and jobs[0]["params"]["n"] == 1

        # 5. Pairwise comparison.
        page.click("#tab-compare")
        page.wait_for_selector("#pair img")
        page.click("#pick-a")
        page.wait_for_function("document.getElementById('compare-status').textContent.length > 0")
        metrics = httpx.get(base + "/metrics").text
        assert 'aigc_ratings_total{type="pairwise"} 1' in metrics

        # 6. Chinese.
        page.select_option("#lang", "zh")
        assert page.inner_text("#tab-image") == "图像"
        assert page.inner_text("#tab-gallery") == "作品库"
        assert not errors, errors
        browser.close()
    for name in ("studio-image.png", "studio-chat.png", "studio-gallery.png"):
        assert (shots / name).stat().st_size > 5000
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
