"""``aigc sample`` (draw from a model) and ``aigc reconstruct`` (encode and decode real images).

``aigc sample`` works for every family that samples images (vae, gan, diffusion). The PNG it writes
holds a record of everything needed to make it again (model file SHA-256, seed, class, prompt,
sampler, steps, guidance, library versions); ``aigc sample --replay FILE.png`` re-runs that record
and, on the same CPU software stack, writes a byte-identical PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from aigc.cli._common import check_out_file
from aigc.config import check_seed
from aigc.errors import AigcError

MAX_N = 1024
MAX_GUIDANCE = 30.0
MAX_TRUNCATION = 4.0
SIZE_RANGE = (8, 256)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw images from a trained model into a PNG grid",
                       description="Draw N samples from a checkpoint (a run folder, a checkpoint "
                       "folder, a model.safetensors, or starter:NAME for a shipped starter model; a "
                       "diffusers Stable Diffusion folder with --prompt, see docs/sd-folders.md). "
                       "The PNG embeds its provenance record; `aigc info FILE.png` prints it and "
                       "`aigc sample --replay FILE.png` makes it again.")
    p.add_argument("checkpoint", nargs="?", help="model to sample (optional with --replay)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=None,
                   help=f"number of samples, 1..{MAX_N} (default 64; write --num-samples under "
                   "torchrun, whose parser reads --n as one of its own options)")
    p.add_argument("--out", default="out/samples.png", help="PNG path (default out/samples.png)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--replay", metavar="PNG", help="re-run the record embedded in an aigc PNG")
    p.add_argument("--seed-block", type=int, default=None,
                   help=f"draw in blocks of K samples, block c from its own generator (seed for "
                   f"the first, then seed * 1000003 + c), 1..{MAX_N}; needed under torchrun, "
                   "which shares the blocks out (default: one generator for all)")
    g = p.add_argument_group("conditioning (gan, diffusion)")
    g.add_argument("--class", dest="class_", metavar="CLASS",
                   help="class name or index, e.g. 7, seven, sneaker (default: cycle through classes)")
    g.add_argument("--prompt", help="free-text prompt (diffusion models trained with text)")
    g.add_argument("--text-route", choices=["auto", "tokens", "sentence"], default=None,
                   help="latent-diffusion: read an English --prompt as MiniLM tokens or as one "
                   "sentence token (a Chinese one is always a sentence token from the bundled "
                   "encoder); default auto: tokens for English. The record keeps the route")
    g = p.add_argument_group("diffusion")
    g.add_argument("--sampler", choices=["ddpm", "ddim", "dpm-solver++"], default=None,
                   help="default dpm-solver++")
    g.add_argument("--steps", type=int, default=None, help="sampler steps, 1..T (default 20)")
    g.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale, 0..{MAX_GUIDANCE:g} (default 3)")
    g.add_argument("--eta", type=float, default=None, help="DDIM noise, 0..1 (default 0)")
    g.add_argument("--size", type=int, default=None,
                   help=f"image side in pixels, {SIZE_RANGE[0]}..{SIZE_RANGE[1]} (default: trained size)")
    g = p.add_argument_group("gan")
    g.add_argument("--truncation", type=float, default=None,
                   help=f"truncate the latent at +-T, 0 < T <= {MAX_TRUNCATION:g} (default: none)")
    g = p.add_argument_group("vae")
    g.add_argument("--temperature", type=float, default=None,
                   help="scale of the prior noise, 0..2 (default 1)")
    p.set_defaults(func=run_sample)

    r = sub.add_parser("reconstruct", help="encode and decode real images (VAE)")
    r.add_argument("checkpoint")
    r.add_argument("--data", required=True, help="dataset (e.g. mnist)")
    r.add_argument("--split", default="test", choices=["train", "val", "test"])
    r.add_argument("--n", type=int, default=32, help="images, 1..512 (default 32)")
    r.add_argument("--out", default="out/reconstructions.png")
    r.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    r.set_defaults(func=run_reconstruct)


def provenance(ckpt, **extra) -> dict:
    """The record of a file made from a checkpoint that is not a sample (reconstructions,
    interpolations): the model, its data and the library versions."""
    from aigc.checkpoints import library_versions

    return {"model_sha256": ckpt.sha256, "family": ckpt.family, "step": ckpt.step,
            "data": ckpt.meta.get("data"), "versions": library_versions(), **extra}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given as flags (``None``: not given)."""
    return {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
            "eta": args.eta, "size": args.size, "truncation": args.truncation,
            "temperature": args.temperature}


