"""Simulated raters for the feedback-loop benchmark. They stand in for people: the rule they
rate by lives here, in benchmarks/, and nothing under src/ may import it (the model learns only
from the stars and comparisons they leave through the studio's HTTP API).

The rule (MNIST digits, class-conditional): these raters like bold strokes, and an image that
does not show the digit that was asked for is a failure whatever its strokes.

    u(image, asked) = (ink - mu) / sigma - 4 * [classifier's top class != asked]

``ink`` is the mean pixel value; ``mu`` and ``sigma`` are its mean and standard deviation over
the first 5,000 MNIST training images. Each rater has a leniency (added to stars), rating noise
and a comparison temperature: rater k prefers a over b with probability
sigmoid((u_a - u_b) / tau_k), and gives round(clip(3 + 1.2 u + lenience_k + N(0, noise_k),
1, 5)) stars.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rater:
    name: str
    lenience: float
    noise: float
    tau: float


RATERS = (Rater("rater-alice01", 0.3, 0.5, 0.5), Rater("rater-bob0002", -0.4, 0.7, 0.7),
          Rater("rater-carol03", 0.0, 0.4, 0.4), Rater("rater-dave004", 0.1, 0.9, 1.0),
          Rater("rater-erin005", -0.2, 0.6, 0.6))


class Taste:
    """The hidden rule; ``utility(images, asked)`` for (N, 1, 28, 28) images in [0, 1]."""

    def __init__(self):
        from aigc.data.images import load_images
        from aigc.metrics.features import load_extractor

        train = load_images("mnist", "train")
        x = train.images[:5000].float().div(255)
        ink = x.mean(dim=(1, 2, 3))
        self.mu, self.sigma = float(ink.mean()), float(ink.std())
        self.classifier = load_extractor("mnist")

    @torch.no_grad()
    def utility(self, images: torch.Tensor, asked: torch.Tensor) -> torch.Tensor:
        ink = images.float().mean(dim=(1, 2, 3))
        top = self.classifier.extract(images.float())["logits"].argmax(dim=1)
        return (ink - self.mu) / self.sigma - 4.0 * (top != asked).float()


def stars(rater: Rater, u: float, rng: random.Random) -> int:
    return int(min(5, max(1, round(3 + 1.2 * u + rater.lenience + rng.gauss(0, rater.noise)))))


def prefers_a(rater: Rater, ua: float, ub: float, rng: random.Random) -> bool:
    return rng.random() < 1 / (1 + math.exp(-(ua - ub) / rater.tau))


# ------------------------------------------------------------------------------------ text

# Raters of prose continuations who like plain words and character-driven passages.
NAMES = ("Elizabeth", "Darcy", "Jane", "Bingley", "Bennet", "Wickham", "Lydia", "Collins",
         "Emma", "Harriet", "Knightley", "Weston", "Elton", "Woodhouse", "Elinor", "Marianne",
         "Edward", "Willoughby", "Brandon", "Anne", "Wentworth", "Elliot", "Fanny", "Edmund",
         "Crawford", "Bertram", "Catherine", "Tilney", "Morland", "Henry", "Mary", "Lucy")


def text_utility(text: str) -> float:
    """u = 2 x (4.6 - mean word length) + 0.8 x (names of people from the novels) + 0.2 x
    (quotation marks), minus 3 for a continuation under 20 characters. Plain (short) words
    are the main taste: every continuation has a mean word length, so every comparison says
    something."""
    import re

    words = re.findall(r"[A-Za-z]+", text)
    mean_len = sum(map(len, words)) / len(words) if words else 10.0
    names = sum(w in NAMES for w in words)
    quotes = text.count('"') + text.count("\u201c") + text.count("\u201d")
    return 2.0 * (4.6 - mean_len) + 0.8 * names + 0.2 * quotes - 3.0 * (len(text.strip()) < 20)
