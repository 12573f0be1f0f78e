"""The studio serves a class- and text-conditional diffusion model: a class or a prompt per
request (not both), prompts read the way the model was trained, and batches never mix the two."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from studio_fixtures import make_settings, wait_job

from aigc.checkpoints import save_model_file
from aigc.config import config_to_dict
from aigc.models.diffusion import Diffusion, DiffusionConfig
from aigc.studio.app import create_app


@pytest.fixture
def client(tmp_path):
    settings = make_settings(tmp_path)
    torch.manual_seed(0)
    cfg = DiffusionConfig(image_size=8, channels=(4, 8), attention_levels=(1,),
                          num_train_timesteps=20, num_classes=10, text_conditioning=True,
                          text_encoder="minilm-zh-gloss")
    model = Diffusion(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model_file(settings.models_dir / "tiny-diffusion.safetensors", family="diffusion",
                    model_config=config_to_dict(cfg), weights=model.state_dict(),
                    meta={"data": "mnist", "class_names": [str(i) for i in range(10)]})
    with TestClient(create_app(settings)) as c:
        yield c


def _job(client, **body):
    r = client.post("/api/jobs", json={"kind": "image", "model": "tiny-diffusion", "steps": 2,
                                       "n": 2, "seed": 3, **body})
    return r


def test_a_diffusion_model_reports_class_and_text_and_takes_either(client):
    details = {m["id"]: m["details"] for m in client.get("/api/models").json()["models"]}
    assert details["tiny-diffusion"]["conditioning"] == "class+text"
    by_prompt = wait_job(client, _job(client, prompt="手写数字七").json()["id"])
    by_label = wait_job(client, _job(client, label=7).json()["id"])
    assert by_prompt["status"] == by_label["status"] == "done"
    item = client.get(f"/api/items/{by_prompt['items'][0]}").json()
    assert item["record"]["prompt"] == "手写数字七"
    # the same seed with a prompt and with a class gives different images
    a = client.get(client.get(f"/api/items/{by_prompt['items'][0]}").json()["url"]).content
    b = client.get(client.get(f"/api/items/{by_label['items'][0]}").json()["url"]).content
    assert a != b


def test_a_class_and_a_prompt_together_are_refused(client):
    r = _job(client, prompt="a seven", label=7)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_v1_images_reads_the_prompt_of_a_text_model(client):
    r = client.post("/v1/images/generations", json={"model": "tiny-diffusion", "prompt": "a seven",
                                                     "n": 1, "steps": 2, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["revised_prompt"] == "a seven"


def test_a_starter_card_beside_the_model_is_served_when_its_hash_matches(tmp_path):
    import json

    from aigc.checkpoints import file_sha256
    from aigc.studio.backends import _metric_card

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    card = tmp_path / "m.card.json"
    card.write_text(json.dumps({"sha256": file_sha256(model), "agreement": {"class": 0.9}}))
    assert _metric_card(model, file_sha256(model))["agreement"] == {"class": 0.9}
    assert _metric_card(model, "0" * 64) is None  # a card about other weights is ignored
