"""The studio page's job controls and feedback UI in real headless Chromium (Debian's
/usr/bin/chromium driven by Playwright): Cancel, ETA and the queue view; default Steps/Guidance
as placeholders; which of class and prompt wins; validation errors in plain words (en and zh);
gallery paging; a reply cut at max tokens; Chinese status lines in a CJK font; flags, implicit
signals (download, regenerate, copy), "My feedback" with delete, and the report page.

With ``AIGC_SCREENSHOTS=1`` the screenshots go to docs/screenshots/ (studio-zh.png,
studio-feedback.png); otherwise to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
import torch
from studio_fixtures import live_server, make_settings, wait_job

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
RATER = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian chromium at /usr/bin/chromium (apt-get install -y "
                              "chromium)"),
]


def _shots(tmp_path: Path) -> Path:
    shots = ROOT / "docs" / "screenshots" if os.environ.get("AIGC_SCREENSHOTS") == "1" \
        else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _tiny_diffusion(path: Path) -> Path:
    """A tiny diffusion model that takes a class or a prompt (conditioning "class+text"), with
    1000 timesteps so that a 1000-step job runs long enough to watch (a few seconds)."""
    from aigc.checkpoints import save_model_file
    from aigc.config import config_to_dict
    from aigc.models.diffusion import Diffusion, DiffusionConfig

    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(image_size=8, channels=(4, 8), attention_levels=(1,),
                                      num_train_timesteps=1000, num_classes=3,
                                      text_conditioning=True))
    save_model_file(path, family="diffusion", model_config=config_to_dict(model.cfg),
                    weights=model.state_dict(),
                    meta={"data": "test", "class_names": ["zero", "one", "two"]})
    return path


class _Browser:
    def __init__(self, pw):
        self.browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])

    def page(self, base: str, locale: str = "en-US"):
        context = self.browser.new_context(viewport={"width": 1200, "height": 820}, locale=locale)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.api_headers = []  # the headers of every /api request the page made
        page.on("request", lambda r: page.api_headers.append((r.url, r.headers))
                if "/api/" in r.url else None)
        page.goto(base + "/")
        page.wait_for_selector("#img-model option", state="attached")
        return page


@pytest.fixture
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="needs the playwright Python package")
    with sync_api.sync_playwright() as pw:
        yield pw


def test_jobs_cancel_eta_queue_defaults_condition_and_errors(tmp_path, playwright):
    from aigc.studio.app import create_app

    path = _tiny_diffusion(tmp_path / "tiny-diffusion.safetensors")
    settings = make_settings(tmp_path, model_paths=(("tiny-diffusion", path),))
    app = create_app(settings)
    with live_server(settings, app=app) as base:
        runner = app.state.studio.runner
        page = _Browser(playwright).page(base)

        # Empty Steps/Guidance show the family's defaults; a VAE has neither.
        page.select_option("#img-model", "tiny-vae")
        assert page.get_attribute("#img-steps", "placeholder") == "—"
        assert page.is_disabled("#img-steps") and page.is_hidden("#cond-note")
        page.select_option("#img-model", "tiny-diffusion")
        assert page.get_attribute("#img-steps", "placeholder") == "default 20"
        assert page.get_attribute("#img-guidance", "placeholder") == "default 3"  # /api/models

        # Class and prompt: the class wins until a prompt is typed, then the prompt does and
        # the class is greyed out.
        assert page.is_visible("#cond-note") and page.is_enabled("#img-class")
        assert page.get_attribute("#cond-note", "data-wins") == "class"
        page.fill("#img-prompt", "a one")
        assert page.get_attribute("#cond-note", "data-wins") == "prompt"
        assert page.is_disabled("#img-class") and "prompt is used" in page.inner_text("#cond-note")
        page.fill("#img-prompt", "")
        assert page.is_enabled("#img-class")

        # A value the API refuses: its field and the reason in plain words, in en and in zh.
        page.fill("#img-seed", "99999999999")
        page.click("#gen-button")
        page.wait_for_function("document.getElementById('job-status').textContent.includes('⚠')")
        status = page.inner_text("#job-status")
        assert re.fullmatch(r"⚠ Seed: must be at most \d+", status), status
        page.select_option("#lang", "zh")
        page.click("#gen-button")
        page.wait_for_function("document.getElementById('job-status').textContent.includes('随机种子')")
        status = page.inner_text("#job-status")
        assert re.fullmatch(r"⚠ 随机种子: 不能大于 \d+", status), status
        assert page.get_attribute("#img-steps", "placeholder") == "默认 20"
        page.select_option("#lang", "en")
        page.fill("#img-seed", "7")

        # A queued job: the Cancel button and the queue view; Cancel stops it.
        runner.stop()
        page.fill("#img-n", "1")
        page.fill("#img-steps", "2")
        page.click("#gen-button")
        page.wait_for_selector("#queue-list li[data-status=queued]")
        assert page.is_visible("#cancel-job") and "queued" in page.inner_text("#job-status")
        job_id = page.get_attribute("#queue-list li", "data-job")
        page.click("#cancel-job")
        page.wait_for_function("document.getElementById('job-status').textContent.includes('cancelled')")
        assert httpx.get(f"{base}/api/jobs/{job_id}").json()["status"] == "cancelled"
        assert page.is_hidden("#cancel-job")
        page.wait_for_selector("#queue", state="hidden")
        runner.start()

        page.click("#gen-button")
        page.wait_for_function("document.getElementById('job-status').textContent.startsWith('done')")

        # A long running job: an ETA from progress over elapsed time, and Cancel from the
        # queue view stops it while it runs.
        page.fill("#img-steps", "1000")
        page.select_option("#img-sampler", "ddim")
        page.click("#gen-button")
        page.wait_for_function(r"/running · job [0-9a-f]{8} · seed 7 · about \d+ (s|min) left/"
                               ".test(document.getElementById('job-status').textContent)")
        page.wait_for_selector("#queue-list li[data-status=running]")
        running = page.get_attribute("#queue-list li[data-status=running]", "data-job")
        page.click("#queue-list li[data-status=running] button.cancel")
        page.wait_for_function("document.getElementById('job-status').textContent.includes('cancelled')")
        job = wait_job(httpx.Client(base_url=base), running)
        assert job["status"] == "cancelled" and not job["items"]
        # The ETA arithmetic: 25% done after 10 s leaves 30 s.
        assert page.evaluate("etaSeconds(0.25, 10)") == 30
        assert page.evaluate("etaWords(etaSeconds(0.25, 10))") == "about 30 s left"
        assert page.evaluate("etaSeconds(0, 10)") is None
        assert not page.errors, page.errors


def test_feedback_ui_paging_cut_reply_and_chinese(tmp_path, playwright):
    shots = _shots(tmp_path)
    settings = make_settings(tmp_path)
    with live_server(settings) as base:
        client = httpx.Client(base_url=base, timeout=30)
        for seed in range(5):  # 70 images: more than one gallery page (60)
            job = client.post("/api/jobs", json={"kind": "image", "n": 14, "seed": 100 * seed})
            assert wait_job(client, job.json()["id"])["status"] == "done"
        browser = _Browser(playwright)
        page = browser.page(base)
        page.on("dialog", lambda d: d.accept())  # "Delete all my feedback?"
        rater = page.evaluate("localStorage.getItem('aigc-rater')")
        assert RATER.match(rater), rater
        mine = {"X-Aigc-Rater": rater}

        # 1. Gallery paging: 60 items, then "Load more" brings the other 10 and hides itself.
        page.click("#tab-gallery")
        page.wait_for_function("document.querySelectorAll('#gallery .card').length == 60")
        assert page.is_visible("#load-more")
        page.click("#load-more")
        page.wait_for_function("document.querySelectorAll('#gallery .card').length == 70")
        assert page.is_hidden("#load-more")
        ids = page.eval_on_selector_all("#gallery .card", "cs => cs.map(c => c.dataset.id)")
        assert len(set(ids)) == 70

        # 2. On an item: stars, a flag ("other" needs a note: said in plain words), download.
        page.locator("#gallery .card").nth(0).locator(".stars [data-star='4']").click()
        page.wait_for_function("document.querySelectorAll('#gallery .card')[0]"
                               ".querySelectorAll('.stars .on').length == 4")
        page.locator("#gallery .card").nth(0).click()
        page.wait_for_selector("#detail .flag-toggle")
        item_id = page.get_attribute("#detail", "data-id")
        assert page.is_hidden("#detail .flag-form")
        page.click("#detail .flag-toggle")
        page.select_option("#detail .flag-reason", "other")
        page.click("#detail .flag-form button[type=submit]")
        page.wait_for_function("document.querySelector('#detail .flag-status').textContent.includes('⚠')")
        assert page.inner_text("#detail .flag-status").startswith("⚠ note: ")
        # The same refusal on the Chinese page: the field and the reason in Chinese.
        page.select_option("#lang", "zh")
        page.wait_for_function("document.querySelector('#detail .flag-toggle').textContent == '标记问题'")
        page.click("#detail .flag-toggle")
        page.select_option("#detail .flag-reason", "other")
        page.click("#detail .flag-form button[type=submit]")
        page.wait_for_function("document.querySelector('#detail .flag-status').textContent.includes('⚠')")
        assert page.inner_text("#detail .flag-status") == "⚠ 说明: 选择“其他”时请写明问题。"
        page.select_option("#lang", "en")
        page.wait_for_function("document.querySelector('#detail .flag-toggle').textContent == 'Flag'")
        page.click("#detail .flag-toggle")
        page.select_option("#detail .flag-reason", "other")
        page.fill("#detail .flag-note", "the digit is upside down")
        page.click("#detail .flag-form button[type=submit]")
        page.wait_for_function("document.querySelector('#detail .flag-status').textContent == 'Flagged, thank you!'")
        with page.expect_download() as download:
            page.click("#detail a.download")
        assert download.value.suggested_filename.endswith(".png")

        # 3. Regenerate sends the "regenerate" signal for the item it started from.
        page.click("#detail #regen")
        page.wait_for_function("document.querySelectorAll('#results .card img').length == 1")

        # 4. Chat: a reply cut at max tokens is marked; Copy sends "copy" for its text item.
        page.click("#tab-text")
        page.fill("#txt-max", "3")
        page.fill("#chat-input", "Hello")
        page.click("#chat-send")
        page.wait_for_selector("#chat-log .msg.assistant .usage")
        assert "cut: max tokens reached" in page.inner_text("#chat-log .msg.assistant .cut")
        page.click("#chat-log .msg.assistant button.copy")
        page.wait_for_function("document.querySelector('#chat-log button.copy').textContent == 'Copied'")
        copied = page.inner_text("#chat-log .msg.assistant span:first-child")
        assert page.evaluate("navigator.clipboard.readText()") == copied

        # The server holds exactly what this browser gave, under its rater id.
        def server_feedback():
            return client.get("/api/feedback", headers=mine).json()["feedback"]

        def kinds(rows):
            return sorted((f["kind"], f["value"]) for f in rows)

        expected = [("flag", "other"), ("signal", "copy"), ("signal", "download"),
                    ("signal", "regenerate"), ("stars", "4")]
        for _ in range(50):
            if kinds(server_feedback()) == expected:
                break
            page.wait_for_timeout(100)
        rows = server_feedback()
        assert kinds(rows) == expected, rows
        by_kind = {f["value"]: f for f in rows}
        assert by_kind["other"]["item_id"] == item_id == by_kind["download"]["item_id"]
        assert by_kind["regenerate"]["item_id"] == item_id
        assert by_kind["other"]["note"] == "the digit is upside down"
        assert all(f["rater"] == f"anon:{rater}" for f in rows)
        text_item = client.get("/api/items?kind=text").json()["items"][0]
        assert by_kind["copy"]["item_id"] == text_item["id"]
        assert text_item["record"]["finish_reason"] == "length"
        # Every /api call of the page carried the rater id, but the job's event stream: a
        # browser's EventSource cannot send headers (and the stream records no feedback).
        lacking = [u for u, h in page.api_headers if h.get("x-aigc-rater") != rater
                   and not re.search(r"/api/jobs/[0-9a-f]{32}/events$", u)]
        assert page.api_headers and not lacking, lacking
        # Another browser (another id) sees none of it.
        assert client.get("/api/feedback", headers={"X-Aigc-Rater": "someone-else-123"}
                          ).json()["feedback"] == []

        # 5. My feedback: listed, one deleted, then all; the report opens as a page.
        page.click("#tab-feedback")
        page.wait_for_function("document.querySelectorAll('#feedback-list li[data-id]').length == 5")
        page.screenshot(path=str(shots / "studio-feedback.png"), full_page=True)
        flag_id = by_kind["other"]["id"]
        page.click(f"#feedback-list li[data-id='{flag_id}'] button.delete")
        page.wait_for_function("document.querySelectorAll('#feedback-list li[data-id]').length == 4")
        assert ("flag", "other") not in kinds(server_feedback())
        with page.expect_popup() as popup:
            page.click("#report-link")
        report = popup.value
        report.wait_for_load_state()
        assert report.url == base + "/api/feedback/report"
        assert report.title() == "aigc feedback" and report.locator("h1").count() >= 1
        report.close()
        page.click("#delete-all-feedback")
        page.wait_for_function("document.getElementById('feedback-status').textContent"
                               " == 'Deleted 4 pieces of feedback.'")
        page.wait_for_selector("#feedback-list li.muted")
        assert server_feedback() == []

        # The cut reply in the gallery: its record says "length", and its detail says "cut".
        page.click("#tab-gallery")
        page.select_option("#f-kind", "text")
        page.click("#filters button[type=submit]")
        page.wait_for_function("document.querySelectorAll('#gallery .card .txt').length == 1")
        page.locator("#gallery .card").first.click()
        page.wait_for_selector("#detail .cut")
        terms = page.eval_on_selector_all("#detail dt", "ds => ds.map(d => d.textContent)")
        assert "Max tokens" in terms and "Sampler" not in terms, terms
        assert page.is_visible("#detail button.copy")

        # 6. Chinese: status lines wholly in Chinese, drawn with a CJK font (Noto Sans CJK).
        page.select_option("#lang", "zh")
        page.click("#tab-image")
        page.fill("#img-seed", "42")
        page.fill("#img-n", "8")
        page.click("#gen-button")
        page.wait_for_function("document.getElementById('job-status').textContent.startsWith('完成')")
        status = page.inner_text("#job-status")
        assert re.fullmatch(r"完成 · 任务 [0-9a-f]{8} · 种子 42", status), status
        info = page.inner_text("#img-model-info")
        assert "训练步数" in info and "批处理" in info and "step" not in info, info
        page.wait_for_function("document.querySelectorAll('#results .card').length == 8")
        assert page.eval_on_selector_all("#results .meta > span:first-child",
                                         "ss => ss.map(s => s.textContent)")[:2] == ["种子 42", "种子 43"]
        page.wait_for_function("[...document.querySelectorAll('#results img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        cdp = page.context.new_cdp_session(page)
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "#tab-image"})["nodeId"]
        fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        assert page.inner_text("#tab-image") == "图像"
        assert any("CJK" in f["familyName"] for f in fonts), \
            f"Chinese drawn without a CJK font ({fonts}): apt-get install -y fonts-noto-cjk"
        page.screenshot(path=str(shots / "studio-zh.png"))
        assert not page.errors, page.errors
    for name in ("studio-feedback.png", "studio-zh.png"):
        assert (shots / name).stat().st_size > 5000
