"""The "For you" panel of the gallery in real headless Chromium (as tests/test_studio_browser.py):
a person's recommendations appear, without what they rated, and "Try" fills the text form."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from studio_fixtures import live_server, make_settings
from test_recommend_api import TEXTS, _store_texts

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian chromium at /usr/bin/chromium")
RATER = "browser-person-1"


def test_for_you_panel_shows_recommendations_and_a_setting_to_try(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="needs the playwright Python package")
    settings = make_settings(tmp_path)
    texts = _store_texts(settings.data_dir)
    with live_server(settings) as base, sync_api.sync_playwright() as pw:
        with httpx.Client(base_url=base, headers={"X-Aigc-Rater": RATER}) as client:
            for t in texts["cats"][:2]:
                assert client.post(f"/api/items/{t}/ratings", json={"stars": 5}).status_code == 201
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu",
                                           "--no-first-run"])
        page = browser.new_page(locale="en-US")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.add_init_script(f"localStorage.setItem('aigc-rater', '{RATER}')")
        page.goto(base + "/#gallery")
        page.wait_for_selector("#for-you .card")
        assert "For you" in page.inner_text("#for-you h3")
        # this person has rated a few items: the page must not claim they rated nothing
        assert "not rated anything" not in page.inner_text("#for-you")
        assert "seed null" not in page.inner_text("#page-gallery")
        if os.environ.get("AIGC_SCREENSHOTS") == "1":  # the picture in docs/recommend.md
            page.screenshot(path=str(Path(__file__).resolve().parents[1] / "docs" / "screenshots"
                                     / "studio-for-you.png"))
        shown = page.eval_on_selector_all("#for-you .card", "cs => cs.map(c => c.dataset.id)")
        assert shown and not set(shown) & set(texts["cats"][:2])  # nothing rated comes back
        first = page.inner_text("#for-you .card .txt")
        assert first in TEXTS["cats"][2:]  # the unrated cat texts come first (content)
        page.click("#for-you button.try")
        assert page.is_visible("#page-text") and page.input_value("#chat-input") == "cats"
        assert not errors, errors
        browser.close()
