"""Studio API with a tiny VAE and the n-gram text backend (FastAPI TestClient)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from studio_fixtures import CORPUS, api_error, make_settings, wait_job

from aigc.studio.app import create_app


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


_error = api_error


def _image_job(client, **kw) -> dict:
    r = client.post("/api/jobs", json={"kind": "image", **kw})
    assert r.status_code == 202, r.text
    return wait_job(client, r.json()["id"])


def test_models_lists_image_and_labelled_text_backend(client):
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert models["tiny-vae"]["kind"] == "image"
    assert models["tiny-vae"]["details"]["image_size"] == 8
    assert "TEST BACKEND" in models["ngram-char-6"]["description"]
    v1 = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert "not a neural language model" in v1["ngram-char-6"]["description"]


def test_image_job_items_files_and_regenerate_with_seed(client):
    job = _image_job(client, n=3, seed=11, size=16)
    assert job["status"] == "done" and job["progress"] == 1.0 and len(job["items"]) == 3
    items = [client.get(f"/api/items/{i}").json() for i in job["items"]]
    assert [it["seed"] for it in items] == [11, 12, 13]
    png = client.get(items[1]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    assert img.size == (16, 16)
    record = json.loads(img.text["aigc"])
    assert record["seed"] == 12 and record["model_sha256"] == items[1]["model_sha256"]
    assert len(record["model_sha256"]) == 64 and record["family"] == "vae"
    # Regenerating item 1 alone with its seed gives the very same pixels.
    again = _image_job(client, n=1, seed=12, size=16)
    item = client.get(f"/api/items/{again['items'][0]}").json()
    img2 = Image.open(io.BytesIO(client.get(item["url"]).content))
    assert (np.asarray(img2) == np.asarray(img)).all()
    assert item["url"] != items[1]["url"]  # the embedded record names another job
    assert items[1]["metric_card"] is None  # no metrics.json beside the tiny model


def test_batched_generation_equals_one_at_a_time(client):
    from aigc.studio.backends import ImageSettings, ImageSpec

    backend = client.app.state.studio.images["tiny-vae"]
    specs = [ImageSpec(seed=s) for s in (3, 4, 9)]
    batched = backend.generate(specs, ImageSettings(temperature=0.7))
    for i, s in enumerate(specs):
        one = backend.model.sample(1, generator=torch.Generator().manual_seed(s.seed),
                                   temperature=0.7)
        torch.testing.assert_close(batched[i : i + 1], one)


def test_worker_batches_compatible_jobs(tmp_path):
    from aigc.studio.backends import find_checkpoints, load_image_backends
    from aigc.studio.jobs import JobRunner
    from aigc.studio.store import Store

    settings = make_settings(tmp_path)
    store = Store(settings.data_dir)
    images, _ = load_image_backends(find_checkpoints(settings.models_dir))
    ids = [store.add_job("image", "tiny-vae", {"n": 2, "seed": 10 * i, "temperature": 1.0}, 0)["id"]
           for i in range(5)]
    ids.append(store.add_job("image", "tiny-vae", {"n": 1, "seed": 0, "temperature": 0.5}, 0)["id"])
    runner = JobRunner(store, images, {})
    runner.start()
    try:
        import time

        deadline = time.time() + 20
        while store.job_counts()["done"] < 6 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
    assert store.job_counts()["done"] == 6
    # Five jobs with equal settings in one batch of 10 images; the other temperature alone.
    assert runner.stats.batches == 2 and runner.stats.batched_images == 11
    assert all(len(store.get_job(i)["items"]) == store.get_job(i)["params"]["n"] for i in ids)


def test_cancel_and_retry(tmp_path):
    with TestClient(create_app(make_settings(tmp_path))) as client:
        studio = client.app.state.studio
        studio.runner.stop()  # keep jobs queued
        job = client.post("/api/jobs", json={"kind": "image", "n": 2, "seed": 1}).json()
        r = client.post(f"/api/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        _error(client.post(f"/api/jobs/{job['id']}/cancel"), 409, "job_finished")
        retried = client.post(f"/api/jobs/{job['id']}/retry")
        assert retried.status_code == 202
        new = retried.json()
        assert new["retry_of"] == job["id"] and new["params"] == job["params"]
        assert new["status"] == "queued"
        _error(client.post(f"/api/jobs/{new['id']}/retry"), 409, "job_not_finished")
        assert [j["id"] for j in client.get("/api/jobs?status=cancelled").json()["jobs"]] == \
            [job["id"]]
        _error(client.get("/api/jobs/nope"), 404, "job_not_found")


@pytest.mark.parametrize("body,status,param", [
    ({"n": 0}, 422, "image.n"),
    ({"n": 17}, 422, "image.n"),
    ({"prompt": "x" * 2001}, 422, "image.prompt"),
    ({"steps": 10}, 400, "steps"),  # the VAE has no sampler steps
    ({"sampler": "ddim"}, 400, "sampler"),
    ({"label": 3}, 400, "label"),  # the VAE is unconditional
    ({"prompt": "a cat"}, 400, "prompt"),  # ... and takes no prompt
    ({"size": 4}, 422, "image.size"),
    ({"size": 2048}, 422, "image.size"),
    ({"bogus": 1}, 422, "image.bogus"),
    ({"model": "nope"}, 404, "model"),
])
def test_image_request_bounds(client, body, status, param):
    err = _error(client.post("/api/jobs", json={"kind": "image", **body}), status)
    if param:
        assert err["param"] == param


def test_over_budget_is_400_and_queue_full_429_with_retry_after(tmp_path):
    settings = make_settings(tmp_path, max_queue=2, max_image_cost=8 * 8 * 4.0)
    with TestClient(create_app(settings)) as client:
        client.app.state.studio.runner.stop()
        err = _error(client.post("/api/jobs", json={"kind": "image", "n": 5}), 400, "over_budget")
        assert "budget" in err["message"]
        for _ in range(2):
            assert client.post("/api/jobs", json={"kind": "image", "n": 1}).status_code == 202
        r = client.post("/api/jobs", json={"kind": "image", "n": 1})
        _error(r, 429, "queue_full")
        assert int(r.headers["retry-after"]) >= 1


def test_origin_host_and_file_route_security(client, tmp_path):
    _error(client.post("/api/jobs", json={"kind": "image"}, headers={"Origin": "http://evil.example"}),
           403, "bad_origin")
    _error(client.post("/api/jobs", json={"kind": "image"}, headers={"Sec-Fetch-Site": "cross-site"}),
           403, "bad_origin")
    ok = client.post("/api/jobs", json={"kind": "image", "n": 1},
                     headers={"Origin": "http://testserver"})
    assert ok.status_code == 202
    _error(client.get("/api/models", headers={"Host": "evil.example"}), 403, "bad_host")
    store = client.app.state.studio.store
    secret = store.files_dir.parent / "secret.txt"
    secret.write_text("secret")
    link = store.files_dir / ("a" * 64 + ".txt")
    link.symlink_to(secret)
    for name in ["..%2Fsecret.txt", "%2Fetc%2Fpasswd", "a" * 64 + ".txt", "studio.db",
                 "../studio.db", "A" * 64 + ".png"]:
        r = client.get(f"/files/{name}")
        assert r.status_code == 404 and "secret" not in r.text, name
    assert store.file_path("a" * 64 + ".txt") is None
    assert store.file_path("../" + "a" * 64 + ".txt") is None


def test_api_keys_hashed_and_required(tmp_path):
    from aigc.studio.auth import hash_key, key_matches, new_api_key
    from aigc.studio.store import Store

    settings = make_settings(tmp_path)
    key = new_api_key()
    Store(settings.data_dir).add_api_key("ci", hash_key(key))
    assert key not in (settings.data_dir / "studio.db").read_bytes().decode("latin-1")
    assert key_matches(key, [hash_key("other"), hash_key(key)])
    assert not key_matches(key + "x", [hash_key(key)])
    with TestClient(create_app(settings)) as client:
        _error(client.get("/api/models"), 401, "missing_api_key")
        _error(client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401,
               "invalid_api_key")
        assert client.get("/api/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_non_loopback_bind_refused_without_keys(tmp_path):
    from aigc.cli import main

    assert main(["studio", "--host", "0.0.0.0", "--data", str(tmp_path / "d")]) == 2
    from aigc.errors import AigcError
    from aigc.studio.auth import check_bind

    with pytest.raises(AigcError, match="needs API keys"):
        check_bind("192.168.1.5", 0)
    check_bind("192.168.1.5", 1)
    check_bind("::1", 0)


def test_ratings_comparisons_filters_and_search(client):
    job = _image_job(client, n=2, seed=100)
    a, b = job["items"]
    _error(client.post(f"/api/items/{a}/ratings", json={"stars": 6}), 422)
    _error(client.post(f"/api/items/{a}/ratings", json={"stars": 0}), 422)
    for s in (5, 4):
        assert client.post(f"/api/items/{a}/ratings", json={"stars": s}).status_code == 201
    r = client.post(f"/api/items/{b}/ratings", json={"stars": 1})
    assert r.json()["stars"] == 1.0 and r.json()["n_ratings"] == 1
    assert client.get(f"/api/items/{a}").json()["stars"] == 4.5
    assert [i["id"] for i in client.get("/api/items?min_stars=4").json()["items"]] == [a]
    c = client.post("/api/comparisons", json={"a": a, "b": b, "winner": "b"})
    assert c.status_code == 201
    item_b = client.get(f"/api/items/{b}").json()
    assert (item_b["wins"], item_b["comparisons"]) == (1, 1)
    _error(client.post("/api/comparisons", json={"a": a, "b": a, "winner": "a"}), 400)
    _error(client.post("/api/comparisons", json={"a": a, "b": "zz", "winner": "a"}), 404)
    pair = client.get("/api/comparisons/pair").json()["items"]
    assert {p["id"] for p in pair} == {a, b}
    text = wait_job(client, client.post("/api/jobs", json={
        "kind": "text", "prompt": "a small cat", "max_tokens": 5, "seed": 1}).json()["id"])
    assert [i["id"] for i in client.get("/api/search?q=small cat").json()["items"]] == \
        text["items"]
    assert {i["id"] for i in client.get("/api/search?q=tiny-vae").json()["items"]} == {a, b}
    assert client.get("/api/search?q=dog").json()["items"] == []
    assert {i["id"] for i in client.get("/api/items?seed=101").json()["items"]} == {b}


def test_text_jobs_are_seeded_bounded_and_stored(client):
    body = {"kind": "text", "prompt": "User: hello", "max_tokens": 40, "seed": 3,
            "temperature": 1.0}
    j1 = wait_job(client, client.post("/api/jobs", json=body).json()["id"])
    j2 = wait_job(client, client.post("/api/jobs", json=body).json()["id"])
    assert j1["status"] == "done" and j1["result"]["text"] == j2["result"]["text"]
    usage = j1["result"]["usage"]
    assert usage["prompt_tokens"] == len("User: hello")
    assert usage["completion_tokens"] == len(j1["result"]["text"]) <= 40
    item = client.get(f"/api/items/{j1['items'][0]}").json()
    assert item["kind"] == "text" and item["text"] == j1["result"]["text"]
    assert client.get(item["url"]).text == item["text"]
    _error(client.post("/api/jobs", json={"kind": "text", "max_tokens": 5}), 400)
    _error(client.post("/api/jobs", json={"kind": "text", "prompt": "x", "max_tokens": 5000}), 422)


def test_chat_stream_matches_non_stream_and_ends_with_done(client):
    body = {"model": "ngram-char-6", "messages": [{"role": "user", "content": "hello there"}],
            "seed": 7, "max_tokens": 60}
    full = client.post("/v1/chat/completions", json=body).json()
    text = full["choices"][0]["message"]["content"]
    assert full["choices"][0]["finish_reason"] in ("stop", "length")
    assert full["usage"]["completion_tokens"] == len(text)
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == text and len(chunks) >= 3
    assert chunks[-1]["usage"] == full["usage"]


def test_completion_stop_and_length(client):
    r = client.post("/v1/completions", json={"model": "ngram-char-6", "prompt": "User: hello",
                                             "max_tokens": 7, "seed": 1}).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 7
    r = client.post("/v1/completions", json={"model": "ngram-char-6", "prompt": "User: hello",
                                             "max_tokens": 200, "seed": 1, "stop": ["\n"]}).json()
    assert r["choices"][0]["finish_reason"] == "stop" and "\n" not in r["choices"][0]["text"]
    _error(client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404,
           "model_not_found")


def test_ngram_backend_counts_and_sampling():
    from aigc.studio.backends import NGramTextBackend

    lm = NGramTextBackend("abcabcabcabd", order=2)
    assert lm.counts[2]["ab"] == {"c": 3, "d": 1}
    # Greedy and tiny top_p both follow the most frequent continuation.
    for kw in ({"temperature": 0.0}, {"top_p": 0.01}):
        s = lm.stream(prompt="ab", max_tokens=6, **kw)
        assert "".join(s) == "cabcab" and s.finish_reason == "length"
    # Sampling is seeded: same seed, same text; the counts are respected over many draws.
    draws = ["".join(lm.stream(prompt="ab", max_tokens=1, seed=i)) for i in range(400)]
    assert 0.6 < draws.count("c") / 400 < 0.9
    assert "".join(lm.stream(prompt="xy", max_tokens=3, seed=1)) == \
        "".join(lm.stream(prompt="xy", max_tokens=3, seed=1))
    with pytest.raises(ValueError, match="too short"):
        NGramTextBackend("abc", order=6)
    assert CORPUS  # the fixture corpus is non-empty


def test_health_metrics_and_openapi(client):
    _image_job(client, n=1, seed=1)
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["models"] == 2 and h["jobs"]["done"] == 1
    text = client.get("/metrics").text
    line = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')
    for ln in text.splitlines():
        assert ln.startswith("# ") or line.match(ln), ln
    assert 'aigc_jobs_completed_total{kind="image"} 1' in text
    schema = client.get("/openapi.json").json()
    for path in ("/api/jobs", "/api/items", "/api/models", "/api/search", "/v1/chat/completions",
                 "/v1/images/generations", "/health", "/metrics"):
        assert path in schema["paths"], path
    assert "HTTPValidationError" not in json.dumps(schema)
    assert client.get("/").status_code == 200


def _chunks(body: bytes, size: int = 65536):
    """A body httpx sends with ``Transfer-Encoding: chunked`` (a generator has no length)."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_body_size_limit(client):
    big = {"kind": "text", "prompt": "x" * (2 << 20)}
    _error(client.post("/api/jobs", json=big), 413, "body_too_large")


