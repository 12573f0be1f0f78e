"""The closed loop: feedback with raters (and deleting one's own), a reproducible preference
export, the analysis report, improvement into a registered candidate, gated promotion,
rollback, and the studio following production without a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from fastapi.testclient import TestClient
from studio_fixtures import make_settings, wait_job

from aigc.checkpoints import save_model_file
from aigc.cli import main
from aigc.config import config_to_dict
from aigc.errors import AigcError
from aigc.loop.export import build_preferences, export_dataset, load_dataset, split_of
from aigc.loop.report import bradley_terry, feedback_report, wilson_interval
from aigc.models.diffusion import Diffusion, DiffusionConfig
from aigc.registry import Registry
from aigc.studio.app import create_app

TINY = dict(image_size=8, channels=(4, 8), attention_levels=(1,), num_train_timesteps=20,
            num_classes=3)
A = {"X-Aigc-Rater": "rater-aaaa"}
B = {"X-Aigc-Rater": "rater-bbbb"}


def _tiny(path, seed=0):
    torch.manual_seed(seed)
    model = Diffusion(DiffusionConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model_file(path, family="diffusion", model_config=config_to_dict(model.cfg),
                    weights=model.state_dict(),
                    meta={"data": "test", "class_names": ["zero", "one", "two"]})
    return path


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A registry with 'tiny' v1 in production, and studio settings that serve it."""
    monkeypatch.setenv("AIGC_REGISTRY", str(tmp_path / "registry"))
    reg = Registry()
    reg.register("tiny", _tiny(tmp_path / "tiny.safetensors"), alias="production")
    settings = make_settings(tmp_path, registry_dir=reg.root, registry_names=("tiny",),
                             models_dir=None)
    return reg, settings


def _images(client, label, seeds, headers=None):
    job = client.post("/api/jobs", json={"kind": "image", "model": "tiny", "n": len(seeds),
                                         "seed": seeds[0], "label": label, "steps": 2},
                      headers=headers).json()
    return wait_job(client, job["id"])["items"]


def test_feedback_has_raters_flags_signals_and_each_person_deletes_their_own(served):
    _, settings = served
    with TestClient(create_app(settings)) as client:
        x, y = _images(client, 1, [1, 2])
        assert client.post(f"/api/items/{x}/ratings", json={"stars": 5}, headers=A).status_code \
            == 201
        assert client.post(f"/api/items/{y}/ratings", json={"stars": 1}, headers=B).status_code \
            == 201
        r = client.post(f"/api/items/{y}/flags", json={"reason": "other"}, headers=A)
        assert r.status_code == 400 and r.json()["error"]["param"] == "note"
        flag = client.post(f"/api/items/{y}/flags", json={"reason": "wrong_content"},
                           headers=A).json()
        assert flag["rater"] == "anon:rater-aaaa" and flag["value"] == "wrong_content"
        assert client.post(f"/api/items/{x}/signals", json={"signal": "download"},
                           headers=A).status_code == 201
        assert client.post(f"/api/items/{x}/signals", json={"signal": "print"},
                           headers=A).status_code in (400, 422)
        assert client.post(f"/api/items/{x}/ratings", json={"stars": 3},
                           headers={"X-Aigc-Rater": "bad id!"}).status_code == 400
        mine = client.get("/api/feedback", headers=A).json()["feedback"]
        assert sorted(f["kind"] for f in mine) == ["flag", "signal", "stars"]
        theirs = client.get("/api/feedback", headers=B).json()["feedback"]
        r = client.delete(f"/api/feedback/{theirs[0]['id']}", headers=A)
        assert r.status_code == 403
        assert client.delete(f"/api/feedback/{flag['id']}", headers=A).status_code == 204
        assert client.delete(f"/api/feedback/{flag['id']}", headers=A).status_code == 404
        assert client.delete("/api/feedback", headers=B).json() == {"deleted": 1}
        left = client.app.state.studio.store.list_feedback()
        assert {f["rater"] for f in left} == {"anon:rater-aaaa"} and len(left) == 2
        page = client.get("/api/feedback/report")
        assert page.status_code == 200 and "Worst-rated items" in page.text


