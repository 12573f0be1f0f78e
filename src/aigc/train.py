"""One model-agnostic trainer.

The model gives ``loss(batch) -> Tensor``; the trainer owns everything else: AdamW with warm-up
and cosine decay, gradient clipping, an EMA copy, bf16 autocast, validation with early stopping,
a progress bar, CSV + TensorBoard logs, preview samples, atomic checkpoints and exact resume.

Speed options, each measured in ``benchmarks/`` and none changing the loss objective:
``compile`` (``torch.compile`` of ``model.loss`` - forward and loss, backward through
AOTAutograd - with an eager fallback, see :class:`CompiledLoss`), ``adamw_impl`` (for-loop,
foreach or fused AdamW) and ``channels_last`` (NHWC tensors for convolutional models).

Data contract: a dataset has ``len(ds)`` and ``ds.get_batch(indices) -> dict[str, Tensor]``.
Batches are drawn from a permutation that depends only on ``(seed, epoch)``, so a run resumed
from step ``s`` sees exactly the batches an uninterrupted run sees after ``s``. Together with the
saved optimizer, EMA and RNG states this makes a resumed CPU run bit-identical to an
uninterrupted one (``tests/test_train.py`` shows it).

Models with several optimizers (a GAN's generator and discriminator) define
``optimizer_groups() -> dict[str, list[Parameter]]`` and ``loss(batch, group=name)``; each group is
stepped in order with its own AdamW. They may also define ``optimizer_settings() -> {name:
{"lr_scale": float, "repeats": int}}``: a group's learning rate is ``lr * lr_scale`` (two time-scale
updates) and it takes ``repeats`` optimizer steps per training step on the same batch (a WGAN's
``n_critic``).

Under ``torchrun`` (see :mod:`aigc.distributed`) the same trainer wraps the model's loss in
``DistributedDataParallel``: ``cfg.batch_size`` stays the *global* batch, each of the ``W``
processes takes a contiguous ``batch_size / W`` slice of the step's indices, gradients are averaged
by DDP (so clipping, the LR schedule and the EMA see the same numbers on every rank), the logged
loss is the mean over ranks, validation batches are split across ranks and summed, and rank 0
alone writes logs, previews and checkpoints - the ordinary format, which a single process resumes
(the data position is the global step). For a loss that is a mean over the batch and draws no
random numbers, W processes reproduce the single-process losses up to float rounding
(``tests/test_distributed.py``). Random draws inside ``loss`` (noise, dropout) come from a
stream seeded per (seed, step, rank), so they differ from a single-process run's draws.
BatchNorm layers become ``SyncBatchNorm`` on CUDA; on CPU (gloo) their batch statistics are
per-rank, over the local slice.
"""

from __future__ import annotations

import copy
import csv
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from aigc import allocator
from aigc import checkpoints as ck
from aigc import distributed as dist_utils
from aigc.config import TrainConfig, config_to_dict
from aigc.errors import AigcError, CheckpointError, DataError
from aigc.models import pick_device


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]: ...


