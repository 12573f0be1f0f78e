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
STARTERS_DIR = Path(__file__).resolve().parent.parent / "assets" / "starters"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw images from a trained model into a PNG grid",
                       description="Draw N samples from a checkpoint (a run folder, a checkpoint "
                       "folder, a model.safetensors, or starter:NAME for a shipped starter model). "
                       "The PNG embeds its provenance record; `aigc info FILE.png` prints it and "
                       "`aigc sample --replay FILE.png` makes it again.")
    p.add_argument("checkpoint", nargs="?", help="model to sample (optional with --replay)")
    p.add_argument("--n", type=int, default=None, help=f"number of samples, 1..{MAX_N} (default 64)")
    p.add_argument("--out", default="out/samples.png", help="PNG path (default out/samples.png)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--replay", metavar="PNG", help="re-run the record embedded in an aigc PNG")
    g = p.add_argument_group("conditioning (gan, diffusion)")
    g.add_argument("--class", dest="class_", metavar="CLASS",
                   help="class name or index, e.g. 7, seven, sneaker (default: cycle through classes)")
    g.add_argument("--prompt", help="free-text prompt (diffusion models trained with text)")
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
    from aigc.checkpoints import library_versions

    return {"model_sha256": ckpt.sha256, "family": ckpt.family, "step": ckpt.step,
            "data": ckpt.meta.get("data"), "versions": library_versions(), **extra}


def resolve_model(name: str) -> str:
    """``starter:NAME`` -> the shipped starter model file; anything else is returned unchanged."""
    if not name.startswith("starter:"):
        return name
    path = STARTERS_DIR / f"{name[len('starter:'):]}.safetensors"
    if not path.is_file():
        known = sorted(p.stem for p in STARTERS_DIR.glob("*.safetensors"))
        raise AigcError(f"no starter model {name!r}; known: "
                        f"{', '.join('starter:' + k for k in known) or '(none installed)'}")
    return str(path)


# Options per family: (name, default). Anything given that a family does not use is refused.
_OPTIONS = {
    "vae": {"temperature": 1.0},
    "gan": {"class": None, "truncation": None},
    "diffusion": {"class": None, "prompt": None, "sampler": "dpm-solver++", "steps": 20,
                  "guidance": 3.0, "eta": 0.0, "size": None},
}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    values = {"class": args.class_, "prompt": args.prompt, "sampler": args.sampler,
              "steps": args.steps, "guidance": args.guidance, "eta": args.eta, "size": args.size,
              "truncation": args.truncation, "temperature": args.temperature}
    return {k: v for k, v in values.items() if v is not None}


def _check_bounds(o: dict[str, Any], model) -> None:
    check_seed(o["seed"], "--seed")  # also a seed read from a --replay record
    if not 1 <= o["n"] <= MAX_N:
        raise AigcError(f"--n must be between 1 and {MAX_N}, got {o['n']}")
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
        if o.get("size") is not None:
            factor = 2 ** (len(model.cfg.channels) - 1)
            if not SIZE_RANGE[0] <= o["size"] <= SIZE_RANGE[1] or o["size"] % factor:
                raise AigcError(f"--size must be between {SIZE_RANGE[0]} and {SIZE_RANGE[1]} and "
                                f"divisible by {factor}, got {o['size']}")


def _options(args: argparse.Namespace, family: str) -> dict[str, Any]:
    """The sampling options for ``family``: defaults, then the record (--replay), then flags."""
    known = _OPTIONS.get(family)
    if known is None:
        raise AigcError(f"a {family!r} model does not sample images")
    given = _given(args)
    unused = sorted(set(given) - set(known))
    if unused:
        flags = ", ".join("--" + k for k in unused)
        if "prompt" in unused:
            raise AigcError(f"a {family} model has no text conditioning; --prompt is for diffusion "
                            "models trained with text")
        raise AigcError(f"{flags} do(es) not apply to a {family} model; it takes "
                        f"{', '.join('--' + k for k in known) or 'no options'}")
    options = {"n": 64, "seed": 0, **known}
    if args.replay:
        record = args.record
        options.update({k: record[k] for k in options if k in record})
    options.update(given)
    if args.n is not None:
        options["n"] = args.n
    if args.seed is not None:
        options["seed"] = args.seed
    return options


