"""The assistant in the studio: /api/assistant (ask, conversations, handoffs, speak,
transcribe), /v1/chat/completions with model "assistant", and /v1/embeddings.

The knowledge base is three small Markdown files indexed in the test (real MiniLM, faiss and
BM25). The language model is replaced by a deterministic generator that cites passage [1]:
these tests check the route plumbing, not SmolLM2's answers (docs/assistant.md measures those).
"""

from __future__ import annotations

import io
import os
import shutil
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from studio_fixtures import make_settings

pytest.importorskip("faiss", reason="the assistant needs faiss-cpu (aigc[apps])")

DOCS = {
    "install.md": "# Installing packages\n\nTo install a package, run apt-get install followed "
                  "by the package name as root. The package manager fetches it from the "
                  "Debian archive and resolves its dependencies.\n",
    "release.md": "# Release names\n\nEvery Debian release has a code name taken from the "
                  "characters of the Toy Story films, such as bookworm or trixie.\n",
    "support.md": "# Getting help\n\nQuestions about Debian can be asked on the debian-user "
                  "mailing list, where volunteers answer them.\n",
}
IN_SCOPE = "How do I install a package with apt-get?"
OUT_OF_SCOPE = "What is the best recipe for chocolate cake?"


def generator(messages: list[dict[str, str]]) -> str:
    """A stand-in for SmolLM2: always answers from passage [1], quoting its first words."""
    passages = messages[-1]["content"].split("[1]", 1)[1]
    return "According to the documents: " + " ".join(passages.split()[:12]) + " [1]"


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from aigc.apps.assistant.index import build_index

    root = tmp_path_factory.mktemp("kb")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    build_index(root / "docs", root / "index", progress=False)
    return root


def _app(kb, tmp, **settings):
    from aigc.apps.assistant.answer import Assistant
    from aigc.studio.app import create_app

    # each app gets a copy of the index: approvals write into it
    index = tmp / "index"
    shutil.copytree(kb / "index", index)
    s = make_settings(tmp, assistant_index=index, **settings)
    return create_app(s, assistant=lambda st: Assistant(st.assistant_index, generator=generator))


@pytest.fixture(scope="module")
def client(kb, tmp_path_factory):
    with TestClient(_app(kb, tmp_path_factory.mktemp("studio"))) as c:
        yield c


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code:
        assert err["code"] == code, err
    return err


def test_ask_answers_with_citations_and_keeps_the_conversation(client):
    r = client.post("/api/assistant/ask", json={"question": IN_SCOPE})
    assert r.status_code == 200, r.text
    a = r.json()
    assert not a["handed_off"] and a["handoff_id"] is None
    assert a["citations"][0]["source"] == "install.md"
    assert a["citations"][0]["section"] == "Installing packages"
    assert "[1]" in a["answer"] and a["lang"] == "en"
    cid = a["conversation_id"]
    r = client.post("/api/assistant/ask", json={"question": "Who answers on the mailing list?",
                                                "conversation_id": cid})
    assert r.status_code == 200 and r.json()["conversation_id"] == cid
    conv = client.get(f"/api/assistant/conversations/{cid}").json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"] * 2
    assert conv["messages"][0]["content"] == IN_SCOPE
    assert conv["messages"][1]["citations"][0]["source"] == "install.md"


def test_out_of_scope_is_handed_off_answered_and_approved(client):
    a = client.post("/api/assistant/ask", json={"question": OUT_OF_SCOPE}).json()
    assert a["handed_off"] and a["citations"] == [] and a["handoff_id"] is not None
    hid, cid = a["handoff_id"], a["conversation_id"]
    queue = client.get("/api/assistant/handoffs", params={"status": "open"}).json()["data"]
    assert [h["id"] for h in queue if h["question"] == OUT_OF_SCOPE] == [hid]
    _error(client.post(f"/api/assistant/handoffs/{hid}/approve"), 409, "handoff_state")
    answer = "Chocolate cake: melt the chocolate, fold it into the batter, bake 30 minutes."
    h = client.post(f"/api/assistant/handoffs/{hid}/answer", json={"text": answer}).json()
    assert h["status"] == "answered" and h["answered_by"] == "anon:unknown"
    last = client.get(f"/api/assistant/conversations/{cid}").json()["messages"][-1]
    assert last["content"] == answer and last["author"] == "anon:unknown"
    h = client.post(f"/api/assistant/handoffs/{hid}/approve").json()
    assert h["status"] == "approved" and h["document"] == f"approved/handoff-{hid}.md"
    # the approved answer is in the knowledge base now, and cited
    again = client.post("/api/assistant/ask", json={"question": OUT_OF_SCOPE}).json()
    assert not again["handed_off"], again
    assert again["citations"][0]["source"] == f"approved/handoff-{hid}.md"


