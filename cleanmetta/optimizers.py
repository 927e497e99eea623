"""The optimiser PPO steps: trainer.optimizer, built by `make_optimizer(policy, trainer, device)`.

- 'adam' (the default): torch.optim.Adam with eps 1e-5 (trainer.adam_eps, the reference
  implementations' value), the fused kernel (one call for the whole step). trainer.weight_decay is
  torch's L2 penalty, added to the gradient; 0 by default.
- 'adamw': torch.optim.AdamW, Adam with decoupled weight decay: each step also shrinks every
  weight by learning_rate x trainer.weight_decay, whatever its gradient.
- 'muon': Keller Jordan's Muon (torch.optim.Muon) for the hidden 2-D weights, AdamW for the rest,
  as Muon's authors apply it. Muon steps each weight matrix along its momentum made orthogonal (five
  Newton-Schulz iterations: every singular value near 1), so that no direction of the update
  dominates. The rest (biases, the layer reading the observation, the output heads, embeddings,
  convolutions, LSTM weights) gets AdamW, same rate, eps and weight decay. Which weights are
  hidden: `hidden_weights`. Muon is built with adjust_lr_fn="match_rms_adamw", Moonshot's rule
  ("Muon is scalable for LLM training"): each update is scaled by 0.2 x sqrt(max(rows, columns))
  so that its RMS matches AdamW's, and both parts share trainer.learning_rate and its schedule.
  One `CombinedOptimizer` steps the two. A network without hidden 2-D weights trains with AdamW alone.
- 'schedulefree': schedule-free AdamW (Defazio et al. 2024; pip install -e ".[schedulefree]"). It
  needs no decaying schedule: it keeps a sequence z of plain steps and x, the running average of
  z, and computes gradients at y, between the two. The policy's weights are y while it trains;
  optimizer.eval() sets them to x, optimizer.train() back to y. The policy is evaluated and saved
  at x (`averaged_weights`); its authors run it at a constant rate (--trainer.no-anneal-lr).
- 'module:Class[:key=value,...]': any torch optimiser, Class(policy.parameters(),
  lr=trainer.learning_rate, **kwargs), e.g. 'torch.optim:SGD:momentum=0.9'.

`set_learning_rate` sets each epoch's rate on every parameter group. This module owns the
optimiser only; ppo.py steps it, resume.py saves and restores its state.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from cleanmetta import distributed
from cleanmetta.config import ConfigError, TrainerConfig, import_extra
from cleanmetta.imports import check_call, load_object


def adam(policy: nn.Module, trainer: TrainerConfig, device: torch.device) -> torch.optim.Adam:
    # The fused kernel does the whole Adam step in one call instead of several per parameter (docs/speed.md).
    return torch.optim.Adam(policy.parameters(), lr=trainer.learning_rate, eps=trainer.adam_eps,
                            weight_decay=trainer.weight_decay, fused=device.type in ("cpu", "cuda"))


def adamw(policy: nn.Module, trainer: TrainerConfig, device: torch.device,
          params: list[nn.Parameter] | None = None) -> torch.optim.AdamW:
    """AdamW over `params` (default: all the policy's parameters)."""
    return torch.optim.AdamW(policy.parameters() if params is None else params, lr=trainer.learning_rate,
                             eps=trainer.adam_eps, weight_decay=trainer.weight_decay,
                             fused=device.type in ("cpu", "cuda"))


def muon(policy: nn.Module, trainer: TrainerConfig, device: torch.device) -> CombinedOptimizer:
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"trainer.optimizer='muon' needs torch.optim.Muon, in torch 2.9 and later (this is torch "
                          f"{torch.__version__}): pip install -U torch")
    hidden = {id(p): p for p in hidden_weights(policy)}
    params = list(policy.parameters())
    for p in hidden.values():
        if p.ndim != 2 or not any(p is q for q in params):
            raise ConfigError(f"trainer.optimizer='muon': hidden_weights() of {type(policy).__name__} gave a tensor "
                              f"of shape {tuple(p.shape)}; Muon takes 2-D weights of the network only")
    parts: dict[str, torch.optim.Optimizer] = {}
    if hidden:
        parts["muon"] = torch.optim.Muon(list(hidden.values()), lr=trainer.learning_rate,
                                         weight_decay=trainer.weight_decay, adjust_lr_fn="match_rms_adamw")
    elif distributed.is_main():
        print(f"trainer.optimizer='muon': {type(policy).__name__} has no hidden 2-D weight (optimizers.hidden_weights)"
              "; AdamW trains every parameter", flush=True)
    rest = [p for p in params if id(p) not in hidden]
    if rest:
        parts["adamw"] = adamw(policy, trainer, device, params=rest)
    return CombinedOptimizer(parts)


def schedule_free(policy: nn.Module, trainer: TrainerConfig, device: torch.device) -> torch.optim.Optimizer:
    schedulefree = import_extra("schedulefree", "schedulefree", "trainer.optimizer='schedulefree'")
    if trainer.anneal_lr and distributed.is_main():
        print("trainer.optimizer='schedulefree' with trainer.anneal_lr: its authors run it at a constant rate "
              "(--trainer.no-anneal-lr)", flush=True)
    return schedulefree.AdamWScheduleFree(policy.parameters(), lr=trainer.learning_rate, eps=trainer.adam_eps,
                                          weight_decay=trainer.weight_decay)