def run_sample(args: argparse.Namespace) -> int:
    from aigc.media import read_record, save_grid
    from aigc.models import model_from_checkpoint

    check_out_file(args.out)  # before any sampling: a bad --out fails fast and leaves nothing
    args.record = None
    checkpoint = args.checkpoint
    raw = args.raw
    if args.replay:
        args.record = read_record(args.replay)
        if not args.record or args.record.get("kind") != "sample":
            raise AigcError(f"{args.replay} holds no aigc sample record")
        checkpoint = checkpoint or args.record.get("checkpoint")
        raw = raw or not args.record.get("ema", True)
    if not checkpoint:
        raise AigcError("give a checkpoint (or --replay FILE.png)")
    model, ckpt = model_from_checkpoint(resolve_model(checkpoint), use_ema=not raw)
    if args.record and args.record.get("model_sha256") != ckpt.sha256:
        raise AigcError(f"{ckpt.path} is not the model that made {args.replay}: SHA-256 "
                        f"{ckpt.sha256[:16]}... != {str(args.record.get('model_sha256'))[:16]}...")
    o = _options(args, ckpt.family)
    _check_bounds(o, model)
    gen = torch.Generator().manual_seed(o["seed"])
    record: dict[str, Any] = {"kind": "sample", "checkpoint": checkpoint, "ema": not raw, **o}
    if ckpt.family == "vae":
        images = model.sample(o["n"], generator=gen, temperature=o["temperature"])
    else:
        labels, text, names = _condition(o, model, ckpt)
        record["labels"] = names
        if ckpt.family == "gan":
            images = model.sample(o["n"], generator=gen, labels=labels, truncation=o["truncation"])
        else:
            images = model.sample(o["n"], generator=gen, labels=labels, text=text,
                                  sampler=o["sampler"], steps=o["steps"], guidance=o["guidance"],
                                  eta=o["eta"], size=o["size"], progress=True)
    out = save_grid(Path(args.out), images, nrow=_nrow(o["n"], model), record=provenance(ckpt, **record))
    print(f"{o['n']} samples: {out}")
    return 0


def _nrow(n: int, model) -> int | None:
    k = getattr(model.cfg, "num_classes", 0)
    return k if k and n % k == 0 and n > k else None


def _condition(o: dict[str, Any], model, ckpt) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """Labels or prompt embeddings for ``n`` images, and a description for the record."""
    from aigc.data.captions import resolve_class

    n, class_names = o["n"], ckpt.meta.get("class_names") or []
    if o.get("class") is not None and o.get("prompt") is not None:
        raise AigcError("give --class or --prompt, not both")
    if o.get("prompt") is not None:
        if not model.cfg.text_conditioning:
            raise AigcError("this model was trained without text conditioning, so it cannot take "
                            "a --prompt; use --class"
                            + (f" (one of {', '.join(class_names)})" if class_names else ""))
        prompt = o["prompt"].strip()
        if not prompt or len(prompt) > 500:
            raise AigcError(f"--prompt must be 1..500 characters, got {len(prompt)}")
        return None, model.embed_prompts([prompt]).repeat(n, 1), f"prompt: {prompt}"
    if not model.cfg.num_classes:
        if o.get("class") is not None:
            raise AigcError("this model was trained without class labels; --class is not available")
        return None, None, "unconditional"
    if o.get("class") is None:  # cycle through every class, one column each
        labels = torch.arange(n) % model.cfg.num_classes
        return labels, None, "all classes, cycling"
    index = resolve_class(o["class"], ckpt.meta.get("data", ""), class_names)
    return torch.full((n,), index, dtype=torch.long), None, class_names[index]


def run_reconstruct(args: argparse.Namespace) -> int:
    from aigc.data.images import load_images
    from aigc.media import save_grid
    from aigc.models import model_from_checkpoint

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
