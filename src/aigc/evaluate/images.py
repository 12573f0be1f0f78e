"""Image evaluation runs: sample a model, measure it, measure real data the same way, write a card.

Works for any image model with ``sample(n, generator=..., **kw) -> (n, C, H, W)`` in [0, 1]
(optionally ``labels=`` for class-conditional sampling). The protocol, written in every card:

* real reference: the first ``n`` images of the reference split (default ``test``);
* generated: ``n`` samples in blocks of ``seed_block`` (default :data:`SEED_BLOCK`); block ``c``
  is drawn in batches from its own ``torch.Generator`` seeded with :func:`block_seed` (``seed``
  itself for the first block), so the samples depend neither on ``batch_size`` (for a model whose
  draws follow one stream) nor on how many torchrun processes draw them; class-conditional
  models get balanced labels ``i mod K``;
* baseline (real vs real): the first ``n`` images of the ``train`` split measured against the
  same reference exactly like generated images are, so "good" has a number beside it;
* FID (float64 running statistics), KID (``subsets`` x ``subset_size``, default
  ``min(1000, n // 2)`` so subsets differ, seed), IS-style score on
  the classifier's logits (10 splits), precision/recall/density/coverage (k=5), conditional
  accuracy, memorisation (mean pixel L2 from samples to their nearest train image, beside the same
  for test images); VAEs also get test -ELBO and reconstruction PSNR/SSIM.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from aigc import distributed as dist_utils
from aigc.errors import AigcError
from aigc.metrics.card import MetricCard
from aigc.metrics.features import FeatureExtractor, check_features
from aigc.metrics.fid import FrechetDistance
from aigc.metrics.image import ConditionalAccuracy
from aigc.metrics.inception_score import inception_score
from aigc.metrics.kid import KernelDistance, default_subset_size
from aigc.metrics.manifold import knn_radii, precision_recall_density_coverage

MEMORISATION_N = 1000  # samples (and test images) whose nearest train image is searched


@dataclass
class ImageEvaluation:
    """Everything an image evaluation produced: the card plus pictures for the report."""

    card: MetricCard
    samples: torch.Tensor  # (min(n, 64), C, H, W) in [0, 1]
    real: torch.Tensor  # (min(n, 64), C, H, W) reference images
    neighbours: torch.Tensor  # (rows, 1 + k, C, H, W): a sample then its nearest train images
    neighbour_distances: torch.Tensor  # (rows, k)
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ sampling


def sampling_keywords(model) -> set[str]:
    """Keyword arguments a model's ``sample`` accepts besides ``n`` and ``generator``."""
    if not hasattr(model, "sample"):
        raise AigcError(f"{type(model).__name__} has no sample(n, generator=...) method")
    params = inspect.signature(model.sample).parameters
    return {k for k in params if k not in ("self", "n", "generator")}


def is_class_conditional(model) -> bool:
    """Whether ``model.sample`` takes ``labels=`` and the model was trained with classes
    (``model.cfg.num_classes``, when the config has that field)."""
    if "labels" not in sampling_keywords(model):
        return False
    cfg = getattr(model, "cfg", None)
    return bool(getattr(cfg, "num_classes", True)) if cfg is not None else True


# Samples per seeding block: the unit torchrun processes share out (an evaluation of up to this
# many samples is one block, drawn exactly as from a plain Generator().manual_seed(seed)).
SEED_BLOCK = 1000
# Seed of block c >= 1: seed * A + c (below 2**52 for seed <= MAX_SEED).
_BLOCK_SEED_A = 1_000_003


def block_seed(seed: int, block: int) -> int:
    """The generator seed of sampling block ``block``: ``seed`` for the first, then
    ``seed * 1_000_003 + block``."""
    return seed if block == 0 else seed * _BLOCK_SEED_A + block


