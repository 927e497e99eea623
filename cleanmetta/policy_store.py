"""A run's saved policies: the checkpoint file format, policy files, and their index policies.json.

Every checkpoint file (a policy here, a trainer state in checkpoint.py) is plain data and tensors
with a format tag, written atomically (files.py) and read with `torch.load(..., weights_only=True)`:
never code. A missing, truncated or foreign file raises CheckpointError naming the path and the
problem.

A policy file holds the network's spec (agent settings and spaces, or for a network of one's own
its import path and keyword arguments), its weights and counters. Loading one imports a module
outside cleanmetta only when the user named it (`load_policy_file`).

`PolicyStore(run_dir)` keeps the index `policies.json`: one record per policy file (epoch, agent
steps, metadata, the scores measured on that policy, whether a user pinned it), oldest first, with
paths relative to the run directory. The trainer adds records and prunes them while other
processes may record scores or pins (`python -m cleanmetta.evaluate`, `python -m
cleanmetta.checkpoint`), so every read-modify-write of the index holds a lock on
`policies.json.lock` beside it (fcntl's flock, where the platform has it): no writer loses
another's change. What the store does not own: when policies are saved and which trainer state
needs which policy (checkpoint.py's TrainingCheckpointer).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from cleanmetta.config import AgentConfig, ConfigError
from cleanmetta.files import write_atomic, write_json
from cleanmetta.policy import make_policy
from cleanmetta.spaces import space_from_dict, spaces_match

try:
    import fcntl
except ImportError:  # Windows: no flock; there, one process at a time should change a run's index
    fcntl = None

FORMAT = "cleanmetta-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or not a cleanmetta checkpoint of the expected kind."""


# ---- checkpoint files ---------------------------------------------------------------------------

def save_checkpoint(obj: dict[str, Any], path: str, kind: str) -> None:
    """Atomically write `obj` (plain data and tensors) as a checkpoint of `kind`."""
    write_atomic(path, lambda tmp: torch.save({"format": FORMAT, "kind": kind, **obj}, tmp))


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
    """One saved policy: where it is, when it was saved, how it scored, and whether it is pinned."""

    uri: str
    epoch: int
    agent_steps: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    pinned: bool = False
    trust: tuple[str, ...] = field(default=(), repr=False, compare=False)  # modules its network may import from
    _policy: Any = field(default=None, repr=False, compare=False)

    @property
    def policy(self):
        """The network, loaded from `uri` on first access (load_policy_file, trusting `trust`)."""
        if self._policy is None:
            self._policy = load_policy_file(self.uri, trust=self.trust)
        return self._policy

    def to_dict(self) -> dict[str, Any]:
        row = {"uri": self.uri, "epoch": self.epoch, "agent_steps": self.agent_steps, "metadata": self.metadata,
               "scores": self.scores}
        return {**row, "pinned": True} if self.pinned else row  # an index without pins reads in older versions too


