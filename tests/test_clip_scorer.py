"""The CLIP-style scorer (aigc.models.clip_scorer), its Chinese student (aigc.models.text_zh), its
metrics (aigc.metrics.clip_score) and real CLIP folders. Tiny models, seconds in all."""

import dataclasses
import json
import math
import string

import pytest
import torch

from aigc.errors import AigcError
from aigc.metrics.clip_score import CaptionRetrieval, ClipScore
from aigc.models.clip_scorer import (
    ClipScorer,
    ClipScorerConfig,
    clip_score_from_cosine,
    load_local_clip,
    recall_at_k,
)
from aigc.models.text_zh import ZhTextEncoder, caption_pairs, distill, has_cjk, ngram_ids

TINY = ClipScorerConfig(image_size=16, channels=(4, 8), embed_dim=8, zh_buckets=256, zh_dim=8,
                        zh_hidden=16)


def _synthetic(n_concepts=8, per=4, seed=0):
    """Each concept: a colour (its images: that colour + noise) and a random text vector."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(n_concepts, 3, 1, 1, generator=g)
    concept = torch.arange(n_concepts).repeat_interleave(per)
    images = (colours[concept] + 0.05 * torch.randn(len(concept), 3, 16, 16, generator=g)).clamp(
        0, 1)
    texts = torch.nn.functional.normalize(torch.randn(n_concepts, 384, generator=g), dim=-1)
    return {"image": images, "text": texts[concept], "concept": concept}


def _stub_text(model, table: dict[str, torch.Tensor]):
    """Replace MiniLM by a lookup table (no weights needed for these tests)."""
    model.sentence_embeddings = lambda texts: torch.stack([table[t] for t in texts])


def test_loss_decreases_on_a_tiny_synthetic_set():
    torch.manual_seed(0)
    model = ClipScorer(dataclasses.replace(TINY, channels=(8, 16), embed_dim=16))
    batch = _synthetic()  # 8 concepts x 4 images
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        first = float(model.loss(batch))
    for _ in range(40):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(model.loss(batch))
        img = model.encode_images(batch["image"])
        txt = model.project_text(batch["text"])
    # The floor of the multi-positive loss is the entropy of its targets: log(4 positives).
    assert first > 3.0 and last < math.log(4) + 0.1
    assert torch.equal((img @ txt.T).argmax(1) // 4, batch["concept"])


def test_same_concept_items_are_positives_of_each_other():
    model = ClipScorer(TINY)
    batch = _synthetic(n_concepts=2, per=3)
    with torch.no_grad():
        model.logit_scale.fill_(0.0)  # scale 1
        img = torch.nn.functional.normalize(model.image_encoder(batch["image"]), dim=-1)
        txt = torch.nn.functional.normalize(model.text_projection(batch["text"]), dim=-1)
        logits = img @ txt.T
        same = (batch["concept"][:, None] == batch["concept"][None]).float() / 3
        want = -(same * logits.log_softmax(1)).sum(1).mean() / 2 \
            - (same * logits.T.log_softmax(1)).sum(1).mean() / 2
        assert torch.allclose(model.loss(batch), want)


def test_score_hand_value_and_retrieval_shapes():
    model = ClipScorer(TINY)
    with torch.no_grad():  # image -> (1, 0, 0, ...), every text -> (1, 1, 0, ...): cos = 1/sqrt 2
        model.image_encoder.proj.weight.zero_()
        model.image_encoder.proj.bias.zero_()
        model.image_encoder.proj.bias[0] = 1.0
        model.text_projection.weight.zero_()
        model.text_projection.bias.zero_()
        model.text_projection.bias[:2] = 1.0
    _stub_text(model, {"a": torch.ones(384), "b": -torch.ones(384), "c": torch.zeros(384)})
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(model.score(images, ["a", "b"]), torch.full((2,), 100 / math.sqrt(2)))
    top = model.retrieval(torch.rand(4, 3, 16, 16), ["a", "b", "c"], k=2)
    assert top.shape == (4, 2) and top.dtype == torch.int64
    assert torch.equal(clip_score_from_cosine(torch.tensor([-0.5, 0.0, 0.25, 1.0])),
                       torch.tensor([0.0, 0.0, 25.0, 100.0]))


def test_recall_at_k_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.3, 0.4, 0.2]])
    # row 0: own best (rank 0); row 1: one above (rank 1); row 2: two above (rank 2)
    assert recall_at_k(sim, 1).tolist() == [True, False, False]
    assert recall_at_k(sim, 2).tolist() == [True, True, False]
    assert recall_at_k(torch.eye(3).fill_(1.0), 1).tolist() == [False, False, False]  # ties lose


@pytest.mark.parametrize("bad, argument", [
    (torch.rand(2, 3, 32, 32), "images must be a (N, 3, 16, 16)"),
    (torch.rand(2, 16, 16), "images must be a (N, 3, 16, 16)"),
    (torch.rand(0, 3, 16, 16), "images is empty"),
    (torch.rand(2, 3, 16, 16) * 255, "images must lie in [0, 1]"),
])
def test_bad_images_name_the_argument(bad, argument):
    model = ClipScorer(TINY)
    _stub_text(model, {"a": torch.ones(384)})
    with pytest.raises(AigcError) as exc:
        model.score(bad, ["a", "a"])
    assert argument in str(exc.value)


def test_bad_captions_name_the_argument():
    model = ClipScorer(TINY)
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(AigcError, match="captions is an empty list"):
        model.retrieval(images, [], k=1)
    with pytest.raises(AigcError, match=r"captions\[1\] must be a non-empty string"):
        model.retrieval(images, ["a", "  "], k=1)
    with pytest.raises(AigcError, match="texts must be a list of strings"):
        model.score(images, "a dog")
    _stub_text(model, {"a": torch.ones(384)})
    with pytest.raises(AigcError, match=r"k must be in \[1, 1\]"):
        model.retrieval(images, ["a"], k=2)
    with pytest.raises(AigcError, match="must pair up"):
        model.score(images, ["a"])


# ------------------------------------------------------------------------------ metrics


def test_metrics_do_not_depend_on_batch_size():
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(250, 16, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.8 * torch.randn(250, 16, generator=g), dim=-1)
    results = []
    for size in (250, 7, 100):
        score, retr = ClipScore(), CaptionRetrieval(group=100)
        for s in range(0, 250, size):
            score.update_embeddings(img[s : s + size], txt[s : s + size])
            retr.update_embeddings(img[s : s + size], txt[s : s + size])
        results.append((score.compute(), retr.compute()))
    for score, retrieval in results[1:]:  # float64 sums in another order: equal to ~1e-15
        assert score == pytest.approx(results[0][0], rel=1e-12)
        assert retrieval == results[0][1]
    assert results[0][1]["groups"] == 2 and results[0][1]["left_out"] == 50
    assert 0.05 < results[0][1]["top1"] <= 1.0


def test_metric_pinned_values_and_reset():
    score = ClipScore()
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    score.update_embeddings(img, txt)  # cos 0.6, 1.0, -1 -> 60, 100, 0
    assert score.compute() == pytest.approx(160 / 3, abs=1e-12)
    score.reset()
    with pytest.raises(AigcError, match="no pairs"):
        score.compute()
    retr = CaptionRetrieval(group=3, ks=(1, 2))
    retr.update_embeddings(torch.eye(3), torch.tensor([[1.0, 0.5, 0], [0, 0.1, 0], [0, 0, 1.0]]))
    # image 1 scores captions (0.5, 0.1, 0): its own (0.1) is second; images 0 and 2: first
    assert retr.compute() == {"top1": 2 / 3, "top2": 1.0, "groups": 1, "queries": 3,
                              "left_out": 0}


def test_metric_update_with_an_encoder():
    model = ClipScorer(TINY)
    _stub_text(model, {"a": torch.ones(384), "b": -torch.ones(384)})
    images = torch.rand(2, 3, 16, 16)
    metric = ClipScore(model)
    metric.update(images, ["a", "b"])
    assert metric.compute() == pytest.approx(float(model.score(images, ["a", "b"]).mean()),
                                             abs=1e-4)


# ------------------------------------------------------------------------------ Chinese


def test_chinese_student_learns_a_toy_pair_set():
    zh = ["小狗", "小猫", "红色的苹果", "绿色的苹果", "汽车", "飞机"]
    targets = torch.linalg.qr(torch.randn(384, 6, generator=torch.Generator().manual_seed(0)))[0].T
    enc = ZhTextEncoder(buckets=512, dim=16, hidden=32)
    torch.manual_seed(0)
    losses = distill(enc, zh, targets, steps=150, batch_size=6, lr=1e-2)
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        sims = enc.encode(zh) @ targets.T
    assert sims.argmax(1).tolist() == list(range(6))
    assert enc.encode(["小狗"]).norm().item() == pytest.approx(1.0, abs=1e-5)


def test_chinese_features_and_errors():
    assert has_cjk("一只狗") and not has_cjk("a dog")
    assert ngram_ids("小狗", 64) == ngram_ids("小狗", 64) and len(ngram_ids("小狗", 64)) == 3
    assert ngram_ids("小狗，猫", 64) == ngram_ids("小狗", 64) + ngram_ids("猫", 64)
    enc = ZhTextEncoder(buckets=64, dim=4, hidden=8)
    with pytest.raises(AigcError, match="texts is an empty list"):
        enc.encode([])
    with pytest.raises(AigcError, match="has no characters"):
        enc.encode(["，。"])
    with pytest.raises(AigcError, match="targets must be"):
        distill(enc, ["狗"], torch.zeros(1, 3))


def test_caption_pairs_keep_only_training_chinese_captions():
    record = {"name_zh": "狗", "name_en": "dog", "keywords_zh": ["狗", "宠物"],
              "keywords_en": ["dog", "pet"], "captions_zh": ["狗", "狗，宠物"],
              "heldout_captions_zh": []}
    pairs = caption_pairs([record])
    assert ("狗", "dog") in pairs and ("狗，宠物", "dog, pet") in pairs
    assert all(zh in record["captions_zh"] for zh, _ in pairs)
    record["captions_zh"] = ["狗"]  # "狗，宠物" held out: its pair is dropped
    assert caption_pairs([record]) == [("狗", "dog")]


def test_chinese_text_goes_through_the_student():
    model = ClipScorer(TINY)
    emb = model.sentence_embeddings(["小狗"])
    with torch.no_grad():
        assert torch.allclose(emb, model.zh.encode(["小狗"]))


# ------------------------------------------------------------------------------ real CLIP


def _tiny_clip_folder(root):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=32,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1, **small),
                     vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=8)
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    folder = root / "clip"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def test_local_clip_folder_loads_and_matches_transformers(tmp_path):
    folder, model, tokenizer = _tiny_clip_folder(tmp_path)
    clip = load_local_clip(folder)
    images, texts = torch.rand(3, 3, 64, 64), ["a dog", "cat", "x"]
    assert clip.preprocess(images).shape == (3, 3, 32, 32)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=clip.preprocess(images)).logits_per_image / model.logit_scale.exp()
    ours = clip.encode_images(images) @ clip.encode_texts(texts).T
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(clip.score(images, texts), 100 * ours.diagonal().clamp(min=0), atol=1e-4)
    assert clip.retrieval(images, texts, k=2).shape == (3, 2)


def test_local_clip_refuses_pickles_and_non_clip_folders(tmp_path):
    folder, _, _ = _tiny_clip_folder(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(AigcError, match=r"only pickled weights \(pytorch_model.bin\).*safetensors"):
        load_local_clip(folder)
    with pytest.raises(AigcError, match="does not exist"):
        load_local_clip(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(AigcError, match="no config.json"):
        load_local_clip(tmp_path / "other")


# ------------------------------------------------------------------------------ the shipped file


def test_shipped_scorer_loads_from_safetensors_and_matches_its_card():
    from aigc.checkpoints import file_sha256
    from aigc.models import model_from_checkpoint
    from aigc.registry import STARTERS_DIR

    path = STARTERS_DIR / "clip-scorer-emoji.safetensors"
    card = json.loads((STARTERS_DIR / "clip-scorer-emoji.card.json").read_text())
    assert card["sha256"] == file_sha256(path) and path.stat().st_size < 5_000_000
    model, ckpt = model_from_checkpoint(path)
    assert ckpt.family == "clip-scorer" and isinstance(model, ClipScorer)
    assert ckpt.meta["zh_distillation"]["last_loss"] < 0.5  # the Chinese student was trained
    with torch.no_grad():  # distilled: 狗 lands nearer 小狗 than 汽车 (car)
        dog, puppy, car = model.zh.encode(["狗", "小狗", "汽车"])
    assert float(dog @ puppy) > float(dog @ car)


def test_training_data_names_the_only_dataset_it_takes():
    from aigc.errors import ConfigError
    from aigc.models.clip_scorer import CaptionedImages, training_data

    with pytest.raises(ConfigError, match="--data emoji, not 'mnist'"):
        training_data("mnist")
    with pytest.raises(AigcError, match="at least one caption"):
        CaptionedImages(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(1), [[]],
                        torch.zeros(0, 384))
    data = CaptionedImages(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([0, 1]),
                           [[0, 1], [2]], torch.eye(3, 384))
    batch = data.get_batch(torch.tensor([1, 0]))
    assert batch["image"].dtype == torch.float32 and batch["concept"].tolist() == [1, 0]
    assert batch["text"][0].argmax() == 2 and batch["text"][1].argmax() in (0, 1)


def test_a_caption_cache_whose_rows_do_not_match_its_texts_is_refused(tmp_path):
    """Texts and rows of a damaged (or foreign) cache would be paired wrongly and silently."""
    import json

    import pytest
    import torch
    from safetensors.torch import save_file

    from aigc.errors import AigcError
    from aigc.models.clip_scorer import minilm_cache

    cache = tmp_path / "captions.safetensors"
    save_file({"embeddings": torch.zeros(3, 384)}, str(cache),
              metadata={"texts": json.dumps(["a cat", "a dog"])})
    with pytest.raises(AigcError, match="delete it to recompute"):
        minilm_cache(["a cat"], cache)