@torch.no_grad()
def generate_images(model, n: int, *, seed: int, batch_size: int = 500,
                    sample_kwargs: dict[str, Any] | None = None,
                    labels: torch.Tensor | None = None, progress: bool = True,
                    seed_block: int = SEED_BLOCK) -> torch.Tensor | None:
    """``n`` samples ``(n, C, H, W)`` in [0, 1]: block ``c`` of ``seed_block`` samples is drawn
    in batches of ``batch_size`` from one generator seeded with :func:`block_seed`.

    Under torchrun the blocks are split across processes (contiguous runs by rank) and gathered
    in order on rank 0, which gets the same tensor a single process makes; the other ranks get
    ``None``.
    """
    if seed_block < 1:
        raise AigcError(f"seed_block must be >= 1, got {seed_block}")
    kwargs = dict(sample_kwargs or {})
    unknown = set(kwargs) - sampling_keywords(model)
    if unknown:
        raise AigcError(f"{type(model).__name__}.sample does not take {sorted(unknown)}; it takes "
                        f"{sorted(sampling_keywords(model)) or 'no options'}")
    ctx = dist_utils.context()
    blocks = (n + seed_block - 1) // seed_block
    first, last = dist_utils.shard_range(blocks, ctx.rank, ctx.world_size)
    starts = []  # (start, size, block) of every batch this process draws
    for c in range(first, last):
        hi = min(n, (c + 1) * seed_block)
        starts += [(s, min(batch_size, hi - s), c) for s in range(c * seed_block, hi, batch_size)]
    out, gen, gen_block = [], None, -1
    for start, b, c in tqdm(starts, desc="sampling", disable=not (progress and ctx.is_main),
                            unit="batch"):
        if c != gen_block:
            gen, gen_block = torch.Generator().manual_seed(block_seed(seed, c)), c
        extra = {} if labels is None else {"labels": labels[start:start + b]}
        x = model.sample(b, generator=gen, **kwargs, **extra)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != b:
            raise AigcError(f"{type(model).__name__}.sample({b}) must return (n, C, H, W), got "
                            f"{getattr(x, 'shape', type(x))}")
        out.append(x.detach().float().cpu())
    if not ctx.distributed:
        return torch.cat(out)
    # A rank with no batch (more processes than batches) still takes part in the gather.
    mine = torch.cat(out) if out else None
    if mine is None:
        probe = model.sample(1, generator=torch.Generator().manual_seed(seed), **kwargs,
                             **({} if labels is None else {"labels": labels[:1]}))
        mine = probe.detach().float().cpu()[:0]
    return dist_utils.gather_to_rank0(mine)


def _first_images(dataset, n: int, what: str) -> dict[str, torch.Tensor]:
    if len(dataset) < n:
        raise AigcError(f"{what} has {len(dataset)} images, fewer than n={n}")
    return dataset.get_batch(torch.arange(n))


# ------------------------------------------------------------------------ measuring


def fid_kid(real: torch.Tensor, fake: torch.Tensor, *, subsets: int, subset_size: int,
            seed: int) -> dict[str, float]:
    """``{"fid", "kid_mean", "kid_std"}`` of ``fake`` against ``real`` feature rows."""
    fid = FrechetDistance()
    fid.update(real, real=True)
    fid.update(fake, real=False)
    kid = KernelDistance(subsets=subsets, subset_size=subset_size, seed=seed)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute(), "kid_mean": kid_mean, "kid_std": kid_std}


def measure_features(real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor], *,
                     kid_subsets: int, kid_subset_size: int, k: int, seed: int,
                     is_splits: int = 10, real_radii: torch.Tensor | None = None
                     ) -> dict[str, float]:
    """FID, KID, IS-style score and manifold metrics of ``fake`` against ``real`` features
    (``real_radii``: the real set's k-NN radii, when already computed)."""
    is_mean, is_std = inception_score(fake["logits"], splits=is_splits, seed=seed)
    return {**fid_kid(real["features"], fake["features"], subsets=kid_subsets,
                      subset_size=kid_subset_size, seed=seed),
            "is_mean": is_mean, "is_std": is_std,
            **precision_recall_density_coverage(real["features"], fake["features"], k=k,
                                                real_radii=real_radii)}


