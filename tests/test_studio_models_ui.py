"""The studio's Models tab in real headless Chromium: registered versions, Improve from
feedback (its error when there is nothing to learn from, then a candidate), Promote through the
gate, and the served version switching."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from studio_fixtures import live_server, make_settings
from test_loop import _rate_pairs, _tiny

from aigc.registry import Registry

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian chromium at /usr/bin/chromium")


def test_models_tab_improves_and_promotes(tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    monkeypatch.setenv("AIGC_REGISTRY", str(tmp_path / "registry"))
    reg = Registry()
    reg.register("tiny", _tiny(tmp_path / "tiny.safetensors"), alias="production")
    from aigc.loop import promotion
    from aigc.metrics.card import MetricCard

    monkeypatch.setattr(promotion, "measure", lambda path, *, n, seed=0, progress=False:
                        MetricCard(kind="image", subject={}, protocol={"data": "test", "n": n},
                                   values={"fid": 10.0, "conditional_accuracy": 0.9},
                                   baseline={}))  # the gate's numbers; the UI is under test
    settings = make_settings(tmp_path, registry_dir=reg.root, registry_names=("tiny",),
                             models_dir=None)
    shots = ROOT / "docs" / "screenshots" if os.environ.get("AIGC_SCREENSHOTS") == "1" \
        else tmp_path
    with live_server(settings) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900}, locale="en-US")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.click("#tab-models")
        page.wait_for_selector("text=tiny — serving v1")
        assert page.is_disabled("#promote-tiny")  # no candidate yet
        page.fill("#page-models input[type=number]", "2")
        page.click("#improve-tiny")
        page.wait_for_selector("text=no preference pairs", timeout=30000)
        with httpx.Client(base_url=base, timeout=30) as client:
            _rate_pairs(client, n=6)
        page.click("#improve-tiny")
        page.wait_for_selector("text=tiny@v2: diffusion-dpo", timeout=120000)
        page.wait_for_selector("text=v2 (candidate)")
        page.click("#promote-tiny")
        page.wait_for_selector("text=serving v2", timeout=60000)
        page.screenshot(path=str(shots / "studio-models.png"), full_page=True)
        assert reg.resolve("tiny@production").version == 2
        assert not errors, errors
        browser.close()
