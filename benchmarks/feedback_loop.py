"""The closed loop, run for real with simulated raters: generate -> rate through the HTTP API ->
export -> improve -> measure -> gated promotion -> the studio serves the new version.

    python benchmarks/feedback_loop.py --work out/loop --out benchmarks/results/feedback_loop.json

1. A studio serves ``diffusion-mnist@production`` (the shipped starter, v1 of its name) from a
   fresh registry, on a loopback port.
2. Jobs of 8 images per class go through ``POST /api/jobs``; the simulated raters of
   ``benchmarks/_raters.py`` (a rule the model never sees) compare pairs from the same job,
   give stars and flag wrong digits, each through the API with its own ``X-Aigc-Rater``.
3. ``aigc feedback export`` and ``aigc feedback report``; ``aigc improve`` (Diffusion-DPO
   against the frozen v1) registers v2 as the candidate.
4. Held-out measurement: for seeds never used in training (and every class), v1 and v2 draw one
   image each from the same seed; every rater compares the two. The win-rate of v2 (goal
   >= 65%) with its Wilson interval.
5. The promotion gate (FID and conditional accuracy on the test split, n images, the same
   protocol for both) decides; the script then checks that the running studio serves v2.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, machine_line  # noqa: E402
from _raters import RATERS, Taste, prefers_a, stars, text_utility  # noqa: E402

TEXT_TOKENS = 80  # characters (tokens of a character GPT) per continuation
PROMPT_CHARS = 40  # + 80 reply characters fit the 128-token context of the GPT


def _serve(settings):
    import socket

    import uvicorn

    from aigc.studio.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}", app


def _png(client, url: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(client.get(url).content)) as img:
        return torch.from_numpy(np.asarray(img).copy()).float().div(255)[None]


def _wait(client, job_id: str) -> dict:
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.2)


def _feedback(client, items: list[dict], u: list[float], rng: random.Random,
              counts: dict) -> None:
    """Raters compare consecutive items (two votes a pair), star each item once and flag the
    failures, all through the API."""
    for k in range(0, len(items) - 1, 2):
        for rater in rng.sample(RATERS, 2):
            winner = "a" if prefers_a(rater, u[k], u[k + 1], rng) else "b"
            client.post("/api/comparisons", json={"a": items[k]["id"], "b": items[k + 1]["id"],
                                                  "winner": winner},
                        headers={"X-Aigc-Rater": rater.name}).raise_for_status()
            counts["comparisons"] += 1
    for it, ui in zip(items, u):
        rater = rng.choice(RATERS)
        h = {"X-Aigc-Rater": rater.name}
        client.post(f"/api/items/{it['id']}/ratings", json={"stars": stars(rater, ui, rng)},
                    headers=h).raise_for_status()
        counts["stars"] += 1
        if ui < -2:  # the wrong digit, or an empty continuation
            client.post(f"/api/items/{it['id']}/flags", json={"reason": "wrong_content"},
                        headers=h).raise_for_status()
            counts["flags"] += 1


def collect_text(client, name: str, prompts: list[str], rng: random.Random) -> dict:
    """Two continuations (two seeds) of each prompt through the API, then feedback."""
    from tqdm.auto import tqdm

    counts = {"comparisons": 0, "stars": 0, "flags": 0}
    for i, prompt in enumerate(tqdm(prompts, desc="rating prompts")):
        items = []
        for k in range(2):
            job = client.post("/api/jobs", json={
                "kind": "text", "model": name, "prompt": prompt, "max_tokens": TEXT_TOKENS,
                "temperature": 1.0, "seed": 1000 + 2 * i + k}).json()
            done = _wait(client, job["id"])
            if done["status"] != "done":
                raise RuntimeError(f"job failed: {done}")
            items.append(client.get(f"/api/items/{done['items'][0]}").json())
        _feedback(client, items, [text_utility(it["text"]) for it in items], rng, counts)
    return counts


@torch.no_grad()
def held_out_text(base_path: str, cand_path: str, prompts: list[str],
                  rng: random.Random) -> dict:
    """Base and candidate continue each held-out prompt from the same seed; every rater
    compares."""
    from tqdm.auto import tqdm

    from aigc.generation import SamplingParams, generate_text
    from aigc.loop.report import wilson_interval
    from aigc.models.gpt import load_text_model

    models = {k: load_text_model(p)[:2] for k, p in (("base", base_path),
                                                       ("candidate", cand_path))}
    wins = games = 0
    utility = {"base": [], "candidate": []}
    for i, prompt in enumerate(tqdm(prompts, desc="held-out prompts")):
        params = SamplingParams(temperature=1.0, max_tokens=TEXT_TOKENS, seed=900_000 + i)
        u = {k: text_utility(generate_text(m, tok, prompt, params).text)
             for k, (m, tok) in models.items()}
        for k in u:
            utility[k].append(u[k])
        for rater in RATERS:
            wins += prefers_a(rater, u["candidate"], u["base"], rng)
            games += 1
    lo, hi = wilson_interval(wins, games)
    return {"prompts": len(prompts), "rater_votes": games, "candidate_wins": wins,
            "win_rate": wins / games, "wilson95": [lo, hi],
            "mean_utility": {k: float(np.mean(v)) for k, v in utility.items()},
            "prompts_from": "the corpus's test split (training prompts came from train)"}


def collect(client, name: str, taste, n_jobs: int, rng: random.Random) -> dict:
    """Generate through the API and leave feedback as the raters would."""
    from tqdm.auto import tqdm

    jobs = [client.post("/api/jobs", json={"kind": "image", "model": name, "n": 8,
                                           "seed": 1000 + 8 * j, "label": j % 10}).json()
            for j in range(n_jobs)]
    counts = {"comparisons": 0, "stars": 0, "flags": 0}
    for j, job in enumerate(tqdm(jobs, desc="rating jobs")):
        done = _wait(client, job["id"])
        if done["status"] != "done":
            raise RuntimeError(f"job failed: {done}")
        items = [client.get(f"/api/items/{i}").json() for i in done["items"]]
        x = torch.cat([_png(client, it["url"]) for it in items])[:, None]  # (8, 1, 28, 28)
        u = taste.utility(x, torch.full((len(items),), j % 10)).tolist()
        _feedback(client, items, u, rng, counts)
    return counts


@torch.no_grad()
def held_out(base, cand, taste, n: int, rng: random.Random) -> dict:
    """v1 and v2 draw from the same held-out seeds; every rater compares each pair."""
    from tqdm.auto import tqdm

    wins = games = 0
    ink = {"base": [], "candidate": []}
    correct = {"base": 0, "candidate": 0}
    for start in tqdm(range(0, n, 50), desc="held-out pairs"):
        idx = list(range(start, min(n, start + 50)))
        labels = torch.tensor([i % 10 for i in idx])
        out = {}
        for key, model in (("base", base), ("candidate", cand)):
            gens = [torch.Generator().manual_seed(900_000 + i) for i in idx]
            out[key] = model.sample(len(idx), generator=gens, labels=labels)
        ub = taste.utility(out["base"], labels)
        uc = taste.utility(out["candidate"], labels)
        for key in out:
            ink[key] += out[key].mean(dim=(1, 2, 3)).tolist()
            top = taste.classifier.extract(out[key])["logits"].argmax(dim=1)
            correct[key] += int((top == labels).sum())
        for a, b in zip(uc.tolist(), ub.tolist()):
            for rater in RATERS:
                wins += prefers_a(rater, a, b, rng)
                games += 1
    from aigc.loop.report import wilson_interval

    lo, hi = wilson_interval(wins, games)
    return {"pairs": n, "rater_votes": games, "candidate_wins": wins,
            "win_rate": wins / games, "wilson95": [lo, hi],
            "mean_ink": {k: float(np.mean(v)) for k, v in ink.items()},
            "classifier_agreement": {k: v / n for k, v in correct.items()},
            "seeds": f"900000..{900000 + n - 1} (training used 1000..)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["image", "text"], default="image")
    ap.add_argument("--model", default="diffusion-mnist",
                    help="registry name served and improved (default diffusion-mnist)")
    ap.add_argument("--base", help="text: the GPT checkpoint registered as v1 of --model")
    ap.add_argument("--prompts", type=int, default=200, help="text: training prompts")
    ap.add_argument("--work", default="out/loop", help="registry, studio data, dataset, report")
    ap.add_argument("--out", default="benchmarks/results/feedback_loop-diffusion-mnist.json")
    ap.add_argument("--jobs", type=int, default=96, help="jobs of 8 images to rate (default 96)")
    ap.add_argument("--steps", type=int, default=300, help="Diffusion-DPO steps")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=2500.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-pairs", type=int, default=300, help="held-out seed pairs")
    ap.add_argument("--gate-n", type=int, default=1000, help="images per model for the gate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import os
    import shutil

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.environ["AIGC_REGISTRY"] = str(work / "registry")
    import httpx

    from aigc.cli import main as aigc
    from aigc.loop.promotion import gate
    from aigc.models import model_from_checkpoint
    from aigc.registry import Registry
    from aigc.studio.service import StudioSettings

    print(machine_line(), flush=True)
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    reg = Registry()
    name = args.model
    if args.base:
        reg.register(name, args.base, alias="production", note="feedback loop base")
    v1 = reg.resolve(f"{name}@production")
    settings = StudioSettings(data_dir=work / "studio", models_dir=None, ngram=False,
                              registry_dir=reg.root, registry_names=(name,),
                              max_queue=4096, max_outstanding=1e9)
    server, thread, url, app = _serve(settings)
    taste = Taste() if args.task == "image" else None
    if args.task == "text":
        from aigc.data.text import load_corpus
        from aigc.models.gpt import load_text_model

        corpus = load_corpus(load_text_model(str(v1.path))[2].meta["data"])
        def pick(split: str, n: int) -> list[str]:
            """Prompts: the 40 characters after every 400th, across the split's documents
            (they are chapters), starting at a word."""
            out = []
            for doc in corpus.documents(split):
                for pos in range(0, len(doc) - 3 * PROMPT_CHARS, 400):
                    start = doc.find(" ", pos) + 1
                    out.append(" ".join(doc[start:start + PROMPT_CHARS].split()))
            return out[:n]

        train_prompts, test_prompts = pick("train", args.prompts), pick("test", args.eval_pairs)
    result: dict = {"machine": machine(), "args": vars(args), "base": v1.ref}
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            t = time.perf_counter()
            result["feedback"] = (collect(client, name, taste, args.jobs, rng)
                                  if args.task == "image"
                                  else collect_text(client, name, train_prompts, rng))
            result["feedback"]["seconds"] = round(time.perf_counter() - t, 1)
            print("feedback:", result["feedback"], flush=True)
            data = ["--studio-data", str(work / "studio")]
            assert aigc(["feedback", "export", *data, "--model", name, "--out",
                         str(work / "feedback")]) == 0
            assert aigc(["feedback", "report", *data, "--out", str(work / "report.html")]) == 0
            card = json.loads((work / "feedback" / (work / "feedback" / "latest").read_text()
                               .strip() / "card.json").read_text())
            result["dataset"] = {k: card[k] for k in ("dataset", "pairs", "pairs_by_source",
                                                      "pairs_by_split", "raters", "skipped")}
            t = time.perf_counter()
            assert aigc(["improve", name, "--feedback", str(work / "feedback"), "--steps",
                         str(args.steps), "--lr", str(args.lr), "--beta", str(args.beta),
                         "--batch-size", str(args.batch_size), "--seed", str(args.seed)]) == 0
            cand = reg.resolve(f"{name}@candidate")
            result["improve"] = {"candidate": cand.ref, "seconds": round(
                time.perf_counter() - t, 1)}
            if args.task == "image":
                base_m, _ = model_from_checkpoint(str(v1.path))
                cand_m, _ = model_from_checkpoint(str(cand.path))
                result["held_out"] = held_out(base_m, cand_m, taste, args.eval_pairs, rng)
            else:
                result["held_out"] = held_out_text(str(v1.path), str(cand.path), test_prompts,
                                                   rng)
            print("held out:", json.dumps(result["held_out"]), flush=True)
            t = time.perf_counter()
            g = gate(str(v1.path), str(cand.path), n=args.gate_n, progress=True)
            g.keep_cards(reg, v1, cand)
            result["gate"] = {**g.to_dict(), "seconds": round(time.perf_counter() - t, 1)}
            result["gate"].pop("protocol")
            print("gate:", json.dumps(result["gate"]), flush=True)
            if g.passed:
                reg.promote(name, f"v{cand.version}", reason="feedback loop benchmark",
                            expected_production=v1.version, gate=g.to_dict())
                app.state.registry_watcher.sync()
                body = ({"kind": "image", "model": name, "n": 1, "seed": 5, "label": 3}
                        if args.task == "image" else
                        {"kind": "text", "model": name, "prompt": "It is", "seed": 5})
                job = client.post("/api/jobs", json=body).json()
                item = client.get(f"/api/items/{_wait(client, job['id'])['items'][0]}").json()
                result["served_after_promotion"] = item["record"]["checkpoint"]
            result["promoted"] = g.passed
    finally:
        server.should_exit = True
        thread.join(15)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    h = result["held_out"]
    print(f"\nwin-rate of {cand.ref} over {v1.ref} on {h.get('pairs', h.get('prompts'))} "
          "held-out draws: "
          f"{h['win_rate']:.1%} (95% {h['wilson95'][0]:.1%}-{h['wilson95'][1]:.1%}); gate "
          f"{'passed' if result['promoted'] else 'refused'}: {result['gate']['base']} -> "
          f"{result['gate']['candidate']}; {result['seconds']:.0f} s -> {out}")


if __name__ == "__main__":
    main()