def load_policy_file(path: str, device: torch.device | str = "cpu", trust: Iterable[str] = ()):
    """Rebuild a policy from its saved spec and weights.

    A spec that names a network of one's own (agent.network, 'module:Class') is loaded by importing
    that module and calling the class, so the module must be one the user named: cleanmetta's, one
    the run's own config.json names (`run_modules`), one in `trust` (module names; a package trusts
    its submodules), or one this process has imported already (e.g. a kickstarted student's own
    network module); and the class must be a torch.nn.Module subclass (protocol.make_network checks
    that before calling it). Anything else is refused with one line, before any import."""
    data = load_checkpoint(path, "policy")
    spec = data["spec"]
    if "agent" not in spec:
        raise CheckpointError(f"{path}: {unbuildable(spec)}")
    try:
        agent = AgentConfig(**spec["agent"])
    except TypeError as err:
        raise CheckpointError(f"{path}: not a policy spec this version of cleanmetta reads: {err}") from None
    if agent.network:
        check_trusted(agent.network, {*trust, *run_modules(path)}, path)
    try:
        policy = make_policy(agent, space_from_dict(spec["observation_space"]), space_from_dict(spec["action_space"]))
        policy.load_state_dict(data["state_dict"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: cannot build its network: {err}") from None
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the saved network spec: {err}") from None
    return policy.to(device)


def unbuildable(spec: dict[str, Any]) -> str:
    """Why a policy saved without a cleanmetta spec (a network the user built: checkpoint.spec_or_warn)
    cannot be rebuilt, and what to do."""
    name = spec.get("class", "?")
    if not spec.get("importable"):
        return (f"saved from {name}, a class of the script that trained it (or of a function), which cannot be "
                "imported; move the class into a module (e.g. my_nets.py) and train with --agent.network "
                f"my_nets:{name.split(':')[-1].split('.')[-1]}, or build it yourself and load "
                "torch.load(path, weights_only=True)['state_dict']")
    return (f"saved from {name}, which cleanmetta did not build, so its constructor's arguments are unknown; train "
            f"with --agent.network {name}[:key=value,...], or build it yourself and load "
            "torch.load(path, weights_only=True)['state_dict']")


def check_trusted(network: str, trust: Iterable[str], path: str) -> None:
    """CheckpointError unless agent.network's module is imported already, cleanmetta's or in `trust` (or in
    a package of it)."""
    module = network.partition(":")[0].strip()
    allowed = {"cleanmetta", *trust}
    if module not in sys.modules and not any(module == name or module.startswith(name + ".") for name in allowed):
        raise CheckpointError(f"{path} names the network {network!r}: loading it imports module {module!r} and calls "
                              f"that class; if you trust it, pass --trust {module} (python -m cleanmetta.evaluate) or "
                              f"trust=[{module!r}] (PolicyStore, load_policy_file)")


def run_modules(path: str) -> set[str]:
    """The module of the network the run's own config.json names (agent.network), which loading its
    policies may import; `path` is a run directory or a policy file in one (RUN/policies/NAME.pt)."""
    run_dir = path if os.path.isdir(path) else os.path.dirname(os.path.dirname(os.path.abspath(path)))
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            network = json.load(f)["agent"].get("network") or ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {network.partition(":")[0].strip()} if isinstance(network, str) and network else set()


def check_policy_spaces(policy, observation_space, action_space, where: str) -> None:
    """CheckpointError unless the saved network `policy` (its .spec, or a spec) was built for these spaces;
    nothing to check for a spec without spaces (a network cleanmetta did not build)."""
    spec = policy if isinstance(policy, dict) else policy.spec
    if "observation_space" not in spec:
        return
    saved_obs = space_from_dict(spec["observation_space"])
    saved_action = space_from_dict(spec["action_space"])
    if not (spaces_match(saved_obs, observation_space) and spaces_match(saved_action, action_space)):
        raise CheckpointError(f"{where} was saved for observations {_brief(saved_obs)} and actions "
                              f"{_brief(saved_action)}, but the env has {_brief(observation_space)} and "
                              f"{_brief(action_space)}")


def _brief(space) -> str:
    """A space as its shape and dtype when it is a Box (its bounds would fill the line), else as gymnasium prints it."""
    return f"Box{space.shape} {space.dtype}" if type(space).__name__ == "Box" else str(space)


def best_of(records: list[PolicyRecord], metric: str) -> PolicyRecord | None:
    """The record with the highest score `metric` (the latest of equals); None when none has it."""
    scored = [r for r in records if metric in r.scores]
    return max(scored, key=lambda r: (r.scores[metric], r.epoch)) if scored else None


class PolicyStore:
    """The policy records of one run, indexed in `<directory>/policies.json`."""

    def __init__(self, directory: str, trust: Iterable[str] = ()):
        self.directory = directory
        self.index_path = os.path.join(directory, "policies.json")
        self.trust = (*trust, *run_modules(directory))  # modules loading a policy may import: the run's own network's

    def records(self) -> list[PolicyRecord]:
        """All records, oldest first."""
        if not os.path.exists(self.index_path):
            return []
        try:
            with open(self.index_path) as f:
                rows = json.load(f)
            # The index stores paths relative to the run directory, so a run can be moved or copied.
            return [PolicyRecord(**{**row, "uri": self._resolve(row["uri"]), "trust": self.trust}) for row in rows]
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{self.index_path}: not a readable policy index: {err}") from None

    def add(self, record: PolicyRecord) -> PolicyRecord:
        os.makedirs(self.directory, exist_ok=True)
        with self.locked():
            records = [r for r in self.records() if r.uri != record.uri] + [record]
            self._write(sorted(records, key=lambda r: r.epoch))
        return record

    def latest(self) -> PolicyRecord:
        return self._select(self.records(), "latest")

    def best(self, metric: str) -> PolicyRecord:
        """The record with the highest score `metric` (e.g. 'CartPole-v1/mean_return')."""
        return self._select(self.records(), f"best:{metric}")

    def get(self, selector: str | int) -> PolicyRecord:
        """A record by epoch number, 'latest', 'best:<metric>', or file path (a policy file outside the
        store too: a record of its own, not in the index)."""
        try:
            return self._select(self.records(), selector)
        except CheckpointError:
            if not (isinstance(selector, str) and os.path.isfile(selector)):
                raise
        data = load_checkpoint(selector, "policy")
        return PolicyRecord(selector, data["epoch"], data["agent_steps"], data["metadata"], trust=self.trust)

    def record_scores(self, uri: str, scores: dict[str, float]) -> PolicyRecord | None:
        """Add `scores` (replacing those of the same names) to the record of the policy file `uri`;
        None when the index has no such record (a file outside the store, or one pruned meanwhile)."""
        with self.locked():
            records = self.records()
            for record in records:
                if self._is(record, uri):
                    record.scores.update(scores)
                    self._write(records)
                    return record
        return None

    def pin(self, selector: str | int, pinned: bool = True) -> PolicyRecord:
        """Keep the selected policy whatever the trainer prunes (checkpoint.keep_policies); stored in
        policies.json. pinned=False (unpin) lets it be pruned again."""
        with self.locked():
            records = self.records()
            record = self._select(records, selector)
            record.pinned = pinned
            self._write(records)
        return record

    def unpin(self, selector: str | int) -> PolicyRecord:
        return self.pin(selector, pinned=False)

    def prune(self, keep_newest: int, also_keep: Iterable[str] = ()) -> list[PolicyRecord]:
        """Delete the policies (records, then files) that are none of: the newest `keep_newest` (0: keep
        all), the best by each simulation's mean return (every '<simulation>/mean_return' score), the
        pinned, and the policy files `also_keep`; return them. The index is written first: a kill
        before the files are gone leaves files without a record, never a record without its file."""
        if keep_newest < 1:
            return []
        with self.locked():
            records = self.records()
            metrics = {name for r in records for name in r.scores if name.endswith("/mean_return")}
            kept = {r.uri for r in records[-keep_newest:]}
            kept |= {r.uri for r in records if r.pinned or any(self._is(r, path) for path in also_keep)}
            kept |= {best_of(records, metric).uri for metric in metrics}
            return self._remove(records, [r for r in records if r.uri not in kept])

    def remove_after(self, epoch: int) -> list[PolicyRecord]:
        """Drop the records (and files) of policies saved after `epoch`; return them. A resumed run
        does this for the epochs it is about to train again."""
        with self.locked():
            records = self.records()
            return self._remove(records, [r for r in records if r.epoch > epoch])

    def _remove(self, records: list[PolicyRecord], removed: list[PolicyRecord]) -> list[PolicyRecord]:
        """Write the index without `removed`, then delete their files (the lock held): a kill between
        the two leaves files without a record, never a record without its file."""
        if removed:
            self._write([r for r in records if r not in removed])
            for record in removed:
                if os.path.exists(record.uri):
                    os.remove(record.uri)
        return removed

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the index's lock (an exclusive flock on policies.json.lock) for a read-modify-write of
        policies.json. Not reentrant: a store method that holds it calls no other that takes it."""
        if fcntl is None or not os.path.isdir(self.directory):  # no directory: nothing to change (records() is [])
            yield
            return
        with open(self.index_path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file releases the lock, an exception too

    def _select(self, records: list[PolicyRecord], selector: str | int) -> PolicyRecord:
        """The record of `records` that `selector` names: 'latest', 'best:<metric>', an epoch, a file."""
        if selector == "latest":
            if not records:
                raise CheckpointError(f"{self.directory}: no saved policies (no {self.index_path})")
            return records[-1]
        if isinstance(selector, str) and selector.startswith("best:"):
            best = best_of(records, selector[5:])
            if best is None:
                raise CheckpointError(f"{self.directory}: no policy has the score {selector[5:]!r}; "
                                      + self._scores_hint(records))
            return best
        for record in records:
            if str(record.epoch) == str(selector):
                return record
        for record in records:
            if self._is(record, str(selector)):
                return record
        raise CheckpointError(f"{self.directory}: no policy matches {selector!r} (an epoch of "
                              f"{[r.epoch for r in records]}, 'latest', 'best:<score>' or a policy file)")

    def _scores_hint(self, records: list[PolicyRecord]) -> str:
        names = sorted({name for r in records for name in r.scores})
        have = f"the scores recorded are {names}" if names else "no policy here has been evaluated"
        return (f"{have}; evaluate one with `python -m cleanmetta.evaluate {self.directory} --policy EPOCH` "
                "(it records its scores), or train with --evaluation.interval N")

    def _is(self, record: PolicyRecord, path: str) -> bool:
        """Whether `path` (relative to the run directory, or to the working directory) is the record's file."""
        here = os.path.realpath(record.uri)
        return here == os.path.realpath(self._resolve(path)) or here == os.path.realpath(path)

    def _resolve(self, uri: str) -> str:
        return os.path.normpath(os.path.join(self.directory, uri))

    def _write(self, records: list[PolicyRecord]) -> None:
        write_json(self.index_path, [{**r.to_dict(), "uri": os.path.relpath(r.uri, self.directory)} for r in records])
