"""Checkpoints: policies and trainer state on disk, written atomically and read back as data only.

A run directory holds
    policies/policy_000050.pt    one file per saved policy: network spec, weights, counters, metadata
    policies.json                the PolicyStore's index of those files (epoch, steps, eval scores)
    trainer_state.pt             what an exact continuation needs: optimizer, counters, RNG states,
                                 config, and which policy file goes with it

Every file is written to a temporary name in the same directory and renamed over the old one, so
a process killed at any moment leaves the previous checkpoint intact. Every file is read with
`torch.load(..., weights_only=True)`: tensors, numbers, strings, lists and dicts only, never code.
A missing, truncated or foreign file raises CheckpointError naming the path and the problem.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from cleanmetta.config import AgentConfig
from cleanmetta.policy import make_policy
from cleanmetta.spaces import space_from_dict, spaces_match

FORMAT = "cleanmetta-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or not a cleanmetta checkpoint of the expected kind."""


# ---- atomic files -------------------------------------------------------------------------------

def _write_atomic(path: str, write: Callable[[str], None]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(obj: dict[str, Any], path: str, kind: str) -> None:
    """Atomically write `obj` (plain data and tensors) as a checkpoint of `kind`."""
    _write_atomic(path, lambda tmp: torch.save({"format": FORMAT, "kind": kind, **obj}, tmp))


def load_checkpoint(path: str, kind: str) -> dict[str, Any]:
    """Read a checkpoint of `kind` as data; CheckpointError for anything else."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file can make the unpickler fail in any way (IndexError, KeyError, ...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, corrupt, or not saved as "
                              f"plain data): {first_line}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a cleanmetta checkpoint (format {found!r}, expected {FORMAT!r})")
    if data.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {data.get('kind')!r} checkpoint, expected {kind!r}")
    return data


# ---- policies -----------------------------------------------------------------------------------

@dataclass
class PolicyRecord:
    """One saved policy: where it is, when it was saved, and how it scored."""

    uri: str
    epoch: int
    agent_steps: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    _policy: Any = field(default=None, repr=False, compare=False)

    @property
    def policy(self):
        """The network, loaded from `uri` on first access."""
        if self._policy is None:
            self._policy = load_policy_file(self.uri)
        return self._policy

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "epoch": self.epoch, "agent_steps": self.agent_steps,
                "metadata": self.metadata, "scores": self.scores}


def load_policy_file(path: str, device: torch.device | str = "cpu"):
    """Rebuild a policy from its saved spec and weights."""
    data = load_checkpoint(path, "policy")
    spec = data["spec"]
    policy = make_policy(AgentConfig(**spec["agent"]), space_from_dict(spec["observation_space"]),
                         space_from_dict(spec["action_space"]))
    try:
        policy.load_state_dict(data["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the saved network spec: {err}") from None
    return policy.to(device)


def check_policy_spaces(policy, observation_space, action_space, where: str) -> None:
    """CheckpointError unless the saved network `policy` (its .spec) was built for these spaces."""
    saved_obs = space_from_dict(policy.spec["observation_space"])
    saved_action = space_from_dict(policy.spec["action_space"])
    if not (spaces_match(saved_obs, observation_space) and spaces_match(saved_action, action_space)):
        raise CheckpointError(f"{where}: saved for observation space {saved_obs} and action space {saved_action}, "
                              f"but the env has {observation_space} and {action_space}")


class PolicyStore:
    """The policy records of one run, indexed in `<directory>/policies.json`."""

    def __init__(self, directory: str):
        self.directory = directory
        self.index_path = os.path.join(directory, "policies.json")

    def records(self) -> list[PolicyRecord]:
        """All records, oldest first."""
        if not os.path.exists(self.index_path):
            return []
        try:
            with open(self.index_path) as f:
                rows = json.load(f)
            # The index stores paths relative to the run directory, so a run can be moved or copied.
            return [PolicyRecord(**{**row, "uri": self._resolve(row["uri"])}) for row in rows]
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{self.index_path}: not a readable policy index: {err}") from None

    def add(self, record: PolicyRecord) -> PolicyRecord:
        records = [r for r in self.records() if r.uri != record.uri] + [record]
        self._write(sorted(records, key=lambda r: r.epoch))
        return record

    def latest(self) -> PolicyRecord:
        records = self.records()
        if not records:
            raise CheckpointError(f"{self.directory}: no saved policies (no {self.index_path})")
        return records[-1]

    def best(self, metric: str) -> PolicyRecord:
        """The record with the highest score `metric` (e.g. 'CartPole-v1/mean_return')."""
        scored = [r for r in self.records() if metric in r.scores]
        if not scored:
            raise CheckpointError(f"{self.directory}: no policy has the score {metric!r}")
        return max(scored, key=lambda r: (r.scores[metric], r.epoch))

    def get(self, selector: str | int) -> PolicyRecord:
        """A record by epoch number, 'latest', 'best:<metric>', or file path."""
        if selector == "latest":
            return self.latest()
        if isinstance(selector, str) and selector.startswith("best:"):
            return self.best(selector[5:])
        for record in self.records():
            if str(record.epoch) == str(selector) or record.uri == self._resolve(str(selector)):
                return record
        if isinstance(selector, str) and os.path.isfile(selector):
            data = load_checkpoint(selector, "policy")
            return PolicyRecord(selector, data["epoch"], data["agent_steps"], data["metadata"])
        raise CheckpointError(f"{self.directory}: no policy matches {selector!r}")

    def _resolve(self, uri: str) -> str:
        return os.path.normpath(os.path.join(self.directory, uri))

    def _write(self, records: list[PolicyRecord]) -> None:
        rows = [{**r.to_dict(), "uri": os.path.relpath(r.uri, self.directory)} for r in records]
        text = json.dumps(rows, indent=2, default=str)

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(text)

        _write_atomic(self.index_path, write)


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
    """Saves and restores a run's policies and trainer state under `checkpoint_dir`."""

    def __init__(self, checkpoint_dir: str, policy_store: PolicyStore | None = None, wandb_run: Any = None):
        self.checkpoint_dir = checkpoint_dir
        self.policy_store = policy_store if policy_store is not None else PolicyStore(checkpoint_dir)
        self.wandb_run = wandb_run  # optional: every saved policy is also logged to it as a model artifact
        self.last_policy: PolicyRecord | None = None

    def save_policy(self, policy: torch.nn.Module, epoch: int, metadata: dict[str, Any] | None = None) -> PolicyRecord:
        """Write the policy's spec and weights; add and return its record. metadata may hold agent_steps."""
        metadata = dict(metadata or {})
        agent_steps = int(metadata.pop("agent_steps", 0))
        scores = metadata.pop("scores", {})
        spec = getattr(policy, "spec", None)
        if spec is None:
            raise CheckpointError("the policy has no .spec; build it with cleanmetta.policy.make_policy()")
        path = os.path.join(self.checkpoint_dir, "policies", f"policy_{epoch:06d}.pt")
        state_dict = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
        save_checkpoint({"spec": spec, "state_dict": state_dict, "epoch": epoch, "agent_steps": agent_steps,
                         "metadata": metadata}, path, "policy")
        self.last_policy = PolicyRecord(os.path.normpath(path), epoch, agent_steps, metadata, dict(scores))
        if self.wandb_run is not None:
            self._log_artifact(self.last_policy)
        return self.policy_store.add(self.last_policy)

    def save_trainer_state(self, agent_step: int, epoch: int, optimizer_state: dict[str, Any], run_dir: str,
                           **extra: Any) -> str:
        """Write trainer_state.pt: counters, optimizer state, RNG states, `extra` (e.g. config) and the
        policy saved last (`policy_uri`, relative to the policy store)."""
        path = os.path.join(run_dir, "trainer_state.pt")
        if self.last_policy is not None:
            extra.setdefault("policy_uri", os.path.relpath(self.last_policy.uri, self.policy_store.directory))
        save_checkpoint({"agent_step": agent_step, "epoch": epoch, "optimizer_state": optimizer_state,
                         "rng": rng_state(), **extra}, path, "trainer_state")
        return path

    def load_trainer_state(self, run_dir: str) -> dict[str, Any] | None:
        """The saved trainer state of `run_dir`, or None when it has none yet."""
        path = os.path.join(run_dir, "trainer_state.pt")
        return load_checkpoint(path, "trainer_state") if os.path.exists(path) else None

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

    def _log_artifact(self, record: PolicyRecord) -> None:
        """The policy file as a wandb model artifact `policy-<run id>`, a new version per save, aliased
        latest and epoch_<N>; its metadata holds the epoch, agent steps and evaluation scores."""
        import wandb  # there is a wandb run, so the extra is installed

        artifact = wandb.Artifact(f"policy-{self.wandb_run.id}", type="model", metadata={
            "epoch": record.epoch, "agent_steps": record.agent_steps, "scores": record.scores})
        artifact.add_file(record.uri)
        self.wandb_run.log_artifact(artifact, aliases=["latest", f"epoch_{record.epoch}"])
