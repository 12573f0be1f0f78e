"""``GET /api/recommendations`` through the studio app (FastAPI TestClient, tiny VAE images and
a few stored texts)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from studio_fixtures import api_error, make_settings, wait_job

from aigc.studio.app import create_app
from aigc.studio.store import ItemOut, Store

TEXTS = {
    "cats": ["My cat sleeps all day on the warm windowsill.",
             "Kittens chase each other around the living room.",
             "The old tabby cat purrs when you scratch her ears.",
             "Our cat caught a mouse in the garden this morning."],
    "markets": ["Stock prices fell sharply after the central bank raised interest rates.",
                "Investors sold government bonds as inflation figures rose.",
                "The company's shares jumped after strong quarterly earnings.",
                "Currency traders expect the dollar to weaken against the euro."],
}


def _store_texts(data_dir) -> dict[str, list[str]]:
    """Texts stored as finished jobs before the studio starts (so no worker races for them);
    returns the item ids by topic."""
    store = Store(data_dir)
    ids = {}
    for topic, texts in TEXTS.items():
        job = store.add_job("text", "corpus", {"topic": topic}, 0.0)
        assert store.claim(job["id"])
        outs = [ItemOut(t.encode(), "txt", {"kind": "text", "source": "test"}, prompt=topic,
                        text=t) for t in texts]
        ids[topic] = store.finish_jobs([(job, outs, None)])[0]["items"]
    store.close()
    return ids


@pytest.fixture
def studio(tmp_path):
    settings = make_settings(tmp_path)
    texts = _store_texts(settings.data_dir)
    with TestClient(create_app(settings)) as c:
        r = c.post("/api/jobs", json={"kind": "image", "n": 12, "seed": 3})
        assert r.status_code == 202, r.text
        images = wait_job(c, r.json()["id"])["items"]
        yield c, images, texts


def _as(who: str) -> dict:
    return {"X-Aigc-Rater": who}


def _rec(client, user, k=10, headers=None):
    r = client.get("/api/recommendations", params={"user": user, "k": k}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_items_the_person_gave_feedback_about_are_not_recommended(studio):
    client, images, texts = studio
    me = "person-0001"
    client.post(f"/api/items/{images[0]}/ratings", json={"stars": 5}, headers=_as(me))
    client.post(f"/api/items/{images[1]}/ratings", json={"stars": 1}, headers=_as(me))
    client.post("/api/comparisons", json={"a": images[2], "b": images[3], "winner": "a"},
                headers=_as(me))
    client.post(f"/api/items/{images[4]}/flags", json={"reason": "low_quality"}, headers=_as(me))
    client.post(f"/api/items/{texts['cats'][0]}/signals", json={"signal": "download"},
                headers=_as(me))
    for i in range(5, 9):  # someone else's stars do not hide anything from me
        client.post(f"/api/items/{images[i]}/ratings", json={"stars": 4},
                    headers=_as("person-0002"))
    body = _rec(client, me, k=100)
    got = [x["item"]["id"] for x in body["items"]]
    mine = set(images[:5]) | {texts["cats"][0]}
    assert body["user"] == f"anon:{me}" and body["n_signals"] == 6
    assert not mine & set(got)
    assert len(got) == len(images) + 8 - len(mine) == len(set(got))  # all the others, once
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_cold_start_gives_popular_and_diverse_items_to_an_unknown_person(studio):
    client, images, texts = studio
    for n, who in enumerate(("person-a001", "person-b002", "person-c003")):
        h = _as(who)
        client.post(f"/api/items/{images[7]}/ratings", json={"stars": 5}, headers=h)
        client.post(f"/api/items/{texts['markets'][1]}/ratings", json={"stars": 5}, headers=h)
        client.post(f"/api/items/{images[n]}/ratings", json={"stars": 1}, headers=h)
    body = _rec(client, "never-seen-before", k=5)
    assert body["strategy"] == "cold_start" and body["n_signals"] == 0
    got = [x["item"]["id"] for x in body["items"]]
    assert len(got) == 5
    assert set(got[:2]) == {images[7], texts["markets"][1]}  # the two everyone loved
    assert {x["item"]["kind"] for x in body["items"]} == {"image", "text"}
    assert not {images[0], images[1], images[2]} & set(got)  # disliked by all who saw them
    # no rater header and no user: the anonymous caller also gets a cold start
    r = client.get("/api/recommendations")
    assert r.status_code == 200 and r.json()["user"] == "anon:unknown"
    assert len(r.json()["items"]) == 10


def test_content_similarity_carries_a_taste_to_unrated_items(studio):
    """Nobody rated the other cat texts; liking two cat texts and disliking a market text
    still ranks the remaining cat texts first among texts (MiniLM embeddings), and suggests
    the cat prompt to try."""
    client, images, texts = studio
    me = "cat-person-1"
    for t in texts["cats"][:2]:
        client.post(f"/api/items/{t}/ratings", json={"stars": 5}, headers=_as(me))
    client.post(f"/api/items/{texts['markets'][0]}/ratings", json={"stars": 1}, headers=_as(me))
    body = _rec(client, me, k=100)
    ranked_texts = [x["item"]["id"] for x in body["items"] if x["item"]["kind"] == "text"]
    assert set(ranked_texts[:2]) == set(texts["cats"][2:]), ranked_texts
    top = {x["item"]["id"]: x for x in body["items"]}
    assert all(top[t]["content"] > 0 for t in texts["cats"][2:])
    assert all(top[t]["content"] < 0 for t in texts["markets"][1:])
    assert body["settings"][0] == {**body["settings"][0], "kind": "text", "model": "corpus",
                                   "prompt": "cats"}


@pytest.mark.parametrize("params, code", [
    ({"user": "bad id!"}, "bad_user_id"), ({"user": "short"}, "bad_user_id"),
    ({"user": "x" * 65}, "bad_user_id"), ({"k": 0}, "bad_k"), ({"k": 10**6}, "bad_k"),
    ({"k": -3}, "bad_k"),
])
def test_bad_user_or_k_is_a_400_naming_the_parameter(studio, params, code):
    client, _, _ = studio
    err = api_error(client.get("/api/recommendations", params=params), 400, code)
    assert err["param"] == next(iter(params))


def test_a_malformed_rater_header_is_refused(studio):
    client, _, _ = studio
    api_error(client.get("/api/recommendations", headers=_as("no good")), 400, "bad_rater_id")


def test_with_api_keys_the_route_needs_a_key_and_answers_only_for_its_owner(tmp_path):
    from aigc.studio.auth import hash_key

    settings = make_settings(tmp_path)
    key = "sk-test-recommend-0123456789"
    Store(settings.data_dir).add_api_key("alice-key", hash_key(key))
    with TestClient(create_app(settings)) as c:
        api_error(c.get("/api/recommendations"), 401, "missing_api_key")
        api_error(c.get("/api/recommendations", headers={"Authorization": "Bearer nope"}), 401,
                  "invalid_api_key")
        auth = {"Authorization": f"Bearer {key}"}
        r = c.get("/api/recommendations", headers=auth)
        assert r.status_code == 200 and r.json()["user"] == "key:alice-key"
        assert c.get("/api/recommendations", params={"user": "alice-key"},
                     headers=auth).status_code == 200
        api_error(c.get("/api/recommendations", params={"user": "someone-else"}, headers=auth),
                  403, "not_yours")


def test_the_gallery_page_loads_the_for_you_view(studio):
    client, _, _ = studio
    page = client.get("/").text
    assert 'id="for-you"' in page and '<script src="/static/recommend.js">' in page
    js = client.get("/static/recommend.js")
    assert js.status_code == 200 and "/api/recommendations?k=" in js.text
    assert "loadForYou" in client.get("/static/app.js").text
