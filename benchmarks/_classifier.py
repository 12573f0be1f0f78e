"""A small CNN classifier for MNIST / Fashion-MNIST, used only by the image benchmarks to measure
how often generated images are recognised as the class they were asked for ("classifier
agreement"), and for a provisional classifier-feature FID.

Provisional: the evaluation work (aigc.metrics.features) ships the project's shared extractor; the
benchmarks switch to it once it is merged. Weights are cached under out/classifiers/ (safetensors),
trained from the fixed train split with a fixed seed; the test accuracy is printed and recorded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy import linalg
from torch import nn

CACHE = Path("out/classifiers")


class SmallCNN(nn.Module):
    """conv(w)-conv(w)-pool-conv(2w)-conv(2w)-pool-fc128-fc10, batch norm after each conv."""

    def __init__(self, classes: int = 10, width: int = 16):
        super().__init__()
        w = width

        def conv(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *conv(1, w), *conv(w, w), nn.MaxPool2d(2), *conv(w, 2 * w), *conv(2 * w, 2 * w),
            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * w * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """128-d penultimate features of images in [0, 1]: (B, 128)."""
        return self.features(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


# Per dataset: (width, epochs), sized to the shared 2-core CPU (a wider net would do better on Fashion-MNIST).
SETTINGS = {"mnist": (16, 2), "fashion-mnist": (16, 2)}


def _train(name: str, seed: int = 0) -> tuple[SmallCNN, dict]:
    from aigc.data.images import load_images

    torch.manual_seed(seed)
    width, epochs = SETTINGS.get(name, (32, 4))
    train, test = load_images(name, "train"), load_images(name, "test")
    model = SmallCNN(width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(train) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=gen)
        for i in range(len(train) // 128):
            batch = train.get_batch(perm[i * 128:(i + 1) * 128])
            x = batch["image"]
            if name == "mnist":  # light augmentation: random shifts of up to 2 pixels
                dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    model.eval()
    acc = accuracy(model, test.get_batch(torch.arange(len(test)))["image"],
                   test.labels)
    card = {"data": name, "epochs": epochs, "width": width, "seed": seed, "test_accuracy": acc,
            "train_seconds": round(time.perf_counter() - start, 1), "architecture": SmallCNN.__doc__}
    return model, card


@torch.no_grad()
def accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images) == labels).float().mean())


@torch.no_grad()
def predict(model: SmallCNN, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(images[i:i + 500]).argmax(1) for i in range(0, len(images), 500)])


@torch.no_grad()
def features(model: SmallCNN, images: torch.Tensor) -> np.ndarray:
    return torch.cat([model.embed(images[i:i + 500]) for i in range(0, len(images), 500)]).double().numpy()


def load_classifier(name: str) -> tuple[SmallCNN, dict]:
    """The cached classifier for ``name`` (trained on first use, a few CPU minutes)."""
    path = CACHE / f"{name}.safetensors"
    if path.is_file():
        card = json.loads((CACHE / f"{name}.json").read_text())
        model = SmallCNN(width=card["width"])
        model.load_state_dict(load_file(str(path)))
        return model.eval(), card
    model, card = _train(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path))
    (CACHE / f"{name}.json").write_text(json.dumps(card, indent=2))
    return model, card


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (float64)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


if __name__ == "__main__":
    import sys

    for dataset in sys.argv[1:] or ["mnist", "fashion-mnist"]:
        _, info = load_classifier(dataset)
        print(json.dumps(info))
