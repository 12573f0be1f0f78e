"""Studio hardening (issue 16): jobs that cannot be stored, bounded attempts, NUL characters,
the cost budget and Retry-After, security headers and keys, strict bodies, literal search."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from studio_fixtures import api_error, make_settings, wait_job

from aigc.studio.app import create_app

_error = api_error


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


def _refuse_items_when(store, condition: str) -> None:
    """A database that refuses some values on insert (as PostgreSQL refuses a NUL character):
    an SQLite trigger aborts the INSERT of an item when ``condition`` holds."""
    with store.engine.begin() as conn:
        conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON items WHEN {condition} "
                          "BEGIN SELECT RAISE(ABORT, 'value refused'); END"))


# ------------------------------------------------------------------ jobs that cannot finish


def test_text_job_whose_result_cannot_be_stored_fails_cleanly(client):
    studio = client.app.state.studio
    _refuse_items_when(studio.store, "instr(NEW.prompt, 'poison') > 0")
    files_before = set(studio.store.files_dir.iterdir())
    r = client.post("/api/jobs", json={"kind": "text", "prompt": "User: poison", "max_tokens": 8,
                                       "seed": 1})
    job = wait_job(client, r.json()["id"], timeout=15)
    assert job["status"] == "failed", job
    assert "could not be stored" in job["error"]
    for leak in ("INSERT", "SQL", "items", "value refused"):  # no SQL, no driver text
        assert leak not in job["error"], job["error"]
    assert studio.store.outstanding() == (0, 0.0)  # its budget is free again
    assert set(studio.store.files_dir.iterdir()) == files_before  # no orphan file
    # The worker keeps serving.
    ok = wait_job(client, client.post("/api/jobs", json={
        "kind": "text", "prompt": "User: hello", "max_tokens": 8, "seed": 1}).json()["id"])
    assert ok["status"] == "done"


def test_image_store_failure_fails_the_job_without_sql(client):
    studio = client.app.state.studio
    _refuse_items_when(studio.store, "1")  # every item insert is refused
    job = wait_job(client, client.post("/api/jobs", json={"kind": "image", "n": 2,
                                                          "seed": 3}).json()["id"])
    assert job["status"] == "failed" and "could not be stored" in job["error"]
    assert "SQL" not in job["error"] and "INSERT" not in job["error"]
    assert list(studio.store.files_dir.glob("*.png")) == []


def test_recover_gives_up_after_max_attempts(tmp_path):
    from aigc.studio.store import MAX_ATTEMPTS, Store

    store = Store(tmp_path / "data")
    job = store.add_job("text", "m", {"prompt": "x"}, 0.5)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert store.claim(job["id"])  # a worker starts it ... and the server dies
        requeued = store.recover()
        status = store.get_job(job["id"])["status"]
        if attempt < MAX_ATTEMPTS:
            assert requeued == 1 and status == "queued"
    got = store.get_job(job["id"])
    assert requeued == 0 and got["status"] == "failed" and got["attempts"] == MAX_ATTEMPTS
    assert f"started {MAX_ATTEMPTS} times" in got["error"]
    assert store.outstanding() == (0, 0.0)


def test_failed_commit_and_cancelled_job_leave_no_orphan_file(tmp_path):
    from aigc.studio.store import ItemOut, Store

    store = Store(tmp_path / "data")
    store.put_file(b"kept", "txt")  # an older file with no item must not be touched
    job = store.add_job("text", "m", {}, 0.0)
    store.claim(job["id"])
    bad = ItemOut(b"new bytes", "txt", {"not json": {1, 2}}, prompt="p", text="new bytes")
    with pytest.raises(Exception):  # noqa: B017 - whatever the JSON encoder raises
        store.finish_jobs([(job, [bad], {"text": "new bytes"})])
    assert sorted(p.read_bytes() for p in store.files_dir.iterdir()) == [b"kept"]
    assert store.get_job(job["id"])["status"] == "running"
    # A job cancelled before its commit writes nothing either; a music piece's side files
    # (named in its record) go too.
    store.cancel(job["id"])
    side = store.put_file(b"midi bytes", "mid")
    out = ItemOut(b"wav bytes", "wav", {"files": {"mid": side}})
    assert store.finish_jobs([(job, [out], None)]) == []
    assert sorted(p.read_bytes() for p in store.files_dir.iterdir()) == [b"kept"]


def test_a_file_other_items_reference_is_kept(tmp_path):
    from aigc.studio.store import ItemOut, Store

    store = Store(tmp_path / "data")
    first = store.add_job("text", "m", {}, 0.0)
    store.claim(first["id"])
    same = ItemOut(b"same text", "txt", {}, text="same text")
    assert store.finish_jobs([(first, [same], {"text": "same text"})])
    second = store.add_job("text", "m", {}, 0.0)
    store.claim(second["id"])
    store.cancel(second["id"])
    assert store.finish_jobs([(second, [same], {"text": "same text"})]) == []
    assert [p.read_bytes() for p in store.files_dir.iterdir()] == [b"same text"]


@pytest.mark.parametrize("path,body,param", [
    ("/api/jobs", {"kind": "text", "prompt": "a\x00b", "max_tokens": 4}, "prompt"),
    ("/api/jobs", {"kind": "text", "messages": [{"role": "user", "content": "a\x00"}]},
     "messages.0.content"),
    ("/api/jobs", {"kind": "text", "prompt": "a", "stop": ["\x00"]}, "stop"),
    ("/v1/completions", {"model": "ngram-char-6", "prompt": "x\x00"}, "prompt"),
    ("/v1/chat/completions", {"model": "ngram-char-6",
                              "messages": [{"role": "user", "content": "hi\x00"}]},
     "messages.0.content"),
])
def test_nul_character_refused_with_400(client, path, body, param):
    err = _error(client.post(path, json=body), 400, "invalid_value")
    assert err["param"] == param and "NUL" in err["message"]
    assert client.get("/api/jobs").json()["jobs"] == []  # nothing was queued


def test_nul_in_image_prompt_refused(tmp_path):
    """The tiny VAE takes no prompt, so the NUL check must come before that one."""
    with TestClient(create_app(make_settings(tmp_path))) as client:
        err = _error(client.post("/api/jobs", json={"kind": "image", "prompt": "\x00"}), 400,
                     "invalid_value")
        assert err["param"] == "prompt"


# ---------------------------------------------------------------- budget and Retry-After


def test_request_over_the_budget_is_400_not_429(tmp_path):
    settings = make_settings(tmp_path, max_image_cost=8 * 8 * 4.0, max_text_cost=16.0)
    with TestClient(create_app(settings)) as client:
        err = _error(client.post("/api/jobs", json={"kind": "image", "n": 5}), 400,
                     "over_budget")
        assert err["type"] == "invalid_request_error" and "budget" in err["message"]
        r = client.post("/v1/completions", json={"model": "ngram-char-6", "prompt": "x",
                                                 "max_tokens": 100})
        _error(r, 400, "over_budget")
        assert "retry-after" not in r.headers


def test_retry_after_reflects_queued_work_and_measured_job_times(tmp_path):
    # One n=1 image costs 0.25 units; the queue holds 1.0 (four of them).
    settings = make_settings(tmp_path, max_image_cost=8 * 8 * 4.0, max_outstanding=1.0)
    with TestClient(create_app(settings)) as client:
        studio = client.app.state.studio
        studio.runner.stop()  # keep the jobs queued
        stats = studio.runner.stats
        stats.completed["image"], stats.job_seconds["image"] = 4, 40.0  # 10 s per image job
        for seed in range(4):
            assert client.post("/api/jobs", json={"kind": "image", "n": 1,
                                                  "seed": seed}).status_code == 202
        r = client.post("/api/jobs", json={"kind": "image", "n": 1})
        _error(r, 429, "queue_full")
        assert r.headers["retry-after"] == "10"  # one queued job must finish
        r = client.post("/api/jobs", json={"kind": "image", "n": 4})
        assert r.headers["retry-after"] == "40"  # all four must
        stats.job_seconds["image"] = 8.0  # faster jobs: a shorter wait
        assert client.post("/api/jobs", json={"kind": "image", "n": 4}).headers[
            "retry-after"] == "8"


# ------------------------------------------------------------------------------- security


def _keyed_settings(tmp_path):
    from aigc.studio.auth import hash_key, new_api_key
    from aigc.studio.store import Store

    settings = make_settings(tmp_path)
    key = new_api_key()
    Store(settings.data_dir).add_api_key("ci", hash_key(key))
    return settings, key


def test_read_pages_need_the_key_and_the_page_gets_a_cookie(tmp_path):
    settings, key = _keyed_settings(tmp_path)
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        job = wait_job(client, client.post("/api/jobs", json={"kind": "image", "n": 1},
                                           headers=auth).json()["id"], headers=auth)
        url = client.get(f"/api/items/{job['items'][0]}", headers=auth).json()["url"]
        client.cookies.clear()
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json", url):
            _error(client.get(path), 401, "missing_api_key")
            _error(client.get(path, headers={"Authorization": "Bearer wrong"}), 401,
                   "invalid_api_key")
            assert client.get(path, headers=auth).status_code == 200, path
            client.cookies.clear()
        assert client.get("/health").status_code == 200  # liveness stays open
        # A request with a valid key sets the cookie that <img src> needs ...
        r = client.get("/api/models", headers=auth)
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"aigc_key={key};") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert client.get(url).status_code == 200 and client.get("/docs").status_code == 200
        # ... but the cookie alone never authorizes the API.
        _error(client.get("/api/models"), 401, "missing_api_key")
        _error(client.post("/api/jobs", json={"kind": "image", "n": 1}), 401, "missing_api_key")
        client.cookies.clear()
        r = client.get("/api/models", headers={"Authorization": "Bearer wrong"})
        assert "set-cookie" not in r.headers  # an invalid key is not put in a cookie


def test_no_keys_means_open_read_pages(client):
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_every_response_forbids_framing(client):
    from aigc.studio.auth import MAX_BODY_BYTES

    responses = [client.get("/"), client.get("/health"), client.get("/docs"),
                 client.get("/api/jobs/nope"), client.get("/static/app.js"),
                 client.get("/api/models", headers={"Host": "evil.example"}),
                 client.post("/api/jobs", content=b"x" * (MAX_BODY_BYTES + 1)),
                 client.post("/v1/completions", json={})]
    with client.stream("POST", "/v1/completions", json={
            "model": "ngram-char-6", "prompt": "a", "max_tokens": 3, "stream": True}) as r:
        responses.append(r)
    with TestClient(client.app, raise_server_exceptions=False) as plain:
        plain.app.state.studio.store.job_counts = lambda: 1 / 0  # an unhandled error: 500
        responses.append(plain.get("/health"))
        assert responses[-1].status_code == 500
    for r in responses:
        assert r.headers["x-frame-options"] == "DENY", r.request.url
        assert r.headers["content-security-policy"] == "frame-ancestors 'none'"


@pytest.mark.parametrize("host,status", [
    ("127.0.0.2:8000", 200), ("127.0.0.2", 200), ("127.255.0.1:80", 200), ("[::1]:8000", 200),
    ("localhost:8000", 200), ("evil.example", 403), ("127.0.0.2.evil.example", 403),
    ("128.0.0.1", 403),
])
def test_loopback_bind_serves_every_loopback_address(tmp_path, host, status):
    with TestClient(create_app(make_settings(tmp_path, host="127.0.0.2"))) as client:
        r = client.get("/health", headers={"Host": host})
        assert r.status_code == status, r.text


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 101])
def test_create_key_with_a_bad_name_is_refused(tmp_path, capsys, name):
    from aigc.cli import main

    assert main(["studio", "--create-key", name, "--data", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--create-key" in err


@pytest.mark.parametrize("stop", [[""], ["a"] * 5, ["x" * 65]])
def test_native_text_jobs_bound_stop(client, stop):
    err = _error(client.post("/api/jobs", json={"kind": "text", "prompt": "a", "stop": stop}),
                 422)
    assert err["param"] == "text.stop"


@pytest.mark.parametrize("path,body", [
    ("/api/jobs", {"kind": "image", "n": True}),
    ("/api/jobs", {"kind": "image", "seed": True}),
    ("/api/jobs", {"kind": "image", "n": 2.0}),
    ("/api/jobs", {"kind": "text", "prompt": "a", "max_tokens": True}),
    ("/api/jobs", {"kind": "text", "prompt": "a", "temperature": True}),
    ("/api/jobs", {"kind": "music", "bars": True}),
    ("/v1/images/generations", {"prompt": "a", "n": True}),
    ("/v1/completions", {"model": "ngram-char-6", "prompt": "a", "max_tokens": False}),
])
def test_booleans_are_not_integers(client, path, body):
    status = 400 if path.startswith("/v1") else 422
    _error(client.post(path, json=body), status, "validation_error")
    assert client.get("/api/jobs").json()["jobs"] == []


def test_gallery_search_takes_percent_and_underscore_literally(client):
    ids = {}
    for prompt in ("User: 100% sure", "User: snake_case", "User: plain words"):
        job = wait_job(client, client.post("/api/jobs", json={
            "kind": "text", "prompt": prompt, "max_tokens": 3, "seed": 1}).json()["id"])
        ids[prompt] = job["items"]
    assert [i["id"] for i in client.get("/api/search", params={"q": "%"}).json()["items"]] == \
        ids["User: 100% sure"]
    assert [i["id"] for i in client.get("/api/items", params={"q": "_"}).json()["items"]] == \
        ids["User: snake_case"]
    assert [i["id"] for i in client.get("/api/search", params={"q": "0% s"}).json()[
        "items"]] == ids["User: 100% sure"]


# ------------------------------------------------------------------------------ docs offline


def test_docs_use_no_cdn(client):
    page = client.get("/docs").text
    assert "SwaggerUIBundle" in page and "http://" not in page and "https://" not in page
    for url in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
                "/docs/assets/favicon.png", "/docs/assets/redoc.standalone.js"):
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 1000, url
        assert url in page or "redoc" in url
    assert "https://" not in client.get("/redoc").text
    _error(client.get("/docs/assets/..%2Fcore.py"), 404)
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "aigc studio"
    # "Authorize" in Swagger UI: the key goes with every route but /health
    assert schema["components"]["securitySchemes"]["APIKey"]["scheme"] == "bearer"
    assert schema["paths"]["/api/jobs"]["post"]["security"] == [{"APIKey": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_docs_without_the_assets_package_list_the_routes(client, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # import fails
    page = client.get("/docs").text
    assert "/api/jobs" in page and "/v1/chat/completions" in page and "<script" not in page
    assert "https://" not in page


# -------------------------------------------------------------------------------- fairness


def _run_until_done(store, runner, n_jobs: int) -> None:
    import time

    runner.start()
    try:
        deadline = time.time() + 30
        while store.job_counts()["done"] < n_jobs and time.time() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
    assert store.job_counts()["done"] == n_jobs


def test_workers_serve_clients_in_turn(tmp_path):
    """A client with many queued jobs does not make another client's job wait behind them."""
    from studio_fixtures import CORPUS

    from aigc.studio.backends import NGramTextBackend, find_checkpoints, load_image_backends
    from aigc.studio.jobs import JobRunner
    from aigc.studio.store import Store, new_id

    settings = make_settings(tmp_path)
    store = Store(settings.data_dir)
    images, _ = load_image_backends(find_checkpoints(settings.models_dir))
    texts = {"lm": NGramTextBackend(CORPUS, "corpus", order=3, name="lm")}
    runner = JobRunner(store, images, texts, batching=False)

    def add(client: str, kind: str, i: int) -> str:
        job_id = new_id()
        runner.set_client(job_id, client)
        params = {"n": 1, "seed": i, "temperature": 1.0} if kind == "image" else {
            "prompt": "User: hi", "max_tokens": 4, "temperature": 1.0, "top_p": 1.0, "seed": i}
        store.add_job(kind, "tiny-vae" if kind == "image" else "lm", params, 0.0, job_id=job_id)
        return job_id

    jobs = {kind: [add("A", kind, i) for i in range(5)] + [add("B", kind, 9), add("C", kind, 9)]
            + [add("A", kind, 10 + i) for i in range(2)] for kind in ("image", "text")}
    _run_until_done(store, runner, 18)
    for kind, ids in jobs.items():
        order = sorted(ids, key=lambda j: store.get_job(j)["started"])
        # A's first job, then B's and C's (never served), then A's in age order.
        assert [ids.index(j) for j in order] == [0, 5, 6, 1, 2, 3, 4, 7, 8], kind


