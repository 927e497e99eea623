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

A failure on one rank reaches every rank within seconds, with its message: `report_failure` (train.py
calls it for any exception; an uncaught one reports itself) posts the message in the process
group's key-value store and the rank exits; the others find it there when their next collective
breaks, or sooner, from a watcher thread that checks the store twice a second and ends a rank that
is busy elsewhere (evaluating, or blocked in an NCCL collective that would only time out).

Backends: NCCL when the rank's device is a GPU (`cuda:LOCAL_RANK`), gloo on the CPU. Tensors are
moved to the backend's device for a collective and back, so callers pass them where they live.

This module owns the process group and the collectives; what is shared, and when, is decided by
the components that call them.
"""

from __future__ import annotations

import datetime
import os
import pickle
import sys
import threading
import time
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


def launch_rank() -> int:
    """This process's rank as torchrun numbered it (0 without torchrun), known before it joins."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


RANK_SEED_STRIDE = 1_000_003  # rank r seeds with seed + r * stride: apart from rank 0's envs seed, seed + 1, ...


def seed_for_rank(seed: int) -> int:
    """This process's seed, from the run's `seed`: `seed` itself on rank 0 (and without torchrun)."""
    return seed + RANK_SEED_STRIDE * rank()


def is_main() -> bool:
    """Rank 0, the one process that writes files, prints and evaluates (also true without torchrun)."""
    return rank() == 0


FAILURE_KEY = "cleanmetta/failure"
_store: Any = None                  # the process group's key-value store (torchrun's agent holds it)
_watching = threading.Event()       # set while the watcher runs
_reported = False                   # this rank posted the failure itself


def init(device: torch.device, timeout_s: float) -> None:
    """Join torchrun's process group (rendezvous from its environment variables): NCCL for a GPU,
    gloo for the CPU. A collective that waits longer than `timeout_s` fails instead of hanging.
    Nothing to do without torchrun, or when this process has joined already."""
    global _store
    if not launched_by_torchrun() or initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the objects' collectives (all_gather_object) use the current device
    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank_, size = next(dist.rendezvous("env://", timeout=timeout))
    # torchrun's agent keeps one store across the restarts of --max-restarts: a restarted group must
    # not read the keys of the one before (the peers' old addresses, an old failure)
    _store = dist.PrefixStore(f"cleanmetta/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=_store, rank=rank_,
                            world_size=size, timeout=timeout)
    previous_hook = sys.excepthook

    def report_uncaught(kind, value, traceback):  # a script's uncaught exception stops the other ranks too
        report_failure(value)
        previous_hook(kind, value, traceback)

    sys.excepthook = report_uncaught
    _watching.set()
    threading.Thread(target=_watch, name="cleanmetta-failure-watcher", daemon=True).start()


def close() -> None:
    """Leave the process group, after every rank has reached this point: a rank that tore the group
    down and exited while another was still writing its files sometimes aborted in C++ on the way
    out (seen with gloo: 'terminate called without an active exception')."""
    if initialized():
        _collective(dist.barrier)
        _watching.clear()
        dist.destroy_process_group()


def report_failure(error: BaseException | str) -> None:
    """Tell the other ranks that this one is failing, with `error`'s message: they stop within
    seconds and print it. The first failure posted is the one every rank reports. Under torchrun
    only; a DistributedError (this rank noticing another's failure) is not posted again."""
    global _reported
    if _store is None or not _watching.is_set() or isinstance(error, DistributedError):
        return
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}".strip()
    try:
        if not _store.check([FAILURE_KEY]):
            _store.set(FAILURE_KEY, f"rank {rank()}: {message.splitlines()[0] if message else ''}")
            _reported = True
    except (RuntimeError, ValueError):  # the store is gone: the launcher is tearing the group down
        pass


def posted_failure(wait_s: float = 0.0) -> str | None:
    """The failure another rank posted ('rank R: message'), waiting up to `wait_s` for one; or None."""
    deadline = time.monotonic() + wait_s
    while _store is not None and not _reported:
        try:
            if _store.check([FAILURE_KEY]):
                return _store.get(FAILURE_KEY).decode()
        except (RuntimeError, ValueError):
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)
    return None