def _check_bounds(n: int, o: dict[str, Any], model) -> None:
    if not 1 <= n <= MAX_N:
        raise AigcError(f"--n must be between 1 and {MAX_N}, got {n}")
    if "temperature" in o and not 0 <= o["temperature"] <= 2:
        raise AigcError(f"--temperature must be between 0 and 2, got {o['temperature']}")
    if o.get("truncation") is not None and not 0 < o["truncation"] <= MAX_TRUNCATION:
        raise AigcError(f"--truncation must be in (0, {MAX_TRUNCATION:g}], got {o['truncation']}")
    if "steps" in o:
        top = model.cfg.num_train_timesteps
        if not 1 <= o["steps"] <= top:
            raise AigcError(f"--steps must be between 1 and {top} (the model's training "
                            f"timesteps), got {o['steps']}")
        if not 0 <= o["guidance"] <= MAX_GUIDANCE:
            raise AigcError(f"--guidance must be between 0 and {MAX_GUIDANCE:g}, got {o['guidance']}")
        if not 0 <= o["eta"] <= 1:
            raise AigcError(f"--eta must be between 0 and 1, got {o['eta']}")
        if o["eta"] and o["sampler"] != "ddim":
            raise AigcError(f"--eta applies to --sampler ddim only, not {o['sampler']}")
        factor = 2 ** (len(model.cfg.channels) - 1)
        if not SIZE_RANGE[0] <= o["size"] <= SIZE_RANGE[1] or o["size"] % factor:
            raise AigcError(f"--size must be between {SIZE_RANGE[0]} and {SIZE_RANGE[1]} and "
                            f"divisible by {factor}, got {o['size']}")


def _options(args: argparse.Namespace, model, family: str,
             record: dict[str, Any] | None) -> dict[str, Any]:
    """The sampling options: the family's defaults, then the record (--replay), then flags.
    Every default comes from the model's ``sample`` signature (:mod:`aigc.records`)."""
    from aigc.records import replay_options, resolve_options, sampling_options

    if family not in ("vae", "gan", "diffusion", "latent-diffusion"):
        raise AigcError(f"a {family!r} model does not sample images")
    known = sampling_options(model)
    given = {k: v for k, v in _given(args).items() if v is not None}
    unused = sorted(set(given) - set(known))
    if unused:
        flags = ", ".join("--" + k for k in unused)
        raise AigcError(f"{flags} do(es) not apply to a {family} model; it takes "
                        f"{', '.join('--' + k for k in known) or 'no options'}")
    recorded = {k: v for k, v in replay_options(record or {}).items() if k in known}
    return resolve_options(model, {**recorded, **given})


def _read_replay(path: str) -> dict[str, Any]:
    """The record of an aigc PNG (a CLI grid or a studio item), or an error naming the file."""
    from aigc.media import read_record

    record = read_record(path)
    if not record or record.get("kind") not in ("sample", "image"):
        raise AigcError(f"{path} holds no aigc image record (made by `aigc sample` or the studio)")
    return record