class TrainingDiverged(AigcError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "finished", "early-stopped", "time-limit", "pruned" (on_validation said stop)
    last_train_loss: float
    best_val_loss: float | None
    checkpoint: Path
    seconds: float


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``cfg.lr * cfg.min_lr_ratio``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


class EpochSampler:
    """Batch indices for a global step: epoch ``e`` uses ``randperm(n)`` seeded by ``(seed, e)``."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise DataError(
                f"the training split has {n} examples, fewer than batch_size={batch_size}; "
                "use a smaller --batch-size or more data"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size  # the last partial batch of an epoch is dropped
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=gen), epoch
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]


def augment_images(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random crop after zero padding, in plain torch.

    Args:
        images: ``(B, C, H, W)`` floats.
        generator: the source of randomness (the trainer seeds it per step, so resume is exact).
        pad: pixels of zero padding before a random crop back to ``(H, W)``.
    """
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if pad > 0:
        padded = nn.functional.pad(out, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        batch = torch.arange(b)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, H, W, C)
        out = out.permute(0, 3, 1, 2).contiguous()
    return out


class _LossModule(nn.Module):
    """``forward(batch, **kw) = loss_fn(batch, **kw)``: what DistributedDataParallel wraps, since
    DDP synchronises gradients only for work done through ``forward``."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return self._loss_fn(batch, **kwargs)


# Per-step seed of the training RNG under torchrun: (seed * A + step) * B + rank stays below 2**63
# for seed <= MAX_SEED, so every (seed, step, rank) has its own stream and resume is exact.
_STEP_SEED_A, _STEP_SEED_B = 1_000_003, 1_009


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    ``shadow = d * shadow + (1 - d) * param`` with ``d = min(decay, (1 + t) / (10 + t))``, the
    usual warm-up so that early EMA weights are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_t, t in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_t.dtype.is_floating_point:
                ema_t.lerp_(t.detach(), 1 - d)
            else:
                ema_t.copy_(t)


def _move(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _channels_last(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4
            else v for k, v in batch.items()}


def _param_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and kernels only; biases, norms and embeddings' 1-D tensors are not decayed."""
    decay = [p for p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


_ADAMW_IMPL = {"auto": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True},
               "fused": {"fused": True}}


def make_adamw(params: list[nn.Parameter], cfg: TrainConfig, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over ``params`` (decay on matrices only) with ``cfg``'s betas and implementation.

    ``cfg.adamw_impl``: ``for-loop`` (one tensor at a time), ``foreach`` (batched over tensors),
    ``fused`` (one C++ kernel per step), or ``auto`` (:func:`adamw_flags`: fused for floating
    parameters on CPU or CUDA). All compute the same update up to float rounding.
    """
    return torch.optim.AdamW(_param_groups(params, cfg.weight_decay), lr=cfg.lr if lr is None else lr,
                             betas=cfg.betas, **adamw_flags(cfg, params))


_FUSED_DEVICES = ("cpu", "cuda")


def adamw_flags(cfg: TrainConfig, params) -> dict[str, bool]:
    """The ``torch.optim.AdamW`` keyword for ``cfg.adamw_impl``. ``auto`` is the fused kernel
    wherever it applies (floating parameters on CPU or CUDA): the same update as the for-loop
    one up to float rounding, about 5% less CPU time a GPT step and 3% a UNet step on one Intel
    Xeon thread (``benchmarks/adamw_impl_check.py``, which also compares the loss curves);
    PyTorch's own default on CPU is the for-loop kernel. A run started before this default
    (2026-11-30) continues with the fused kernel when resumed, so it is no longer bit-identical
    to an uninterrupted run of the older version."""
    if cfg.adamw_impl != "auto":
        return dict(_ADAMW_IMPL[cfg.adamw_impl])
    params = list(params)
    if params and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The plain module inside a ``torch.compile``-d one (whose state dict keys carry an
    ``_orig_mod.`` prefix); any other module unchanged."""
    return getattr(model, "_orig_mod", model)


class CompiledLoss:
    """``model.loss`` under ``torch.compile``, falling back to eager ``model.loss`` if compiling fails.

    Only the bound method is compiled; the module itself is untouched, so its state dict (and every
    checkpoint) keeps plain parameter names. The first call (per batch shape and ``group``) pays
    the compilation; when it raises (no C++ compiler, an operation inductor cannot handle) a
    warning names the error once and training continues uncompiled with the same numbers.
    """

    def __init__(self, model: nn.Module, backend: str = "inductor"):
        self.model = model
        self.compiled: Callable[..., torch.Tensor] | None = torch.compile(model.loss, backend=backend)
        self.error: str | None = None

    def __call__(self, batch: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(batch, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means "run eagerly"
                self.compiled = None
                self.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
                warnings.warn(f"torch.compile of {type(self.model).__name__}.loss failed "
                              f"({self.error}); training continues without compile",
                              RuntimeWarning, stacklevel=2)
        return self.model.loss(batch, **kwargs)


def _after_optimizer_load(opt: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Make a reloaded AdamW use ``cfg.adamw_impl`` (``load_state_dict`` restores the saved one) and
    give its state tensors their parameter's memory layout: checkpoints store contiguous tensors,
    and the fused CPU kernel silently mixes up elements when a channels-last parameter meets
    contiguous moments (seen with torch 2.13; the for-loop kernel copes)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    flags = {"foreach": None, "fused": None, **adamw_flags(cfg, params)}
    for group in opt.param_groups:
        group.update(flags)
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


class Trainer:
    """Trains any model that has ``loss(batch)``; see the module docstring for the contract.

    Args:
        model: the network; its config is saved with every checkpoint.
        family: the model family name (a key of :data:`aigc.models.FAMILIES`).
        model_config: the model's config as a dict (stored in checkpoints).
        train_data: the training split (``len`` and ``get_batch``).
        val_data: the validation split, or ``None``.
        cfg: the training configuration.
        run_dir: where checkpoints, logs and previews go.
        meta: extra facts stored in every checkpoint (dataset name, class names, ...).
        preview: called as ``preview(model, step, run_dir)`` every ``cfg.sample_every`` steps with
            the EMA model when there is one; writes a sample grid.
        progress: show a progress bar (rank 0 only under torchrun).
        on_validation: called as ``on_validation(step, val_loss)`` after every validation (the EMA
            model's loss when there is an EMA) on every rank with the same value; returning
            ``True`` stops the run with ``stopped="pruned"`` (hyper-parameter search uses it).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        family: str,
        model_config: dict[str, Any],
        train_data: BatchSource,
        val_data: BatchSource | None,
        cfg: TrainConfig,
        run_dir: str | Path,
        meta: dict[str, Any] | None = None,
        preview: Callable[[nn.Module, int, Path], None] | None = None,
        progress: bool = True,
        on_validation: Callable[[int, float], bool | None] | None = None,
    ):
        self.cfg = cfg
        self.ctx = dist_utils.context()
        self.device = dist_utils.device_for(self.ctx, pick_device(cfg.device))
        model = unwrap_compiled(model)  # cfg.compile is the way to compile; checkpoints stay plain
        if self.device.type == "cpu":
            # freed activations stay in the process for the next step instead of going back to
            # the kernel and faulting in again (aigc.allocator: 1.06x for `aigc train diffusion`)
            allocator.keep_freed_memory()
        if self.ctx.distributed:
            dist_utils.check_divisible(cfg.batch_size, self.ctx.world_size)
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.family, self.model_config = family, model_config
        self.train_data, self.val_data = train_data, val_data
        self.run_dir = Path(run_dir)
        self.meta = dict(meta or {})
        self.preview = preview
        self.progress = progress and self.ctx.is_main
        self.on_validation = on_validation
        self.sampler = EpochSampler(len(train_data), cfg.batch_size, cfg.seed)
        groups = (
            model.optimizer_groups()
            if hasattr(model, "optimizer_groups")
            else {"model": list(model.parameters())}
        )
        self.optimizers = {name: make_adamw(list(params), cfg) for name, params in groups.items()}
        settings = model.optimizer_settings() if hasattr(model, "optimizer_settings") else {}
        self.group_settings = {
            name: {"lr_scale": 1.0, "repeats": 1, **settings.get(name, {})} for name in groups
        }
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.compiled_loss = CompiledLoss(self.model) if cfg.compile else None
        self.ddp: nn.Module | None = None
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: models hold parameters their loss may not use (a VAE's
            # log_sigma under the Bernoulli likelihood; a GAN's generator during the
            # discriminator step). Its cost is one walk of the autograd graph per step; torch
            # warns once per process when a model happens to use every parameter.
            self.ddp = DistributedDataParallel(
                _LossModule(self.model, self.compiled_loss or self.model.loss),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.step = 0
        self.best_val: float | None = None
        self.evals_since_best = 0

    # ------------------------------------------------------------------ state
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def save(self) -> Path:
        """Write a checkpoint (rank 0 only under torchrun) and return its folder on every rank."""
        path = self._write_checkpoint() if self.ctx.is_main else None
        if self.ctx.distributed:
            path = Path(dist_utils.broadcast_object(None if path is None else str(path)))
        assert path is not None
        return path

    def _write_checkpoint(self) -> Path:
        if getattr(self, "_csv_file", None) is not None and not self._csv_file.closed:
            self._csv_file.flush()  # the log reaches disk with every checkpoint
        tensors: dict[str, torch.Tensor] = {}
        info: dict[str, Any] = {
            "step": self.step,
            "best_val": self.best_val,
            "evals_since_best": self.evals_since_best,
            "ema_updates": self.ema.updates if self.ema else 0,
            "optimizers": {},
        }
        for name, opt in self.optimizers.items():
            t, j = ck.optimizer_to_tensors(name, opt)
            tensors.update(t)
            info["optimizers"][name] = j
        rng_t, rng_j = ck.rng_state()
        tensors.update(rng_t)
        info["rng"] = rng_j
        return ck.save_checkpoint(
            self.run_dir,
            step=self.step,
            family=self.family,
            model_config=self.model_config,
            weights=self.model.state_dict(),
            ema_weights=self.ema.module.state_dict() if self.ema else None,
            train_config=config_to_dict(self.cfg),
            meta=self.meta,
            trainer_tensors=tensors,
            trainer_json=info,
            keep=self.cfg.keep_checkpoints,
        )

    def restore(self) -> bool:
        """Load the run folder's latest checkpoint; ``False`` when there is none."""
        folder = ck.latest_checkpoint_dir(self.run_dir)
        if folder is None:
            return False
        ckpt = ck.load_checkpoint(folder / ck.MODEL_FILE, map_location=str(self.device))
        if ckpt.family != self.family:
            raise CheckpointError(f"{folder} holds a {ckpt.family!r} model, not {self.family!r}")
        self.model.load_state_dict(ckpt.weights)
        if self.ema is not None:
            if ckpt.ema_weights is None:
                raise CheckpointError(f"{folder} has no EMA weights but ema_decay > 0")
            self.ema.module.load_state_dict(ckpt.ema_weights)
        tensors, info = ck.load_trainer_state(folder)
        for name, opt in self.optimizers.items():
            ck.optimizer_from_tensors(name, opt, tensors, info["optimizers"][name])
            _after_optimizer_load(opt, self.cfg)
        ck.set_rng_state(tensors, info["rng"])
        self.step = info["step"]
        self.best_val = info["best_val"]
        self.evals_since_best = info["evals_since_best"]
        if self.ema is not None:
            self.ema.updates = info["ema_updates"]
        return True

    # ------------------------------------------------------------------ logging
    def _open_logs(self, resumed: bool):
        if not self.ctx.is_main:
            self._csv_file, self._tb = None, None
            return
        log_path = self.run_dir / "log.csv"
        if resumed and log_path.exists():
            # Rows written after the checkpoint we resume from belong to a run that was lost.
            with open(log_path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.reader(fh)]
            # A run killed before its first flush leaves an empty log: start a fresh one.
            keep = rows[:1] + [r for r in rows[1:] if int(r[0]) <= self.step]
            with open(log_path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows(keep)
        new = not log_path.exists() or log_path.stat().st_size == 0
        self._csv_file = open(log_path, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        if new:
            self._csv.writerow(["step", "wall_s", "key", "value"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1)
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            self._tb = None

    def _log(self, key: str, value: float) -> None:
        if self._csv_file is None:  # not rank 0
            return
        self._csv.writerow([self.step, f"{time.perf_counter() - self._t0:.3f}", key, f"{value:.6g}"])
        if self._tb is not None:
            self._tb.add_scalar(key, value, self.step)

    def _close_logs(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()
        if self._tb is not None:
            self._tb.close()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        """Mean loss over the first ``cfg.eval_batches`` batches of the validation split.

        Each batch runs under its own fixed seed in a forked RNG, so the figure is reproducible,
        does not disturb the training RNG stream, and is the same when torchrun splits the batches
        across processes (batch ``b`` goes to rank ``b % W``; the sums are all-reduced).
        """
        assert self.val_data is not None
        n = len(self.val_data)
        bs = min(self.cfg.batch_size, n)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        rank, world = self.ctx.rank, self.ctx.world_size
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            for b in range(min(self.cfg.eval_batches, max(1, n // bs))):
                if b % world != rank:
                    continue
                torch.manual_seed(self.cfg.seed + 12345 + b)
                idx = torch.arange(b * bs, min((b + 1) * bs, n))
                batch = _move(self.val_data.get_batch(idx), self.device)
                with self._autocast():
                    loss = self._loss(model.loss, batch, group=None)
                total += float(loss) * len(idx)
                count += len(idx)
        model.train(was_training)
        if self.ctx.distributed:
            sums = dist_utils.all_reduce_sum(
                torch.tensor([total, float(count)], dtype=torch.float64, device=self._comm_device))
            total, count = float(sums[0]), int(sums[1])
        return total / max(1, count)

    @property
    def _comm_device(self) -> torch.device:
        """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
        return self.device if self.ctx.backend == "nccl" else torch.device("cpu")

    def _local_batch(self, idx: torch.Tensor) -> dict[str, Any]:
        """This rank's part of the global batch ``idx`` (augmentation drawn on the global batch,
        so W processes see exactly the images one process sees)."""
        cfg = self.cfg
        world = self.ctx.world_size
        part = dist_utils.shard_slice(len(idx), self.ctx.rank, world) if world > 1 else slice(None)
        augment = cfg.augment
        batch = self.train_data.get_batch(idx if augment or world == 1 else idx[part])
        if augment and "image" in batch:
            gen = torch.Generator().manual_seed(cfg.seed * 7_919 + self.step)
            batch["image"] = augment_images(batch["image"], gen)
        if augment and world > 1:
            batch = {k: v[part] if torch.is_tensor(v) and v.dim() and len(v) == len(idx) else v
                     for k, v in batch.items()}
        return batch

    def _global_loss(self, loss: torch.Tensor) -> float:
        """The loss averaged over ranks (the single-process loss of the global batch when the
        model's loss is a mean over equal slices)."""
        if not self.ctx.distributed:
            return float(loss.detach())
        t = loss.detach().float().reshape(1).to(self._comm_device)
        return float(dist_utils.all_reduce_mean(t))

    def _loss(self, loss_fn: Callable[..., torch.Tensor], batch: dict[str, Any],
              group: str | None) -> torch.Tensor:
        if group is None or len(self.optimizers) == 1:
            return loss_fn(batch)
        return loss_fn(batch, group=group)

    # ------------------------------------------------------------------ loop
    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train to ``cfg.steps`` (or early stop / time limit) and return what happened."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.restore() if resume else False
        if resume and not resumed:
            raise CheckpointError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        if not resume and ck.latest_checkpoint_dir(self.run_dir) is not None:
            raise CheckpointError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                "another --out folder (nothing was overwritten)"
            )
        dist_utils.barrier()  # every rank has looked at the run folder before rank 0 writes to it
        if not resumed:
            torch.manual_seed(cfg.seed)
        self._t0 = time.perf_counter()
        self._open_logs(resumed)
        self.model.train()
        stopped, last_loss, smooth = "finished", float("nan"), None
        last_ckpt = ck.latest_checkpoint_dir(self.run_dir)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not self.progress, unit="step",
            dynamic_ncols=True, desc=f"train {self.family}",
        )
        try:
            while self.step < cfg.steps:
                if self.ctx.distributed:
                    torch.manual_seed((cfg.seed * _STEP_SEED_A + self.step) * _STEP_SEED_B
                                      + self.ctx.rank)
                batch = self._local_batch(self.sampler.indices(self.step))
                batch = _move(batch, self.device)
                if cfg.channels_last:
                    batch = _channels_last(batch)
                lr = lr_at(self.step, cfg)
                losses = {}
                for name, opt in self.optimizers.items():
                    settings = self.group_settings[name]
                    for group in opt.param_groups:
                        group["lr"] = lr * settings["lr_scale"]
                    for _ in range(settings["repeats"]):
                        opt.zero_grad(set_to_none=True)
                        with self._autocast():
                            loss = self._loss(self.ddp or self.compiled_loss or self.model.loss,
                                              batch, group=name)
                        loss_value = self._global_loss(loss)  # the same on every rank
                        if not math.isfinite(loss_value):
                            where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else ""
                            raise TrainingDiverged(
                                f"loss became {loss_value} at step {self.step} ({name}){where}. "
                                "Try a lower --lr, a smaller --grad-clip, or turning --bf16 off"
                            )
                        loss.backward()
                        if cfg.grad_clip > 0:
                            params = [p for g in opt.param_groups for p in g["params"]]
                            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                        opt.step()
                    losses[name] = loss_value
                if self.ema is not None:
                    self.ema.update(self.model)
                self.step += 1
                last_loss = sum(losses.values())
                smooth = last_loss if smooth is None else 0.95 * smooth + 0.05 * last_loss
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    for name, value in losses.items():
                        self._log("train/loss" if len(losses) == 1 else f"train/loss_{name}", value)
                    self._log("train/lr", lr)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{smooth:.4g}", lr=f"{lr:.2e}",
                    ex_s=f"{bar.format_dict['rate'] * cfg.batch_size:.0f}" if bar.format_dict.get("rate") else "-",
                )
                final = self.step == cfg.steps
                if self.val_data is not None and (
                    (cfg.eval_every and self.step % cfg.eval_every == 0) or final
                ):
                    stop = self._validate()
                    if stop:
                        stopped = stop
                if self.preview and self.ctx.is_main and cfg.sample_every and (
                        self.step % cfg.sample_every == 0 or final):
                    with torch.random.fork_rng(devices=[]):
                        self.preview(self.ema.module if self.ema else self.model, self.step, self.run_dir)
                over_time = cfg.time_limit_s and time.perf_counter() - self._t0 > cfg.time_limit_s
                if cfg.time_limit_s and self.ctx.distributed:  # rank 0's clock decides for all
                    over_time = dist_utils.broadcast_object(bool(over_time))
                if over_time and stopped == "finished":
                    stopped = "time-limit"
                if final or stopped != "finished" or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                    last_ckpt = self.save()
                if stopped != "finished":
                    break
        finally:
            bar.close()
            self._close_logs()
        missing = last_ckpt is None or ck.latest_checkpoint_dir(self.run_dir) != last_ckpt
        if self.ctx.distributed:  # one decision for all ranks: save() is collective
            missing = dist_utils.broadcast_object(missing)
        if missing:
            last_ckpt = self.save()
        return TrainResult(
            run_dir=self.run_dir, step=self.step, stopped=stopped, last_train_loss=last_loss,
            best_val_loss=self.best_val, checkpoint=last_ckpt,
            seconds=time.perf_counter() - self._t0,
        )

    def _validate(self) -> str | None:
        """Log validation loss(es); return ``"early-stopped"`` or ``"pruned"`` to stop, else None."""
        val = self.evaluate(self.model)
        self._log("val/loss", val)
        if self.ema is not None:
            val = self.evaluate(self.ema.module)
            self._log("val/loss_ema", val)
        if self.best_val is None or val < self.best_val:
            self.best_val, self.evals_since_best = val, 0
        else:
            self.evals_since_best += 1
        if self.on_validation is not None and self.on_validation(self.step, val):
            return "pruned"
        if self.cfg.patience and self.evals_since_best >= self.cfg.patience:
            return "early-stopped"
        return None
