"""The official ``openai`` Python client against a live studio (uvicorn on loopback)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image
from studio_fixtures import live_server, make_settings

openai = pytest.importorskip("openai", reason="needs the openai package (dev extra)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(make_settings(tmp_path_factory.mktemp("oai"))) as base:
        yield base


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused-on-loopback", max_retries=0)


def test_models(client):
    ids = {m.id for m in client.models.list()}
    assert ids == {"tiny-vae", "ngram-char-6"}


def test_chat_completion_non_streaming(client):
    r = client.chat.completions.create(
        model="ngram-char-6", messages=[{"role": "user", "content": "hello there"}],
        seed=3, max_tokens=50, temperature=0.9)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    assert r.usage.completion_tokens == len(text) and r.usage.total_tokens == \
        r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length")


def test_chat_completion_streaming_equals_non_streaming(client):
    kw = dict(model="ngram-char-6", messages=[{"role": "user", "content": "do you like music?"}],
              seed=8, max_tokens=80)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == full and len(chunks) >= 3
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == len(full)


def test_completions(client):
    r = client.completions.create(model="ngram-char-6", prompt="User: what", max_tokens=12,
                                  seed=1)
    assert len(r.choices[0].text) == 12 and r.choices[0].finish_reason == "length"


def test_images_b64_and_url(client, server):
    r = client.images.generate(prompt="a digit", n=2, size="32x32", response_format="b64_json",
                               extra_body={"seed": 77})
    assert len(r.data) == 2
    img = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    assert img.size == (32, 32) and json.loads(img.text["aigc"])["seed"] == 77
    r2 = client.images.generate(prompt="a digit", n=1, size="32x32", response_format="url",
                                extra_body={"seed": 77})
    assert r2.data[0].url.startswith(server + "/files/")
    img2 = Image.open(io.BytesIO(httpx.get(r2.data[0].url).content))
    assert img2.tobytes() == img.tobytes()  # same seed, same pixels


def test_errors_map_to_client_exceptions(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="x", size="32x16")
    with pytest.raises(openai.BadRequestError) as e:  # OpenAI answers bad bodies with 400
        client.images.generate(prompt="x", n=100)
    assert e.value.body["param"] == "n"


def test_models_created_and_retrieve(client):
    import time

    models = list(client.models.list())
    assert all(abs(m.created - time.time()) < 3600 for m in models)  # a real time, not 0
    m = client.models.retrieve("ngram-char-6")
    assert m.id == "ngram-char-6" and m.created == models[1].created and m.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.body["code"] == "model_not_found"


def test_completion_created_is_now(client):
    import time

    r = client.completions.create(model="ngram-char-6", prompt="User: hi", max_tokens=2, seed=1)
    assert abs(r.created - time.time()) < 60


def test_stream_options_include_usage(client):
    kw = dict(model="ngram-char-6", messages=[{"role": "user", "content": "hello there"}],
              seed=4, max_tokens=20)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kw))
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens == full.usage.total_tokens
    assert chunks[-2].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1])  # usage once, as OpenAI sends it


def test_content_parts_and_developer_role(client):
    kw = dict(model="ngram-char-6", seed=5, max_tokens=30)
    plain = client.chat.completions.create(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello\nthere"}], **kw)
    parts = client.chat.completions.create(messages=[
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "hello"},
                                     {"type": "text", "text": "there"}]}], **kw)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}], **kw)
    assert "image_url" in e.value.body["message"]


def test_completion_echo(client):
    kw = dict(model="ngram-char-6", prompt="User: what", max_tokens=10, seed=2)
    plain = client.completions.create(**kw).choices[0].text
    echoed = client.completions.create(echo=True, **kw).choices[0].text
    assert echoed == "User: what" + plain
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        echo=True, stream=True, **kw) if c.choices)
    assert streamed == echoed


def test_validation_errors_are_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="ngram-char-6", messages=[], max_tokens=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="ngram-char-6", prompt="x", max_tokens=True)