OPTIMIZERS: dict[str, Callable[[nn.Module, TrainerConfig, torch.device], Any]] = {
    "adam": adam, "adamw": adamw, "muon": muon, "schedulefree": schedule_free}
"""trainer.optimizer's names (config.OptimizerName) and their builders."""


def make_optimizer(policy: nn.Module, trainer: TrainerConfig, device: torch.device | str) -> Any:
    """The optimiser trainer.optimizer names, over the policy's parameters at trainer.learning_rate: a
    torch.optim.Optimizer, or for 'muon' a CombinedOptimizer (the same calls). Schedule-free's comes
    in train mode."""
    if trainer.optimizer in OPTIMIZERS:
        optimizer = OPTIMIZERS[trainer.optimizer](policy, trainer, torch.device(device))
    elif ":" in trainer.optimizer:
        optimizer = by_import_path(policy, trainer)
    else:
        raise ConfigError(f"trainer.optimizer={trainer.optimizer!r} must be one of {list(OPTIMIZERS)} or an "
                          "optimizer class by import path 'module:Class', e.g. 'torch.optim:SGD:momentum=0.9'")
    train_mode(optimizer)
    return optimizer


def by_import_path(policy: nn.Module, trainer: TrainerConfig) -> torch.optim.Optimizer:
    """Class(policy.parameters(), lr=trainer.learning_rate, **kwargs) for 'module:Class[:key=value,...]'."""
    spec = trainer.optimizer
    cls, kwargs = load_object(spec, "trainer.optimizer")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"trainer.optimizer {spec!r} is not a torch.optim.Optimizer subclass; name an optimizer "
                          "class, e.g. 'torch.optim:SGD:momentum=0.9'")
    if "lr" in kwargs:
        raise ConfigError(f"trainer.optimizer {spec!r}: the rate is --trainer.learning-rate (and its schedule); "
                          f"drop lr={kwargs['lr']!r}")
    if trainer.weight_decay:
        raise ConfigError(f"trainer.weight_decay={trainer.weight_decay} is for {list(OPTIMIZERS)}; give "
                          f"trainer.optimizer {spec!r} its own keyword weight_decay={trainer.weight_decay} instead")
    params = list(policy.parameters())
    check_call(cls, (params,), {"lr": trainer.learning_rate, **kwargs}, f"trainer.optimizer {spec!r}")
    return cls(params, lr=trainer.learning_rate, **kwargs)


def hidden_weights(module: nn.Module) -> list[nn.Parameter]:
    """The hidden 2-D weights of a network, those Muon trains: `module.hidden_weights()` when the
    network defines that method. Else, for each direct child of the module: a wrapped policy (a child
    with get_action_and_value, e.g. an LSTM policy's network or a network of one's own inside its
    adapter) is searched the same way; any other child gives its 2-D parameters in registration
    order less the first (the layer that reads the child's input) and the last (its output layer
    or head). Embeddings and recurrent layers (nn.LSTM) give none, nor do the module's own
    parameters. E.g. CleanRL's actor nn.Sequential(Linear, Tanh, Linear, Tanh, Linear): its middle
    Linear's weight."""
    method = getattr(module, "hidden_weights", None)
    if callable(method):
        return list(method())
    hidden: list[nn.Parameter] = []
    for child in module.children():
        if callable(getattr(child, "get_action_and_value", None)):
            hidden += hidden_weights(child)
            continue
        not_dense = {id(p) for m in child.modules() if isinstance(m, (nn.RNNBase, nn.Embedding, nn.EmbeddingBag))
                     for p in m.parameters()}
        weights = [p for p in child.parameters() if p.ndim == 2 and id(p) not in not_dense]
        hidden += weights[1:-1]
    return list({id(p): p for p in hidden}.values())  # a weight shared by two children, once


class CombinedOptimizer:
    """Several torch optimisers, each over its own parameters, used as one (Muon's split): step(),
    zero_grad(), `param_groups` (all of theirs: setting a group's "lr" reaches its optimiser),
    `state`, and one state_dict() for a checkpoint. fast.optimizer_step calls its step()."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # read anew: load_state_dict replaces each one's groups
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:
        return {p: s for optimizer in self.optimizers.values() for p, s in optimizer.state.items()}

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != set(self.optimizers):
            raise ValueError(f"the state of optimizers {sorted(state_dict)}, not {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        return f"CombinedOptimizer({self.optimizers})"


def set_learning_rate(optimizer: Any, learning_rate: float) -> None:
    """Every parameter group's "lr" (a CombinedOptimizer's: both parts')."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def switches_weights(optimizer: Any) -> bool:
    """Whether the optimiser keeps two weight sequences and puts one of them in the policy (train() /
    eval(): schedule-free's)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def train_mode(optimizer: Any) -> None:
    """optimizer.train(): the weights it computes gradients at (schedule-free's y); nothing for others."""
    if switches_weights(optimizer):
        optimizer.train()


@contextlib.contextmanager
def averaged_weights(optimizer: Any, when: bool = True) -> Iterator[None]:
    """Inside, the policy holds the weights to evaluate and save (schedule-free's average x:
    optimizer.eval()); after, the ones it trains at again (optimizer.train()). Nothing for optimisers
    without train() / eval(), or when `when` is false."""
    switch = when and switches_weights(optimizer)
    if switch:
        optimizer.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()