def test_bad_requests_get_the_error_shape(client):
    _error(client.post("/api/assistant/ask", json={"question": "x" * 2001}), 422,
           "validation_error")
    _error(client.post("/api/assistant/ask", json={"question": "hi", "extra": 1}), 422)
    _error(client.post("/api/assistant/ask",
                       json={"question": "hi", "conversation_id": "0" * 32}), 404,
           "conversation_not_found")
    _error(client.get("/api/assistant/conversations/nope"), 404, "conversation_not_found")
    _error(client.post("/api/assistant/handoffs/999999/answer", json={"text": "x"}), 404,
           "handoff_not_found")
    _error(client.get("/api/assistant/handoffs", params={"status": "lost"}), 422)


def test_chat_completions_with_model_assistant_carry_sources(client):
    r = client.post("/v1/chat/completions", json={
        "model": "assistant", "messages": [{"role": "user", "content": IN_SCOPE}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "assistant"
    assert "[1]" in body["choices"][0]["message"]["content"]
    assert body["sources"][0]["source"] == "install.md" and body["handed_off"] is False
    ids = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert {"assistant", "all-MiniLM-L6-v2", "ngram-char-6"} <= ids
    football = "Which team won the football world cup?"
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "assistant", "stream": True,
            "messages": [{"role": "user", "content": football}]}) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    import json

    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] == "stop" and last["handed_off"] is True
    _error(client.post("/v1/chat/completions", json={
        "model": "assistant", "messages": [{"role": "assistant", "content": "hi"}]}), 400)


def test_embeddings_match_embed_sentences_and_are_unit_length(client):
    from aigc.models.pretrained import embed_sentences, minilm_token_counts

    texts = ["How do I install a package?", "apt-get install fetches it"]
    r = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert got.shape == (2, 384) and [d["index"] for d in body["data"]] == [0, 1]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, embed_sentences(texts).numpy(), atol=1e-6)
    assert body["usage"]["prompt_tokens"] == sum(minilm_token_counts(texts)) > 4
    one = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": texts[0],
                                              "encoding_format": "base64"}).json()
    import base64

    vec = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(vec, got[0], atol=1e-6)


def test_embeddings_bounds_answer_400(client):
    url, m = "/v1/embeddings", "all-MiniLM-L6-v2"
    err = _error(client.post(url, json={"model": m, "input": "word " * 200}), 400,
                 "context_length_exceeded")
    assert "input[0] is 202 tokens" in err["message"] and "at most 128" in err["message"]
    _error(client.post(url, json={"model": m, "input": ["ok"] * 257}), 400)
    _error(client.post(url, json={"model": m, "input": "x" * 4001}), 400)
    _error(client.post(url, json={"model": m, "input": ""}), 400)
    _error(client.post(url, json={"model": m, "input": [[1, 2, 3]]}), 400)
    _error(client.post(url, json={"model": m, "input": "a", "dimensions": 128}), 400)
    _error(client.post(url, json={"model": "text-embedding-3-small", "input": "a"}), 404,
           "model_not_found")


def _wav(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())
    return buf.getvalue()


@pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None,
                    reason="needs the Debian packages flite and espeak-ng")
