"""Load test of the studio on loopback: N concurrent clients for M seconds against
``/v1/images/generations`` and ``/v1/chat/completions``, with batching on and off.

    python benchmarks/studio_load.py                       # demo VAE if out/demo/run exists
    python benchmarks/studio_load.py --clients 8 --seconds 10 --model heavy
    python benchmarks/studio_load.py --model diffusion-mnist --steps 20

Starts its own studio (a subprocess on a free 127.0.0.1 port, fresh data folder) once with
image batching and once with ``--no-batching``, runs the clients, stops the server, and prints
completed / failed requests, p50/p95/p99 latency, throughput, and the batching gain (throughput
with batching / without). Bounded: at most 64 clients and 120 seconds per phase; it only ever
talks to 127.0.0.1.

``--model`` picks the image model: ``demo`` (the VAE of ``aigc demo``, 28x28), ``tiny`` (an
8x8 VAE with random weights), ``heavy`` (a 64x64 VAE with wide layers and random weights,
whose decoder costs enough per image for batching to matter), or a starter model shipped with
aigc (``diffusion-mnist``, ``diffusion-fashion-mnist``, ``gan-mnist``, ...; ``--steps``,
``--sampler`` and ``--guidance`` apply to diffusion). The random-weight models draw noise-like
pictures; they exist to time the serving path. For a class-conditional model client i asks
for class i (its name is the prompt), so a batch mixes classes as real traffic would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ("User: hello there\nAssistant: hi, how are you today?\n"
          "User: what is your name?\nAssistant: my name is studio bot.\n") * 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _starters() -> dict[str, Path]:
    """The image starter models shipped in the package, by name."""
    folder = ROOT / "src" / "aigc" / "assets" / "starters"
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))
            if p.stem.startswith(("diffusion-", "gan-"))}


def _make_model(kind: str, folder: Path) -> Path:
    import torch

    from aigc.checkpoints import save_model_file
    from aigc.config import config_to_dict
    from aigc.models.vae import VAE, VAEConfig

    folder.mkdir(parents=True, exist_ok=True)
    if kind in _starters():
        return _starters()[kind]
    if kind == "demo":
        src = ROOT / "out" / "demo" / "run"
        if not (src / "checkpoints" / "latest").is_file():
            raise SystemExit("--model demo needs out/demo/run (run `aigc demo` first)")
        return src
    cfg = (VAEConfig(image_size=8, channels=(4,), hidden=8, latent_dim=4) if kind == "tiny" else
           VAEConfig(image_size=64, image_channels=3, channels=(64, 128, 256), hidden=1024,
                     latent_dim=128))
    torch.manual_seed(0)
    path = folder / f"{kind}-vae.safetensors"
    save_model_file(path, family="vae", model_config=config_to_dict(cfg),
                    weights=VAE(cfg).state_dict(), meta={"data": "random weights (benchmark)"})
    return path


def _start(data: Path, model: Path, corpus: Path, batching: bool,
           threads: int, batch_wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "aigc.cli", "studio", "--port", str(port), "--data", str(data),
           "--models", str(data / "no-models"), "--model", f"bench={model}", "--text-corpus",
           str(corpus), "--log-level", "warning", "--max-queue", "1024", "--no-starters"]
    if not batching:
        cmd.append("--no-batching")
    else:
        cmd += ["--batch-wait-ms", str(batch_wait_ms)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, cwd=data, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the studio did not start")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def backend_gain(model: Path, batch: int, settings_kw: dict, labelled: bool,
                 threads: int, seconds: float = 3.0) -> dict:
    """The batching gain of the image backend alone (no HTTP, no database): ``batch`` images in
    one call vs ``batch`` calls of one image, same seeds (and classes), same outputs."""
    import torch

    from aigc.studio.backends import ImageSettings, ImageSpec, load_image_backends

    torch.set_num_threads(threads)
    backends, _ = load_image_backends([("m", model)])
    b = backends["m"]
    n_classes = max(1, len(b.class_names))
    specs = [ImageSpec(seed=i, label=i % n_classes if labelled else None) for i in range(batch)]
    settings = ImageSettings(**settings_kw)
    b.generate(specs, settings)
    t0, repeats = time.perf_counter(), 0
    while repeats < 2 or time.perf_counter() - t0 < seconds:
        batched = b.generate(specs, settings)
        repeats += 1
    t_batch = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        single = torch.cat([b.generate([s], settings) for s in specs])
    t_single = (time.perf_counter() - t0) / repeats
    # Batched images equal the images drawn alone, up to float rounding (the network sees
    # another batch size; diffusion accumulates it over its steps).
    assert torch.allclose(batched, single, atol=1e-5 if not b.has_steps else 5e-3)
    return {"batch": batch, "batched_ms": round(t_batch * 1000, 2),
            "one_at_a_time_ms": round(t_single * 1000, 2),
            "gain": round(t_single / t_batch, 2)}


def _class_names(model: Path) -> list[str]:
    from aigc.checkpoints import read_metadata, resolve_checkpoint

    meta = read_metadata(resolve_checkpoint(model)).get("meta") or "{}"
    meta = json.loads(meta) if isinstance(meta, str) else meta
    return list(meta.get("class_names") or [])


def run_phase(base: str, path: str, body: dict, clients: int, seconds: float,
              prompts: list[str] | None = None) -> dict:
    """``clients`` threads post ``body`` to ``path`` in a loop for ``seconds``; client i uses
    the prompt ``prompts[i % len(prompts)]`` when prompts are given."""
    latencies: list[float] = []
    failed = [0]
    lock = threading.Lock()
    start = time.perf_counter()
    end = start + seconds

    def client(i: int) -> None:
        mine = {**body, "prompt": prompts[i % len(prompts)]} if prompts else body
        with httpx.Client(base_url=base, timeout=120) as http:
            k = 0
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    r = http.post(path, json={**mine, "seed": 10_000 * i + k})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        failed[0] += 1
                k += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"completed": len(latencies), "failed": failed[0], "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--model", choices=["demo", "tiny", "heavy", *_starters()], default=None,
                    help="image model (default: demo if out/demo/run exists, else heavy)")
    ap.add_argument("--steps", type=int, default=None,
                    help="sampler steps (diffusion; default: the model's own, 20)")
    ap.add_argument("--sampler", default=None, help="sampler (diffusion; default: the model's)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="guidance scale (diffusion; default: the model's own, 3)")
    ap.add_argument("--images-per-request", type=int, default=1)
    ap.add_argument("--chat-tokens", type=int, default=64)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="OMP_NUM_THREADS of the server (default 1: one worker, shared CPU)")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0,
                    help="the server's --batch-wait-ms in the batching run (default 5, the "
                         "server's default)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64:
        raise SystemExit("--clients must be in 1..64")
    if not 1 <= args.seconds <= 120:
        raise SystemExit("--seconds must be in 1..120")
    kind = args.model or ("demo" if (ROOT / "out/demo/run/checkpoints/latest").is_file()
                          else "heavy")
    sys.path.insert(0, str(ROOT / "src"))
    results: dict = {"model": kind, "clients": args.clients, "seconds": args.seconds,
                     "images_per_request": args.images_per_request, "cpu_count": os.cpu_count(),
                     "torch_threads": args.torch_threads, "batch_wait_ms": args.batch_wait_ms,
                     "steps": args.steps, "sampler": args.sampler, "guidance": args.guidance,
                     "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="aigc-load-") as tmp:
        tmp_path = Path(tmp)
        model = _make_model(kind, tmp_path / "models")
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(CORPUS, encoding="utf-8")
        extras = {k: v for k, v in (("steps", args.steps), ("sampler", args.sampler),
                                    ("guidance", args.guidance)) if v is not None}
        class_names = _class_names(model)
        image_body = {"prompt": "benchmark", "n": args.images_per_request,
                      "response_format": "url", **extras}
        prompts = class_names or None  # client i asks for class i % len(classes)
        chat_body = {"model": "ngram-char-6", "max_tokens": args.chat_tokens,
                     "messages": [{"role": "user", "content": "hello there"}]}
        results["class_conditional"] = bool(class_names)
        results["backend_only"] = backend_gain(model, args.clients, extras, bool(class_names),
                                               args.torch_threads)
        for batching in (True, False):
            data = tmp_path / ("batched" if batching else "single")
            data.mkdir()
            proc, base = _start(data, model, corpus, batching, args.torch_threads,
                                 args.batch_wait_ms)
            try:
                run_phase(base, "/v1/images/generations", image_body, 2, 1.0,
                          prompts)  # warm-up
                name = "batching" if batching else "one_at_a_time"
                results[f"images_{name}"] = run_phase(base, "/v1/images/generations",
                                                      image_body, args.clients, args.seconds,
                                                      prompts)
                m = httpx.get(base + "/metrics").text
                batches = [ln for ln in m.splitlines() if ln.startswith("aigc_image_batches")]
                imgs = [ln for ln in m.splitlines() if ln.startswith("aigc_batched_images")]
                results[f"images_{name}"]["mean_batch"] = round(
                    float(imgs[0].split()[-1]) / max(1.0, float(batches[0].split()[-1])), 2)
                if batching:
                    results["chat"] = run_phase(base, "/v1/chat/completions", chat_body,
                                                args.clients, args.seconds)
                    results["chat_stream"] = run_phase(
                        base, "/v1/chat/completions", {**chat_body, "stream": True},
                        args.clients, args.seconds)
            finally:
                _stop(proc)
    gain = (results["images_batching"]["throughput_rps"]
            / max(1e-9, results["images_one_at_a_time"]["throughput_rps"]))
    results["batching_gain"] = round(gain, 2)
    print(json.dumps(results, indent=1))
    print(f"\n{kind} image model, {args.clients} clients x {args.seconds:g}s on loopback "
          f"(load average at start {results['load_average_at_start']:.2f} on "
          f"{os.cpu_count()} cores):")
    for key in ("images_batching", "images_one_at_a_time", "chat", "chat_stream"):
        r = results[key]
        print(f"  {key:22s} completed {r['completed']:5d}  failed {r['failed']:3d}  "
              f"{r['throughput_rps']:7.2f} req/s  p50 {r['p50_ms']:7.1f} ms  "
              f"p95 {r['p95_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
              + (f"  mean batch {r['mean_batch']}" if "mean_batch" in r else ""))
    print(f"  batching gain (throughput, batching / one-at-a-time): {gain:.2f}x")
    bo = results["backend_only"]
    print(f"  backend alone, {bo['batch']} images: one call {bo['batched_ms']} ms vs "
          f"{bo['batch']} calls {bo['one_at_a_time_ms']} ms -> {bo['gain']}x")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