def _rate_pairs(client, n=6):
    """Comparisons between items of the same class; rater A always prefers the higher seed."""
    items = _images(client, 2, list(range(10, 10 + 2 * n)))
    for i in range(n):
        a, b = items[2 * i], items[2 * i + 1]
        client.post("/api/comparisons", json={"a": a, "b": b, "winner": "b"}, headers=A)
    return items


def test_export_is_reproducible_keeps_splits_and_drops_deleted_feedback(served, tmp_path,
                                                                        capsys):
    _, settings = served
    with TestClient(create_app(settings)) as client:
        items = _rate_pairs(client)
        store = client.app.state.studio.store
        # a comparison across classes says nothing about either: skipped, with the reason
        other = _images(client, 0, [99])[0]
        client.post("/api/comparisons", json={"a": items[0], "b": other, "winner": "a"},
                    headers=A)
        first = export_dataset(store.feedback_snapshot("tiny"), store.files_dir,
                               tmp_path / "ex", model="tiny", family="diffusion")
        again = export_dataset(store.feedback_snapshot("tiny"), store.files_dir,
                               tmp_path / "ex2", model="tiny", family="diffusion")
        assert first.name == again.name  # the id is the content's hash
        for f in ("pairs.jsonl", "ratings.jsonl", "card.json"):
            assert (first / f).read_bytes() == (again / f).read_bytes()
        card, pairs, _ = load_dataset(tmp_path / "ex")
        assert card["pairs"] == 6 and card["skipped"] == {"different_condition": 1}
        assert all(p["split"] == split_of(p["chosen_file"], p["rejected_file"]) for p in pairs)
        assert all(p["chosen"] == items[2 * i + 1] for i, p in enumerate(
            sorted(pairs, key=lambda p: items.index(p["rejected"]))))
        old_splits = {p["id"]: p["split"] for p in pairs}
        # new feedback arrives: old pairs keep their split; a deleted vote leaves the export
        more = _images(client, 2, [50, 51])
        client.post("/api/comparisons", json={"a": more[0], "b": more[1], "winner": "a"},
                    headers=B)
        gone = [f for f in store.list_feedback(rater="anon:rater-aaaa")
                if f["kind"] == "comparison" and f["item_id"] == items[0]][0]
        assert client.delete(f"/api/feedback/{gone['id']}", headers=A).status_code == 204
        newer = export_dataset(store.feedback_snapshot("tiny"), store.files_dir,
                               tmp_path / "ex", model="tiny", family="diffusion")
        card2, pairs2, _ = load_dataset(tmp_path / "ex")
        assert newer.name != first.name and (tmp_path / "ex" / first.name).is_dir()
        assert all(old_splits[p["id"]] == p["split"] for p in pairs2 if p["id"] in old_splits)
        assert items[0] not in {p["chosen"] for p in pairs2} | {p["rejected"] for p in pairs2}
        assert card2["pairs"] == 6  # 6 - 1 deleted + 1 new
    capsys.readouterr()
    code = main(["feedback", "export", "--studio-data", str(settings.data_dir), "--model",
                 "nothing-here", "--out", str(tmp_path / "none")])
    assert code == 2 and "no preference pairs" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_stars_make_pairs_within_a_model_and_condition():
    items = {f"i{k}": {"id": f"i{k}", "file": f"{k:064x}.png", "kind": "image",
                       "model": "m", "model_sha256": "s", "prompt": None, "text": None,
                       "record": {"label": k % 2}} for k in range(4)}
    fb = [{"id": k, "kind": "stars", "item_id": f"i{k}", "other_id": None, "value": str(s),
           "score": float(s), "rater": "r", "created": 0.0}
          for k, s in enumerate([5, 4, 2, 4])]
    data = build_preferences({"items": items, "feedback": fb, "last_id": 3})
    # label 0: i0 (5) vs i2 (2) -> a pair; label 1: i1 (4) vs i3 (4) -> none (gap < 1)
    assert [(p["chosen"], p["rejected"], p["source"]) for p in data.pairs] == \
        [("i0", "i2", "stars")]


def test_report_statistics():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(8, 10)
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95  # the textbook 80% of 10 interval
    games = [("a", "b")] * 75 + [("b", "a")] * 25 + [("b", "c")] * 75 + [("c", "b")] * 25
    elo = bradley_terry(games)
    assert elo["a"] > elo["b"] > elo["c"]
    # P(a beats b) = 3/4 -> 400 log10(3) = 191 Elo points (shrunk a little by the prior)
    assert 150 < elo["a"] - elo["b"] < 195