def test_speak_then_transcribe(client):
    import jiwer

    text = "You can install packages from the archive with the package manager."
    r = client.post("/api/assistant/speak", json={"text": text, "voice": "flite:slt"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 16000
    t = client.post("/api/assistant/transcribe", content=r.content,
                    headers={"Content-Type": "audio/wav"})
    assert t.status_code == 200, t.text
    assert jiwer.wer(text.lower().rstrip("."), t.json()["text"]) <= 0.25
    zh = client.post("/api/assistant/speak", json={"text": "请问怎么安装软件包？"})
    assert zh.status_code == 200 and zh.headers["x-aigc-voice"] == "espeak-ng:cmn"
    en = client.post("/api/assistant/speak", json={"text": "How are you?"})
    assert en.headers["x-aigc-voice"] == "flite:slt"  # the more intelligible English voice
    info = client.get("/api/assistant").json()
    assert info["enabled"] and info["chunks"] >= 3 and info["asr_languages"] == ["en"]
    assert "not measured" in info["note"]
    assert "flite:slt" in {v["id"] for v in info["voices"]}


def test_bad_audio_and_voices_are_400(client):
    url = "/api/assistant/transcribe"
    wav = {"Content-Type": "audio/wav"}
    _error(client.post(url, content=b"OggS" + b"\0" * 64, headers=wav), 400, "bad_audio")
    err = _error(client.post(url, content=_wav(np.zeros(4000), 4000), headers=wav), 400,
                 "bad_audio")
    assert "sample rate 4000 Hz" in err["message"]
    _error(client.post(url, content=b"", headers=wav), 400, "bad_audio")
    _error(client.post(url, content=_wav(np.zeros(16000), 16000),
                       headers={"Content-Type": "audio/webm"}), 415, "bad_content_type")
    err = _error(client.post(url + "?language=zh", content=_wav(np.zeros(16000), 16000),
                             headers=wav), 400, "unsupported_language")
    assert "Chinese" in err["message"]
    too_big = client.post(url, content=b"RIFF" + b"\0" * (1 << 20), headers=wav)
    _error(too_big, 413)
    _error(client.post("/api/assistant/speak", json={"text": "hi", "voice": "flite:nobody"}),
           400)
    _error(client.post("/api/assistant/speak", json={"text": "x" * 2001}), 422)


def test_keys_are_enforced(kb, tmp_path):
    from aigc.studio.auth import hash_key, new_api_key
    from aigc.studio.store import Store

    key = new_api_key()
    Store(tmp_path / "data").add_api_key("agent", hash_key(key))
    with TestClient(_app(kb, tmp_path)) as c:
        for method, url, body in [("post", "/api/assistant/ask", {"question": IN_SCOPE}),
                                  ("get", "/api/assistant/handoffs", None),
                                  ("post", "/v1/embeddings", {"model": "all-MiniLM-L6-v2",
                                                              "input": "a"}),
                                  ("post", "/api/assistant/speak", {"text": "hello"})]:
            _error(getattr(c, method)(url, **({"json": body} if body else {})), 401,
                   "missing_api_key")
        ok = c.post("/api/assistant/ask", json={"question": OUT_OF_SCOPE},
                    headers={"Authorization": f"Bearer {key}"}).json()
        h = c.post(f"/api/assistant/handoffs/{ok['handoff_id']}/answer", json={"text": "No."},
                   headers={"Authorization": f"Bearer {key}"}).json()
        assert h["answered_by"] == "key:agent"


def test_approving_into_the_knowledge_base_needs_an_admin_key(kb, tmp_path):
    """An ordinary key may ask and answer a handoff (the answer goes back to the asker only);
    putting it into the knowledge base everyone is served from needs a key made with --admin."""
    from aigc.studio.auth import hash_key, new_api_key
    from aigc.studio.store import Store

    agent, admin = new_api_key(), new_api_key()
    store = Store(tmp_path / "data")
    store.add_api_key("agent", hash_key(agent))
    store.add_api_key("boss", hash_key(admin), admin=True)
    store.close()
    as_agent = {"Authorization": f"Bearer {agent}"}
    with TestClient(_app(kb, tmp_path)) as c:
        asked = c.post("/api/assistant/ask", json={"question": OUT_OF_SCOPE},
                       headers=as_agent).json()
        url = f"/api/assistant/handoffs/{asked['handoff_id']}"
        assert c.post(url + "/answer", json={"text": "Ask a baker."},
                      headers=as_agent).status_code == 200
        _error(c.post(url + "/approve", headers=as_agent), 403, "admin_key_required")
        _error(c.post(url + "/approve"), 401, "missing_api_key")
        r = c.post(url + "/approve", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200 and r.json()["status"] == "approved", r.text
        # the model routes that change what is served take the same rule
        for action in ("rollback", "promote", "improve"):
            _error(c.post(f"/api/models/nothing/{action}", json={}, headers=as_agent), 403,
                   "admin_key_required")
            assert c.post(f"/api/models/nothing/{action}", json={},
                          headers={"Authorization": f"Bearer {admin}"}).status_code != 403


def test_without_an_index_the_routes_say_how_to_serve_it(tmp_path):
    from aigc.studio.app import create_app

    with TestClient(create_app(make_settings(tmp_path))) as c:
        err = _error(c.post("/api/assistant/ask", json={"question": "hi"}), 404,
                     "assistant_not_served")
        assert "--assistant-index" in err["message"]
        _error(c.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "a"}), 404,
               "model_not_found")
        # model "assistant" without an assistant is an unknown text model, as before
        _error(c.post("/v1/chat/completions", json={
            "model": "assistant", "messages": [{"role": "user", "content": "hi"}]}), 404,
            "model_not_found")


@pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("flite"),
                    reason="needs Debian chromium and flite")
