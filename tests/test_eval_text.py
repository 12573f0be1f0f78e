"""Text evaluation through the family-agnostic contract, with a unigram stand-in model."""

import math

import pytest
import torch
from torch import nn

from aigc.errors import AigcError
from aigc.evaluate import evaluate_text_model


class Tokens:
    def __init__(self, ids):
        self.ids = ids  # (N, T)

    def __len__(self):
        return self.ids.shape[0]

    def get_batch(self, idx):
        return {"tokens": self.ids[idx]}


class Unigram(nn.Module):
    """p(token) fixed; sample_texts returns fixed five-character lines."""

    def __init__(self, probs):
        super().__init__()
        self.logp = torch.tensor(probs, dtype=torch.float64).log()

    def log_likelihood(self, batch):
        ids = batch["tokens"]
        return self.logp[ids].sum(1), torch.full((ids.shape[0],), ids.shape[1])

    def sample_texts(self, n, *, generator=None):
        poems = ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", "床前明月光\n疑是地上霜"]
        return [poems[i % 2] for i in range(n)]


def test_perplexity_and_diversity_of_a_unigram_model():
    ids = torch.randint(0, 4, (10, 6), generator=torch.Generator().manual_seed(0))
    probs = [0.1, 0.2, 0.3, 0.4]
    card = evaluate_text_model(Unigram(probs), Tokens(ids), batch_size=3, language="zh",
                               n_samples=6, progress=False)
    nll = -sum(math.log(probs[i]) for i in ids.flatten().tolist()) / ids.numel()
    assert card.values["perplexity"] == pytest.approx(math.exp(nll), rel=1e-12)
    assert card.values["tokens"] == 60
    assert card.values["verse_form_rate"] == pytest.approx(0.5)
    assert card.values["self_bleu"] > 50  # only two distinct poems
    assert card.kind == "text" and card.protocol["n_generated"] == 6


def test_text_model_without_log_likelihood_is_refused():
    with pytest.raises(AigcError, match="log_likelihood"):
        evaluate_text_model(nn.Linear(2, 2), Tokens(torch.zeros(2, 2, dtype=torch.long)))