def _use_recorded_threads(record: dict[str, Any]) -> None:
    """Replay with the thread count and kernels the record was made with: float reductions
    split differently across threads, and that can move a pixel by one level."""
    threads = record.get("threads")
    if isinstance(threads, int) and threads > 0 and threads != torch.get_num_threads():
        print(f"replay: using {threads} thread(s) as recorded (this process had "
              f"{torch.get_num_threads()})")
        torch.set_num_threads(threads)
    route = record.get("linear_route")
    if route in ("onednn", "torch"):
        from aigc.models.layers import set_onednn_linear

        set_onednn_linear(route == "onednn")
    # the UNets' native kernels (records from before these fields: ATen's)
    from aigc.models import native

    for kind in ("conv", "groupnorm"):
        route = record.get(f"{kind}_route", "torch")
        if route not in ("native", "torch"):
            continue
        if route == "native" and native._build() is None:
            print(f"replay: the record was drawn with aigc's native {kind} kernels, which cannot "
                  f"be built here ({native._build_error}); pixels may differ by a level")
        else:
            native.set_route(kind, route)
    isa = record.get("cpu_capability")
    here = torch.backends.cpu.get_cpu_capability()
    if isa and isa != here:
        print(f"replay: the record was made with {isa} kernels and this CPU runs {here}; "
              "pixels may differ by a level")


def run_sample(args: argparse.Namespace) -> int:
    from aigc.media import save_grid
    from aigc.models import model_from_checkpoint
    from aigc.records import image_record
    from aigc.registry import resolve_model

    check_out_file(args.out)  # before any sampling: a bad --out fails fast and leaves nothing
    record = None
    checkpoint = args.checkpoint
    raw = args.raw
    if args.replay:
        record = _read_replay(args.replay)
        checkpoint = checkpoint or record.get("checkpoint")
        raw = raw or not record.get("ema", True)
        _use_recorded_threads(record)
    if not checkpoint:
        raise AigcError("give a checkpoint (or --replay FILE.png)")
    from aigc.models.sd_folder import is_diffusers_folder

    if is_diffusers_folder(checkpoint):
        return _run_sd_folder(args, checkpoint, record)
    model, ckpt = model_from_checkpoint(resolve_model(checkpoint), use_ema=not raw)
    if record and record.get("model_sha256") != ckpt.sha256:
        raise AigcError(f"{ckpt.path} is not the model that made {args.replay}: SHA-256 "
                        f"{ckpt.sha256[:16]}... != {str(record.get('model_sha256'))[:16]}...")
    from aigc.models import sampling_memory_format, set_memory_format

    # a replay draws in the record's format (records from before the field: NCHW)
    memory_format = (record.get("memory_format", "contiguous") if record
                     else sampling_memory_format(ckpt.family))
    set_memory_format(model, memory_format)
    o = _options(args, model, ckpt.family, record)
    single = record is not None and record["kind"] == "image"  # a studio item: one image
    n = args.n if args.n is not None else 1 if single else int((record or {}).get("n", 64))
    seed = args.seed if args.seed is not None else int((record or {}).get("seed", 0))
    check_seed(seed, "--seed")  # also a seed read from a --replay record
    _check_bounds(n, o, model)
    class_, prompt = args.class_, args.prompt
    if record and class_ is None and prompt is None:
        class_ = record.get("label", record.get("class"))  # format 2, or the older records
        prompt = record.get("prompt")
    labels, text, label, class_name = _condition(n, class_, prompt, model, ckpt)
    route = _text_route(args, record, prompt, model, ckpt)
    seed_block = args.seed_block if args.seed_block is not None else \
        (record or {}).get("seed_block")
    from aigc.distributed import context

    if seed_block is None and context().distributed:
        raise AigcError("under torchrun, aigc sample needs --seed-block K (samples per seeding "
                        "block, the unit the processes share out)")
    if seed_block is not None and (isinstance(seed_block, bool) or not isinstance(seed_block, int)
                                   or not 1 <= seed_block <= MAX_N):
        raise AigcError(f"--seed-block must be between 1 and {MAX_N}, got {seed_block!r}")

    def draw(count: int, gen: torch.Generator, lab, txt, progress: bool) -> torch.Tensor:
        if ckpt.family == "vae":
            return model.sample(count, generator=gen, **o)
        if ckpt.family == "gan":
            return model.sample(count, generator=gen, labels=lab, **o)
        if ckpt.family == "latent-diffusion":  # the prompt is read by the model's own encoder
            return model.sample(count, generator=gen, prompt=prompt.strip() if prompt else None,
                                text_route=route or "auto", progress=progress, **o)
        return model.sample(count, generator=gen, labels=lab, text=txt, progress=progress, **o)

    if seed_block is None:
        images = draw(n, torch.Generator().manual_seed(seed), labels, text, True)
    else:
        images = _draw_blocks(draw, n, seed, seed_block, labels, text)
        if images is None:  # not rank 0 under torchrun: its samples went to rank 0
            return 0
    extra = {"memory_format": memory_format}
    if seed_block is not None:
        extra["seed_block"] = seed_block
    if route is not None:
        extra["text_route"] = route
    if single:
        return _write_item(args, record, images[0], image_record(
            kind="image", ckpt=ckpt, checkpoint=checkpoint, seed=seed, n=1, ema=not raw,
            options=o, label=label, class_name=class_name, prompt=prompt,
            output_size=record.get("output_size", record.get("size")), replay_of=args.replay,
            **extra))
    rec = image_record(kind="sample", ckpt=ckpt, checkpoint=checkpoint, seed=seed, n=n,
                       ema=not raw, options=o, label=label, class_name=class_name,
                       prompt=prompt, **extra)
    out = save_grid(Path(args.out), images, nrow=_nrow(n, model), record=rec)
    print(f"{n} samples: {out}")
    return 0


