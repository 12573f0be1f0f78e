"""Stable Diffusion folders (aigc.models.sd_folder): our samplers against diffusers' own pipeline
on a tiny random pipeline built here, offline, plus the bad input the CLI must refuse."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from aigc.cli import main  # noqa: E402
from aigc.errors import AigcError  # noqa: E402
from aigc.models import sd_folder  # noqa: E402
from aigc.models.sd_folder import check_folder, folder_sha256, load_sd_folder  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TOL = 1e-5  # measured max |ours - diffusers| <= 6e-7 on [0, 1] images (float32 round-off)
# what a DDIM image from the tiny folder (SD 1.x scheduler settings) records
SD1_DDIM = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False,
            "diffusers_rules": True}


def build_tiny_pipeline(path):
    """A random Stable Diffusion pipeline small enough to sample in milliseconds: a UNet with
    (8, 16) channels on 8x8 latents, a 2-block VAE (16x16 images), a 2-layer CLIP text encoder
    of width 16 and a CLIP tokenizer whose vocabulary is the 26 lowercase letters."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab |= {c: 2 + i for i, c in enumerate(LETTERS)}
    vocab |= {c + "</w>": 28 + i for i, c in enumerate(LETTERS)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=12)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                        sample_size=16)
    # Stable Diffusion 1.x's own scheduler settings
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def with_scheduler(src, dst, **changes):
    """A copy of the folder ``src`` at ``dst`` with ``changes`` in its scheduler config."""
    shutil.copytree(src, dst)
    path = dst / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return dst


# The folders the parity tests sample: Stable Diffusion 1.x's own settings (leading spacing,
# steps_offset=1, set_alpha_to_one=false, DPM-Solver ending on sigma = 0), and a trailing one
# that ends DDIM on alpha_bar = 1 and DPM-Solver on sigma_min (2M there from 15 steps on).
SCHEDULERS = {
    "leading": {},
    "trailing": {"timestep_spacing": "trailing", "set_alpha_to_one": True,
                 "final_sigmas_type": "sigma_min"},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny")


@pytest.fixture(scope="module")
def ours(tiny):
    return load_sd_folder(tiny)


def load_pipe(folder):
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                use_safetensors=True, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pipe(tiny):
    return load_pipe(tiny)


@pytest.fixture(scope="module")
def folders(tiny, ours, pipe, tmp_path_factory):
    """spacing -> (our folder, diffusers' pipeline) for each scheduler config of SCHEDULERS."""
    out = {"leading": (ours, pipe)}
    for name, changes in SCHEDULERS.items():
        if changes:
            path = with_scheduler(tiny, tmp_path_factory.mktemp("sd") / name, **changes)
            out[name] = (load_sd_folder(path), load_pipe(path))
    return out


SCHEDULER_CLASSES = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler",
                     "dpm-solver++": "DPMSolverMultistepScheduler"}


def folder_scheduler(pipe, sampler):
    """The folder's own scheduler config converted to the diffusers class our sampler of that
    name matches, as a person would: ``DPMSolverMultistepScheduler.from_config(config)``."""
    import diffusers

    return getattr(diffusers, SCHEDULER_CLASSES[sampler]).from_config(dict(pipe.scheduler.config))


@pytest.mark.parametrize("spacing", list(SCHEDULERS))
@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
@pytest.mark.parametrize("steps", [3, 10, 20])
def test_same_images_as_diffusers_pipeline(folders, spacing, sampler, steps):
    """Our sampler on a folder draws what diffusers' pipeline draws with the folder's own
    scheduler, from the same latents and from the same seed. 3 steps do not divide T = 1000
    (diffusers' DDIM then steps to t - T // n); 20 is past DPM-Solver's lower-order-final
    threshold (15)."""
    ours, pipe = folders[spacing]
    pipe.scheduler = folder_scheduler(pipe, sampler)
    assert ours.scheduler_settings(sampler)["timestep_spacing"] == spacing
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = pipe(["a red cat"] * 2, num_inference_steps=steps, guidance_scale=7.5,
               latents=latents.clone(), output_type="pt").images
    got = ours.sample(2, prompt="a red cat", sampler=sampler, steps=steps, guidance=7.5,
                      latents=latents.clone())
    assert got.shape == ref.shape == (2, 3, 16, 16)
    assert 0 <= got.min() and got.max() <= 1
    assert (got - ref).abs().max().item() < TOL
    # the same seed draws the same initial latents as the pipeline's own generator
    ref_seeded = pipe("a red cat", num_inference_steps=steps, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(5), output_type="pt").images
    got_seeded = ours.sample(1, prompt="a red cat", sampler=sampler, steps=steps, guidance=3.0,
                             generator=torch.Generator().manual_seed(5))
    assert (got_seeded - ref_seeded).abs().max().item() < TOL


