"""Tokenizers for our GPT: character level, and byte-level BPE trained on the corpus.

Both have an end-of-text token (id 0) that separates documents during training and stops
generation. Both serialise to a JSON-ready dict (:meth:`to_dict`) that is stored in the
checkpoint's ``meta["tokenizer"]``, so ``model.safetensors`` alone rebuilds model and tokenizer::

    tok = CharTokenizer.train(["床前明月光"])
    tok.decode(tok.encode("明月")) == "明月"          # exact round trip
    same = tokenizer_from_dict(tok.to_dict())

Byte-level BPE (HF ``tokenizers``) has no normaliser and no pre-tokenizer that drops anything,
so any UTF-8 text, Chinese included, round-trips exactly.
"""

from __future__ import annotations

import json
from typing import Any

from aigc.errors import DataError

EOT = "<|endoftext|>"


class CharTokenizer:
    """One token per Unicode character seen in the corpus, plus ``<|endoftext|>`` (id 0)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise DataError("a character tokenizer needs distinct single characters")
        self.chars = list(chars)
        self._index = {c: i + 1 for i, c in enumerate(self.chars)}
        self.eot_id = 0

    @classmethod
    def train(cls, texts: list[str]) -> CharTokenizer:
        return cls(sorted(set("".join(texts))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; characters outside the vocabulary are refused, by name."""
        try:
            return [self._index[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self._index})
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise DataError(
                f"{len(unknown)} character(s) never seen in the training corpus: {shown}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(EOT if i == 0 else self.chars[i - 1] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": "".join(self.chars)}


class BPETokenizer:
    """Byte-level BPE trained with HF ``tokenizers`` on the training split."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        eot = self.hf.token_to_id(EOT)
        if eot != 0:
            raise DataError(f"a BPE tokenizer must have {EOT} as id 0, got {eot}")
        self.eot_id = 0

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257 + 1:
            raise DataError(f"a byte-level BPE needs vocab_size >= 258, got {vocab_size}")
        tok = Tokenizer(models.BPE())
        # ByteLevel maps every byte to a printable symbol, so nothing is ever unknown; no
        # normaliser, so decode(encode(text)) == text exactly.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bpe", "json": self.hf.to_str()}


Tokenizer = CharTokenizer | BPETokenizer


def train_tokenizer(kind: str, texts: list[str], *, vocab_size: int = 2048) -> Tokenizer:
    """Train a ``"char"`` or ``"bpe"`` tokenizer on ``texts`` (the corpus' training split)."""
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise DataError(f"unknown tokenizer {kind!r}; use 'char' or 'bpe'")


def tokenizer_from_dict(data: dict[str, Any] | str) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`to_dict` output (or its JSON string)."""
    if isinstance(data, str):
        data = json.loads(data)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "char":
        return CharTokenizer(list(data["chars"]))
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(data["json"]))
    raise DataError(f"not a saved aigc tokenizer (kind={kind!r}); expected 'char' or 'bpe'")
