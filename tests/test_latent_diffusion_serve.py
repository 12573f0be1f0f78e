"""Serving latent diffusion: a Chinese encoder bundled into the checkpoint (attach-zh), prompt
routes (MiniLM tokens or one sentence token) recorded and replayed by `aigc sample`, and the
studio with English and Chinese prompts. Tiny models (16 px, channels 8), seconds each."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from studio_fixtures import api_error, make_settings, wait_job

from aigc.checkpoints import file_sha256, load_checkpoint, save_model_file
from aigc.cli import main
from aigc.config import config_to_dict
from aigc.errors import ConfigError
from aigc.media import read_record
from aigc.models import model_from_checkpoint
from aigc.models.clip_scorer import ClipScorer, ClipScorerConfig
from aigc.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig, attach_zh
from aigc.models.latent_diffusion import main as ldm_main
from aigc.studio.app import create_app

LDM = LatentDiffusionConfig(image_size=16, ae_channels=(4, 8), latent_channels=4,
                            latent_std=1.0, channels=(8, 8), attention_levels=(1,),
                            max_tokens=8, num_train_timesteps=50, sentence_prob=0.2,
                            sentence_scale=5.0)
SCORER = ClipScorerConfig(image_size=16, channels=(4,), embed_dim=8, zh_buckets=64, zh_dim=4,
                          zh_hidden=8)
STEPS = ["--steps", "2"]


def _save_ldm(path, cfg=LDM, meta=None):
    torch.manual_seed(0)
    model = LatentDiffusion(cfg)
    with torch.no_grad():  # the zero-initialised output layers: make outputs depend on inputs
        for p in model.unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weights = model.state_dict()
    ema = {k: v + 0.01 for k, v in weights.items()}  # EMA differs from raw: both must travel
    save_model_file(path, family="latent-diffusion", model_config=config_to_dict(cfg),
                    weights=weights, ema_weights=ema, step=7,
                    meta=meta or {"data": "emoji", "class_names": ["grinning face", "heart"]})
    return path


def _save_scorer(path, distilled=True):
    torch.manual_seed(1)
    model = ClipScorer(SCORER)
    meta = {"data": "emoji"}
    if distilled:
        meta["zh_distillation"] = {"pairs": 2, "steps": 1}
    save_model_file(path, family="clip-scorer", model_config=config_to_dict(SCORER),
                    weights=model.state_dict(), meta=meta)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    plain = _save_ldm(root / "ldm.safetensors")
    scorer = _save_scorer(root / "scorer.safetensors")
    bundled = attach_zh(str(plain), str(root / "ldm-zh.safetensors"), scorer=str(scorer))
    return {"plain": plain, "scorer": scorer, "zh": bundled}


def _draw(model, **kw):
    return model.sample(2, generator=torch.Generator().manual_seed(0), steps=2, **kw)


# ------------------------------------------------------------------ the bundled encoder
def test_attach_zh_bundles_the_scorer_encoder_and_keeps_the_rest(models):
    before, after = load_checkpoint(models["plain"]), load_checkpoint(models["zh"])
    scorer = load_checkpoint(models["scorer"])
    cfg = after.model_config
    assert (cfg["zh_buckets"], cfg["zh_dim"], cfg["zh_hidden"]) == (64, 4, 8)
    assert cfg["zh_source"] == file_sha256(models["scorer"])
    assert after.meta["zh_encoder"]["sha256"] == cfg["zh_source"]
    assert after.meta["data"] == "emoji" and after.step == 7
    zh = {k: v for k, v in scorer.weights.items() if k.startswith("zh.")}
    assert zh and all(torch.equal(after.weights[k], v) and torch.equal(after.ema_weights[k], v)
                      for k, v in zh.items())
    for k, v in before.weights.items():  # raw and EMA weights are carried unchanged
        assert torch.equal(after.weights[k], v) and torch.equal(after.ema_weights[k],
                                                                 before.ema_weights[k]), k
    assert set(after.weights) == set(before.weights) | set(zh)
    model, _ = model_from_checkpoint(models["zh"])
    assert model.zh is not None and not any(p.requires_grad for p in model.zh.parameters())


def test_a_chinese_prompt_is_one_sentence_token_from_the_bundled_encoder(models):
    model, _ = model_from_checkpoint(models["zh"])
    assert model.prompt_route("红色的心") == "sentence"
    vec = model.zh.encode(["红色的心"])
    text = model.sentence_tokens(vec.expand(2, -1), LDM.max_tokens)
    mask = torch.zeros(2, LDM.max_tokens, dtype=torch.bool)
    mask[:, 0] = True
    assert torch.equal(_draw(model, prompt="红色的心"), _draw(model, text=text, text_mask=mask))
    assert not torch.equal(_draw(model, prompt="红色的心"), _draw(model, prompt="一只猫"))
    # English: tokens by default, the sentence route when asked; the two differ
    assert model.prompt_route("a red heart") == "tokens"
    assert model.prompt_route("a red heart", "sentence") == "sentence"
    tokens = _draw(model, prompt="a red heart")
    assert torch.equal(tokens, _draw(model, prompt="a red heart", text_route="tokens"))
    assert not torch.equal(tokens, _draw(model, prompt="a red heart", text_route="sentence"))
    # a mixed batch: each prompt's context is the one it has alone
    mixed = model.sample(2, prompt=["a red heart", "红色的心"], steps=2,
                         generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    alone = model.sample(1, prompt="红色的心", steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mixed[1], alone[0], atol=1e-5)


def test_older_checkpoints_without_the_encoder_still_load_and_say_how_to_attach(models, tmp_path):
    ckpt = load_checkpoint(models["plain"])
    old_config = {k: v for k, v in ckpt.model_config.items() if not k.startswith("zh_")}
    old = tmp_path / "old.safetensors"
    save_model_file(old, family="latent-diffusion", model_config=old_config,
                    weights=ckpt.weights, ema_weights=ckpt.ema_weights, meta=ckpt.meta)
    model, _ = model_from_checkpoint(old)
    assert model.zh is None and model.cfg.zh_buckets == 0
    assert model.prompt_route("a red heart") == "tokens"
    with pytest.raises(ConfigError, match="bundles no Chinese encoder.*attach-zh"):
        model.sample(1, prompt="红色的心", steps=1)


def test_prompt_and_route_errors(models):
    model, _ = model_from_checkpoint(models["zh"])
    for bad in ("", "   "):
        with pytest.raises(ConfigError, match="non-empty"):
            model.sample(1, prompt=bad, steps=1)
    for other in ("кошка", "ねこ", "赤いハート"):  # Cyrillic, kana, kana with Han characters
        with pytest.raises(ConfigError, match="script this model does not read"):
            model.sample(1, prompt=other, steps=1)
    with pytest.raises(ConfigError, match="text_route must be one of auto, tokens, sentence"):
        model.sample(1, prompt="a cat", text_route="words", steps=1)
    with pytest.raises(ConfigError, match="text_route='tokens' is for English"):
        model.sample(1, prompt="红色的心", text_route="tokens", steps=1)
    with pytest.raises(ConfigError, match="applies to prompt strings"):
        model.sample(1, text=torch.randn(1, 3, 384), text_route="sentence", steps=1)
    tokens_only = LatentDiffusion(replace(LDM, sentence_prob=0.0, sentence_scale=0.0))
    with pytest.raises(ConfigError, match="not trained on sentence tokens"):
        tokens_only.sample(1, prompt="a cat", text_route="sentence", steps=1)
    with pytest.raises(ConfigError, match="zh_buckets > 0"):
        replace(LDM, sentence_scale=0.0, zh_buckets=8)
    with pytest.raises(ConfigError, match="zh_buckets must be >= 0"):
        replace(LDM, zh_buckets=-1)


def test_attach_zh_refusals(models, tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    tokens_only = _save_ldm(tmp_path / "t.safetensors",
                            replace(LDM, sentence_prob=0.0, sentence_scale=0.0))
    with pytest.raises(ConfigError, match="not trained on sentence tokens"):
        attach_zh(str(tokens_only), out, scorer=str(models["scorer"]))
    raw = _save_scorer(tmp_path / "raw.safetensors", distilled=False)
    with pytest.raises(ConfigError, match="no distilled Chinese encoder"):
        attach_zh(str(models["plain"]), out, scorer=str(raw))
    with pytest.raises(ConfigError, match="not a 'clip-scorer'"):
        attach_zh(str(models["plain"]), out, scorer=str(models["plain"]))
    with pytest.raises(ConfigError, match="not 'latent-diffusion'"):
        attach_zh(str(models["scorer"]), out, scorer=str(models["scorer"]))
    capsys.readouterr()
    assert ldm_main(["attach-zh", str(models["plain"]), out, "--scorer", str(raw)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no distilled Chinese encoder" in err[0]
    assert ldm_main(["attach-zh", str(models["plain"]), out, "--scorer",
                     str(models["scorer"])]) == 0
    assert load_checkpoint(out).model_config["zh_buckets"] == 64


# ------------------------------------------------------------------ aigc sample and replay
@pytest.mark.parametrize("prompt, flags, route", [
    ("红色的心", [], "sentence"),
    ("a red heart", [], "tokens"),
    ("a red heart", ["--text-route", "sentence"], "sentence"),
])
def test_cli_sample_records_the_route_and_replays_byte_identically(models, tmp_path, prompt,
                                                                   flags, route):
    out, again = tmp_path / "s.png", tmp_path / "r.png"
    assert main(["sample", str(models["zh"]), "--n", "2", "--prompt", prompt, *STEPS, *flags,
                 "--out", str(out)]) == 0
    rec = read_record(out)
    assert (rec["prompt"], rec["text_route"], rec["family"]) == (prompt, route,
                                                                 "latent-diffusion")
    assert rec["options"] == {"sampler": "dpm-solver++", "steps": 2, "guidance": 3.0,
                              "eta": 0.0, "size": 16}
    assert main(["sample", "--replay", str(out), "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_cli_sample_errors_are_one_line(models, tmp_path, capsys):
    def err(*argv):
        capsys.readouterr()
        assert main(["sample", *argv, *STEPS, "--out", str(tmp_path / "e.png")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "attach-zh" in err(str(models["plain"]), "--prompt", "红色的心")
    assert "script this model does not read" in err(str(models["zh"]), "--prompt", "кошка")
    assert "1..500 characters" in err(str(models["zh"]), "--prompt", "  ")
    assert "text_route='tokens' is for English" in err(str(models["zh"]), "--prompt", "红色的心",
                                                       "--text-route", "tokens")
    assert "--text-route applies" in err(str(models["zh"]), "--text-route", "sentence")
    assert "takes --prompt, not --class" in err(str(models["zh"]), "--class", "1")
    assert not (tmp_path / "e.png").exists()


# ------------------------------------------------------------------ the studio
def test_the_studio_serves_english_and_chinese_prompts_and_items_replay(models, tmp_path,
                                                                        capsys):
    settings = make_settings(tmp_path, model_paths=(("ldm", models["zh"]),
                                                    ("ldm-en", models["plain"])))
    with TestClient(create_app(settings)) as client:
        details = {m["id"]: m["details"] for m in client.get("/api/models").json()["models"]}
        d = details["ldm"]
        assert (d["family"], d["conditioning"], d["class_names"]) == ("latent-diffusion", "text",
                                                                      [])
        assert d["prompt_languages"] == ["en", "zh"]
        assert details["ldm-en"]["prompt_languages"] == ["en"]
        assert (d["default_steps"], d["default_guidance"]) == (20, 3.0)
        assert "dpm-solver++" in d["samplers"]
        items = {}
        for prompt in ("a red heart", "红色的心"):
            job = client.post("/api/jobs", json={"kind": "image", "model": "ldm", "n": 1,
                                                 "seed": 5, "steps": 2, "prompt": prompt}).json()
            assert (job["params"]["sampler"], job["params"]["guidance"]) == ("dpm-solver++", 3.0)
            done = wait_job(client, job["id"])
            assert done["status"] == "done", done
            item = client.get(f"/api/items/{done['items'][0]}").json()
            path = tmp_path / f"{len(items)}.png"
            path.write_bytes(client.get(item["url"]).content)
            items[prompt] = (item["record"], path)
        for body, param in (({"prompt": "кошка"}, "prompt"), ({"prompt": "   "}, "prompt"),
                            ({"label": 1}, "label")):
            r = client.post("/api/jobs", json={"kind": "image", "model": "ldm", "n": 1,
                                               "steps": 2, **body})
            assert api_error(r, 400)["param"] == param, r.text
        r = client.post("/api/jobs", json={"kind": "image", "model": "ldm-en", "n": 1,
                                           "prompt": "红色的心"})
        assert "attach-zh" in api_error(r, 400, "unsupported_parameter")["message"]
        r = client.post("/v1/images/generations", json={"model": "ldm", "prompt": "红色的心",
                                                         "n": 1, "steps": 2, "seed": 5})
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["revised_prompt"] == "红色的心"
        v1 = client.get(f"/api/items/{r.json()['data'][0]['item_id']}").json()
        assert v1["record"]["text_route"] == "sentence"
        # the same seed, prompt and options as the /api/jobs item: the same image
        png = Image.open(io.BytesIO(client.get(v1["url"]).content))
        np.testing.assert_array_equal(np.asarray(png), np.asarray(Image.open(items["红色的心"][1])))
    assert items["a red heart"][0]["text_route"] == "tokens"
    assert items["红色的心"][0]["text_route"] == "sentence"
    for rec, path in items.values():
        assert rec["options"] == {"sampler": "dpm-solver++", "steps": 2, "guidance": 3.0,
                                  "eta": 0.0, "size": 16}
        assert rec["label"] is None and rec["class_name"] is None
        capsys.readouterr()
        out = tmp_path / "again.png"
        assert main(["sample", "--replay", str(path), "--out", str(out)]) == 0
        assert "identical pixels" in capsys.readouterr().out
        np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(path)))
        assert read_record(out)["text_route"] == rec["text_route"]