@pytest.mark.parametrize("spacing", list(SCHEDULERS))
@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_stochastic_samplers_draw_the_same_noise_as_diffusers(folders, spacing, sampler, eta):
    """DDPM and DDIM with eta = 1 add noise each step: with one CPU generator of the same seed,
    ours and diffusers' draw the initial latents and every step's noise in the same order."""
    ours, pipe = folders[spacing]
    pipe.scheduler = folder_scheduler(pipe, sampler)
    kw = {"eta": eta} if eta else {}
    ref = pipe("a cat", num_inference_steps=10, guidance_scale=7.5, output_type="pt",
               generator=torch.Generator().manual_seed(3), **kw).images
    got = ours.sample(prompt="a cat", sampler=sampler, steps=10, guidance=7.5,
                      generator=torch.Generator().manual_seed(3), **kw)
    assert (got - ref).abs().max().item() < TOL
    other_seed = ours.sample(prompt="a cat", sampler=sampler, steps=10, guidance=7.5,
                             generator=torch.Generator().manual_seed(4), **kw)
    assert (other_seed - ref).abs().max().item() > 100 * TOL


def test_legacy_settings_are_the_trailing_sampler_of_before(ours, pipe):
    """A record made before the folder's settings were followed replays with
    LEGACY_SCHEDULER: trailing, alpha_bar = 1 at the end, sigma = 0 for DPM-Solver, whatever
    the folder says (what these tests compared with diffusers then)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    base = dict(pipe.scheduler.config)
    legacy = {"ddim": DDIMScheduler.from_config(base, timestep_spacing="trailing",
                                                set_alpha_to_one=True),
              "dpm-solver++": DPMSolverMultistepScheduler.from_config(
                  base, timestep_spacing="trailing", final_sigmas_type="zero")}
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for sampler, scheduler in legacy.items():
        pipe.scheduler = scheduler
        ref = pipe("a red cat", num_inference_steps=10, guidance_scale=7.5,
                   latents=latents.clone(), output_type="pt").images
        got = ours.sample(prompt="a red cat", sampler=sampler, steps=10, guidance=7.5,
                          latents=latents.clone(), scheduler=sd_folder.LEGACY_SCHEDULER)
        assert (got - ref).abs().max().item() < TOL
        own = ours.sample(prompt="a red cat", sampler=sampler, steps=10, guidance=7.5,
                          latents=latents.clone())
        assert (own - ref).abs().max().item() > 100 * TOL  # leading differs from trailing


def test_scheduler_settings_follow_diffusers_defaults():
    """A key the folder's config lacks takes the default of diffusers' class for that
    sampler: SD 1.5 ships a PNDMScheduler config without timestep_spacing, which DDIM and
    DDPM read as leading and DPM-Solver as linspace."""
    sd15 = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear",
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}
    settings = sd_folder.scheduler_settings
    assert settings(sd15, "ddim") == {"timestep_spacing": "leading", "steps_offset": 1,
                                      "set_alpha_to_one": False, "diffusers_rules": True}
    assert settings(sd15, "ddpm") == {"timestep_spacing": "leading", "steps_offset": 1,
                                      "diffusers_rules": True}
    assert settings(sd15, "dpm-solver++") == {
        "timestep_spacing": "linspace", "steps_offset": 1, "final_sigmas_type": "zero",
        "lower_order_final": True, "euler_at_final": False, "diffusers_rules": True}
    with pytest.raises(AigcError, match="final_sigmas_type 'max' is not supported"):
        settings({"final_sigmas_type": "max"}, "dpm-solver++")
    with pytest.raises(AigcError, match="steps_offset must be an integer >= 0, got 1.5"):
        settings({"steps_offset": 1.5}, "ddim")


def test_unknown_spacing_is_refused(tiny, tmp_path, capsys):
    folder = with_scheduler(tiny, tmp_path / "bad", timestep_spacing="karras")
    with pytest.raises(AigcError, match=r"scheduler_config.json: scheduler timestep_spacing "
                                        r"'karras' is not supported; supported: trailing, "
                                        r"leading, linspace"):
        load_sd_folder(folder)
    _one_error_line(capsys, ["sample", str(folder), "--prompt", "a cat"],
                    "timestep_spacing 'karras' is not supported")


def test_parity_is_not_vacuous(ours, pipe, monkeypatch):
    """The comparison above can fail: another prompt, or clipping x_0 to [-1, 1] (right for
    pixel-space models, wrong for latents), moves the images far beyond the tolerance."""
    pipe.scheduler = folder_scheduler(pipe, "dpm-solver++")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = pipe("a red cat", num_inference_steps=10, guidance_scale=7.5, latents=latents.clone(),
               output_type="pt").images
    other = ours.sample(prompt="a dog", sampler="dpm-solver++", steps=10, guidance=7.5,
                        latents=latents.clone())
    assert (other - ref).abs().max().item() > 100 * TOL
    assert sd_folder.CLIP_X0 is False
    monkeypatch.setattr(sd_folder, "CLIP_X0", True)
    clipped = ours.sample(prompt="a red cat", sampler="dpm-solver++", steps=10, guidance=7.5,
                          latents=latents.clone())
    assert (clipped - ref).abs().max().item() > 100 * TOL


def test_schedule_read_from_the_folder(ours, pipe):
    assert ours.prediction == "epsilon"
    assert torch.allclose(ours.alphas_cumprod, pipe.scheduler.alphas_cumprod)
    assert ours.default_size == 16


def test_prompts_refused_with_a_reason(ours):
    with pytest.raises(AigcError, match="prompt is empty"):
        ours.sample(prompt="   ")
    with pytest.raises(AigcError, match="no token this model's tokenizer knows"):
        ours.sample(prompt="你好 世界")  # the tiny vocabulary has only a-z: all <unk>
    ours.check_prompt("a 猫")  # a partly known prompt is accepted
    with pytest.raises(AigcError, match="steps must be between 1 and 1000"):
        ours.sample(prompt="a cat", steps=0)
    with pytest.raises(AigcError, match="size must be"):
        ours.sample(prompt="a cat", size=18)


def _copy(tiny, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny, dst)
    return dst


def test_folders_that_are_not_text_to_image_pipelines(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AigcError, match="not a diffusers pipeline: no model_index.json"):
        check_folder(tmp_path / "empty")
    (tmp_path / "empty" / "v1-5.ckpt").write_bytes(b"x")
    with pytest.raises(AigcError, match="v1-5.ckpt is a pickle checkpoint"):
        check_folder(tmp_path / "empty")
    folder = _copy(tiny, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    del index["unet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(AigcError, match="not a text-to-image diffusers pipeline.*'unet'"):
        check_folder(folder)
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(AigcError, match="two text encoders"):
        check_folder(folder)


def test_pickle_weights_are_refused(tiny, tmp_path):
    folder = _copy(tiny, tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(AigcError, match=r"diffusion_pytorch_model\.bin is a pickle-format"):
        load_sd_folder(folder)


def test_folder_hash_follows_the_weights(tiny, tmp_path):
    folder = _copy(tiny, tmp_path)
    before = folder_sha256(folder)
    assert before == folder_sha256(tiny)
    f = folder / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert folder_sha256(folder) != before


def _one_error_line(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert pattern in err[0], err[0]


def test_cli_sample_record_and_replay(tiny, tmp_path, capsys):
    from aigc.media import read_record, save_grid

    out = tmp_path / "a.png"
    assert main(["sample", str(tiny), "--prompt", " a red cat ", "--n", "2", "--steps", "3",
                 "--sampler", "ddim", "--seed", "7", "--out", str(out)]) == 0
    rec = read_record(out)
    assert rec["checkpoint"] == str(tiny.resolve())
    assert rec["model_sha256"] == folder_sha256(tiny)
    assert rec["family"] == "diffusers-folder"
    assert (rec["seed"], rec["n"], rec["prompt"]) == (7, 2, "a red cat")
    assert rec["options"] == {"sampler": "ddim", "steps": 3, "guidance": 7.5, "eta": 0.0,
                              "size": 16, "scheduler": SD1_DDIM}
    assert set(rec["network_versions"]) == {"diffusers", "transformers"}
    again = tmp_path / "b.png"
    assert main(["sample", "--replay", str(out), "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    # another sampler on replay runs with the folder's settings for that sampler
    dpm = tmp_path / "dpm.png"
    assert main(["sample", "--replay", str(out), "--sampler", "dpm-solver++",
                 "--out", str(dpm)]) == 0
    assert read_record(dpm)["options"]["scheduler"]["final_sigmas_type"] == "zero"
    # a record made before the scheduler settings were recorded replays with the trailing
    # settings of that time, and says so in the new record
    old = {**rec, "options": {k: v for k, v in rec["options"].items() if k != "scheduler"}}
    save_grid(tmp_path / "old.png", torch.zeros(2, 3, 16, 16), record=old, scale=1)
    assert main(["sample", "--replay", str(tmp_path / "old.png"),
                 "--out", str(tmp_path / "c.png")]) == 0
    assert read_record(tmp_path / "c.png")["options"]["scheduler"] == {
        "timestep_spacing": "trailing", "steps_offset": 0, "set_alpha_to_one": True,
        "diffusers_rules": False}
    assert (tmp_path / "c.png").read_bytes() != out.read_bytes()
    capsys.readouterr()


def test_cli_bad_input_is_one_line_exit_2(tiny, tmp_path, capsys):
    not_pipeline = tmp_path / "np"
    (not_pipeline / "unet").mkdir(parents=True)
    _one_error_line(capsys, ["sample", str(not_pipeline), "--prompt", "a cat"],
                    "not a diffusers pipeline")
    _one_error_line(capsys, ["sample", str(tiny)], "give --prompt")
    _one_error_line(capsys, ["sample", str(tiny), "--prompt", ""], "prompt is empty")
    _one_error_line(capsys, ["sample", str(tiny), "--prompt", "你好"], "no token")
    _one_error_line(capsys, ["sample", str(tiny), "--prompt", "a", "--class", "3"],
                    "--class do(es) not apply")
    only_ckpt = tmp_path / "ckpt"
    only_ckpt.mkdir()
    (only_ckpt / "v1-5-pruned.ckpt").write_bytes(b"not read")
    _one_error_line(capsys, ["sample", str(only_ckpt), "--prompt", "a cat"],
                    "v1-5-pruned.ckpt is a pickle checkpoint")
    folder = _copy(tiny, tmp_path)
    (folder / "text_encoder" / "model.safetensors").rename(
        folder / "text_encoder" / "pytorch_model.bin")
    _one_error_line(capsys, ["sample", str(folder), "--prompt", "a cat"], "pytorch_model.bin")


def test_studio_serves_a_folder_like_a_checkpoint(tiny, ours, tmp_path):
    """The studio's image backend loads a diffusers folder found in its models folder and draws
    image i of a batch from its own seed and prompt, as ``sample(1, ...)`` does alone."""
    from aigc.studio.backends import ImageSettings, ImageSpec, find_checkpoints
    from aigc.studio.backends.common import checkpoint_headers
    from aigc.studio.backends.image import load_image_backends

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny, models / "tiny-sd")
    found = find_checkpoints(models)
    assert found == [("tiny-sd", models / "tiny-sd")]
    assert list(checkpoint_headers(found)) == []  # not a text or music model
    backends, skipped = load_image_backends(found)
    assert skipped == {}
    backend = backends["tiny-sd"]
    info = backend.describe()
    assert (info["family"], info["conditioning"], info["image_size"]) == \
        ("diffusers-folder", "text", 16)
    assert info["sha256"] == folder_sha256(tiny)
    settings = backend.resolve(ImageSettings(steps=3, sampler="ddim"))
    specs = [ImageSpec(seed=1, prompt="a red cat"), ImageSpec(seed=2, prompt="a dog")]
    batch = backend.generate(specs, settings)
    for i, spec in enumerate(specs):
        seed = torch.Generator().manual_seed(spec.seed)
        alone = ours.sample(1, prompt=spec.prompt, generator=seed,
                            sampler="ddim", steps=3, guidance=7.5)
        assert (batch[i:i + 1] - alone).abs().max().item() < TOL
    assert backend.record_options(settings) == {"sampler": "ddim", "steps": 3, "guidance": 7.5,
                                                "eta": 0.0, "size": 16, "scheduler": SD1_DDIM}


def test_studio_job_on_a_folder_end_to_end(tiny, tmp_path):
    """Through the HTTP API: a job with a prompt on a diffusers folder is done, its item's
    record names the folder and its hash; an empty prompt is refused with a reason."""
    from fastapi.testclient import TestClient
    from studio_fixtures import make_settings, wait_job

    from aigc.studio.app import create_app

    settings = make_settings(tmp_path)
    shutil.copytree(tiny, settings.models_dir / "tiny-sd")
    with TestClient(create_app(settings)) as client:
        models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
        assert models["tiny-sd"]["details"]["conditioning"] == "text"
        r = client.post("/api/jobs", json={"kind": "image", "model": "tiny-sd", "steps": 2,
                                           "n": 2, "seed": 3, "prompt": "a red cat"})
        job = wait_job(client, r.json()["id"])
        assert job["status"] == "done", job
        record = client.get(f"/api/items/{job['items'][0]}").json()["record"]
        assert record["model_sha256"] == folder_sha256(tiny)
        assert record["prompt"] == "a red cat" and record["family"] == "diffusers-folder"
        bad = client.post("/api/jobs", json={"kind": "image", "model": "tiny-sd", "steps": 2,
                                             "n": 1, "seed": 3, "prompt": "你好"})
        failed = wait_job(client, bad.json()["id"]) if bad.status_code < 300 else bad.json()
        assert "no token" in json.dumps(failed), failed
