"""WorkerVecEnv: a vector env's simulations split over worker processes that step in shared memory.

The learner process and its workers share one set of arrays (observations, rewards, terminations,
truncations, actions) in `multiprocessing.shared_memory`; every worker owns the rows of its
simulations. A step is: the learner writes the actions and a request into a small shared control
block, each worker (polling it) steps its simulations, which read their actions and write their
results in place, and marks the request answered. No array is copied or pickled: the learner reads
the results where the workers wrote them. Only a worker with something to report (episode
statistics when an episode ends, or an error) sends it through its pipe.

Waiting is polling with a back-off (`wait_for`): a request answered within a few milliseconds costs
no sleep and wake-up (a pipe or semaphore costs as much per step each way as stepping 16
simulations), and a worker idle through the PPO update sleeps instead of taking a core from it.

The environment itself is whatever `make_env(first, count, arrays)` builds in each worker: `count`
simulations numbered from `first`, writing into `arrays` (for MettaGrid:
mettagrid_env.MettaGridVecEnv, whose simulations draw their randomness from (seed, simulation
number), so the same seed gives the same episodes whatever the number of workers).

Double buffering (`num_batches` 2): two halves of the rows, each worker holding simulations of both;
`send(actions, half)` starts a half's step and `recv(half)` waits for it, so the collector acts on
one half while the workers step the other.

Faults: a worker that raises reports its traceback and the learner raises WorkerError naming the
worker and its simulations; a worker that dies, or does not answer within `timeout` seconds, is
reported the same way (liveness is checked every ~100 polls, so a death is seen at once). Either
way the learner then stops every worker. Workers ignore SIGINT (Ctrl-C reaches the whole process
group; the learner decides when to stop them) and exit when the learner is gone, so they never
outlive it, whatever ends it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from multiprocessing import shared_memory
from typing import Any, Callable

import numpy as np
from gymnasium.vector.utils import batch_space

FIELDS = ("observations", "rewards", "terminals", "truncations", "actions")


def _split(items: range, parts: int) -> list[range]:
    """`items` in `parts` consecutive ranges, as even as can be."""
    bounds = np.linspace(items.start, items.stop, parts + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _merge(parts: list[tuple[dict, slice]], size: int) -> dict:
    """One infos dict from several, each with the rows that its per-row arrays (e.g. "task") cover in
    arrays of `size` rows; per-episode statistics ({name: values}) are joined in the parts' order."""
    merged: dict[str, Any] = {}
    for info, rows in parts:
        for key, value in info.items():
            if isinstance(value, np.ndarray):  # one value per row
                merged.setdefault(key, np.full(size, None, value.dtype))[rows] = value
            else:  # one value per finished episode
                for name, values in value.items():
                    merged.setdefault(key, {}).setdefault(name, []).extend(values)
    return merged


class WorkerError(RuntimeError):
    """An environment worker raised, died or stopped answering."""


def _attach(specs: dict[str, tuple[str, tuple, str]]) -> tuple[list[shared_memory.SharedMemory], dict[str, np.ndarray]]:
    blocks, arrays = [], {}
    for name, (block_name, shape, dtype) in specs.items():
        block = shared_memory.SharedMemory(name=block_name)
        blocks.append(block)
        arrays[name] = np.ndarray(shape, dtype, buffer=block.buf)
    return blocks, arrays


# The control block: per worker, one slot per batch (double buffering keeps a request of each batch in
# flight). The learner writes a command and its argument into the batch's slot, then sets REQUEST to
# the next number of its one sequence over all slots; the worker serves the slots in that order and
# answers by setting REPLY to the request's number, STATUS saying whether infos (or an error) wait
# on its pipe.
REQUEST, COMMAND, ARGUMENT, REPLY, STATUS = range(5)
STEP, RESET, CLOSE = range(3)
NO_INFOS, INFOS, ERROR = range(3)


def wait_for(ready: Callable[[], bool], patience: float, check: Callable[[], None]) -> None:
    """Return once ready() is true. Spin, then yield the CPU (time.sleep(0)) for `patience` seconds (an
    answer that comes that fast costs no wake-up from a sleep), then sleep 0.2 ms at a time (a worker idle
    through the PPO update must not take a core from it); `check` runs every ~100 polls (liveness, timeouts)."""
    polls, start = 0, time.monotonic()
    while not ready():
        polls += 1
        if polls % 100 == 0:
            check()
            if time.monotonic() - start > patience:
                time.sleep(0.0002)
                continue
        if polls > 200:
            time.sleep(0)


