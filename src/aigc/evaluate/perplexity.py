"""The one perplexity of aigc's language models: every token of a stream scored once.

A held-out split is one token stream, its documents encoded as in training after one leading
end-of-text token (:func:`document_stream`: ``<eot> doc_1 <eot> doc_2 <eot> ...``), so every
token after the first is a target, end-of-text tokens included. :func:`scoring_windows` cuts it
into windows of ``context_length + 1`` tokens that start every ``stride`` tokens; the first window
scores all its targets, each later one only the targets the previous windows did not reach, so
every scored token sees at least ``context_length - stride`` tokens of context (except near the
start). :func:`stream_perplexity` feeds the model's ``log_likelihood`` of those targets to
:class:`aigc.metrics.text.Perplexity` (``exp(-sum log p / tokens)``, natural log, float64 sums).

``aigc eval`` (:mod:`aigc.evaluate.text`), the promotion gate (:mod:`aigc.loop.promotion`) and
full fine-tuning (:mod:`aigc.finetune`) all measure perplexity here.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from aigc.distributed import all_reduce_sum, context, shard_range
from aigc.errors import AigcError
from aigc.metrics.text import Perplexity


def document_stream(tokenizer, documents: list[str]) -> torch.Tensor:
    """``<eot> doc_1 <eot> doc_2 <eot> ...`` as one 1-D token tensor (documents encoded as in
    training, after one leading end-of-text token so the first document's first token is
    scored)."""
    from aigc.data.tokens import encode_documents

    return torch.cat([torch.tensor([tokenizer.eot_id]), encode_documents(tokenizer, documents)])


def scoring_windows(length: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a stream of ``length`` tokens that score tokens ``1 .. length-1`` once each.

    Returns ``(start, size, first)``: the window holds tokens ``start .. start+size-1`` (``size
    <= context_length + 1``) and scores its targets from offset ``first`` on (target ``j`` of a
    window is token ``start + 1 + j``).

    Example:
        >>> scoring_windows(10, 4, 2)
        [(0, 5, 0), (2, 5, 2), (4, 5, 2), (5, 5, 3)]
    """
    if not 1 <= stride <= context_length:
        raise AigcError(f"stride must be in 1..context_length={context_length}, got {stride}")
    if length < 2:
        raise AigcError(f"perplexity needs at least 2 tokens, the stream has {length}")
    size = min(length, context_length + 1)
    windows, scored_to = [], 0  # tokens 1..scored_to are scored already
    start = 0
    while scored_to < length - 1:
        start = min(start, length - size)
        first = scored_to - start  # targets start+1 .. scored_to were scored before
        windows.append((start, size, first))
        scored_to = start + size - 1
        start += stride
    return windows


@torch.no_grad()
def stream_perplexity(model, stream: torch.Tensor, *, context_length: int, stride: int,
                      batch_size: int = 32, progress: bool = True) -> dict[str, float]:
    """Perplexity of ``model`` on a 1-D token ``stream`` with :func:`scoring_windows`.

    Under torchrun every process must call it (it is a collective): the batches of
    ``batch_size`` windows are shared out in contiguous blocks (:func:`aigc.distributed.
    shard_range`), each window in the very batch one process would put it in, and the float64
    sums of log-likelihoods and token counts are added up over processes with ``all_reduce``;
    every process returns the same figures, equal to one process's up to float64 summation order.
    """
    windows = scoring_windows(len(stream), context_length, stride)
    size = windows[0][1]
    ppl = Perplexity()
    device = next(model.parameters()).device
    ctx = context()
    starts = range(0, len(windows), batch_size)
    lo, hi = shard_range(len(starts), ctx.rank, ctx.world_size)
    for b in tqdm(starts[lo:hi], desc="perplexity", unit="batch",
                  disable=not progress or not ctx.is_main):
        chunk = windows[b:b + batch_size]
        tokens = torch.stack([stream[s:s + size] for s, _, _ in chunk])  # (B, size)
        mask = torch.zeros(len(chunk), size - 1, dtype=torch.bool)  # (B, size - 1) targets
        for row, (_, _, first) in enumerate(chunk):
            mask[row, first:] = True
        ll, count = model.log_likelihood({"tokens": tokens.to(device), "loss_mask": mask.to(device)})
        ppl.update(ll.double().cpu(), count.cpu())
    if ctx.distributed:
        # float64 sums (gloo takes CPU tensors; NCCL needs them on this process's GPU).
        comm = device if ctx.backend == "nccl" else torch.device("cpu")
        sums = torch.tensor([ppl.log_likelihood, float(ppl.tokens)], dtype=torch.float64,
                            device=comm)
        all_reduce_sum(sums)
        ppl.log_likelihood, ppl.tokens = float(sums[0]), int(round(float(sums[1])))
    out = ppl.compute()
    out["windows"] = len(windows)
    return out