def test_improve_registers_a_candidate_and_refuses_foreign_datasets(served, tmp_path, capsys):
    reg, settings = served
    with TestClient(create_app(settings)) as client:
        _rate_pairs(client, n=8)
        store = client.app.state.studio.store
        folder = export_dataset(store.feedback_snapshot("tiny"), store.files_dir,
                                tmp_path / "ex", model="tiny", family="diffusion")
    assert main(["improve", "tiny", "--feedback", str(tmp_path / "ex"), "--steps", "3",
                 "--batch-size", "4", "--no-progress"]) == 0
    cand = reg.resolve("tiny@candidate")
    assert cand.version == 2 and cand.parent == "tiny@v1"
    assert cand.feedback["dataset"] == folder.name
    assert reg.resolve("tiny@production").version == 1  # not promoted by improve
    capsys.readouterr()
    reg.register("other", _tiny(tmp_path / "other.safetensors", seed=1), alias="production")
    assert main(["improve", "other", "--feedback", str(folder), "--steps", "1"]) == 2
    assert "a dataset made for another model" in capsys.readouterr().err
    from aigc.models.gan import GAN, GANConfig

    gan = GAN(GANConfig(image_size=8, latent_dim=8, channels=8, num_classes=3))
    save_model_file(tmp_path / "g.safetensors", family="gan", model_config=config_to_dict(
        gan.cfg), weights=gan.state_dict(), meta={"data": "test"})
    with pytest.raises(AigcError, match="gan"):
        reg.register("tiny", tmp_path / "g.safetensors")  # another family under one name
    reg.register("g", tmp_path / "g.safetensors", alias="production")
    assert main(["improve", "g", "--feedback", str(folder), "--steps", "1",
                 "--allow-other-model"]) == 2
    assert "diffusion items" in capsys.readouterr().err


def test_promotion_gate_rollback_and_a_race(served, tmp_path, monkeypatch, capsys):
    reg, _ = served
    reg.register("tiny", _tiny(tmp_path / "v2.safetensors", seed=2), alias="candidate")
    from aigc.loop import promotion
    from aigc.metrics.card import MetricCard

    fids = {}

    def fake_measure(path, *, n, seed=0, progress=False):  # the gate's decision, not FID
        return MetricCard(kind="image", subject={}, protocol={"data": "test", "n": n},
                          values={"fid": fids[str(path)], "conditional_accuracy": 0.9},
                          baseline={})

    monkeypatch.setattr(promotion, "measure", fake_measure)
    v1, v2 = reg.resolve("tiny@v1"), reg.resolve("tiny@v2")
    fids.update({str(v1.path): 10.0, str(v2.path): 11.5})  # 15% worse: refused
    assert main(["models", "promote", "tiny"]) == 2
    assert "more than 10% above" in capsys.readouterr().err
    assert reg.resolve("tiny@production").version == 1
    fids[str(v2.path)] = 10.5  # 5% worse: within tolerance
    assert main(["models", "promote", "tiny", "--n", "100"]) == 0
    assert reg.resolve("tiny@production").version == 2
    hist = reg.state("tiny")["history"][-1]
    assert hist["gate"]["passed"] and hist["gate"]["candidate"]["fid"] == 10.5
    # each version keeps the card it was measured with (its latest gate run)
    assert reg.cards("tiny", 2)["gate-image-n100-seed0"]["values"]["fid"] == 10.5
    assert reg.cards("tiny", 1)["gate-image-n100-seed0"]["values"]["fid"] == 10.0
    assert main(["models", "rollback", "tiny", "--reason", "users prefer v1"]) == 0
    assert reg.resolve("tiny@production").version == 1
    # a promotion that read production before another one moved it writes nothing
    reg.promote("tiny", "v2", reason="other admin", forced=True)
    with pytest.raises(AigcError, match="moved from v1 to v2"):
        reg.promote("tiny", "v1", reason="stale", expected_production=1)
    assert reg.resolve("tiny@production").version == 2