def _draw_blocks(draw, n: int, seed: int, seed_block: int, labels, text) -> torch.Tensor | None:
    """``n`` samples in blocks of ``seed_block``, block c drawn with
    :func:`aigc.evaluate.images.block_seed`; under torchrun the blocks are shared out and rank 0
    gets them all in order (the other ranks ``None``), the same tensor one process draws."""
    from aigc.distributed import context, gather_to_rank0, shard_range
    from aigc.evaluate.images import block_seed

    ctx = context()
    blocks = (n + seed_block - 1) // seed_block
    first, last = shard_range(blocks, ctx.rank, ctx.world_size)
    out = []
    for c in range(first, last):
        lo, hi = c * seed_block, min(n, (c + 1) * seed_block)
        gen = torch.Generator().manual_seed(block_seed(seed, c))
        out.append(draw(hi - lo, gen, None if labels is None else labels[lo:hi],
                        None if text is None else text[lo:hi], ctx.is_main))
    if not ctx.distributed:
        return torch.cat(out)
    if not out:  # more processes than blocks: take part in the gather with nothing
        probe = draw(1, torch.Generator().manual_seed(seed), None if labels is None else labels[:1],
                     None if text is None else text[:1], False)
        out = [probe[:0]]
    return gather_to_rank0(torch.cat(out).float().cpu())


