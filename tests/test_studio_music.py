"""Music in the studio: the starter music GPT as a job kind (MIDI + WAV + piano roll stored by
content hash, with the full record), its bounds and budget, and its page in headless Chromium.

With ``AIGC_SCREENSHOTS=1`` the browser test writes docs/screenshots/studio-music.png.
"""

from __future__ import annotations

import io
import json
import os
import wave
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from studio_fixtures import live_server, make_settings, wait_job

from aigc.studio.app import create_app

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "src" / "aigc" / "assets" / "starters" / "music-gpt-bach-and-folk.safetensors"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("music-studio")
    settings = make_settings(root, model_paths=(("music-gpt", STARTER),))
    with TestClient(create_app(settings)) as c:
        yield c


def _music_job(client, **kw) -> dict:
    r = client.post("/api/jobs", json={"kind": "music", **kw})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=60)
    assert job["status"] == "done", job
    return job


def test_music_model_is_listed_and_not_skipped(client):
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    music = models["music-gpt"]
    assert music["kind"] == "music" and music["family"] == "music-gpt"
    assert "D major" in music["details"]["keys"] and "6/8" in music["details"]["meters"]
    assert "music-gpt" not in client.get("/api/models").json()["skipped"]
    assert client.get("/health").json()["models"] == len(models)


