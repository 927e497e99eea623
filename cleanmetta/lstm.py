"""The LSTM core: any network's encoder -> LSTM -> its actor and critic heads, a policy with memory.

Not on the default path: make_policy builds an `LSTMPolicy` when agent.lstm_size > 0. The rollout
carries each agent's state from step to step (zeroed where an episode begins); the update replays
the LSTM over whole segments of trainer.bptt_horizon steps from their stored start states
(`SegmentReplay`), so that a loss written for a feedforward policy trains a recurrent one unchanged.
docs/recurrent.md has the whole story.
"""

from __future__ import annotations

import torch
from torch import nn

from cleanmetta.fast import lstm_step
from cleanmetta.networks import Policy
from cleanmetta.normalize import ObservationNorm


LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [B, lstm_size]


class LSTMPolicy(Policy):
    """A network's encoder -> LSTM -> its actor and critic heads: a policy with memory.

    The LSTM's state (h, c) is per agent, passed in and returned, never kept on the module:
        state = policy.initial_state(num_agents, device)               # zeros
        action, logprob, value, state = policy.sample(obs, state, first)  # the rollout, one step
        action, state = policy.act(obs, deterministic, state)          # evaluation, one step
        core = policy.unroll(obs, first, state)                        # the update: [S, L, ...] segments
    `first` [B] (or [S, L]) marks observations that begin an episode: the state they see is zeroed.
    Feedforward calls (forward, get_action_and_value, get_value) read from a zero state.
    """

    recurrent = True

    def __init__(self, net: Policy, lstm_size: int):
        super().__init__()
        self.net, self.head, self.lstm_size = net, net.head, lstm_size
        self.lstm = nn.LSTM(net.encoder_size, lstm_size)
        for name, param in self.lstm.named_parameters():  # CleanRL's LSTM initialisation
            if "weight" in name:
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.constant_(param, 0.0)

    @property
    def obs_norm(self) -> ObservationNorm | None:
        return self.net.obs_norm

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> LSTMState:
        zeros = torch.zeros(batch_size, self.lstm_size, device=device)
        return zeros, zeros.clone()

    def step(self, obs: torch.Tensor, state: LSTMState, first: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, LSTMState]:
        """One step of every agent: (distribution params, value [B], next state)."""
        h, c = state
        if first is not None:  # new episodes start from a zero state
            keep = (~first.bool()).unsqueeze(-1).to(h.dtype)
            h, c = h * keep, c * keep
        h, c = lstm_step(self.lstm, self.net.encode(obs), (h, c))  # = self.lstm on one step
        params, value = self.net.decode(h)
        return params, value, (h, c)

    def unroll(self, obs: torch.Tensor, first: torch.Tensor, state: LSTMState) -> torch.Tensor:
        """The LSTM's outputs [S, L, lstm_size] over S segments of L steps (obs [S, L, ...]) from their
        start states (state: [S, lstm_size] each), the state zeroed before every step that begins an
        episode (first [S, L]).

        nn.LSTM cannot reset part of its batch mid-sequence, so the segments are cut at episode starts
        into pieces, each starting from its segment's state or from zeros; the pieces, padded to the
        longest, go through one nn.LSTM call (one fused kernel instead of a Python loop over steps)
        and the outputs are put back in place. Padding comes after a piece's
        steps, so it changes none of their outputs.
        """
        S, L = first.shape
        x = self.net.encode(obs.flatten(0, 1))                          # [S * L, encoder_size]
        first = first.bool()
        keep = (~first[:, 0]).unsqueeze(-1).to(x.dtype)
        if not first[:, 1:].any():  # no episode begins inside a segment (most minibatches, once episodes are long)
            h, c = (state[0] * keep).unsqueeze(0), (state[1] * keep).unsqueeze(0)
            out, _ = float32_lstm(self.lstm, x.view(S, L, -1).transpose(0, 1), (h, c))
            return out.transpose(0, 1)
        starts = first.clone()
        starts[:, 0] = True                                              # every segment starts a piece
        starts = starts.flatten()
        piece = starts.cumsum(0) - 1                                     # [S * L] the piece of each step
        begins = starts.nonzero().flatten()                              # [P] where each piece begins
        position = torch.arange(S * L, device=x.device) - begins[piece]  # the step's place in its piece
        padded = x.new_zeros(int(position.max()) + 1, len(begins), x.shape[-1])
        padded = padded.index_put((position, piece), x)                  # [longest piece, P, encoder_size]
        # A piece that begins an episode starts from zeros, one that begins a segment from its stored state.
        keep = (~first.flatten()[begins]).unsqueeze(-1).to(x.dtype)
        segment = begins // L
        h, c = (state[0][segment] * keep).unsqueeze(0), (state[1][segment] * keep).unsqueeze(0)
        out, _ = float32_lstm(self.lstm, padded, (h, c))
        return out[position, piece].view(S, L, -1)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:  # a single step from a zero state
        return self.step(obs, self.initial_state(obs.shape[0], obs.device))[2][0]

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.decode(x)

    def sample(self, obs: torch.Tensor, state: LSTMState | None = None, first: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LSTMState]:
        """The rollout's per-step call: action [B, A], log-probability [B], value [B], next state."""
        state = state if state is not None else self.initial_state(obs.shape[0], obs.device)
        params, value, state = self.step(obs, state, first)
        action = self.head.sample(params)
        return action, self.head.log_prob(params, action), value, state

    def act(self, obs: torch.Tensor, deterministic: bool = False, state: LSTMState | None = None
            ) -> tuple[torch.Tensor, LSTMState]:
        """Actions and the next state."""
        state = state if state is not None else self.initial_state(obs.shape[0], obs.device)
        params, _, state = self.step(obs, state)
        return (self.head.mode(params) if deterministic else self.head.sample(params)), state