def _watch(poll_s: float = 0.5, grace_s: float = 5.0) -> None:
    """The watcher thread: once another rank posted a failure, give this rank's main thread `grace_s`
    to fail in its own collective (and exit with the message), then end the process."""
    while _watching.wait(poll_s) and not (failure := posted_failure()):
        time.sleep(poll_s)
    if not _watching.is_set():
        return
    time.sleep(grace_s)
    if _watching.is_set():
        print(f"error: rank {rank()} of {world_size()}: stopped because {failure}", file=sys.stderr, flush=True)
        os._exit(1)


_WAITED = [0.0]  # seconds this process has spent in collectives (timing.Split's `ranks`)


def waited() -> float:
    """Seconds this process has spent in collectives so far: sending, and waiting for the other ranks."""
    return _WAITED[0]


def _collective(op: Callable, *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    try:
        return op(*args, **kwargs)
    except RuntimeError as err:  # gloo and NCCL report a lost peer or a timeout as RuntimeError subclasses
        failure = posted_failure(wait_s=2.0)
        if failure:
            raise DistributedError(f"rank {rank()} of {world_size()}: stopped because {failure}") from None
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(f"rank {rank()} of {world_size()}: {op.__name__} failed; another rank has probably "
                               f"died or stopped answering (see its output): {detail}") from None
    finally:
        _WAITED[0] += time.perf_counter() - start


def on_main(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), run on rank 0 alone (e.g. to read a file the other machines may not have), and its
    result on every rank; an exception it raises is raised on every rank."""
    if world_size() == 1:
        return fn(*args)
    outcome: Any = None
    if is_main():
        try:
            outcome = (True, fn(*args))
        except Exception as err:
            try:
                pickle.dumps(err)
            except Exception:
                err = RuntimeError(f"{type(err).__name__}: {err}")
            outcome = (False, err)
    ok, value = broadcast_object(outcome)
    if not ok:
        raise value
    return value


def _backend_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: ReduceOp = ReduceOp.SUM) -> torch.Tensor:
    """`op` (sum by default) of `tensor` over all ranks, as a new tensor where `tensor` lives."""
    if world_size() == 1:
        return tensor
    buffer = tensor.detach().to(_backend_device(), copy=True)
    _collective(dist.all_reduce, buffer, op)
    return buffer.to(tensor.device)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per row i of `values` [N, ...]: its mean over ranks, each rank's row weighted by its weights[i]
    (e.g. a mean over that rank's samples, weighted by their number, gives the mean over all ranks'
    samples); one all-reduce. In one process: `values`."""
    if world_size() == 1:
        return values
    rows, weights = values.reshape(len(values), -1), weights.to(values.device, values.dtype).reshape(-1, 1)
    sums = all_reduce(torch.cat([rows * weights, weights], 1))
    return (sums[:, :-1] / sums[:, -1:]).view_as(values)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any."""
    return flag if world_size() == 1 else bool(all_reduce(torch.tensor(int(flag)), ReduceOp.MAX))


def average_gradients(params: list[torch.Tensor], samples: int = 1) -> None:
    """Replace each parameter's gradient by its mean over all ranks: one all-reduce of one flat buffer.
    Each rank's gradient is weighted by `samples`, the number of samples its loss averaged over (1
    on every rank: the plain mean): the gradient of the mean loss over all ranks' samples together, which
    is what one process would get on the combined minibatch (the ranks' counts differ when their
    rollouts hold different numbers of autoreset steps).

    Why not DistributedDataParallel: custom losses call the policy directly (outside a DDP
    wrapper's forward, which is what arms DDP's gradient hooks), the rollout calls its sample(),
    and a small network's gradients fit one bucket anyway, which is all DDP would send.
    """
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    # the count rides in the same buffer as the weighted gradients: one all-reduce
    flat = all_reduce(torch.cat([g.reshape(-1) * samples for g in grads] + [grads[0].new_tensor([samples])]))
    flat = flat[:-1].div_(flat[-1])
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