def test_music_job_stores_wav_midi_piano_roll_and_record(client):
    from aigc.checkpoints import file_sha256
    from aigc.data.music import piece_from_midi

    job = _music_job(client, style="folk", key="D major", meter="6/8", bars=4, n=2, seed=7,
                     temperature=0.9, tempo=120)
    assert job["kind"] == "music" and job["progress"] == 1.0 and len(job["items"]) == 2
    items = [client.get(f"/api/items/{i}").json() for i in job["items"]]
    assert [it["seed"] for it in items] == [7, 8] and items[0]["kind"] == "music"
    it = items[0]
    r = it["record"]
    assert r["model_sha256"] == file_sha256(STARTER) == it["model_sha256"]
    assert (r["style"], r["key"], r["meter"], r["bars"], r["seed"], r["tempo"]) == \
        ("folk", "D major", "6/8", 4, 7, 120.0)
    assert r["temperature"] == 0.9 and r["family"] == "music-gpt" and r["versions"]
    assert set(it["files"]) == {"mid", "wav", "png"} and it["url"] == it["files"]["wav"]

    wav = client.get(it["files"]["wav"])
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(wav.content)) as w:  # small: mono, 16-bit, 22.05 kHz
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        seconds = w.getnframes() / w.getframerate()
    # 4 bars of 6/8 = 12 quarter notes at 120 per minute = 6 s, plus the last release
    assert 6.0 <= seconds <= 6.0 + 4.0 and abs(seconds - r["seconds"]) < 1e-3

    png = client.get(it["files"]["png"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    embedded = json.loads(img.text["aigc"])
    assert embedded["seed"] == 7 and embedded["model_sha256"] == r["model_sha256"]
    assert img.size == (r["piano_roll"]["width"], r["piano_roll"]["height"])

    mid = client.get(it["files"]["mid"])
    assert mid.status_code == 200 and mid.headers["content-type"] == "audio/midi"
    path = Path(client.app.state.studio.store.files_dir) / it["files"]["mid"].split("/")[-1]
    piece = piece_from_midi(path)
    assert (piece.key_name, piece.meter, piece.style) == ("D major", (6, 8), "folk")
    assert len(piece.notes) == r["notes"] > 0 and piece.bars <= 4

    # The gallery filters by kind; the same seed composes the same piece (same WAV file).
    listed = client.get("/api/items", params={"kind": "music"}).json()["items"]
    assert {x["id"] for x in listed} >= set(job["items"]) and all(x["kind"] == "music"
                                                                   for x in listed)
    assert client.get("/api/items", params={"kind": "image", "model": "music-gpt"}).json() == \
        {"items": []}
    again = _music_job(client, style="folk", key="D major", meter="6/8", bars=4, seed=8,
                       temperature=0.9, tempo=120)
    assert client.get(f"/api/items/{again['items'][0]}").json()["url"] == items[1]["url"]
    rated = client.post(f"/api/items/{it['id']}/ratings", json={"stars": 4})
    assert rated.status_code == 201 and rated.json()["stars"] == 4.0
    # Retry runs the same parameters and seeds again: the same two pieces.
    retry = client.post(f"/api/jobs/{job['id']}/retry")
    assert retry.status_code == 202 and retry.json()["kind"] == "music"
    redone = wait_job(client, retry.json()["id"], timeout=60)
    urls = [client.get(f"/api/items/{i}").json()["url"] for i in redone["items"]]
    assert urls == [x["url"] for x in items]
    metrics = client.get("/metrics").text
    assert 'aigc_jobs_completed_total{kind="music"} 3' in metrics


@pytest.mark.parametrize("body,status,param", [
    ({"bars": 0}, 422, "music.bars"),
    ({"bars": 65}, 422, "music.bars"),
    ({"style": "jazz"}, 422, "music.style"),
    ({"temperature": 2.5}, 422, "music.temperature"),
    ({"tempo": 10}, 422, "music.tempo"),
    ({"n": 5}, 422, "music.n"),
    ({"seed": -1}, 422, "music.seed"),
    ({"prompt": "x"}, 422, "music.prompt"),
    ({"key": "H major"}, 400, "key"),
    ({"key": "C dorian"}, 400, "key"),
    ({"meter": "7/4"}, 400, "meter"),
    ({"model": "nope"}, 404, "model"),
])
def test_music_request_bounds(client, body, status, param):
    r = client.post("/api/jobs", json={"kind": "music", **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_music_cost_budget(client):
    # 64 bars of 4/4 at 60 per minute = 256 s of audio > the 120 s one request may cost
    r = client.post("/api/jobs", json={"kind": "music", "bars": 64, "tempo": 60})
    assert r.status_code == 400 and r.json()["error"]["code"] == "over_budget"
    assert "music" in r.json()["error"]["message"] and "retry-after" not in r.headers
    ok = client.post("/api/jobs", json={"kind": "music", "bars": 2, "seed": 1})
    assert ok.status_code == 202 and 0 < ok.json()["cost"] < 1
    assert wait_job(client, ok.json()["id"], timeout=60)["status"] == "done"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium at "
                    "/usr/bin/chromium (apt-get install -y chromium)")
def test_browser_music_page_plays_and_shows_piano_roll(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="needs the playwright Python package")
    shots = ROOT / "docs" / "screenshots" if os.environ.get("AIGC_SCREENSHOTS") == "1" \
        else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    settings = make_settings(tmp_path, model_paths=(("music-gpt", STARTER),))
    with live_server(settings) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1200, "height": 900}, locale="en-US")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/#music")
        page.wait_for_selector("#mus-model option[value='music-gpt']", state="attached")

        # 1. Compose an 8-bar chorale in D major with a fixed seed.
        page.select_option("#mus-style", "chorale")
        page.select_option("#mus-key", "D major")
        page.select_option("#mus-meter", "3/4")
        page.fill("#mus-bars", "8")
        page.fill("#mus-seed", "3")
        page.click("#mus-button")
        page.wait_for_selector("#mus-results .piece audio")
        # The audio element has a playable WAV source: it loads its metadata and its duration
        # is the piece's (8 bars of 3/4 at 90 per minute = 16 s, plus the release).
        page.wait_for_function("document.querySelector('#mus-results audio').readyState >= 1")
        duration = page.evaluate("document.querySelector('#mus-results audio').duration")
        assert 16.0 <= duration <= 16.0 + 4.0
        can_play = page.evaluate("document.querySelector('#mus-results audio').canPlayType('audio/wav')")
        assert can_play in ("maybe", "probably")
        # The piano roll image loaded, beside the player.
        page.wait_for_function("[...document.querySelectorAll('#mus-results .piece img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        assert "done" in page.inner_text("#mus-status")
        # Playing moves the playhead over the piano roll.
        page.evaluate("document.querySelector('#mus-results audio').muted = true")
        page.evaluate("document.querySelector('#mus-results audio').play()")
        page.wait_for_function("document.querySelector('#mus-results audio').currentTime > 0.3")
        page.wait_for_function("parseFloat(document.querySelector('#mus-results .playhead')"
                               ".style.left) > 0.5")
        page.evaluate("document.querySelector('#mus-results audio').pause()")
        page.evaluate("document.querySelector('#mus-results audio').currentTime = 7")
        page.wait_for_function("parseFloat(document.querySelector('#mus-results .playhead')"
                               ".style.left) > 40")
        page.screenshot(path=str(shots / "studio-music.png"))

        # 2. Rate it on the music page; it is in the gallery under "Music" with its player.
        page.click("#mus-results .piece .stars [data-star='4']")
        page.wait_for_function("document.querySelectorAll('#mus-results .stars .on').length == 4")
        page.click("#tab-gallery")
        page.select_option("#f-kind", "music")
        page.click("#filters button[type=submit]")
        page.wait_for_function("document.querySelectorAll('#gallery .card audio').length == 1")
        page.locator("#gallery .card").first.click()
        page.wait_for_selector("#detail audio")
        page.wait_for_selector("#detail #regen")
        detail = page.inner_text("#detail")
        assert "D major" in detail and "3/4" in detail and "null" not in detail
        # A music item shows its own settings, never the image ones (sampler, steps, guidance).
        terms = page.eval_on_selector_all("#detail dt", "ds => ds.map(d => d.textContent)")
        assert {"Style", "Key", "Meter", "Bars", "Tempo (♩/min)"} <= set(terms), terms
        assert not {"Sampler", "Steps", "Guidance"} & set(terms), terms
        shown = dict(zip(terms, page.eval_on_selector_all("#detail dd", "ds => ds.map(d => d.textContent)")))
        assert (shown["Key"], shown["Meter"], shown["Bars"]) == ("D major", "3/4", "8")
        item_id = page.get_attribute("#gallery .card", "data-id")
        item = httpx_get(base, f"/api/items/{item_id}")
        assert item["stars"] == 4.0 and item["model_sha256"] in detail
        page.wait_for_function("[...document.querySelectorAll('#gallery img, #detail img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(shots / "studio-music-gallery.png"))

        # 3. Regenerate with this seed: the music page composes the same piece again.
        page.click("#regen")
        page.wait_for_function("document.querySelectorAll('#mus-results .piece audio').length == 1"
                               " && document.getElementById('mus-status').textContent.includes('done')")
        assert page.input_value("#mus-seed") == "3"
        src = page.get_attribute("#mus-results audio", "src")
        assert src == item["url"]  # the same WAV bytes, so the same content-addressed file

        # 4. Chinese labels.
        page.select_option("#lang", "zh")
        assert page.inner_text("#tab-music") == "音乐"
        assert not errors, errors
        browser.close()
    for name in ("studio-music.png", "studio-music-gallery.png"):
        assert (shots / name).stat().st_size > 5000


def httpx_get(base: str, path: str) -> dict:
    import httpx

    return httpx.get(base + path).json()
