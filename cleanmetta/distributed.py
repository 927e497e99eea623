"""torch.distributed for cleanmetta: one policy trained by many processes under torchrun.

    torchrun --standalone --nproc_per_node N train.py [flags]

Each process (a rank) steps its own environments into its own buffer. The ranks keep one policy
by averaging their gradients after every minibatch, and they share what must be global: the
advantage statistics of each minibatch, the observation and reward normalisation statistics, the
finished episodes, the decision to stop, and rank 0's checkpoint on resume.

Every function here is the identity, or does nothing, in a single process, so the components call
them unconditionally and a run without torchrun does exactly what it did before this module.
Collectives must be called by every rank at the same point, in the same order. One that fails (a
rank died) or waits longer than the process group's timeout raises `DistributedError` naming this
rank, rather than hanging.

Backends: NCCL when the rank's device is a GPU (`cuda:LOCAL_RANK`), gloo on the CPU. Tensors are
moved to the backend's device for a collective and back, so callers pass them where they live.

This module owns the process group and the collectives; what is shared, and when, is decided by
the components that call them.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist


ReduceOp = dist.ReduceOp


class DistributedError(RuntimeError):
    """A collective failed: another rank died, or did not reach it within the timeout."""


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR"))


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes files, prints and evaluates (also true without torchrun)."""
    return rank() == 0


def init(device: torch.device, timeout_s: float) -> None:
    """Join torchrun's process group (rendezvous from its environment variables): NCCL for a GPU,
    gloo for the CPU. A collective that waits longer than `timeout_s` fails instead of hanging.
    Nothing to do without torchrun, or when this process has joined already."""
    if not launched_by_torchrun() or initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the objects' collectives (all_gather_object) use the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))


def close() -> None:
    """Leave the process group, after every rank has reached this point: a rank that tore the group
    down and exited while another was still writing its files sometimes aborted in C++ on the way
    out (seen with gloo: 'terminate called without an active exception')."""
    if initialized():
        _collective(dist.barrier)
        dist.destroy_process_group()


def _collective(op: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return op(*args, **kwargs)
    except RuntimeError as err:  # gloo and NCCL report a lost peer or a timeout as RuntimeError subclasses
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(f"rank {rank()} of {world_size()}: {op.__name__} failed; another rank has probably "
                               f"died or stopped answering (see its output): {detail}") from None


def _backend_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: ReduceOp = ReduceOp.SUM) -> torch.Tensor:
    """`op` (sum by default) of `tensor` over all ranks, as a new tensor where `tensor` lives."""
    if world_size() == 1:
        return tensor
    buffer = tensor.detach().to(_backend_device(), copy=True)
    _collective(dist.all_reduce, buffer, op)
    return buffer.to(tensor.device)


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if world_size() == 1 else all_reduce(tensor) / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any."""
    return flag if world_size() == 1 else bool(all_reduce(torch.tensor(int(flag)), ReduceOp.MAX))


def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over all ranks: one all-reduce of one flat buffer.

    Why not DistributedDataParallel: custom losses call the policy directly (outside a DDP
    wrapper's forward, which is what arms DDP's gradient hooks), the rollout calls its sample(),
    and a small network's gradients fit one bucket anyway, which is all DDP would send.
    """
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_reduce(torch.cat([g.reshape(-1) for g in grads])).div_(world_size())
    for p, g in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = g.view_as(p)


def moments(parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Count, mean and (biased) variance of the rows of each part [n_i, *shape], over its rows on all
    ranks together (part i of every rank pooled), from one all-reduce for all parts (the parts share
    one shape): tensors [len(parts)], [len(parts), *shape], [len(parts), *shape], in float64."""
    shape = parts[0].shape[1:]
    sums = all_reduce(torch.stack([torch.cat([part.new_tensor([len(part)], dtype=torch.float64),
                                              part.double().sum(0).flatten(), part.double().square().sum(0).flatten()])
                                   for part in parts]))
    count, features = sums[:, 0], shape.numel()
    mean = sums[:, 1:1 + features] / count.clamp_min(1).unsqueeze(-1)
    var = (sums[:, 1 + features:] / count.clamp_min(1).unsqueeze(-1) - mean.square()).clamp_min(0)
    return count, mean.view(len(parts), *shape), var.view(len(parts), *shape)


def mean_std(parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation of each 1-D part, over its values on all ranks together
    (part i of every rank pooled): two tensors of len(parts), from one all-reduce for all parts."""
    count, mean, var = moments(parts)
    unbiased = var * count / (count - 1).clamp_min(1)
    dtype = parts[0].dtype
    return mean.to(dtype), unbiased.sqrt().to(dtype)


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (the ranks then start from one policy)."""
    if world_size() == 1:
        return
    for tensor in module.state_dict().values():
        buffer = tensor.detach().to(_backend_device(), copy=True)
        _collective(dist.broadcast, buffer, 0)
        tensor.copy_(buffer)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` (any picklable object) on every rank."""
    if world_size() == 1:
        return obj
    holder = [obj]
    _collective(dist.broadcast_object_list, holder, 0)
    return holder[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    _collective(dist.all_gather_object, gathered, obj)
    return gathered
