"""The studio serving a diffusion model: batches of requests with different seeds and classes
give, image for image, what each seed gives alone; progress and cancel reach the sampling loop;
the store finishes a batch in bulk but skips a job cancelled meanwhile."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from studio_fixtures import make_settings, wait_job

from aigc.errors import ConfigError
from aigc.models.diffusion import Diffusion, DiffusionConfig
from aigc.studio.app import create_app
from aigc.studio.backends import JobCancelled

TINY = dict(image_size=8, channels=(4, 8), attention_levels=(1,), num_train_timesteps=20,
            num_classes=3)


def _tiny() -> Diffusion:
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(**TINY))
    with torch.no_grad():  # the UNet's last layer starts at zero: make the output depend on x
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++"])
def test_per_image_generators_make_a_batch_equal_to_images_drawn_alone(sampler):
    model = _tiny()
    seeds, labels = [5, 6, 9], torch.tensor([0, 2, 1])
    kw = dict(sampler=sampler, steps=4, guidance=2.0)
    batched = model.sample(3, generator=_gens(seeds), labels=labels, **kw)
    for i, s in enumerate(seeds):
        alone = model.sample(1, generator=_gens([s])[0], labels=labels[i : i + 1], **kw)
        # Equal up to float rounding: the network sees another batch size.
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-4, rtol=0)
    # A shared generator gives other images (the draws are split across the batch).
    shared = model.sample(3, generator=_gens([5])[0], labels=labels, **kw)
    assert not torch.allclose(shared[1:2], batched[1:2], atol=1e-3)
    with pytest.raises(ConfigError, match="one generator per image"):
        model.sample(2, generator=_gens([1]), **kw)


def test_progress_callable_sees_every_step_and_can_stop_sampling():
    model = _tiny()
    seen: list[float] = []
    model.sample(1, generator=_gens([0])[0], steps=4, sampler="ddim", progress=seen.append)
    assert seen == [0.25, 0.5, 0.75, 1.0]

    def stop(fraction: float) -> None:
        if fraction >= 0.5:
            raise JobCancelled

    with pytest.raises(JobCancelled):
        model.sample(1, generator=_gens([0])[0], steps=4, sampler="ddim", progress=stop)


def _save_tiny(path):
    from aigc.checkpoints import save_model_file
    from aigc.config import config_to_dict

    model = _tiny()
    save_model_file(path, family="diffusion", model_config=config_to_dict(model.cfg),
                    weights=model.state_dict(),
                    meta={"data": "test", "class_names": ["zero", "one", "two"]})
    return path


def _pixels(client, item_id: str) -> np.ndarray:
    item = client.get(f"/api/items/{item_id}").json()
    return np.asarray(Image.open(io.BytesIO(client.get(item["url"]).content)))


def test_studio_batches_diffusion_requests_and_each_matches_its_seed_alone(tmp_path):
    path = _save_tiny(tmp_path / "tiny-diffusion.safetensors")
    settings = make_settings(tmp_path, model_paths=(("tiny-diffusion", path),))
    with TestClient(create_app(settings)) as client:
        details = {m["id"]: m["details"] for m in client.get("/api/models").json()["models"]}
        d = details["tiny-diffusion"]
        assert d["batching"] and d["steps"] and d["conditioning"] == "class"
        assert d["samplers"] == ["ddpm", "ddim", "dpm-solver++"] and d["default_steps"] == 20
        runner = client.app.state.studio.runner
        runner.stop()  # queue everything first, so that the batches are known
        common = {"kind": "image", "model": "tiny-diffusion", "steps": 3, "sampler": "ddpm",
                  "guidance": 2.0, "n": 1}
        jobs = [client.post("/api/jobs", json={**common, "seed": 10 + i, "label": i}).json()
                for i in range(3)]
        jobs.append(client.post("/api/jobs", json={**common, "seed": 20}).json())  # no class
        runner.start()
        done = [wait_job(client, j["id"]) for j in jobs]
        assert [j["status"] for j in done] == ["done"] * 4
        # The three labelled jobs ran as one batch; the unlabelled one apart from them.
        assert (runner.stats.batches, runner.stats.batched_images) == (2, 4)
        again = wait_job(client, client.post("/api/jobs", json={
            **common, "seed": 11, "label": 1}).json()["id"])
        alone = _pixels(client, again["items"][0]).astype(int)
        assert np.abs(alone - _pixels(client, done[1]["items"][0])).max() <= 1  # 8-bit rounding
        # A request without steps is charged the model's default steps (20), not one.
        cheap = client.post("/api/jobs", json={**common, "seed": 1}).json()
        default = client.post("/api/jobs", json={**common, "steps": None, "seed": 1}).json()
        assert default["cost"] == pytest.approx(cheap["cost"] * 20 / 3)
        err = client.post("/api/jobs", json={**common, "prompt": "a one"}).json()["error"]
        assert err["param"] == "prompt" and "label" in err["message"]


def test_finish_jobs_in_bulk_skips_a_job_cancelled_meanwhile(tmp_path):
    from aigc.studio.store import ItemOut, Store

    store = Store(tmp_path / "data")
    ids = [store.add_job("image", "m", {"n": 2, "seed": i}, 0.0)["id"] for i in range(3)]
    time.sleep(0.001)
    assert store.claim_many(ids) == ids and store.claim_many(ids) == []
    store.set_progress_many(ids, 0.5)
    assert store.statuses(ids) == dict.fromkeys(ids, "running")
    store.cancel(ids[1])
    outs = [[ItemOut(f"png{i}{k}".encode(), "png", {"seed": i}, seed=i) for k in range(2)]
            for i in range(3)]
    finished = store.finish_jobs([(store.get_job(i), o, None) for i, o in zip(ids, outs)])
    assert [f["id"] for f in finished] == [ids[0], ids[2]]
    assert store.statuses(ids) == {ids[0]: "done", ids[1]: "cancelled", ids[2]: "done"}
    assert [len(store.get_job(i)["items"]) for i in ids] == [2, 0, 2]
    assert store.count_items() == 4 and store.get_job(ids[0])["progress"] == 1.0