def _run_sd_folder(args: argparse.Namespace, checkpoint: str, record: dict[str, Any] | None
                   ) -> int:
    """``aigc sample FOLDER --prompt ...`` for a diffusers text-to-image folder
    (:mod:`aigc.models.sd_folder`): our samplers, the same record as any other grid."""
    from aigc.media import save_grid
    from aigc.models.sd_folder import DEFAULTS, LEGACY_SCHEDULER, load_sd_folder
    from aigc.records import image_record, replay_options

    unused = [f for f, v in (("--class", args.class_), ("--truncation", args.truncation),
                             ("--temperature", args.temperature), ("--raw", args.raw or None),
                             ("--text-route", args.text_route))
              if v is not None]
    if unused:
        raise AigcError(f"{', '.join(unused)} do(es) not apply to a diffusers folder; it takes "
                        "--prompt --sampler --steps --guidance --eta --size")
    prompt = args.prompt if args.prompt is not None else (record or {}).get("prompt")
    if prompt is None:
        raise AigcError("a diffusers folder draws from a text prompt: give --prompt TEXT")
    folder = load_sd_folder(checkpoint)
    if record and record.get("model_sha256") != folder.sha256:
        raise AigcError(f"{folder.path} is not the pipeline that made {args.replay}: SHA-256 "
                        f"{folder.sha256[:16]}... != {str(record.get('model_sha256'))[:16]}...")
    recorded = {k: v for k, v in replay_options(record or {}).items()
                if k in (*DEFAULTS, "size", "scheduler")}
    given = {k: v for k, v in _given(args).items() if v is not None}
    o = {**DEFAULTS, "size": folder.default_size, **recorded, **given}
    # the scheduler settings: the folder's own; on replay the record's (for the sampler it
    # names), and for a record made before they were recorded, the trailing ones of that time
    if record is not None and "scheduler" not in recorded:
        o["scheduler"] = LEGACY_SCHEDULER
    elif o["sampler"] != recorded.get("sampler"):
        o.pop("scheduler", None)
    o["scheduler"] = folder.scheduler_settings(o["sampler"], o.get("scheduler"))
    n = args.n if args.n is not None else int((record or {}).get("n", 1))
    seed = args.seed if args.seed is not None else int((record or {}).get("seed", 0))
    check_seed(seed, "--seed")
    if not 1 <= n <= 64:
        raise AigcError(f"--n must be between 1 and 64 for a diffusers folder, got {n}")
    gen = torch.Generator().manual_seed(seed)
    images = folder.sample(n, prompt=prompt, generator=gen, progress=True, **o)
    rec = image_record(kind="sample", ckpt=folder.checkpoint_info(), checkpoint=folder.path,
                       seed=seed, n=n, ema=False, options=o, prompt=prompt.strip(),
                       network_versions=folder.network_versions())
    out = save_grid(Path(args.out), images, record=rec, scale=1)
    print(f"{n} samples: {out}")
    return 0


def _write_item(args: argparse.Namespace, source: dict[str, Any], image: torch.Tensor,
                record: dict[str, Any]) -> int:
    """Write a replayed studio item as the studio wrote it (one image, nearest-upscaled to its
    output size) and compare its pixels with the item's."""
    import numpy as np
    from PIL import Image

    from aigc.media import save_png, to_uint8

    arr = to_uint8(image[None])[0].permute(1, 2, 0).numpy()  # (H, W, C) uint8
    size = record.get("output_size")
    if size and size != arr.shape[0]:
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        arr = np.asarray(img.resize((size, size), Image.Resampling.NEAREST))
    out = save_png(Path(args.out), arr, record=record)
    with Image.open(args.replay) as img:
        before = np.asarray(img)
    after = np.asarray(Image.open(out))
    if before.shape != after.shape:
        print(f"1 image: {out} (shape {after.shape} differs from the item's {before.shape})")
        return 0
    diff = np.abs(before.astype(int) - after.astype(int))
    same = "identical pixels" if not diff.any() else \
        f"{int((diff > 0).sum())} pixel value(s) differ, by at most {int(diff.max())}"
    print(f"1 image: {out} ({same} to {args.replay})")
    return 0


def _text_route(args: argparse.Namespace, record: dict[str, Any] | None, prompt: str | None,
                model, ckpt) -> str | None:
    """The route a latent-diffusion prompt takes (``"tokens"`` or ``"sentence"``, as
    recorded), from --text-route, else the replayed record, else ``auto``; ``None`` when no
    prompt is read."""
    chosen = args.text_route
    if chosen is not None and (ckpt.family != "latent-diffusion" or prompt is None):
        raise AigcError("--text-route applies to a latent-diffusion model's --prompt only")
    if ckpt.family != "latent-diffusion" or prompt is None:
        return None
    if chosen is None:
        chosen = (record or {}).get("text_route") or "auto"
    return model.prompt_route(prompt.strip(), chosen)


def _nrow(n: int, model) -> int | None:
    k = getattr(model.cfg, "num_classes", 0)
    return k if k and n % k == 0 and n > k else None


