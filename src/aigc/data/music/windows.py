"""Training data from pieces: windows that always begin with their piece's header, and
one token stream for n-gram baselines."""

from __future__ import annotations

import torch

from aigc.data.music.pieces import Piece
from aigc.data.music.tokens import HEADER_LEN, VOCAB, MusicVocab, piece_ids
from aigc.errors import DataError


class MusicWindows:
    """Training windows that always begin with their piece's header.

    Example ``(p, b)`` is ``<eos> style key meter`` followed by piece ``p`` from its bar ``b``,
    cut to ``context_length + 1`` tokens; a piece that ends early is padded with ``<eos>`` and
    the padding is left out of the loss (``loss_mask``). So the conditions (key, meter, style)
    are in the context of every prediction, in training as in generation.
    """

    def __init__(self, pieces: list[Piece], context_length: int, *, bar_stride: int = 1,
                 transpositions: tuple[int, ...] = (0,), vocab: MusicVocab = VOCAB,
                 where: str = "music"):
        self.T = context_length
        self.docs: list[list[int]] = []
        self.examples: list[tuple[int, int]] = []  # (doc, start index)
        for piece in pieces:
            for k in transpositions:
                moved = piece.transposed(k)
                if moved is None or not moved.notes:
                    continue
                ids, bars = piece_ids(moved, vocab)
                self.docs.append(ids)
                self.examples += [(len(self.docs) - 1, b) for b in bars[::bar_stride]]
        if not self.examples:
            raise DataError(f"{where}: no pieces to make training windows from")

    def __len__(self) -> int:
        return len(self.examples)

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        B, T = len(indices), self.T
        tokens = torch.zeros(B, T + 1, dtype=torch.long)  # <eos> = 0 pads
        mask = torch.zeros(B, T, dtype=torch.bool)
        for row, i in enumerate(indices.tolist()):
            d, start = self.examples[i]
            doc = self.docs[d]
            seq = (doc[:HEADER_LEN] + doc[start:])[: T + 1]
            tokens[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq) - 1] = True
        return {"tokens": tokens, "loss_mask": mask}


def token_stream(pieces: list[Piece], transpositions: tuple[int, ...] = (0,),
                 vocab: MusicVocab = VOCAB) -> list[int]:
    """``<eos> piece <eos> piece ... <eos>`` as one id list (for n-gram baselines)."""
    out: list[int] = []
    for piece in pieces:
        for k in transpositions:
            moved = piece.transposed(k)
            if moved is not None and moved.notes:
                out += piece_ids(moved, vocab)[0][:-1]
    return out + [vocab.eos_id]


TRANSPOSITIONS = tuple(range(-5, 7))  # every key once: a fourth down to a tritone up