def test_browser_assistant_page(kb, tmp_path):
    """The Assistant tab in headless Chromium: ask, open a citation, see a handoff answered by
    a person, and the browser's WAV conversion (decode, mono, 16 kHz) feeding recognition."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="needs the playwright Python package")
    from studio_fixtures import live_server

    with live_server(None, app=_app(kb, tmp_path)) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(locale="en-US")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/#assistant")
        page.wait_for_function("document.querySelector('#asst-info').textContent"
                               ".includes('passages')")
        assert not page.is_hidden("#page-assistant")
        page.fill("#asst-input", IN_SCOPE)
        page.click("#asst-send")
        page.wait_for_selector(".msg.assistant a.cite")
        page.click(".msg.assistant a.cite")
        source = page.inner_text("#asst-source")
        assert "install.md" in source and "Installing packages" in source
        page.fill("#asst-input", OUT_OF_SCOPE)
        page.click("#asst-send")
        page.wait_for_selector(".msg .handoff")
        assert "Handed off to a person" in page.inner_text(".msg .handoff")
        item = page.wait_for_selector(".handoff-item")
        item.query_selector("textarea").fill("Ask a baker, please.")
        item.query_selector("button.primary").click()
        page.wait_for_selector(".msg.person", timeout=15000)  # the page polls every 4 s
        assert "Ask a baker" in page.inner_text(".msg.person")
        if os.environ.get("AIGC_SCREENSHOTS") == "1":  # the picture in docs/assistant-voice.md
            page.screenshot(path=str(Path(__file__).resolve().parents[1] / "docs" / "screenshots"
                                     / "studio-assistant.png"), full_page=True)
        got = page.evaluate("""async () => {
            const r = await fetch('/api/assistant/speak', {method: 'POST',
              headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({text: 'You can install packages from the archive.',
                                    voice: 'espeak-ng:en-us'})});
            const wav = await window.aigcAssistant.toWav16k(await r.blob());
            const head = new DataView(await wav.arrayBuffer());
            const t = await fetch('/api/assistant/transcribe', {method: 'POST',
              headers: {'Content-Type': 'audio/wav'}, body: wav});
            return {rate: head.getUint32(24, true), channels: head.getUint16(22, true),
                    status: t.status, body: await t.json()};
        }""")
        assert (got["rate"], got["channels"], got["status"]) == (16000, 1, 200), got
        assert got["body"]["sample_rate"] == 16000 and got["body"]["seconds"] > 1.0
        page.select_option("#lang", "zh")
        assert page.inner_text("#tab-assistant") == "客服助手"
        browser.close()
        assert errors == []


def test_cli_refuses_a_folder_that_is_not_an_index(tmp_path, capsys):
    from aigc.cli import main

    (tmp_path / "docs").mkdir()
    for folder, why in [(tmp_path / "missing", "no such folder"),
                        (tmp_path / "docs", "not an assistant index (no manifest.json)")]:
        code = main(["studio", "--data", str(tmp_path / "data"), "--assistant-index",
                     str(folder)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"--assistant-index {folder}: {why}" in err


def test_official_openai_client(kb, tmp_path):
    """The openai package against a live studio: embeddings (it asks for base64 by default)
    and a chat completion with model "assistant" whose extra fields carry the sources."""
    openai = pytest.importorskip("openai", reason="needs the openai package (dev extra)")
    from studio_fixtures import live_server

    from aigc.models.pretrained import embed_sentences

    with live_server(None, app=_app(kb, tmp_path)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        r = client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello", "apt-get"])
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        np.testing.assert_allclose(got, embed_sentences(["hello", "apt-get"]).numpy(),
                                   atol=1e-6)
        assert r.usage.prompt_tokens == r.usage.total_tokens > 0
        c = client.chat.completions.create(model="assistant",
                                           messages=[{"role": "user", "content": IN_SCOPE}])
        assert c.choices[0].message.content.endswith("[1]")
        assert c.model_extra["sources"][0]["section"] == "Installing packages"
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="all-MiniLM-L6-v2", input="word " * 200)


def test_default_loader_with_the_extractive_style(kb, tmp_path):
    """No injected generator: the lifespan builds the Assistant from the settings; the
    extractive style loads no language model and answers with the best passage."""
    from aigc.studio.app import create_app

    index = tmp_path / "index"
    shutil.copytree(kb / "index", index)
    app = create_app(make_settings(tmp_path, assistant_index=index,
                                   assistant_style="extractive"))
    with TestClient(app) as c:
        a = c.post("/api/assistant/ask", json={"question": IN_SCOPE}).json()
        assert a["answer"].startswith("To install a package, run apt-get install")
        assert a["answer"].endswith("[1]") and a["citations"][0]["source"] == "install.md"
        assert a["timings"]["generation_s"] == 0.0


def test_a_burst_of_questions_is_bounded_with_429(kb, tmp_path):
    """Each question waits for the one model in a thread of the studio's pool: past
    ``max_waiting`` questions in progress or waiting, more are refused (429), not queued."""
    import threading

    from aigc.apps.assistant.answer import Assistant
    from aigc.studio.app import create_app

    release, entered = threading.Event(), threading.Event()

    def slow(messages):
        entered.set()
        release.wait(10)
        return generator(messages)

    index = tmp_path / "index"
    shutil.copytree(kb / "index", index)
    app = create_app(make_settings(tmp_path, assistant_index=index),
                     assistant=lambda st: Assistant(st.assistant_index, generator=slow))
    with TestClient(app) as c:
        service = app.state.studio.assistant
        service.max_waiting = 2
        results = []

        def ask():
            results.append(c.post("/api/assistant/ask", json={"question": IN_SCOPE}).status_code)

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        assert entered.wait(30)
        time.sleep(1.0)  # the second question reaches the lock and waits there
        r = c.post("/api/assistant/ask", json={"question": IN_SCOPE})
        _error(r, 429, "assistant_busy")
        assert r.headers["Retry-After"] == "5"
        release.set()
        for t in threads:
            t.join(30)
        assert results == [200, 200]
        assert c.post("/api/assistant/ask", json={"question": IN_SCOPE}).status_code == 200


def test_a_conversation_is_bounded(client, monkeypatch):
    """Each question reads its whole conversation back (and GET returns it whole): a full
    conversation is refused with 409, a new one goes on."""
    import aigc.studio.routes.assistant as routes

    monkeypatch.setattr(routes, "MAX_CONVERSATION_MESSAGES", 4, raising=False)
    cid = client.post("/api/assistant/ask", json={"question": IN_SCOPE}).json()["conversation_id"]
    assert client.post("/api/assistant/ask", json={"question": IN_SCOPE,
                                                   "conversation_id": cid}).status_code == 200
    err = _error(client.post("/api/assistant/ask", json={"question": IN_SCOPE,
                                                         "conversation_id": cid}),
                 409, "conversation_full")
    assert err["param"] == "conversation_id"
    assert len(client.get(f"/api/assistant/conversations/{cid}").json()["messages"]) == 4
    assert client.post("/api/assistant/ask", json={"question": IN_SCOPE}).status_code == 200


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the Debian package espeak-ng")
def test_speech_past_its_slots_is_refused_with_429(client, monkeypatch):
    """Each speech request holds a thread and a CPU for seconds: past the slots, 429."""
    import threading

    import aigc.studio.routes.assistant as routes

    slots = threading.BoundedSemaphore(1)
    monkeypatch.setattr(routes, "_voice_slots", slots, raising=False)
    assert slots.acquire(blocking=False)  # another request is speaking
    try:
        r = client.post("/api/assistant/speak", json={"text": "hello", "voice": "espeak-ng:en-us"})
        _error(r, 429, "voice_busy")
        _error(client.post("/api/assistant/transcribe", content=b"RIFF",
                           headers={"Content-Type": "audio/wav"}), 429, "voice_busy")
    finally:
        slots.release()
    r = client.post("/api/assistant/speak", json={"text": "hello", "voice": "espeak-ng:en-us"})
    assert r.status_code == 200 and r.content[:4] == b"RIFF"


def test_embeddings_past_their_slots_are_refused_with_429(client, monkeypatch):
    import threading

    import aigc.studio.routes.assistant as routes

    slots = threading.BoundedSemaphore(1)
    monkeypatch.setattr(routes, "_embedding_slots", slots, raising=False)
    body = {"model": "all-MiniLM-L6-v2", "input": "hello"}
    assert slots.acquire(blocking=False)  # another request is embedding
    try:
        _error(client.post("/v1/embeddings", json=body), 429, "embeddings_busy")
    finally:
        slots.release()
    assert client.post("/v1/embeddings", json=body).status_code == 200


def test_a_blank_handoff_answer_is_a_400_not_a_state_conflict(client):
    # not OUT_OF_SCOPE: another test puts its answer into this module's knowledge base
    q = "Which moon of Jupiter has the thickest ice shell?"
    hid = client.post("/api/assistant/ask", json={"question": q}).json()["handoff_id"]
    assert hid is not None
    err = _error(client.post(f"/api/assistant/handoffs/{hid}/answer", json={"text": " \n\t "}),
                 400, "invalid_value")
    assert err["param"] == "text"
    [h] = [h for h in client.get("/api/assistant/handoffs").json()["data"] if h["id"] == hid]
    assert h["status"] == "open"


def test_a_failed_reindex_is_a_500_and_the_approval_can_be_retried(client, monkeypatch):
    import aigc.apps.assistant.index as index

    q = "How many hearts does an octopus have?"  # (see the test above)
    hid = client.post("/api/assistant/ask", json={"question": q}).json()["handoff_id"]
    assert hid is not None
    client.post(f"/api/assistant/handoffs/{hid}/answer", json={"text": "Three hearts."})
    real = index.build_index

    def broken(*args, **kwargs):
        raise index.AigcError("the documents folder is gone")

    monkeypatch.setattr(index, "build_index", broken)
    _error(client.post(f"/api/assistant/handoffs/{hid}/approve"), 500, "reindex_failed")
    monkeypatch.setattr(index, "build_index", real)
    assert client.post(f"/api/assistant/handoffs/{hid}/approve").json()["status"] == "approved"


def test_the_server_paths_are_not_shown_to_api_clients(client):
    index = client.app.state.studio.assistant.assistant.index_dir
    info = client.get("/api/assistant").json()
    assert info["index"] == index.name
    models = client.get("/v1/models").text
    assert str(index.parent) not in models and str(index.parent) not in str(info)


def test_a_v1_asker_reads_the_persons_answer_and_repeats_are_one_handoff(kb, tmp_path):
    """/v1 has no conversation: the reply's handoff_id is how its asker reads the answer.
    The same question again while open is the same handoff; past the per-client limit no
    handoff is opened and the reply says why; a missing handoff's 404 names no server file."""
    from aigc.apps.assistant.handoff import HandoffQueue

    question = "Which team won the football world cup in 1954?"
    with TestClient(_app(kb, tmp_path)) as c:
        def ask(q):
            r = c.post("/v1/chat/completions", json={
                "model": "assistant", "messages": [{"role": "user", "content": q}]})
            assert r.status_code == 200, r.text
            return r.json()

        first, again = ask(question), ask(question.upper())
        assert first["handed_off"] and again["handoff_id"] == first["handoff_id"]
        url = f"/api/assistant/handoffs/{first['handoff_id']}"
        h = c.get(url).json()
        assert h["status"] == "open" and h["asked"] == 2 and h["answer"] is None
        assert "client" not in h
        c.post(f"{url}/answer", json={"text": "West Germany."})
        h = c.get(url).json()
        assert h["status"] == "answered" and h["answer"] == "West Germany."
        err = _error(c.get("/api/assistant/handoffs/999999"), 404, "handoff_not_found")
        assert "sqlite" not in err["message"] and str(tmp_path) not in err["message"]

        queue: HandoffQueue = c.app.state.studio.assistant.assistant.queue
        queue.max_open_per_client = 1
        assert ask("Who painted the Mona Lisa?")["handoff_id"] is not None
        busy = ask("What is the capital of Peru?")
        assert busy["handed_off"] and busy["handoff_id"] is None
        assert "waiting for a person" in busy["choices"][0]["message"]["content"]
        assert not [h for h in queue.list() if h.question == "What is the capital of Peru?"]
