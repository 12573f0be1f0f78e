"""Text-to-image evaluation (aigc.evaluate.text_to_image, `aigc eval LDM_CHECKPOINT`): a tiny
latent-diffusion model with sentence tokens and a tiny emoji scorer, built here, on a synthetic
emoji-like prepared set (250 concepts, en + zh captions) in a temporary AIGC_CACHE_DIR. One CLI
run (n=100, 2 steps) serves the card tests; the error tests stop before sampling."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aigc.checkpoints import file_sha256, save_model_file
from aigc.cli import main
from aigc.config import config_to_dict
from aigc.data.emoji import PACKAGES, cache_key, load_emoji, retrieval_pairs
from aigc.errors import AigcError
from aigc.evaluate.text_to_image import (
    GRID_PROMPTS,
    GRID_SEEDS,
    LANGS,
    ROUTES,
    SETS,
    ZH_BY_EN,
    evaluate_text_to_image,
    fid_key,
    metric_key,
)
from aigc.media import read_record
from aigc.metrics.card import DIRECTION, MetricCard
from aigc.models.clip_scorer import ClipScorer, ClipScorerConfig
from aigc.models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig

LDM = LatentDiffusionConfig(image_size=64, ae_channels=(4, 4, 4), latent_channels=4,
                            latent_std=1.0, channels=(8, 8), attention_levels=(1,), max_tokens=8,
                            sentence_prob=0.5, sentence_scale=5.0)
SCORER = ClipScorerConfig(channels=(4, 4, 4, 8), embed_dim=8, zh_buckets=64, zh_dim=8,
                          zh_hidden=8)
COLOURS = [("red", "红色", (220, 30, 30)), ("green", "绿色", (30, 200, 60)),
           ("blue", "蓝色", (40, 60, 220)), ("yellow", "黄色", (240, 220, 40)),
           ("purple", "紫色", (140, 40, 180))]
SHAPES = [("circle", "圆形"), ("square", "方块"), ("star", "星星"), ("heart", "爱心"),
          ("cat", "猫"), ("dog", "狗"), ("tree", "树"), ("house", "房子"), ("car", "汽车"),
          ("moon", "月亮")]


def _synthetic_emoji(folder: Path, train: int = 130, test: int = 110, val: int = 10) -> Path:
    """A prepared emoji-like set: one 64x64 image per concept (its colour, a lighter square for
    its shape), CLDR-like en/zh captions, every train concept with held-out strings."""
    g = np.random.default_rng(0)
    images, records = [], []
    for k in range(train + test + val):
        split = "train" if k < train else "test" if k < train + test else "val"
        (en_c, zh_c, rgb), (en_s, zh_s) = COLOURS[k % 5], SHAPES[(k // 5) % 10]
        name, name_zh = f"{en_c} {en_s} {k}", f"{zh_c}{zh_s}{k}号"
        img = np.full((64, 64, 3), rgb, dtype=np.int16)
        side = 8 + 4 * ((k // 5) % 10)
        img[8:8 + side, 8:8 + side] += 30
        img = np.clip(img + g.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
        images.append(img)
        held = split == "train"
        records.append({
            "index": k, "concept": f"C{k:04d}", "concept_name": name, "split": split,
            "skin_tone": None, "style": "noto", "name_en": name, "name_zh": name_zh,
            "captions_en": [name, f"{en_s} {k}"], "captions_zh": [name_zh, f"{zh_s}{k}号"],
            "heldout_captions_en": [f"a {en_c} thing number {k}"] if held else [],
            "heldout_captions_zh": [f"{zh_c}的东西{k}号"] if held else []})
    out = folder / "emoji" / cache_key(PACKAGES)
    out.mkdir(parents=True)
    np.savez(out / "images.npz", images=np.stack(images))
    (out / "records.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return out


def _random_zeros(model: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised layers (output convs, cross-attention projections, the null
    token) small random weights, so the images depend on noise and conditioning."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _save_ldm(path: Path, cfg: LatentDiffusionConfig = LDM, data: str = "emoji") -> Path:
    torch.manual_seed(0)
    model = _random_zeros(LatentDiffusion(cfg))
    return save_model_file(path, family="latent-diffusion", model_config=config_to_dict(cfg),
                           weights={k: v.contiguous() for k, v in model.state_dict().items()},
                           meta={"data": data})


def _save_scorer(path: Path) -> Path:
    torch.manual_seed(0)
    model = ClipScorer(SCORER)
    return save_model_file(path, family="clip-scorer", model_config=config_to_dict(SCORER),
                           weights={k: v.contiguous() for k, v in model.state_dict().items()},
                           meta={"data": "emoji"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIGC_CACHE_DIR", str(root / "cache"))
        data = _synthetic_emoji(root / "cache")
        yield {"root": root, "data": data, "ldm": _save_ldm(root / "ldm.safetensors"),
               "scorer": _save_scorer(root / "scorer.safetensors")}


@pytest.fixture(scope="module")
def run(setup):
    """One `aigc eval` of the tiny model: the card, its Markdown, the grid and the report."""
    root = setup["root"]
    out, report = root / "card", root / "card.html"
    rc = main(["eval", str(setup["ldm"]), "--n", "100", "--steps", "2", "--guidance", "3",
               "--scorer", str(setup["scorer"]), "--out", str(out), "--report", str(report)])
    assert rc == 0
    return {"card": MetricCard.read(root / "card.json"), "md": root / "card.md",
            "grid": root / "card.grid.png", "report": report, **setup}


def test_the_card_has_every_field(run):
    card = run["card"]
    assert card.kind == "text-to-image" and card.subject["family"] == "latent-diffusion"
    for s in SETS:
        for r in ROUTES:
            for m in ("top1", "top5", "clipscore"):
                key = metric_key(s, r, m)
                assert 0 <= card.values[key] <= (1 if m != "clipscore" else 100), key
                assert key in card.baseline, key  # the real images' ceiling
        for m in ("top1", "top5", "clipscore"):
            # zh-prompted images judged against the English captions: the English ceiling
            assert 0 <= card.values[metric_key(s, ZH_BY_EN, m)] <= 100
            assert card.baseline[metric_key(s, ZH_BY_EN, m)] == card.baseline[
                metric_key(s, "en-tokens", m)]
    for r in ROUTES:
        for m in ("fid", "kid_mean", "kid_std"):
            assert np.isfinite(card.values[fid_key(r, m)]) and fid_key(r, m) in card.baseline
    assert card.values["fid"] > 0 and card.baseline["fid"] > 0
    # every number reads with a direction, so `compare` and the report mark better/worse
    numeric = [k for k, v in card.values.items() if isinstance(v, float)]
    assert all(k in DIRECTION for k in numeric), [k for k in numeric if k not in DIRECTION]
    assert len(card.values["retrieval"]) == len(SETS) * (len(ROUTES) + 1)
    goals = card.values["goals"]
    assert set(goals["top5_vs_real_seen_heldout"]["met"]) == set(ROUTES)
    assert isinstance(goals["zh_within_10_points"]["met"], bool)
    # an untrained model's English top-5 is near chance (5%): the zh goal is flagged as empty
    assert goals["zh_within_10_points"]["informative"] is (
        card.values["seen_heldout_en_tokens_top5"] >= 0.1)
    assert goals["zh_within_10_points"]["gap_points"] == pytest.approx(
        100 * (card.values["seen_heldout_en_tokens_top5"]
               - card.values["seen_heldout_zh_sentence_top5"]))
    assert any(n.startswith("Goal 1") for n in card.notes)
    assert any(n.startswith("Goal 2") and ("met" in n) for n in card.notes)
    p = card.protocol
    assert p["n_per_set"] == 100 and p["group"] == 100 and p["seed"] == 0
    assert p["sampling"] == {"sampler": "dpm-solver++", "steps": 2, "guidance": 3.0, "eta": 0.0}
    assert p["scorer"]["sha256"] == file_sha256(run["scorer"])
    assert p["extractor"]["sha256"] == p["scorer"]["sha256"]
    assert "before the projection" in p["extractor"]["name"]
    assert p["routes"] == list(ROUTES) and p["rounds"] == {"seen-heldout": 1, "unseen": 1}
    md = run["md"].read_text(encoding="utf-8")
    assert "seen_heldout_zh_sentence_top5" in md and "Goal 1" in md
    page = run["report"].read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "(the ceiling)" in page


def test_the_prompt_grid_has_its_record(run):
    record = read_record(run["grid"])
    rows = len(SETS) * GRID_PROMPTS * 2  # en-tokens and zh-sentence rows
    assert record["kind"] == "eval-grid" and len(record["rows"]) == rows
    assert record["model_sha256"] == file_sha256(run["ldm"])
    assert {r["route"] for r in record["rows"]} == {"en-tokens", "zh-sentence"}
    assert all(len(r["seeds"]) == GRID_SEEDS for r in record["rows"])
    from PIL import Image

    with Image.open(run["grid"]) as img:  # 2x upscaled tiles of 64 px with 2 px padding
        assert img.size == (2 * (2 + (1 + GRID_SEEDS) * 66), 2 * (2 + rows * 66))


def test_real_image_retrieval_is_what_the_scorer_gives_directly(run):
    """The ceiling rows: recompute with ClipScorer.retrieval/score on the same pairs."""
    from aigc.models import model_from_checkpoint

    scorer, _ = model_from_checkpoint(run["scorer"])
    card = run["card"]
    for s, split, held in (("seen-heldout", "train", True), ("unseen", "test", False)):
        data = load_emoji(split, path=run["data"])
        pairs = retrieval_pairs(data.records, held_out=held, langs=LANGS, seed=0)[:100]
        images = data.images[torch.tensor([i for i, _ in pairs])].float() / 255
        for k, route in enumerate(("en-tokens", "zh-sentence")):  # LANGS order: en, zh
            captions = [c[k] for _, c in pairs]
            top = scorer.retrieval(images, captions, k=5)  # (100, 5) caption indices
            own = torch.arange(100)[:, None]
            assert card.baseline[metric_key(s, route, "top1")] == pytest.approx(
                float((top[:, :1] == own).any(1).float().mean()))
            assert card.baseline[metric_key(s, route, "top5")] == pytest.approx(
                float((top == own).any(1).float().mean()))
            assert card.baseline[metric_key(s, route, "clipscore")] == pytest.approx(
                float(scorer.score(images, captions).double().mean()), rel=1e-5)


def test_compare_accepts_the_same_protocol(run, capsys):
    card = run["root"] / "card.json"
    assert main(["eval", "compare", str(card), str(card)]) == 0
    assert "seen_heldout_en_tokens_top5" in capsys.readouterr().out


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys):
    ldm, scorer = str(setup["ldm"]), str(setup["scorer"])
    for n in ("50", "250"):
        err = _error(["eval", ldm, "--n", n, "--scorer", scorer], capsys)
        assert "multiple of 100" in err and n in err
    # a non-latent-diffusion checkpoint given the text-to-image options
    err = _error(["eval", scorer, "--scorer", scorer, "--n", "100"], capsys)
    assert "apply to latent-diffusion checkpoints" in err and "clip-scorer" in err
    # a scorer that is not a scorer
    err = _error(["eval", ldm, "--scorer", ldm, "--n", "100"], capsys)
    assert "not a clip-scorer" in err
    err = _error(["eval", ldm, "--scorer", scorer, "--routes", "en-tokens,fr-sentence"], capsys)
    assert "fr-sentence" in err and "en-tokens, en-sentence, zh-sentence" in err
    err = _error(["eval", ldm, "--scorer", scorer, "--n", "100", "--sampler", "euler"], capsys)
    assert "sampler must be one of" in err and "'euler'" in err
    # a model without sentence tokens cannot run the sentence routes
    from dataclasses import replace

    plain = _save_ldm(tmp_path / "plain.safetensors", replace(LDM, sentence_prob=0.0,
                                                              sentence_scale=0.0))
    err = _error(["eval", str(plain), "--scorer", scorer, "--n", "100"], capsys)
    assert "sentence_prob > 0" in err and "en-tokens only" in err
    other = _save_ldm(tmp_path / "mnist.safetensors", data="mnist")
    err = _error(["eval", str(other), "--scorer", scorer], capsys)
    assert "emoji" in err and "'mnist'" in err


def test_the_function_refuses_other_models_and_small_sets(setup):
    from aigc.models import model_from_checkpoint

    scorer, _ = model_from_checkpoint(setup["scorer"])
    ldm, _ = model_from_checkpoint(setup["ldm"])
    with pytest.raises(AigcError, match="needs a latent-diffusion model, got ClipScorer"):
        evaluate_text_to_image(scorer, scorer, n=100)
    with pytest.raises(AigcError, match="the scorer must be a clip-scorer"):
        evaluate_text_to_image(ldm, ldm, n=100)
    # fewer than 100 unseen concepts: no group can be formed
    small = load_emoji("test", path=setup["data"])
    small.records = small.records[:60]
    datasets = {"seen-heldout": load_emoji("train", path=setup["data"]), "unseen": small}
    with pytest.raises(AigcError, match="unseen set .* fewer than 100 concepts"):
        evaluate_text_to_image(ldm, scorer, n=100, datasets=datasets, progress=False)


def test_retrieval_pairs_share_images_across_languages(setup):
    data = load_emoji("train", path=setup["data"])
    both = retrieval_pairs(data.records, held_out=True, langs=("en", "zh"), seed=3)
    assert len(both) == 100  # 130 concepts: one group, leftovers dropped
    assert len({data.records[i]["concept"] for i, _ in both}) == 100
    for i, (en, zh) in both:
        assert en in data.records[i]["heldout_captions_en"]
        assert zh in data.records[i]["heldout_captions_zh"]
    with pytest.raises(AigcError, match="langs must be"):
        retrieval_pairs(data.records, held_out=True, langs=("fr",))


def test_images_do_not_depend_on_the_batch_size(setup):
    """Image i is drawn from its own generator: batches of 2 and of 6 give the same images."""
    from aigc.evaluate.text_to_image import _generate
    from aigc.models import model_from_checkpoint

    ldm, _ = model_from_checkpoint(setup["ldm"])
    captions = [f"a red thing number {k}" for k in range(6)]
    vectors = torch.nn.functional.normalize(torch.randn(6, 384, generator=torch.Generator()
                                                        .manual_seed(0)), dim=-1)
    options = {"sampler": "dpm-solver++", "steps": 2, "guidance": 3.0, "eta": 0.0}

    class Bar:
        def update(self, k):
            pass

    for route in ("en-tokens", "zh-sentence"):
        a = _generate(ldm, route, captions, vectors, list(range(6)), options, 2, Bar())
        b = _generate(ldm, route, captions, vectors, list(range(6)), options, 6, Bar())
        assert torch.allclose(a, b, atol=1e-5)
        c = _generate(ldm, route, captions, vectors, list(range(1, 7)), options, 6, Bar())
        assert not torch.allclose(a, c, atol=1e-3)  # the seeds do matter
