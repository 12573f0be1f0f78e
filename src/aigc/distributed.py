"""torchrun / DistributedDataParallel helpers: the few facts every process needs.

``torchrun --nproc-per-node N -m aigc train ...`` starts N copies of the same command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init_from_env` reads them and joins the process group (gloo on CPU, NCCL on CUDA); with no
``WORLD_SIZE`` (or ``WORLD_SIZE=1``) nothing is initialised and every helper here answers as a
single process would, so the same code runs both ways.

Conventions the trainer and the evaluation runs follow:

* The *global* batch (``TrainConfig.batch_size``) is what the optimizer sees; rank ``r`` of ``W``
  takes the contiguous slice ``[r * B/W, (r + 1) * B/W)`` of the step's indices
  (:func:`shard_slice`). The data position is the global step, so a run resumes under any ``W``
  that divides the batch.
* Rank 0 alone writes checkpoints, logs, previews and prints; the others stay silent.
* Work that is a list of items (images to sample, batches to score) is split by
  :func:`shard_range`; results come back in the original order with :func:`gather_to_rank0`.

Example::

    ctx = init_from_env()          # DistContext(rank=0, world_size=1, ...) without torchrun
    lo, hi = shard_range(1000, ctx.rank, ctx.world_size)
    total = all_reduce_sum(torch.tensor([partial_sum]))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from aigc.errors import ConfigError

# gloo and NCCL both wait this long for a peer before the collective fails (a dead rank must not
# hang the others for torch's default 30 minutes without saying so).
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes; ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" or "nccl" once initialised

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset): how many processes torchrun started."""
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise ConfigError(f"environment variable WORLD_SIZE must be >= 1, got {world}")
    return world


def init_from_env(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun describes in the environment, once.

    Args:
        device: ``"auto"`` (NCCL when CUDA is available, else gloo), ``"cpu"`` (gloo) or
            ``"cuda"`` (NCCL; each process uses GPU ``LOCAL_RANK``).
        timeout_s: how long a collective waits for the other processes.

    Returns:
        The :class:`DistContext`; ``world_size == 1`` and nothing initialised without torchrun.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    world = env_world_size()
    if world == 1:
        return DistContext()
    rank, local_rank = _env_int("RANK", -1), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"environment variable RANK must be in 0..{world - 1} when "
                          f"WORLD_SIZE={world}, got {os.environ.get('RANK')!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but torch.cuda.is_available() is False")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but this node has "
                              f"{torch.cuda.device_count()} GPU(s); lower --nproc-per-node")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    return context()


def context() -> DistContext:
    """The current :class:`DistContext` (a single process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=_env_int("LOCAL_RANK", 0), backend=dist.get_backend())


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 and in a single process: the one that writes files and prints."""
    return context().is_main


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """``device`` with this process's GPU index under torchrun (``cuda`` -> ``cuda:LOCAL_RANK``)."""
    if ctx.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if context().distributed:
        dist.barrier()


def check_divisible(batch_size: int, world_size: int, name: str = "batch_size") -> int:
    """The per-process share of a global batch; raises unless ``world_size`` divides it."""
    if batch_size % world_size:
        raise ConfigError(f"{name}={batch_size} is the global batch and must be divisible by the "
                          f"number of processes ({world_size}); choose a multiple of {world_size}")
    return batch_size // world_size


def shard_slice(n: int, rank: int, world_size: int) -> slice:
    """The contiguous part of an ``n``-long global batch that ``rank`` takes (``n % W == 0``)."""
    share = check_divisible(n, world_size)
    return slice(rank * share, (rank + 1) * share)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of ``n`` items for ``rank``: contiguous blocks, the first ``n % W`` one longer.

    Concatenating every rank's block in rank order gives ``0..n-1`` back, which is what
    :func:`gather_to_rank0` relies on.
    """
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place and return it (unchanged in a single process)."""
    if context().distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over processes, in place (unchanged in a single process)."""
    ctx = context()
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(ctx.world_size)
    return t


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each ``param.grad`` by its mean over processes (DDP's all-reduce, done by hand in
    one flat float buffer, for a loop too small to wrap in ``DistributedDataParallel``). Every
    process must pass the same parameters; a missing ``.grad`` counts as zeros."""
    ctx = context()
    if not ctx.distributed or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(ctx.world_size)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
        offset += g.numel()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every process when ``flag`` is true on at least one (a shared stop decision)."""
    if not context().distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` from rank ``src`` on every process (pickled by torch over the group; use only for
    values this program made itself, never for data read from users)."""
    if not context().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(items: list) -> list:
    """Every rank's ``items`` concatenated in rank order, on every process (pickled by torch:
    only for values this program made itself, e.g. generated texts). ``items`` in one process."""
    ctx = context()
    if not ctx.distributed:
        return items
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def gather_to_rank0(t: torch.Tensor) -> torch.Tensor | None:
    """Concatenate every rank's ``t`` along dim 0, in rank order, on rank 0; ``None`` elsewhere.

    Ranks may hold different numbers of rows (as :func:`shard_range` gives); the trailing
    dimensions and dtype must agree. In a single process ``t`` itself comes back.
    """
    ctx = context()
    if not ctx.distributed:
        return t
    t = t.contiguous()
    # NCCL needs tensors on the GPU; gloo takes CPU tensors.
    comm_device = torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" \
        else torch.device("cpu")
    rows = torch.tensor([t.shape[0]], device=comm_device)
    all_rows = [torch.zeros_like(rows) for _ in range(ctx.world_size)]
    dist.all_gather(all_rows, rows)
    counts = [int(r.item()) for r in all_rows]
    longest = max(counts)
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=comm_device)
    padded[: t.shape[0]] = t.to(comm_device)
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)  # all_gather, not gather: NCCL has no gather on older torch
    if not ctx.is_main:
        return None
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)
