"""The studio's Monitor tab in real headless Chromium: the entity's index is drawn as SVG (no
library, no request leaves the studio), the alert is marked on the plot, and opening the alert
shows the texts behind it."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from monitor_fixtures import worded_stream
from studio_fixtures import live_server, make_settings

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian chromium at /usr/bin/chromium")


def test_monitor_tab_plots_the_index_and_shows_the_texts_behind_an_alert(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    settings = make_settings(tmp_path, models_dir=None, ngram=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "monitor.yaml").write_text("scorer: vader\n", encoding="utf-8")
    events = worded_stream(900, seed=3, flip_at=600)
    with live_server(settings) as base, sync_api.sync_playwright() as pw:
        r = httpx.post(base + "/api/monitor/events", json={"events": events}, timeout=120)
        assert r.status_code == 200 and r.json()["alerts"], r.text
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(base + "/")
        page.click("#tab-monitor")
        page.wait_for_selector("#page-monitor svg polyline")
        assert "events 900" in page.locator("#monitor-status").inner_text()
        assert page.locator("#monitor-entity option").count() == 2
        # the index line has one vertex per $ACME mention; the alert is a red tick
        points = page.locator("#page-monitor svg polyline").last.get_attribute("points")
        assert len(points.split()) == 600
        assert page.locator("#page-monitor svg line[stroke='#dc2626']").count() == 1
        page.locator("#page-monitor details summary").first.click()
        texts = page.locator("#page-monitor details li").all_inner_texts()
        assert len(texts) == 10 and all("$ACME" in t for t in texts)
        if os.environ.get("AIGC_SCREENSHOTS") == "1":  # the picture in docs/monitor.md
            page.screenshot(path=str(Path(__file__).resolve().parents[1] / "docs" / "screenshots"
                                     / "studio-monitor.png"), full_page=True)
        assert errors == []
        assert all(u.startswith(base) for u in requests), "a request left the studio"
        browser.close()