def test_client_of_is_the_key_or_the_connection(tmp_path):
    from starlette.requests import Request

    from aigc.studio.auth import hash_key

    def request(auth: str | None, peer=("10.0.0.5", 40000)) -> Request:
        headers = [(b"authorization", auth.encode())] if auth else []
        return Request({"type": "http", "headers": headers, "client": peer})

    with TestClient(create_app(make_settings(tmp_path))) as client:
        studio = client.app.state.studio
        # No keys: any Bearer string (the OpenAI client always sends one) says nothing.
        assert studio.client_of(request("Bearer unused")) == "10.0.0.5:40000"
        assert studio.client_of(request(None, ("10.0.0.5", 40001))) == "10.0.0.5:40001"
        studio.key_hashes = [hash_key("aigc-k")]
        assert studio.client_of(request("Bearer aigc-k")) == "key:" + hash_key("aigc-k")[:16]


def test_a_refused_value_fails_only_its_own_job_of_a_batch(tmp_path):
    from aigc.studio.backends import find_checkpoints, load_image_backends
    from aigc.studio.jobs import JobRunner
    from aigc.studio.store import Store

    settings = make_settings(tmp_path)
    store = Store(settings.data_dir)
    _refuse_items_when(store, "NEW.seed = 21")
    images, _ = load_image_backends(find_checkpoints(settings.models_dir))
    ids = [store.add_job("image", "tiny-vae", {"n": 2, "seed": seed, "temperature": 1.0},
                         0.0)["id"] for seed in (10, 20, 30)]  # seed 20: images 20 and 21
    runner = JobRunner(store, images, {})
    runner.start()
    try:
        import time

        deadline = time.time() + 20
        while store.job_counts()["running"] + store.job_counts()["queued"] and \
                time.time() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
    assert runner.stats.batches == 1 and runner.stats.batched_images == 6  # one batch of three
    status = [store.get_job(i)["status"] for i in ids]
    assert status == ["done", "failed", "done"], status
    assert len(store.get_job(ids[0])["items"]) == 2 and store.count_items() == 4