def float32_lstm(lstm: nn.LSTM, x: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
    """lstm(x, state) in float32 arithmetic on a GPU too. cuDNN may run an LSTM in TF32 on recent GPUs
    (torch.backends.cudnn.allow_tf32 is on by default), about 1e-3 away from the rollout's float32
    steps (lstm_step); the update's replay must reproduce those, so that the first minibatch's
    importance ratios are 1."""
    if x.device.type != "cuda" or not torch.backends.cudnn.allow_tf32:
        return lstm(x, state)
    torch.backends.cudnn.allow_tf32 = False
    try:
        return lstm(x, state)
    finally:
        torch.backends.cudnn.allow_tf32 = True


class SegmentReplay(Policy):
    """A recurrent policy replayed over one minibatch of segments, seen as a feedforward policy of the
    minibatch's valid steps.

    The update runs the LSTM once over the segments (all their steps, so that each sequence stays
    contiguous) and keeps the outputs of the valid steps (segments.mask), flattened in the order of
    `segments.valid_steps()`, whose observations `obs` are. `self(obs)`, `get_action_and_value(obs,
    actions)` and `get_value(obs)` answer for those steps. This is what the PPO loss and custom
    losses receive as `policy`, so a loss written for feedforward policies works unchanged. They
    may pass only this minibatch's `obs`: the outputs are the LSTM's over its segments, not a
    function of obs alone.
    """

    def __init__(self, policy: LSTMPolicy, segments, obs: torch.Tensor | None = None):
        super().__init__()
        self.recurrent_policy = [policy]  # a list: not a submodule (parameters() stays empty)
        self.head = policy.head
        self.obs = obs if obs is not None else segments.valid_steps().obs
        core = policy.unroll(segments.obs, segments.first, (segments.lstm_h, segments.lstm_c))
        self.core = core.flatten(0, 1)[segments.mask.flatten().nonzero().squeeze(-1)]  # [N, lstm_size]

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if obs is not self.obs and not (obs.shape == self.obs.shape and torch.equal(obs, self.obs)):
            raise ValueError("a recurrent policy in the update answers only for its minibatch's own observations "
                             "(the obs passed to the loss); to run it on others, call LSTMPolicy.unroll")
        return self.recurrent_policy[0].decode(self.core)