def _condition(n: int, class_: str | int | None, prompt: str | None, model, ckpt
               ) -> tuple[torch.Tensor | None, torch.Tensor | None, int | None, str | None]:
    """``(labels, text embeddings, label, description)`` for ``n`` images: labels or prompt
    embeddings for the model, and the class index and name (or how classes were chosen) for the
    record."""
    from aigc.data.captions import resolve_class

    class_names = ckpt.meta.get("class_names") or []
    if class_ is not None and prompt is not None:
        raise AigcError("give --class or --prompt, not both")
    if ckpt.family == "vae":
        if class_ is not None or prompt is not None:
            raise AigcError("a vae model draws unconditional samples; drop --class/--prompt")
        return None, None, None, None
    if ckpt.family == "latent-diffusion":
        if class_ is not None:
            raise AigcError("a latent-diffusion model takes --prompt, not --class")
        if prompt is not None and not 1 <= len(prompt.strip()) <= 500:
            raise AigcError(f"--prompt must be 1..500 characters, got {len(prompt.strip())}")
        # the prompt's route, and whether the model can read it: _text_route
        return None, None, None, None if prompt is not None else "unconditional"
    if prompt is not None:
        if ckpt.family != "diffusion":
            raise AigcError(f"a {ckpt.family} model has no text conditioning; --prompt is for "
                            "diffusion models trained with text")
        if not model.cfg.text_conditioning:
            raise AigcError("this model was trained without text conditioning, so it cannot take "
                            "a --prompt; use --class"
                            + (f" (one of {', '.join(class_names)})" if class_names else ""))
        prompt = prompt.strip()
        if not prompt or len(prompt) > 500:
            raise AigcError(f"--prompt must be 1..500 characters, got {len(prompt)}")
        return None, model.embed_prompts([prompt]).repeat(n, 1), None, None
    if not model.cfg.num_classes:
        if class_ is not None:
            raise AigcError("this model was trained without class labels; --class is not available")
        return None, None, None, "unconditional"
    if class_ is None:  # cycle through every class, one column each
        return torch.arange(n) % model.cfg.num_classes, None, None, "all classes, cycling"
    index = resolve_class(str(class_), ckpt.meta.get("data", ""), class_names)
    return torch.full((n,), index, dtype=torch.long), None, index, class_names[index]


def run_reconstruct(args: argparse.Namespace) -> int:
    from aigc.data.images import load_images
    from aigc.media import save_grid
    from aigc.models import model_from_checkpoint
    from aigc.registry import resolve_model

    if not 1 <= args.n <= 512:
        raise AigcError(f"--n must be between 1 and 512, got {args.n}")
    check_out_file(args.out)
    model, ckpt = model_from_checkpoint(resolve_model(args.checkpoint), use_ema=not args.raw)
    if not hasattr(model, "reconstruct"):
        raise AigcError(f"{ckpt.path}: a {ckpt.family!r} model cannot reconstruct images")
    data = load_images(args.data, args.split)
    if (data.channels, data.image_size) != (model.cfg.image_channels, model.cfg.image_size):
        raise AigcError(
            f"{args.data} images are {data.channels}x{data.image_size}x{data.image_size} but the "
            f"model expects {model.cfg.image_channels}x{model.cfg.image_size}x{model.cfg.image_size}"
        )
    x = data.get_batch(torch.arange(min(args.n, len(data))))["image"]
    recon = model.reconstruct(x)
    # Rows alternate: originals, then their reconstructions underneath.
    nrow = 8
    rows = []
    for start in range(0, len(x), nrow):
        rows += [x[start : start + nrow], recon[start : start + nrow]]
    out = save_grid(Path(args.out), torch.cat(rows), nrow=nrow,
                    record=provenance(ckpt, kind="reconstruction", split=args.split, n=len(x)))
    print(f"{len(x)} originals (odd rows) and reconstructions (even rows): {out}")
    return 0