def test_a_kill_during_promotions_leaves_one_consistent_production(served, tmp_path):
    reg, _ = served
    reg.register("tiny", _tiny(tmp_path / "v2.safetensors", seed=2))
    script = ("import sys\nfrom aigc.registry import Registry\nr = Registry(sys.argv[1])\n"
              "i = 0\nwhile True:\n    i += 1\n"
              "    r.promote('tiny', 'v2' if i % 2 else 'v1', reason='flip', forced=True)\n")
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", script, str(reg.root)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = json.loads((reg.root / "tiny" / "aliases.json").read_text())
        assert state["aliases"]["production"] in (1, 2)
        assert state["history"][-1]["to"] == state["aliases"]["production"]
        assert reg.resolve("tiny@production").version in (1, 2)


def test_the_studio_follows_production_without_a_restart(served, tmp_path):
    reg, settings = served
    with TestClient(create_app(settings)) as client:
        first = client.get(f"/api/items/{_images(client, 1, [5])[0]}").json()
        assert first["record"]["checkpoint"] == "tiny@v1"
        v2 = reg.register("tiny", _tiny(tmp_path / "v2.safetensors", seed=3), alias="candidate")
        reg.promote("tiny", "v2", reason="test", forced=True)
        assert client.app.state.registry_watcher.sync() == ["tiny"]
        second = client.get(f"/api/items/{_images(client, 1, [5])[0]}").json()
        assert second["record"]["checkpoint"] == "tiny@v2"
        assert second["model_sha256"] == v2.sha256 != first["model_sha256"]
        lineage = client.get("/api/models/tiny/lineage").json()
        assert lineage["serving"] == 2 and lineage["versions"][1]["parent"] is None
        assert [h["action"] for h in lineage["history"]] == ["register", "register", "promote"]
        # the first item still names the version that made it
        assert client.get(f"/api/items/{first['id']}").json()["record"]["checkpoint"] == \
            "tiny@v1"


def test_report_page_has_plots_and_sections():
    items = {f"i{k}": {"id": f"i{k}", "file": f"{k:064x}.png", "kind": "image", "job_id": "j",
                       "model": "m", "model_sha256": "s1" if k < 4 else "s2", "prompt": None,
                       "text": None, "seed": k, "record": {"label": k % 2, "class_name": "c",
                                                           "options": {"sampler": "ddim",
                                                                       "steps": 5}}}
             for k in range(8)}
    fb = [{"id": k, "kind": "stars", "item_id": f"i{k}", "other_id": None, "value": "3",
           "score": float(1 + k % 5), "rater": f"r{k % 3}", "created": 1e9 + 3600 * k}
          for k in range(8)]
    fb += [{"id": 100 + k, "kind": "comparison", "item_id": f"i{k}", "other_id": f"i{k + 4}",
            "value": "b", "score": None, "rater": "r0", "created": 1e9} for k in range(4)]
    page = feedback_report({"items": items, "feedback": fb, "last_id": 103},
                           labels={"s1": "m@v1", "s2": "m@v2"})
    for section in ("Bradley–Terry", "By model version", "By class", "By sampler",
                    "Rater agreement", "Drift over time", "Worst-rated items"):
        assert section in page, section
    assert page.count("data:image/png;base64,") >= 4 and "m@v2" in page


def test_improve_and_promote_run_as_studio_jobs(served, monkeypatch):
    reg, settings = served
    from aigc.loop import promotion
    from aigc.metrics.card import MetricCard

    monkeypatch.setattr(promotion, "measure", lambda path, *, n, seed=0, progress=False:
                        MetricCard(kind="image", subject={}, protocol={"data": "test", "n": n},
                                   values={"fid": 10.0 + ("v2" in str(path)) * 5,
                                           "conditional_accuracy": 0.9}, baseline={}))
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/models/tiny/improve", json={"steps": 2, "batch_size": 4})
        assert r.status_code == 202
        job = wait_job(client, r.json()["id"])
        assert job["status"] == "failed" and "no preference pairs" in job["error"]
        _rate_pairs(client, n=6)
        job = wait_job(client, client.post("/api/models/tiny/improve",
                                           json={"steps": 2, "batch_size": 4}).json()["id"],
                       timeout=120)
        assert job["status"] == "done", job
        assert job["result"]["candidate"] == "tiny@v2" and job["result"]["record"]["steps"] == 2
        assert reg.resolve("tiny@candidate").version == 2
        # the gate refuses v2 (FID 15 vs 10): the job finishes and says so; nothing changes
        job = wait_job(client, client.post("/api/models/tiny/promote", json={"n": 100}).json()
                       ["id"], timeout=60)
        assert job["status"] == "done" and job["result"]["promoted"] is False
        assert "more than 10% above" in job["result"]["gate"]["reasons"][0]
        assert client.post("/api/models/tiny/promote", json={"force": True}).status_code == 400
        job = wait_job(client, client.post("/api/models/tiny/promote", json={
            "force": True, "reason": "people prefer it", "n": 100}).json()["id"], timeout=60)
        assert job["result"]["promoted"] and job["result"]["forced"]
        assert reg.resolve("tiny@production").version == 2
        r = client.post("/api/models/tiny/rollback", json={"reason": "back"})
        assert r.status_code == 200 and r.json()["to"] == 1
        assert client.post("/api/models/nope/improve", json={}).status_code == 404


