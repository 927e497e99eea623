"""Checkpoints: a run's trainer states, the checkpointer that commits a checkpoint whole, and the
run directory's checks. (The policies, their index policies.json and the data-only file format
are policy_store.py's; its names are re-exported here.)

A run directory holds
    policies/policy_000050.pt    one file per saved policy: network spec, weights, counters, metadata
    policies.json                the PolicyStore's index of those files (epoch, steps, eval scores, pins)
    trainer_states/trainer_state_000050.pt
                                 what an exact continuation needs: optimizer, counters, RNG states,
                                 config, and which policy file goes with it (the newest `keep`)

A checkpoint is committed when its policy's record is in policies.json. `save_checkpoint` writes
the trainer state, then the policy file, then the index, each atomically (files.py): a process
killed at any moment leaves either the new checkpoint or the previous one in force, never half of
one. `load_trainer_state` takes the newest committed trainer state that reads back whole (with
its policy file), falling back to an older one, with a message, when a file was damaged after it
was written. `prune_policies` then deletes the policies the run no longer needs (the index first,
the files after): never the newest few, the best, a pinned one or one a kept trainer state needs.

    python -m cleanmetta.checkpoint runs/NAME               # list its policies (pins, trainer states, scores)
    python -m cleanmetta.checkpoint runs/NAME --pin 120     # keep epoch 120's policy (--unpin 120)
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
import sys
from typing import Any

import numpy as np
import torch

from cleanmetta.files import fsync_dir
from cleanmetta.imports import import_path, importable
# also re-exported: `from cleanmetta.checkpoint import PolicyStore, CheckpointError, load_policy_file` works
from cleanmetta.policy_store import (CheckpointError, PolicyRecord, PolicyStore, check_policy_spaces, load_checkpoint,
                                     load_policy_file, save_checkpoint, unbuildable)

TRAINER_STATES = "trainer_states"


def trainer_state_path(run_dir: str, epoch: int) -> str:
    return os.path.join(run_dir, TRAINER_STATES, f"trainer_state_{epoch:06d}.pt")


def trainer_states(run_dir: str) -> list[tuple[int, str]]:
    """(epoch, path) of every trainer state saved in `run_dir`, newest first."""
    paths = glob.glob(os.path.join(glob.escape(run_dir), TRAINER_STATES, "trainer_state_*.pt"))
    return sorted(((int(m.group(1)), path) for path in paths
                   if (m := re.fullmatch(r"trainer_state_(\d+)\.pt", os.path.basename(path)))), reverse=True)


def trainer_state_paths(run_dir: str, after: int = -1) -> list[str]:
    """The trainer states saved in `run_dir` (those of epochs after `after`), newest first."""
    return [path for epoch, path in trainer_states(run_dir) if epoch > after]


# ---- the run directory --------------------------------------------------------------------------

RUN_FILES = ("config.json", "policies.json", "episodes.csv", "summary.json", TRAINER_STATES, "trainer_state.pt")


def set_aside(run_dir: str) -> str | None:
    """Before a new run starts in `run_dir`: move an earlier run's files out of its way, to the first
    free `<run_dir>.old-<N>`, and return that path (None when the directory is new or empty). A
    directory holding other files than a run's is refused, not moved."""
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
        return None
    if not any(os.path.exists(os.path.join(run_dir, name)) for name in RUN_FILES):
        raise CheckpointError(f"{run_dir} holds files that are not a cleanmetta run; pick another "
                              "--experiment-name or --log.run-root")
    n = 1
    while os.path.exists(f"{run_dir}.old-{n}"):
        n += 1
    os.replace(run_dir, f"{run_dir}.old-{n}")
    fsync_dir(os.path.dirname(os.path.abspath(run_dir)))
    return f"{run_dir}.old-{n}"


def remove_leftovers(run_dir: str) -> None:
    """Delete the temporary files that writes cut short by a kill left behind (files.py)."""
    for path in glob.glob(os.path.join(glob.escape(run_dir), "**", "*.tmp"), recursive=True):
        os.remove(path)


