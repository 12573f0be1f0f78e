"""Token streams cut into training windows: the dataset type of every autoregressive family.

A corpus is encoded document by document, each followed by the end-of-text token, and
concatenated into one ``int64`` stream. Window ``i`` is ``stream[i * stride : i * stride + T + 1]``
(inputs and shifted targets). Training uses ``stride=1`` (every offset is an example); validation
uses ``stride=T`` so that its windows tile the split without overlap.
"""

from __future__ import annotations

import torch

from aigc.errors import DataError


def encode_documents(tokenizer, documents: list[str]) -> torch.Tensor:
    """One ``int64`` stream: ``doc_1 <eot> doc_2 <eot> ...``."""
    ids: list[int] = []
    for doc in documents:
        ids += tokenizer.encode(doc)
        ids.append(tokenizer.eot_id)
    return torch.tensor(ids, dtype=torch.long)


class TokenWindows:
    """Windows of ``context_length + 1`` tokens over a stream; batches ``{"tokens": (B, T+1)}``."""

    def __init__(self, stream: torch.Tensor, context_length: int, *, stride: int = 1,
                 where: str = "token stream"):
        if stream.ndim != 1:
            raise ValueError(f"a token stream is 1-D, got shape {tuple(stream.shape)}")
        if len(stream) < context_length + 1:
            raise DataError(
                f"{where} has {len(stream)} tokens, too small for context_length="
                f"{context_length} (a window needs {context_length + 1}); use a smaller "
                "--context-length or more text"
            )
        self.stream, self.context_length, self.stride = stream, context_length, stride

    def __len__(self) -> int:
        return (len(self.stream) - self.context_length - 1) // self.stride + 1

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        starts = indices.to(torch.long)[:, None] * self.stride  # (B, 1)
        offsets = torch.arange(self.context_length + 1)[None, :]  # (1, T+1)
        return {"tokens": self.stream[starts + offsets]}