def nearest_train_images(queries: torch.Tensor, train: torch.Tensor, k: int = 1,
                         chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-space L2 nearest neighbours of ``queries`` among ``train`` (both in [0, 1]):
    ``(distances (Q, k), indices (Q, k))``. float32 matmuls: distances are for reading, not
    for parity."""
    q = queries.flatten(1).float()
    t = train.flatten(1).float()
    t_sq = t.square().sum(1)
    dists, idx = [], []
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk]
        d = (qc.square().sum(1, keepdim=True) + t_sq - 2 * qc @ t.T).clamp(min=0).sqrt()
        v, i = d.topk(k, dim=1, largest=False)
        dists.append(v)
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


def evaluate_image_model(model, *, data: str, extractor: FeatureExtractor, n: int, seed: int = 0,
                         reference_split: str = "test", sample_kwargs: dict | None = None,
                         subject: dict[str, Any] | None = None, extra_protocol: dict | None = None,
                         batch_size: int = 500, kid_subset_size: int | None = None,
                         kid_subsets: int = 100, k: int = 5, baseline: bool = True,
                         memorisation: bool = True, progress: bool = True,
                         seed_block: int = SEED_BLOCK) -> ImageEvaluation | None:
    """Sample ``n`` images from ``model`` and measure them (see the module docstring).

    Under torchrun every process draws its share of the samples; rank 0 gathers them, measures
    and returns the evaluation, the other ranks return ``None``."""
    from aigc.data.images import load_images

    t0 = time.perf_counter()
    if n < 2:
        raise AigcError(f"n must be >= 2 for distribution metrics, got {n}")
    kid_rule = "given" if kid_subset_size else "min(1000, n // 2)"
    kid_subset_size = kid_subset_size or default_subset_size(n)
    extractor.check_dataset(data)
    ref_ds = load_images(data, reference_split)
    train_ds = load_images(data, "train")
    real = _first_images(ref_ds, n, f"{data} {reference_split} split")
    extractor.check_images(real["image"], f"{data} images")

    conditional = is_class_conditional(model)
    num_classes = len(extractor.class_names) or None
    labels = None
    if conditional:
        model_classes = getattr(getattr(model, "cfg", None), "num_classes", num_classes)
        if not num_classes or model_classes != num_classes:
            raise AigcError(f"the model has {model_classes} classes but extractor {extractor.name} "
                            f"knows {num_classes or 'none'}; conditional accuracy needs both to "
                            "name the same classes")
        labels = torch.arange(n) % num_classes
    fake_images = generate_images(model, n, seed=seed, batch_size=batch_size,
                                  sample_kwargs=sample_kwargs, labels=labels, progress=progress,
                                  seed_block=seed_block)
    if fake_images is None:  # not rank 0: its samples went to rank 0
        return None
    if fake_images.shape[1:] != real["image"].shape[1:]:
        raise AigcError(f"samples are {tuple(fake_images.shape[1:])} but {data} images are "
                        f"{tuple(real['image'].shape[1:])} (channels, height, width)")
    extractor.check_images(fake_images, "generated images")

    bar = tqdm(total=3 if baseline else 2, desc="features", disable=not progress, unit="set")
    real_f = extractor.extract(real["image"], batch_size=batch_size)
    bar.update()
    fake_f = extractor.extract(fake_images, batch_size=batch_size)
    bar.update()
    settings = dict(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, k=k, seed=seed)
    if baseline and len(real_f["features"]) > k:
        # the real set's k-NN radii (an n x n distance pass) serve the model and the baseline
        settings["real_radii"] = knn_radii(check_features(real_f["features"], "real features"), k)
    values = measure_features(real_f, fake_f, **settings)
    base: dict[str, Any] = {}
    if baseline:
        train = _first_images(train_ds, n, f"{data} train split")
        base = measure_features(real_f, extractor.extract(train["image"], batch_size=batch_size),
                                **settings)
        bar.update()
    bar.close()
    if conditional:
        acc = ConditionalAccuracy(num_classes)
        acc.update(fake_f["logits"], labels)
        cond = acc.compute()
        values["conditional_accuracy"] = cond["accuracy"]
        values["conditional_accuracy_per_class"] = cond["per_class"]
    if baseline and "label" in real and num_classes:
        # What the classifier scores on real reference images with their true labels.
        acc = ConditionalAccuracy(num_classes)
        acc.update(real_f["logits"], real["label"])
        base["conditional_accuracy"] = acc.compute()["accuracy"]

    neighbours = torch.zeros(0)
    nn_dist = torch.zeros(0)
    if memorisation:
        m = min(n, MEMORISATION_N)
        train_images = train_ds.images.float().div_(255)  # (N_train, C, H, W)
        d, idx = nearest_train_images(fake_images[:m], train_images, k=4)
        values["nearest_train_l2_mean"] = float(d[:, 0].double().mean())
        d_real, _ = nearest_train_images(real["image"][:m], train_images)
        base["nearest_train_l2_mean"] = float(d_real.double().mean())
        rows = min(8, n)
        nearest = train_images[idx[:rows].flatten()].view(rows, 4, *fake_images.shape[1:])
        neighbours = torch.cat([fake_images[:rows, None], nearest], dim=1)
        nn_dist = d[:rows]

    protocol = {
        "data": data, "reference_split": reference_split, "baseline_split": "train" if baseline
        else None, "n_real": n, "n_generated": n, "seed": seed,
        "extractor": {"name": extractor.name, "sha256": extractor.sha256},
        "sampling": {k2: sample_kwargs[k2] for k2 in sorted(sample_kwargs or {})},
        "conditional": "balanced labels i mod K" if conditional else None,
        "fid": "float64 mean/cov, Tr sqrt via eigvalsh", "kid": {"subsets": kid_subsets,
        "subset_size": kid_subset_size, "subset_size_rule": kid_rule,
        "draw": "each subset without replacement, real then generated, one generator seeded "
        "with seed", "kernel": "(x.y/d+1)^3", "std": "population"},
        "is_splits": 10, "knn_k": k, "memorisation": f"pixel L2 to nearest of {len(train_ds)} "
        f"train images, first {min(n, MEMORISATION_N)} samples" if memorisation else None,
        "real_images": f"first {n} of the split, in dataset order",
        "sampling_seeds": f"block c of {seed_block} samples: one Generator seeded with seed for "
        f"c = 0, seed * {_BLOCK_SEED_A} + c after",
        **(extra_protocol or {}),
    }
    card = MetricCard(kind="image", subject=subject or {}, protocol=protocol, values=values,
                      baseline=base)
    card.environment["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return ImageEvaluation(card=card, samples=fake_images[:64], real=real["image"][:64],
                           neighbours=neighbours, neighbour_distances=nn_dist)