def inconsistencies(run_dir: str) -> list[str]:
    """What is wrong with a run directory's checkpoints (empty when nothing): every policy record
    points to a policy file that reads back, epochs only grow, and the trainer state in force
    belongs to the latest policy (older trainer states to older policies)."""
    store, problems = PolicyStore(run_dir), []
    try:
        records = store.records()
    except CheckpointError as err:
        return [str(err)]
    epochs = [r.epoch for r in records]
    if epochs != sorted(set(epochs)):
        problems.append(f"policies.json: epochs not strictly increasing: {epochs}")
    for record in records:
        try:
            load_checkpoint(record.uri, "policy")
        except CheckpointError as err:
            problems.append(str(err))
    try:
        state = TrainingCheckpointer(run_dir, store).load_trainer_state(run_dir)
    except CheckpointError as err:
        return problems + [str(err)]
    if state is None:
        return problems + ([f"{run_dir}: policies saved but no trainer state"] if records else [])
    if not records or state["epoch"] != records[-1].epoch or state.get("agent_step") != records[-1].agent_steps:
        problems.append(f"{state['path']} (epoch {state['epoch']}) is not the latest policy's "
                        f"(epoch {epochs[-1] if epochs else None})")
    return problems


# ---- the checkpointer ---------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """python, numpy and torch RNG states as plain data."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                       "cached_gaussian": cached}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingCheckpointer:
    """Saves and restores a run's policies and trainer state under `checkpoint_dir`; keeps the
    newest `keep` trainer states, and the policies until `prune_policies` (resume.save_checkpoint,
    the training loops' save, calls it with checkpoint.keep_policies)."""

    def __init__(self, checkpoint_dir: str, policy_store: PolicyStore | None = None, wandb_run: Any = None,
                 keep: int = 3):
        self.checkpoint_dir = checkpoint_dir
        self.policy_store = policy_store if policy_store is not None else PolicyStore(checkpoint_dir)
        self.wandb_run = wandb_run  # optional: every saved policy is also logged to it as a model artifact
        self.keep = keep
        self.last_policy: PolicyRecord | None = None
        self.warned = False  # about a policy saved without a spec

    def policy_path(self, epoch: int) -> str:
        return os.path.normpath(os.path.join(self.checkpoint_dir, "policies", f"policy_{epoch:06d}.pt"))

    def save_checkpoint(self, policy: torch.nn.Module, epoch: int, agent_step: int, optimizer_state: dict[str, Any],
                        metadata: dict[str, Any] | None = None, **extra: Any) -> PolicyRecord:
        """One checkpoint, committed at once: the trainer state (pointing at the policy file to come),
        then the policy file and its record (the commit), then older trainer states pruned to `keep`.
        A kill before the record is written leaves the previous checkpoint in force."""
        uri = os.path.relpath(self.policy_path(epoch), self.policy_store.directory)
        self._write_trainer_state(agent_step, epoch, optimizer_state, self.checkpoint_dir, policy_uri=uri, **extra)
        record = self.save_policy(policy, epoch, {**(metadata or {}), "agent_steps": agent_step})
        self._prune(self.checkpoint_dir)
        return record

    def save_policy(self, policy: torch.nn.Module, epoch: int, metadata: dict[str, Any] | None = None) -> PolicyRecord:
        """Write the policy's spec and weights; add and return its record. metadata may hold agent_steps."""
        metadata = dict(metadata or {})
        agent_steps = int(metadata.pop("agent_steps", 0))
        scores = metadata.pop("scores", {})
        spec = self.spec_or_warn(policy)
        path = self.policy_path(epoch)
        state_dict = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
        save_checkpoint({"spec": spec, "state_dict": state_dict, "epoch": epoch, "agent_steps": agent_steps,
                         "metadata": metadata}, path, "policy")
        self.last_policy = PolicyRecord(path, epoch, agent_steps, metadata, dict(scores))
        if self.wandb_run is not None:
            self._log_artifact(self.last_policy)
        return self.policy_store.add(self.last_policy)

    def spec_or_warn(self, policy: torch.nn.Module) -> dict[str, Any]:
        """The policy's spec (make_policy's); for a network the user built, its class instead, with a
        one-line warning (once): its weights are saved and resume, but nothing else can rebuild it."""
        spec = getattr(policy, "spec", None)
        if spec is not None:
            return spec
        cls = type(policy)
        spec = {"class": import_path(cls), "importable": importable(cls)}
        if not self.warned:
            print(f"warning: {cls.__name__} was not built by cleanmetta: {unbuildable(spec)}. Its checkpoints keep "
                  "its weights, and this script's --resume loads them", file=sys.stderr, flush=True)
            self.warned = True
        return spec

    def save_trainer_state(self, agent_step: int, epoch: int, optimizer_state: dict[str, Any], run_dir: str,
                           **extra: Any) -> str:
        """Write trainer_states/trainer_state_<epoch>.pt: counters, optimizer state, RNG states, `extra`
        (e.g. config) and the policy saved last (`policy_uri`, relative to the policy store); keep
        the newest `keep`. (save_checkpoint writes both halves of a checkpoint in a kill-proof order.)"""
        if self.last_policy is not None:
            extra.setdefault("policy_uri", os.path.relpath(self.last_policy.uri, self.policy_store.directory))
        path = self._write_trainer_state(agent_step, epoch, optimizer_state, run_dir, **extra)
        self._prune(run_dir)
        return path

    def _write_trainer_state(self, agent_step: int, epoch: int, optimizer_state: dict[str, Any], run_dir: str,
                             **extra: Any) -> str:
        path = trainer_state_path(run_dir, epoch)
        save_checkpoint({"agent_step": agent_step, "epoch": epoch, "optimizer_state": optimizer_state,
                         "rng": rng_state(), **extra}, path, "trainer_state")
        return path

    def _prune(self, run_dir: str) -> None:
        for path in trainer_state_paths(run_dir)[self.keep:]:
            os.remove(path)

    def prune_policies(self, keep_newest: int) -> list[PolicyRecord]:
        """Delete the policies the run no longer needs (records, then files; keep_newest=0: none) and
        return their records. Kept: the newest `keep_newest`, the best by each simulation's mean
        return, the pinned, and those a kept trainer state points to (a resume may fall back to any
        of them). Then the policy files that a kill in the middle of an earlier prune left without a
        record (older than the latest record) go too."""
        if keep_newest < 1:
            return []
        in_use = []
        for path in trainer_state_paths(self.checkpoint_dir):
            try:
                uri = load_checkpoint(path, "trainer_state").get("policy_uri")
            except CheckpointError:  # damaged: no resume can use it, so it needs no policy kept
                continue
            if uri is not None:
                in_use.append(self.policy_store._resolve(uri))
        removed = self.policy_store.prune(keep_newest, in_use)
        records = self.policy_store.records()
        recorded = {os.path.realpath(r.uri) for r in records}
        for path in glob.glob(os.path.join(glob.escape(self.checkpoint_dir), "policies", "policy_*.pt")):
            match = re.fullmatch(r"policy_(\d+)\.pt", os.path.basename(path))
            older = match and records and int(match.group(1)) < records[-1].epoch  # never a save in progress
            if older and os.path.realpath(path) not in recorded:
                os.remove(path)
        return removed

    def load_trainer_state(self, run_dir: str) -> dict[str, Any] | None:
        """The newest committed trainer state of `run_dir` that reads back whole, with its policy file;
        None when it has none yet. A damaged newer one is skipped with a message on stdout; one whose
        policy never reached policies.json (a kill while saving) is not in force, and skipped quietly."""
        records = {r.uri: r for r in self.policy_store.records()}
        damaged = []
        for path in trainer_state_paths(run_dir):
            try:
                state = load_checkpoint(path, "trainer_state")
                uri = state.get("policy_uri")
                if uri is not None:
                    record = records.get(self.policy_store._resolve(uri))
                    if record is None:  # written by a run killed before it committed the policy
                        continue
                    load_checkpoint(record.uri, "policy")
            except CheckpointError as err:
                damaged.append(str(err))
                continue
            for problem in damaged:
                print(f"checkpoint: skipped {problem}; resuming from {os.path.basename(path)} instead", flush=True)
            state["path"] = path
            return state
        if damaged:
            raise CheckpointError(f"{run_dir}: no trainer state reads back whole: " + "; ".join(damaged))
        return None

    def discard_after(self, epoch: int) -> list[str]:
        """Delete the policies (records and files) and trainer states saved after `epoch`, as a run
        resumed from `epoch` does before it trains those epochs again; return the deleted paths."""
        removed = [r.uri for r in self.policy_store.remove_after(epoch)]
        for path in trainer_state_paths(self.checkpoint_dir, after=epoch):
            os.remove(path)
            removed.append(path)
        return removed

    def load_policy(self, checkpoint: dict[str, Any] | str, env: Any = None) -> PolicyRecord:
        """The policy record of a trainer state (or of a policy file path), its network loaded.

        With `env` (a vector env or anything with single_observation_space / single_action_space,
        or observation_space / action_space), the saved network must fit its spaces.
        """
        uri = checkpoint.get("policy_uri", "latest") if isinstance(checkpoint, dict) else checkpoint
        record = self.policy_store.get(uri)
        if env is not None:
            check_policy_spaces(record.policy, getattr(env, "single_observation_space", None) or env.observation_space,
                                getattr(env, "single_action_space", None) or env.action_space, record.uri)
        return record

    def policy_weights(self, checkpoint: dict[str, Any], env: Any) -> dict[str, torch.Tensor]:
        """The weights of a trainer state's policy file, checked against `env`'s spaces (as load_policy
        does) but without building its network: a resume loads them into the policy it built itself,
        a network cleanmetta cannot rebuild (spec_or_warn) too."""
        record = self.policy_store.get(checkpoint.get("policy_uri", "latest"))
        data = load_checkpoint(record.uri, "policy")
        check_policy_spaces(data["spec"], env.single_observation_space, env.single_action_space, record.uri)
        return data["state_dict"]

    def _log_artifact(self, record: PolicyRecord) -> None:
        """The policy file as a wandb model artifact `policy-<run id>`, a new version per save, aliased
        latest and epoch_<N>; its metadata holds the epoch, agent steps and evaluation scores."""
        import wandb  # there is a wandb run, so the extra is installed

        artifact = wandb.Artifact(f"policy-{self.wandb_run.id}", type="model", metadata={
            "epoch": record.epoch, "agent_steps": record.agent_steps, "scores": record.scores})
        artifact.add_file(record.uri)
        self.wandb_run.log_artifact(artifact, aliases=["latest", f"epoch_{record.epoch}"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cleanmetta.checkpoint", description=(
        "List a run's saved policies; pin one so that checkpoint.keep_policies never prunes it."))
    parser.add_argument("run_dir", help="run directory, e.g. runs/NAME")
    parser.add_argument("--pin", metavar="POLICY", help="keep this policy: an epoch, 'latest' or 'best:<score>'")
    parser.add_argument("--unpin", metavar="POLICY", help="let a pinned policy be pruned again")
    args = parser.parse_args(argv)
    store = PolicyStore(args.run_dir)
    try:
        for selector, pinned in ((args.pin, True), (args.unpin, False)):
            if selector is not None:
                record = store.pin(selector, pinned)
                print(f"{'pinned' if pinned else 'unpinned'} epoch {record.epoch}: {record.uri}")
        store.latest()  # a run with no saved policy is an error naming the index
        records = store.records()
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    states = {epoch for epoch, _ in trainer_states(args.run_dir)}
    for r in records:
        notes = ", ".join((["pinned"] if r.pinned else []) + (["trainer state"] if r.epoch in states else []))
        scores = "  ".join(f"{name} {value:.2f}" for name, value in r.scores.items() if name.endswith("/mean_return"))
        print(f"epoch {r.epoch:>6}  {r.agent_steps:>13,} agent steps  {notes:22s}  {scores}".rstrip())


if __name__ == "__main__":
    main()