@pytest.mark.parametrize("path", ["/api/jobs", "/v1/chat/completions",
                                  "/v1/images/generations"])
def test_body_size_limit_counts_chunked_bodies(client, path):
    from aigc.studio.auth import MAX_BODY_BYTES

    big = json.dumps({"prompt": "x" * (MAX_BODY_BYTES + 10)}).encode()
    _error(client.post(path, content=_chunks(big), headers={"Content-Type": "application/json"}),
           413, "body_too_large")
    # A small chunked body is read whole and served as usual.
    small = {"/api/jobs": {"kind": "image", "n": 1, "seed": 1},
             "/v1/chat/completions": {"model": "ngram-char-6", "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "hi"}]},
             "/v1/images/generations": {"prompt": "x", "n": 1}}[path]
    r = client.post(path, content=_chunks(json.dumps(small).encode(), 7),
                    headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 202), r.text


def test_body_size_limit_chunked_over_real_http(tmp_path):
    """Through uvicorn's HTTP parser: a chunked body over the limit is 413, not 500."""
    import httpx
    from studio_fixtures import live_server

    from aigc.studio.auth import MAX_BODY_BYTES

    big = json.dumps({"kind": "text", "prompt": "x" * (MAX_BODY_BYTES + 10)}).encode()
    with live_server(make_settings(tmp_path)) as base:
        for path in ("/api/jobs", "/v1/completions"):
            try:
                r = httpx.post(base + path, content=_chunks(big),
                               headers={"Content-Type": "application/json"}, timeout=30)
            except httpx.HTTPError as exc:  # the server may close before the upload ends
                raise AssertionError(f"{path}: no answer ({exc!r})") from None
            _error(r, 413, "body_too_large")


def test_cancelled_running_job_writes_nothing(tmp_path):
    from aigc.studio.store import ItemOut, Store

    store = Store(tmp_path / "data")
    job = store.add_job("image", "m", {"n": 1, "seed": 0}, 0.0)
    assert store.claim_many([job["id"], job["id"]]) == [job["id"]]  # claimed once only
    assert store.cancel(job["id"]) == "running"
    out = ItemOut(b"png", "png", {"seed": 0}, seed=0)
    assert store.finish_jobs([(job, [out], None)]) == []
    assert store.get_job(job["id"])["status"] == "cancelled" and store.count_items() == 0
    assert store.recover() == 0  # a cancelled job is not re-queued at start-up


def test_create_key_cli_prints_once_and_stores_hash(tmp_path, capsys):
    from aigc.cli import main
    from aigc.studio.auth import hash_key
    from aigc.studio.store import Store

    data = str(tmp_path / "d")
    assert main(["studio", "--create-key", "ci", "--data", data]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("aigc-") and len(key) > 40
    assert Store(data).api_key_hashes() == [hash_key(key)]
    assert main(["studio", "--create-key", "ci", "--data", data]) == 2  # name taken
    assert Store(data).admin_key_hashes() == []  # an ordinary key
    assert main(["studio", "--create-key", "boss", "--admin", "--data", data]) == 0
    out = capsys.readouterr().out
    admin = out.strip().splitlines()[-1]
    assert "admin API key 'boss'" in out and Store(data).admin_key_hashes() == [hash_key(admin)]
    assert main(["studio", "--admin", "--data", data]) == 2  # --admin alone makes no key
    assert "--admin goes with --create-key" in capsys.readouterr().err


def test_extra_text_backend_plugs_in_first(tmp_path):
    from aigc.studio.backends import NGramTextBackend

    def extra(settings):
        return {"other-lm": NGramTextBackend("the cat sat on the mat. " * 20, "cats", order=3,
                                             name="other-lm")}

    with TestClient(create_app(make_settings(tmp_path), text_backends=extra)) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["tiny-vae", "other-lm", "ngram-char-6"]
        job = wait_job(client, client.post("/api/jobs", json={
            "kind": "text", "prompt": "the ", "max_tokens": 20, "temperature": 0}).json()["id"])
        assert job["model"] == "other-lm" and job["result"]["text"] == "mat. the mat. the ma"  # greedy; ties -> larger char


def test_models_without_text_conditioning_record_no_prompt(client):
    """/api refuses a prompt (above); /v1 needs one by protocol, so it is neither used nor
    recorded, and revised_prompt says nothing conditioned the images."""
    details = {m["id"]: m["details"] for m in client.get("/api/models").json()["models"]}
    assert details["tiny-vae"]["conditioning"] == "none"
    err = _error(client.post("/api/jobs", json={"kind": "image", "prompt": "a cat"}), 400,
                 "unsupported_parameter")
    assert err["param"] == "prompt" and "takes no prompt" in err["message"]
    r = client.post("/v1/images/generations", json={"prompt": "a cat", "n": 2, "seed": 5})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["revised_prompt"] for d in data] == ["", ""]
    for d in data:
        item = client.get(f"/api/items/{d['item_id']}").json()
        assert item["prompt"] is None and item["record"]["prompt"] is None
        png = Image.open(io.BytesIO(client.get(item["url"]).content))
        assert json.loads(png.text["aigc"])["prompt"] is None
    assert client.get("/api/search?q=a cat").json()["items"] == []
