"""Observation encoders: the first layers of a network, from what the buffer stores to a feature vector.

- `ImageEncoder`: images `[C, H, W]` or `[H, W, C]`, or stacks of them (`[S, H, W, C]`: a FrameStack
  of RGB frames), uint8 scaled to [0, 1], through a convolutional trunk and a dense layer with ReLU:
  the Nature-DQN trunk (8x8/4, 4x4/2, 3x3/1) for frames of 36 pixels or more, two padded 3x3
  convolutions for small grids.
- `encode_tokens`: MettaGrid's token observations `[num_tokens, 3]` (location, feature, value bytes),
  as a linear layer over their one-hot (feature, location) grid computed from the tokens alone.
- `MultiInputEncoder`: the flat rows of a structured observation (a Dict, a Tuple, a Discrete, ...;
  spaces.ObservationLayout), one encoder per entry, their outputs concatenated, as SB3's
  MultiInputPolicy does: image entries (`is_image`) through an ImageEncoder, Discrete and
  MultiDiscrete entries one-hot, other Boxes and MultiBinary entries as floats.

The default CartPole run uses none of these: its network (networks.MLPPolicy) reads the flat
observation vector as it is. networks.py builds its actor-critics on these encoders; this module
knows nothing of actions or values.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from cleanmetta.config import ConfigError
from cleanmetta.spaces import ObservationLayout


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights with gain `std` and constant bias, the PPO reference initialisation."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def image_layout(shape: tuple[int, ...]) -> tuple[bool, bool] | None:
    """(stacked, channels_last) of an image observation's shape, None when it is not one.

    An image is [C, H, W], or [H, W, C] when the last axis is the shortest and at most 4 long (RGB
    frames, MiniGrid's grids); a stack of images (a FrameStack of RGB frames, Atari in colour) is
    [S, H, W, C] or [S, C, H, W] with C at most 4 and shorter than H and W."""
    if len(shape) == 3:
        return False, shape[-1] <= 4 and shape[-1] < min(shape[0], shape[1])
    if len(shape) == 4:
        if shape[-1] <= 4 and shape[-1] < min(shape[1], shape[2]):
            return True, True
        if shape[1] <= 4 and shape[1] < min(shape[2], shape[3]):
            return True, False
    return None


def is_image(space: spaces.Space) -> bool:
    """A Box of images, of grids of feature planes, or of stacks of images (image_layout)."""
    return isinstance(space, spaces.Box) and image_layout(space.shape) is not None


def use_channels_last(convs: nn.Module) -> None:
    """= convs.to(memory_format=torch.channels_last): the convolutions' weights stored channels-last
    ([out, H, W, in] in memory; the same values). They then run on oneDNN's channels-last kernels,
    faster for the Nature trunk on 84x84 frames on the CPU (benchmarks/atari.py has the whole
    loop); on small grids it made no difference, so they keep the default."""
    convs.to(memory_format=torch.channels_last)


class ImageEncoder(nn.Module):
    """Images -> conv trunk -> dense layer of `hidden_size` -> ReLU: features [B, hidden_size].

    Images are [C, H, W] or [H, W, C], or stacks of them, [S, C, H, W] or [S, H, W, C], whose S x C
    planes (frame by frame) are the trunk's channels (image_layout).
    """

    def __init__(self, space: spaces.Box, hidden_size: int):
        super().__init__()
        shape = space.shape
        layout = image_layout(shape)
        if layout is None:
            raise ConfigError(f"an image encoder needs [C, H, W] or [H, W, C] observations or stacks of them, "
                              f"got shape {shape}")
        self.stacked, self.channels_last = layout
        stack, image = (shape[0], shape[1:]) if self.stacked else (1, shape)
        channels, height, width = (image[2], image[0], image[1]) if self.channels_last else image
        channels *= stack
        self.scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0
        frames = min(height, width) >= 36
        if frames:
            convs = [nn.Conv2d(channels, 32, 8, stride=4), nn.Conv2d(32, 64, 4, stride=2), nn.Conv2d(64, 64, 3)]
        else:
            convs = [nn.Conv2d(channels, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)]
        layers: list[nn.Module] = []
        for conv in convs:
            layers += [layer_init(conv), nn.ReLU()]
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        if frames:
            use_channels_last(self.trunk)
        with torch.no_grad():
            flat = self.trunk(torch.zeros(1, channels, height, width)).shape[1]
        self.dense = layer_init(nn.Linear(flat, hidden_size))
        self.size = hidden_size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() * self.scale
        if self.channels_last:  # [..., H, W, C] -> [..., C, H, W]
            x = x.movedim(-1, -3)
        if self.stacked:  # [B, S, C, H, W] -> [B, S x C, H, W]
            x = x.flatten(1, 2)
        return F.relu(self.dense(self.trunk(x)))


class MultiInputEncoder(nn.Module):
    """Flat observation rows [B, layout.size] -> features [B, size], one encoder per entry of the layout.

    An image entry becomes `hidden_size` features (ImageEncoder), a Discrete(n) n one-hot columns, a
    MultiDiscrete one one-hot block per index (sum of nvec columns), a Box or MultiBinary its values.
    """

    def __init__(self, layout: ObservationLayout, hidden_size: int):
        super().__init__()
        self.parts: list[tuple[str, int, int, tuple]] = []  # (kind, start, stop, image shape or one-hot width)
        self.images = nn.ModuleDict()
        self.size = 0
        for i, (_, space, start, stop) in enumerate(layout.entries):
            if is_image(space):
                self.images[str(i)] = ImageEncoder(space, hidden_size)
                self.parts.append(("image", start, stop, space.shape))
                self.size += hidden_size
            elif isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
                nvec = np.atleast_1d(space.nvec if isinstance(space, spaces.MultiDiscrete) else space.n).flatten()
                # column j of the entry is one-hot in block j: its index plus the widths of the blocks before it
                self.register_buffer(f"offsets{i}", torch.as_tensor(np.cumsum(nvec) - nvec), persistent=False)
                self.parts.append(("one_hot", start, stop, (int(nvec.sum()),)))
                self.size += int(nvec.sum())
            else:
                self.parts.append(("float", start, stop, ()))
                self.size += stop - start

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = []
        for i, (kind, start, stop, shape) in enumerate(self.parts):
            x = obs[:, start:stop]
            if kind == "image":
                features.append(self.images[str(i)](x.reshape(len(x), *shape)))
            elif kind == "one_hot":
                index = x.long() + getattr(self, f"offsets{i}")
                features.append(torch.zeros(len(x), shape[0], device=x.device).scatter_(1, index, 1.0))
            else:
                features.append(x.float())
        return torch.cat(features, dim=1) if len(features) > 1 else features[0]


EMPTY_TOKEN = 0xFF  # the location byte of an unused token slot


def encode_tokens(obs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Token observations [B, num_tokens, 3] of bytes (location, feature id, value) -> features
    [B, hidden_size]: tanh of a linear layer over the one-hot (feature, location) grid, computed
    from the tokens alone. Token (loc, f, v) selects row f * 256 + loc of `table` [features * 256,
    hidden_size] and weighs it by log(1 + v); the weighted rows are summed (one embedding_bag call).
    Location 0xFF marks an empty token."""
    filled = obs[..., 0] != EMPTY_TOKEN  # [B, num_tokens]
    # Only the token columns that some agent of the batch filled: MettaGrid pads a window of a few
    # dozen tokens to num_tokens, and the padding would cost as much as the tokens.
    used = filled.any(0).nonzero()
    width = int(used[-1]) + 1 if len(used) else 1
    loc, feature, value = obs[:, :width].long().unbind(-1)  # each [B, width]
    filled = filled[:, :width]
    rows = (feature * 256 + loc) * filled  # empty tokens point at row 0 with weight 0
    weights = torch.log1p(value.float()) * filled
    return torch.tanh(F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum"))