# ------------------------------------------------------------------ in a real browser, offline

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                    reason="needs Debian chromium at /usr/bin/chromium")
def test_browser_docs_render_offline_and_keyed_gallery_images_load(tmp_path):
    """Swagger UI renders our schema from local files only (every request goes to the studio),
    and on a server with keys the gallery's <img> tags load through the key cookie."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    import httpx
    from studio_fixtures import live_server

    settings, key = _keyed_settings(tmp_path)
    auth = {"Authorization": f"Bearer {key}"}
    with live_server(settings) as base, sync_api.sync_playwright() as pw:
        with httpx.Client(base_url=base) as http:
            job = http.post("/api/jobs", json={"kind": "image", "n": 2, "seed": 1},
                            headers=auth).json()
            assert wait_job(http, job["id"], headers=auth)["status"] == "done"
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(base + "/")
        page.evaluate(f"localStorage.setItem('aigc-key', '{key}')")
        page.reload()
        page.click("#tab-gallery")
        page.wait_for_function("document.querySelectorAll('#gallery .card img').length == 2 && "
                               "[...document.querySelectorAll('#gallery .card img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=20000)
        page.goto(base + "/docs")  # the cookie carries the key here too
        page.wait_for_selector(".opblock-summary-path[data-path='/v1/chat/completions']",
                               timeout=20000)
        assert page.locator(".opblock").count() > 10
        browser.close()
    foreign = [u for u in requests if not u.startswith(base) and not u.startswith("data:")]
    assert foreign == []