def _worker_main(make_env: Callable, index: int, shares: list[tuple[range, slice]], specs: dict, conn) -> None:
    """One env per batch: `shares` holds, per batch, this worker's simulations and their rows."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle
    parent = os.getppid()
    blocks, arrays = _attach(specs)
    slots = arrays.pop("control")[index]  # [batches, 5]
    envs, served = [], 0

    def learner_alive() -> None:
        if os.getppid() != parent:  # the learner is gone: so is this worker
            raise SystemExit(0)

    try:
        for sims, rows in shares:
            envs.append(make_env(sims.start, len(sims), {name: array[rows] for name, array in arrays.items()}))
        while True:
            wait_for(lambda: slots[:, REQUEST].max() > served, 0.002, learner_alive)
            served += 1
            control = slots[int(np.argmax(slots[:, REQUEST] == served))]  # the slot of request number `served`
            command, argument = control[COMMAND], int(control[ARGUMENT])
            if command == CLOSE:
                break
            infos = {}
            if command == STEP:
                infos = envs[argument].step(envs[argument].actions)[4]
            else:
                for env in envs:
                    env.reset(seed=None if argument < 0 else argument)
            if infos:
                conn.send(infos)
            control[STATUS] = INFOS if infos else NO_INFOS
            control[REPLY] = served
    except Exception:  # noqa: BLE001 (any failure goes to the learner, with its traceback)
        try:
            conn.send(traceback.format_exc())
            slots[:, STATUS] = ERROR
        except (BrokenPipeError, OSError):
            pass
    finally:
        for env in envs:
            env.close()
        envs = arrays = slots = control = None
        for block in blocks:
            try:
                block.close()
            except BufferError:  # a view the simulator still holds; the mapping goes with the process
                pass


class WorkerVecEnv:
    """`num_sims` simulations of `agents_per_sim` agents each, split as evenly as possible over
    `num_workers` processes; one batch row per agent, as the in-process env has them.

    `template` is an in-process env of the same kind (one simulation is enough): its spaces and
    arrays' shapes are this env's. `make_env(first, count, arrays)` must be picklable (a module-level
    function or a functools.partial of one).

    Double buffering (`num_batches` 2): the simulations form two batches of rows (the first and the
    second half), every worker holding some of each, and `send(actions, b)` / `recv(b)` step one
    batch while the caller works on the other (the collector acts on one half while the workers
    step the other). `step` steps every batch."""

    def __init__(self, make_env: Callable, template: Any, num_sims: int, num_workers: int, timeout: float = 60.0,
                 num_batches: int = 1):
        if not 1 <= num_workers <= num_sims // num_batches:
            raise ValueError(f"num_workers={num_workers} must be between 1 and the number of simulations per batch "
                             f"{num_sims // num_batches}")
        self.metadata = template.metadata
        self.agents_per_sim = template.agents_per_sim
        self.num_envs = num_sims * self.agents_per_sim
        self.single_observation_space = template.single_observation_space
        self.single_action_space = template.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.timeout = timeout
        self.blocks: list[shared_memory.SharedMemory] = []
        layouts = {name: ((self.num_envs, *getattr(template, name).shape[1:]), getattr(template, name).dtype)
                   for name in FIELDS}
        layouts["control"] = ((num_workers, num_batches, 5), np.dtype(np.int64))  # see REQUEST ... STATUS
        specs = {}
        for name, (shape, dtype) in layouts.items():
            block = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape)) * dtype.itemsize))
            self.blocks.append(block)
            specs[name] = (block.name, shape, dtype.str)
            setattr(self, name, np.ndarray(shape, dtype, buffer=block.buf))
        batches = _split(range(num_sims), num_batches)
        self.batch_rows = [self._rows(sims) for sims in batches]  # the rows of each batch
        per_batch = [_split(sims, num_workers) for sims in batches]  # [batch][worker]
        self.shares = [[split[k] for split in per_batch] for k in range(num_workers)]  # [worker][batch]
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self.processes, self.conns = [], []
        self.requests = 0  # the number of the last request sent to every worker
        for k, share in enumerate(self.shares):  # worker k: its simulations of each batch
            learner_end, worker_end = context.Pipe()
            process = context.Process(target=_worker_main, args=(make_env, k, [(sims, self._rows(sims)) for sims in share],
                                                                 specs, worker_end),
                                      daemon=True, name=f"cleanmetta-env-worker-{len(self.processes)}")
            process.start()
            worker_end.close()  # the worker holds the only other end: its death closes the pipe
            self.processes.append(process)
            self.conns.append(learner_end)
        self.closed = False

    def _rows(self, sims: range) -> slice:
        return slice(sims.start * self.agents_per_sim, sims.stop * self.agents_per_sim)

    def _send(self, command: int, argument: int, slot: int = 0) -> None:
        """The same request to every worker (they read it from the control block), in `slot` (the batch)."""
        self.requests += 1
        control = self.control[:, slot]
        control[:, COMMAND], control[:, ARGUMENT] = command, argument
        control[:, REQUEST] = self.requests

    def _receive(self, i: int, slot: int = 0) -> dict:
        """Worker i's answer to the request in `slot`: its infos ({} on most steps)."""
        process, start, control = self.processes[i], time.monotonic(), self.control[i, slot]
        request = int(control[REQUEST])

        def check() -> None:
            if not process.is_alive():
                self._fail(i, f"died (exit code {process.exitcode})")
            if time.monotonic() - start > self.timeout:
                self._fail(i, f"did not answer within {self.timeout:g} s")

        wait_for(lambda: control[REPLY] == request or (self.control[i, :, STATUS] == ERROR).any(), 0.02, check)
        if (self.control[i, :, STATUS] == ERROR).any():
            control = self.control[i, int(np.argmax(self.control[i, :, STATUS] == ERROR))]
        if control[STATUS] == NO_INFOS:
            return {}
        try:
            payload = self.conns[i].recv()
        except (EOFError, OSError):
            process.join(1.0)
            self._fail(i, f"died (exit code {process.exitcode})")
        if control[STATUS] == ERROR:
            self._fail(i, f"raised:\n{payload}")
        return payload

    def _fail(self, i: int, what: str) -> None:
        sims = ", ".join(f"{share.start}-{share.stop - 1}" for share in self.shares[i])
        self.close(wait=0.5)  # the others may be mid-step; a stuck one would not answer
        raise WorkerError(f"env worker {i} (simulations {sims}) {what}")

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._send(RESET, -1 if seed is None else seed)
        for i in range(len(self.conns)):
            self._receive(i)
        return self.observations, {}

    def send(self, actions: np.ndarray, batch: int) -> None:
        """Start stepping batch `batch` (its rows' actions); collect the results with recv(batch)."""
        rows = self.batch_rows[batch]
        self.actions[rows] = np.asarray(actions).reshape(self.actions[rows].shape)
        self._send(STEP, batch, batch)

    def recv(self, batch: int):
        """The results of batch `batch`'s step: (observations, rewards, terminated, truncated, infos) of its
        rows, in arrays of this env's own, overwritten by its next step."""
        rows = self.batch_rows[batch]
        parts = [(self._receive(k, batch), self._rows(share[batch])) for k, share in enumerate(self.shares)]
        infos = _merge([(info, slice(r.start - rows.start, r.stop - rows.start)) for info, r in parts],
                       rows.stop - rows.start)
        return self.observations[rows], self.rewards[rows], self.terminals[rows], self.truncations[rows], infos

    def step(self, actions: np.ndarray):
        """The in-process env's step, every batch."""
        actions = np.asarray(actions).reshape(self.actions.shape)
        for batch, rows in enumerate(self.batch_rows):
            self.send(actions[rows], batch)
        infos = _merge([(self.recv(batch)[4], rows) for batch, rows in enumerate(self.batch_rows)], self.num_envs)
        return self.observations, self.rewards, self.terminals, self.truncations, infos

    def close(self, wait: float = 5.0) -> None:
        """Stop the workers (asked first; terminated if still running after `wait` seconds) and free the
        shared memory. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._send(CLOSE, 0)
        deadline = time.monotonic() + wait
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()
        for name in (*FIELDS, "control"):
            setattr(self, name, None)
        for block in self.blocks:
            block.close()
            block.unlink()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown: modules may be gone)
            pass