def test_smollm2_is_improved_as_a_lora_adapter_of_its_chat_items(tmp_path, monkeypatch, capsys):
    """The `aigc improve smollm2` path end to end, with a tiny random Llama standing in for
    SmolLM2 (the real 135M model is exercised in the slow tier by test_text_pretrained)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import aigc.models.pretrained as pretrained

    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64))

    class Chars:  # one id per character; no chat template
        def encode(self, text):
            return [ord(c) % 64 for c in text]

    monkeypatch.setattr(pretrained, "_smollm2_hf", lambda: (None, tiny))
    monkeypatch.setattr(pretrained, "load_smollm2", lambda: (None, Chars()))
    folder = tmp_path / "ds" / "fb-test"
    (folder / "files").mkdir(parents=True)
    pairs = [{"id": f"p{i}", "split": "train", "kind": "text", "source": "comparison",
              "condition": {"label": None, "prompt": f"user: hi {i}"},
              "messages": [{"role": "user", "content": f"hi {i}"}],
              "chosen_text": "hello there", "rejected_text": "go away"} for i in range(6)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (folder / "card.json").write_text(json.dumps({"dataset": "fb-test", "sha256": "0" * 64,
                                                  "family": "smollm2", "model": "smollm2"}))
    out = tmp_path / "adapter"
    assert main(["improve", "smollm2", "--feedback", str(folder), "--out", str(out),
                 "--steps", "4", "--batch-size", "2", "--lr", "0.01", "--no-progress"]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    meta = json.loads((out / "aigc_improve.json").read_text())
    assert meta["feedback"]["dataset"] == "fb-test" and meta["improvement"]["method"] == "dpo"
    assert main(["improve", "smollm2", "--feedback", str(folder), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["improve", "smollm2", "--feedback", str(folder)]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_gpt_is_improved_by_dpo_into_a_registered_candidate(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_REGISTRY", str(tmp_path / "registry"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: a plain tale of a cat and a dog, told {i} "
                                  "times." for i in range(200)), encoding="utf-8")
    assert main(["train", "gpt", "--data", f"text:{corpus}", "--out", str(tmp_path / "run"),
                 "--steps", "2", "--context-length", "32", "--width", "8", "--layers", "1",
                 "--heads", "2", "--batch-size", "4", "--eval-batches", "1",
                 "--no-progress"]) == 0
    reg = Registry()
    reg.register("tale", tmp_path / "run", alias="production")
    folder = tmp_path / "ds" / "fb-tale"
    (folder / "files").mkdir(parents=True)
    pairs = [{"id": f"p{i}", "split": "train", "kind": "text", "source": "comparison",
              "condition": {"label": None, "prompt": "a cat"}, "messages": None,
              "chosen_text": " and a dog.", "rejected_text": " tale told."} for i in range(4)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (folder / "card.json").write_text(json.dumps({"dataset": "fb-tale", "sha256": "0" * 64,
                                                  "family": "gpt", "model": "tale"}))
    assert main(["improve", "tale", "--feedback", str(folder), "--steps", "3",
                 "--batch-size", "2", "--lr", "0.001", "--no-progress"]) == 0
    cand = reg.resolve("tale@candidate")
    assert cand.parent == "tale@v1" and cand.family == "gpt"
    from aigc.models.gpt import load_text_model

    model, tokenizer, ckpt = load_text_model(str(cand.path))  # a whole checkpoint, tokenizer too
    assert ckpt.meta["improvement"]["method"] == "dpo" and tokenizer.encode("cat")
