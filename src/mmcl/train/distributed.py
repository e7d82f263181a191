"""Small helpers over `torch.distributed`: who am I, gather with gradient, set up and tear down.

Every helper also works in a plain single process (no process group): `rank()` is 0,
`world_size()` is 1 and `all_gather_with_grad(x)` returns `x` itself.

The gradient semantics of `all_gather_with_grad` are the heart of mmcl's exact distributed
contrastive losses; see its docstring and `mmcl.train.losses`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group.

    >>> is_distributed()
    False
    """
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group).

    >>> rank()
    0
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group).

    >>> world_size()
    1
    """
    return dist.get_world_size() if is_distributed() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for this rank's shard.

    all_gather is the linear map x_r -> [x_0, ..., x_{W-1}], copied to every rank. Rank s's
    loss L_s depends on every shard, so the gradient of the *sum* of the ranks' losses with
    respect to x_r is sum_s dL_s/dx_r: the adjoint of all_gather is an all-reduce (SUM) of the
    gathered gradients followed by taking this rank's rows.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        tensor = tensor.contiguous()
        ctx.rows = tensor.shape[0]
        shards = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, tensor)
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        # all_reduce works in place, so copy. (It moves twice the bytes of a reduce-scatter, but
        # works on every backend, and feature gradients are only batch x embed_dim.)
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order, keeping the autograd graph.

    Every rank must pass a tensor of the same shape. The gradient that reaches the local
    `tensor` is the gradient of the **sum of all ranks' losses** with respect to the local
    shard: backward all-reduces (SUM) the gradient of the gathered tensor and keeps this
    rank's rows. Nothing is dropped: the other ranks' losses use our rows as their negatives,
    and their contribution comes back to us.

    Why this choice: each rank computes the loss of its own rows against the gathered batch
    (`mmcl.train.losses`), and the global loss is the mean of those per-rank losses. The
    summed adjoint then gives every rank `world_size` times the gradient of the global loss
    for its rows, which DistributedDataParallel's gradient averaging (divide by `world_size`)
    turns into exactly the single-process gradient. The alternative that passes only the local
    loss's gradient back (slicing the gathered gradient without communication) loses the
    cross-rank terms and is not exact.

    Without a process group this returns `tensor` unchanged.

    >>> x = torch.randn(4, 8, requires_grad=True)
    >>> all_gather_with_grad(x) is x  # single process
    True
    """
    if world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce and average `.grad` over ranks in place, as DistributedDataParallel does.

    For code that cannot go through `DistributedDataParallel.forward` (gradient caching
    calls the towers directly), call this after backward and before the optimizer step.

    >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)
    >>> average_gradients([p]); p.grad  # single process: unchanged
    tensor([1., 1.])
    """
    size = world_size()
    if size == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(size)


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0


def init_from_env(backend: str | None = None, timeout: float | None = None) -> DistributedInfo:
    """Join the process group described by torchrun's environment, if any.

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without
    WORLD_SIZE (or with WORLD_SIZE=1) this is a single-process run and no group is created.
    The backend defaults to NCCL with CUDA and gloo without; with CUDA each process uses
    `cuda:LOCAL_RANK`. `timeout` (seconds) bounds the group's waits (default: PyTorch's).
    Calling it again after the group exists just reports.

    >>> info = init_from_env()  # a plain `python train.py`
    >>> info.rank, info.world_size
    (0, 1)
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    global_rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)  # before NCCL init, so each rank talks from its own GPU
    if size > 1 and not is_distributed():
        backend = backend or ("nccl" if cuda else "gloo")
        dist.init_process_group(
            backend=backend,
            rank=global_rank,
            world_size=size,
            device_id=device if backend == "nccl" else None,
            timeout=None if timeout is None else datetime.timedelta(seconds=timeout),
        )
    if is_distributed():
        global_rank, size = dist.get_rank(), dist.get_world_size()
    return DistributedInfo(global_rank, local_rank, size, device)


def cleanup() -> None:
    """Leave the process group if there is one (safe to call anyway).

    >>> cleanup()
    """
    if is_distributed():
        dist.destroy_process_group()
