"""Shared helpers of the studio tests: a tiny VAE models folder, a corpus, a live server."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import torch

CORPUS = ("User: hello there\nAssistant: hi, how are you today?\n"
          "User: what is your name?\nAssistant: my name is studio bot.\n"
          "User: do you like music?\nAssistant: yes, i like bach and folk tunes.\n") * 20


def make_models(root: Path) -> Path:
    """A models folder with one tiny VAE (8x8 images) with fixed random weights."""
    from aigc.checkpoints import save_model_file
    from aigc.config import config_to_dict
    from aigc.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    cfg = VAEConfig(image_size=8, channels=(4,), hidden=8, latent_dim=4)
    model = VAE(cfg)
    save_model_file(root / "models" / "tiny-vae.safetensors", family="vae",
                    model_config=config_to_dict(cfg), weights=model.state_dict(),
                    meta={"data": "test"})
    return root / "models"


def make_settings(root: Path, **overrides):
    from aigc.studio.service import StudioSettings

    (root / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    kw = dict(data_dir=root / "data", models_dir=make_models(root),
              text_corpus=root / "corpus.txt", extra_hosts=("testserver",))
    kw.update(overrides)
    return StudioSettings(**kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(settings, app=None):
    """Run the app (default: ``create_app(settings)``) with uvicorn in a thread on a free
    loopback port; yields the base URL."""
    import uvicorn

    from aigc.studio.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app or create_app(settings), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("studio server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def wait_job(client, job_id: str, timeout: float = 30.0, headers=None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def api_error(r, status: int, code: str | None = None) -> dict:
    """The error body of response ``r``, after checking its status and the one error shape."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def start_server_process(cmd: list[str], *, cwd: Path, env: dict, port: int, log: Path,
                         timeout: float = 90.0) -> subprocess.Popen:
    """Start ``aigc studio`` as its own process (stderr to ``log``) and wait until its /health
    answers; a server that does not come up is killed and its log is the assertion message."""
    import httpx

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))  # noqa: SIM115
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(log.read_text())
