"""The studio serves our own GPT checkpoints as text models (the same generation code as
`aigc generate`), through the OpenAI-compatible chat and completion endpoints."""

import json

from fastapi.testclient import TestClient
from studio_fixtures import CORPUS, make_settings

from aigc.cli import main
from aigc.generation import SamplingParams, generate_text
from aigc.models.gpt import load_text_model
from aigc.studio.app import create_app
from aigc.studio.backends import chat_prompt


def test_gpt_checkpoint_is_served_and_matches_direct_generation(tmp_path):
    corpus = tmp_path / "dialogue.txt"
    # Documents are split on blank lines; enough distinct ones for train/val/test windows.
    corpus.write_text("\n\n".join(f"{CORPUS[:200]}User: question {i}?\nAssistant: answer {i}."
                                    for i in range(80)), encoding="utf-8")
    settings = make_settings(tmp_path)
    run = settings.models_dir / "tiny-gpt"
    assert main(["train", "gpt", "--data", f"text:{corpus}", "--out", str(run), "--steps", "3",
                 "--context-length", "32", "--width", "16", "--layers", "1", "--heads", "2",
                 "--batch-size", "4", "--eval-batches", "1", "--no-progress"]) == 0
    with TestClient(create_app(settings)) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert "tiny-gpt" in models and "tiny-vae" in models
        messages = [{"role": "user", "content": "hello there"}]
        body = {"model": "tiny-gpt", "messages": messages, "seed": 5, "max_tokens": 20,
                "temperature": 0.9}
        full = client.post("/v1/chat/completions", json=body).json()
        text = full["choices"][0]["message"]["content"]
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = [ln for ln in r.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]"
        streamed = "".join(json.loads(ln[6:])["choices"][0]["delta"].get("content", "")
                           for ln in lines[:-1])
        assert streamed == text
    model, tokenizer, _ = load_text_model(run)
    direct = generate_text(model, tokenizer, chat_prompt(messages),
                           SamplingParams(temperature=0.9, max_tokens=20, seed=5))
    assert text == direct.text
    assert full["usage"]["completion_tokens"] == len(direct.tokens)
