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
from _raters import RATERS, Taste, prefers_a, stars  # noqa: E402

NAME = "diffusion-mnist"


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


def collect(client, taste, n_jobs: int, rng: random.Random) -> dict:
    """Generate through the API and leave feedback as the raters would."""
    from tqdm.auto import tqdm

    jobs = [client.post("/api/jobs", json={"kind": "image", "model": NAME, "n": 8,
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
        for k in range(0, len(items) - 1, 2):
            for rater in rng.sample(RATERS, 2):
                winner = "a" if prefers_a(rater, u[k], u[k + 1], rng) else "b"
                client.post("/api/comparisons", json={"a": items[k]["id"],
                                                      "b": items[k + 1]["id"],
                                                      "winner": winner},
                            headers={"X-Aigc-Rater": rater.name}).raise_for_status()
                counts["comparisons"] += 1
        for it, ui in zip(items, u):
            rater = rng.choice(RATERS)
            h = {"X-Aigc-Rater": rater.name}
            client.post(f"/api/items/{it['id']}/ratings", json={"stars": stars(rater, ui, rng)},
                        headers=h).raise_for_status()
            counts["stars"] += 1
            if ui < -2:  # the wrong digit
                client.post(f"/api/items/{it['id']}/flags", json={"reason": "wrong_content"},
                            headers=h).raise_for_status()
                counts["flags"] += 1
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
    v1 = reg.resolve(f"{NAME}@production")
    settings = StudioSettings(data_dir=work / "studio", models_dir=None, ngram=False,
                              registry_dir=reg.root, registry_names=(NAME,),
                              max_queue=4096, max_outstanding=1e9)
    server, thread, url, app = _serve(settings)
    taste = Taste()
    result: dict = {"machine": machine(), "args": vars(args), "base": v1.ref}
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            t = time.perf_counter()
            result["feedback"] = collect(client, taste, args.jobs, rng)
            result["feedback"]["seconds"] = round(time.perf_counter() - t, 1)
            print("feedback:", result["feedback"], flush=True)
            data = ["--studio-data", str(work / "studio")]
            assert aigc(["feedback", "export", *data, "--model", NAME, "--out",
                         str(work / "feedback")]) == 0
            assert aigc(["feedback", "report", *data, "--out", str(work / "report.html")]) == 0
            card = json.loads((work / "feedback" / (work / "feedback" / "latest").read_text()
                               .strip() / "card.json").read_text())
            result["dataset"] = {k: card[k] for k in ("dataset", "pairs", "pairs_by_source",
                                                      "pairs_by_split", "raters", "skipped")}
            t = time.perf_counter()
            assert aigc(["improve", NAME, "--feedback", str(work / "feedback"), "--steps",
                         str(args.steps), "--lr", str(args.lr), "--beta", str(args.beta),
                         "--batch-size", str(args.batch_size), "--seed", str(args.seed)]) == 0
            cand = reg.resolve(f"{NAME}@candidate")
            result["improve"] = {"candidate": cand.ref, "seconds": round(
                time.perf_counter() - t, 1)}
            base_m, _ = model_from_checkpoint(str(v1.path))
            cand_m, _ = model_from_checkpoint(str(cand.path))
            result["held_out"] = held_out(base_m, cand_m, taste, args.eval_pairs, rng)
            print("held out:", json.dumps(result["held_out"]), flush=True)
            t = time.perf_counter()
            g = gate(str(v1.path), str(cand.path), n=args.gate_n, progress=True)
            result["gate"] = {**g.to_dict(), "seconds": round(time.perf_counter() - t, 1)}
            result["gate"].pop("protocol")
            print("gate:", json.dumps(result["gate"]), flush=True)
            if g.passed:
                reg.promote(NAME, f"v{cand.version}", reason="feedback loop benchmark",
                            expected_production=v1.version, gate=g.to_dict())
                app.state.registry_watcher.sync()
                job = client.post("/api/jobs", json={"kind": "image", "model": NAME, "n": 1,
                                                     "seed": 5, "label": 3}).json()
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
    print(f"\nwin-rate of {cand.ref} over {v1.ref} on {h['pairs']} held-out seeds: "
          f"{h['win_rate']:.1%} (95% {h['wilson95'][0]:.1%}-{h['wilson95'][1]:.1%}); gate "
          f"{'passed' if result['promoted'] else 'refused'}: {result['gate']['base']} -> "
          f"{result['gate']['candidate']}; {result['seconds']:.0f} s -> {out}")


if __name__ == "__main__":
    main()
