"""Building blocks shared by NAFNet and M2AENet (Chen et al. 2022, "Simple Baselines for Image Restoration").

* :func:`layer_norm_2d` / :class:`LayerNorm2d`: layer normalisation over the channels of every pixel.
* :func:`simple_gate` / :class:`SimpleGate`: split the channels in two halves and multiply them (NAFNet Eq. 3).
* :class:`SimplifiedChannelAttention`: ``x * Conv1x1(GlobalAvgPool(x))`` (NAFNet Eq. 4).
* :class:`NAFBlock`: the NAFNet block, exactly as the official architecture (Fig. 2a of the M2AENet paper).

Parameter names follow the official NAFNet code (``conv1`` ... ``conv5``, ``sca.1``, ``norm1``, ``beta``...),
so that NAFNet checkpoints in the official layout load with ``load_state_dict``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm2d", "NAFBlock", "SimpleGate", "SimplifiedChannelAttention", "layer_norm_2d", "simple_gate"]


def layer_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise every pixel's channel vector to zero mean and unit variance, then scale and shift.

    ``y[:, c] = weight[c] * (x[:, c] - mean_c x) / sqrt(var_c x + eps) + bias[c]`` with the population
    variance over the C channels of each pixel, as NAFNet's ``LayerNorm2d`` (eps 1e-6).

    Args:
        x: (B, C, H, W), NCHW or channels_last.
        weight, bias: (C,).
        eps: added to the variance.

    Returns:
        (B, C, H, W), channels_last-strided (the normalisation runs on the pixels-by-channels view; a
        channels_last input is not copied).

    >>> x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    >>> layer_norm_2d(x, torch.ones(2), torch.zeros(2)).flatten()
    tensor([-1.0000,  1.0000])
    """
    if x.ndim != 4:
        raise ValueError(f"layer_norm_2d expects (B, C, H, W), got shape {tuple(x.shape)}")
    if weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(
            f"weight and bias must be ({x.shape[1]},), got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    """Layer normalisation over channels for (B, C, H, W) features; see :func:`layer_norm_2d`.

    >>> LayerNorm2d(4)(torch.rand(2, 4, 3, 3)).shape
    torch.Size([2, 4, 3, 3])
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm_2d(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def simple_gate(x: Tensor) -> Tensor:
    """NAFNet's SimpleGate (Eq. 3): ``x[:, :C/2] * x[:, C/2:]``, (B, C, H, W) -> (B, C/2, H, W).

    Works on any tensor whose dimension 1 holds an even number of channels (also (Q, C) pixel rows).

    >>> simple_gate(torch.tensor([[2.0, 3.0, 4.0, 5.0]]))
    tensor([[ 8., 15.]])
    """
    if x.ndim < 2 or x.shape[1] % 2:
        raise ValueError(f"simple_gate needs an even number of channels in dimension 1, got shape {tuple(x.shape)}")
    first, second = x.chunk(2, dim=1)
    return first * second


class SimpleGate(nn.Module):
    """Module form of :func:`simple_gate`.

    >>> SimpleGate()(torch.rand(1, 8, 2, 2)).shape
    torch.Size([1, 4, 2, 2])
    """

    def forward(self, x: Tensor) -> Tensor:
        return simple_gate(x)


class SimplifiedChannelAttention(nn.Sequential):
    """Simplified channel attention (NAFNet Eq. 4): ``x * Conv1x1(GlobalAvgPool(x))``.

    A ``Sequential`` of (pool, conv) so that its parameters are named ``1.weight`` / ``1.bias`` as in
    the official code. The average runs over all pixels of each image.

    >>> SimplifiedChannelAttention(4)(torch.rand(2, 4, 5, 5)).shape
    torch.Size([2, 4, 5, 5])
    """

    def __init__(self, channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1))

    def attention(self, x: Tensor) -> Tensor:
        """The (B, C, 1, 1) channel weights ``Conv1x1(GlobalAvgPool(x))``."""
        return super().forward(x)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class NAFBlock(nn.Module):
    """The NAFNet block (Chen et al. 2022, Fig. 3c; M2AENet Fig. 2a), (B, C, H, W) -> (B, C, H, W).

    ``y = x + beta * conv3(SCA(SG(conv2(conv1(norm1(x))))))`` (conv1: 1x1 C->2C, conv2: 3x3 depthwise
    on 2C, SG halves the channels, conv3: 1x1 C->C), then
    ``out = y + gamma * conv5(SG(conv4(norm2(y))))`` (conv4: 1x1 C->2C, conv5: 1x1 C->C).
    ``beta`` and ``gamma`` (1, C, 1, 1) start at zero, so a fresh block is the identity.

    Args:
        channels: C.

    >>> block = NAFBlock(8)
    >>> x = torch.rand(1, 8, 6, 6)
    >>> torch.equal(block(x), x)  # beta = gamma = 0 at initialisation
    True
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = 2 * channels  # DW_Expand = FFN_Expand = 2
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.sg = SimpleGate()
        self.sca = SimplifiedChannelAttention(channels)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, hidden, 1)
        self.conv5 = nn.Conv2d(channels, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.addcmul(x, self.conv3(self.sca(self.sg(self.conv2(self.conv1(self.norm1(x)))))), self.beta)
        return torch.addcmul(y, self.conv5(self.sg(self.conv4(self.norm2(y)))), self.gamma)
