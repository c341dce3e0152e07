"""Building blocks shared by NAFNet and M2AENet (Chen et al. 2022, "Simple Baselines for Image Restoration").

* :func:`layer_norm_2d` / :class:`LayerNorm2d`: layer normalisation over the channels of every pixel.
* :func:`simple_gate` / :class:`SimpleGate`: split the channels in two halves and multiply them (NAFNet Eq. 3).
* :class:`SimplifiedChannelAttention`: ``x * Conv1x1(GlobalAvgPool(x))`` (NAFNet Eq. 4).
* :func:`local_mean`: every pixel's mean over a local window, from cumulative sums (TLC, below).
* :class:`NAFBlock`: the NAFNet block, exactly as the official architecture (Fig. 2a of the M2AENet paper).

Parameter names follow the official NAFNet code (``conv1`` ... ``conv5``, ``sca.1``, ``norm1``, ``beta``...),
so that NAFNet checkpoints in the official layout load with ``load_state_dict``.

Test-time local converter (TLC; Chu et al., "Improving Image Restoration by Revisiting Global
Information Aggregation", ECCV 2022): a network trained on patches pools over a patch, but at test time
over a whole photo, whose statistics differ; and a whole-image mean makes overlapping tiles disagree.
Setting ``pool_window`` (pixels of the module's own input) replaces the global mean by
:func:`local_mean` over that window, so test-time statistics come from a region of training size. The
default ``None`` keeps the global mean, so training is unchanged. ``adeblur.engine.infer.load_model``
sets the windows (``docs/deblur.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOCAL_MEAN_BORDERS",
    "LayerNorm2d",
    "NAFBlock",
    "SimpleGate",
    "SimplifiedChannelAttention",
    "layer_norm_2d",
    "local_mean",
    "simple_gate",
]

#: How :func:`local_mean` treats windows that cross the image border.
LOCAL_MEAN_BORDERS = ("shift", "clip")


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


def _box_mean_1d(x: Tensor, window: int, border: str, dim: int) -> Tensor:
    """Windowed mean along ``dim`` (2 or 3) from a cumulative sum: O(1) per element, whatever the window."""
    length = x.shape[dim]
    if border == "shift" and window >= length:  # every window is the whole axis
        return x.mean(dim, keepdim=True)
    cumulative = F.pad(x.cumsum(dim), (0, 0, 1, 0) if dim == 2 else (1, 0))  # a zero before the first element
    if border == "shift":  # the windows inside the axis, then each border position takes the nearest one
        inside = length - window + 1
        sums = cumulative.narrow(dim, window, inside) - cumulative.narrow(dim, 0, inside)
        before, after = window // 2, window - 1 - window // 2
        return F.pad(sums / window, (0, 0, before, after) if dim == 2 else (before, after, 0, 0), mode="replicate")
    position = torch.arange(length, device=x.device)  # "clip": the centred window cut at the border
    start = (position - window // 2).clamp(min=0)
    end = (position - window // 2 + window).clamp(max=length)
    sums = cumulative.index_select(dim, end) - cumulative.index_select(dim, start)
    shape = [1, 1, 1, 1]
    shape[dim] = length
    return sums / (end - start).to(x.dtype).view(shape)


def local_mean(x: Tensor, window: int, border: str = "shift") -> Tensor:
    """Mean of every pixel's ``window`` x ``window`` neighbourhood, per image and channel (TLC's local pooling).

    The window of pixel ``(i, j)`` starts ``window // 2`` rows above and columns left of it. Where it
    crosses the image border, ``border="shift"`` moves it inside, keeping its size (NAFNet's TLC: every
    pixel averages ``window**2`` pixels, and an axis shorter than the window is averaged whole), and
    ``"clip"`` cuts it off (fewer pixels near the border). Computed from cumulative sums along each axis
    (a separable integral image), so the cost does not grow with the window; each channel's mean is
    subtracted first, which keeps the float32 sums accurate on large images. The sums run on a
    contiguous (NCHW) copy, where cumulative sums are fastest; a channels-last input gets a
    channels-last result.

    Args:
        x: (B, C, H, W).
        window: the window's side in pixels of ``x``, >= 1.
        border: ``"shift"`` or ``"clip"``.

    Returns:
        (B, C, H, W), or a tensor that broadcasts to it: with ``border="shift"``, an axis the window
        covers whole has size 1 (the global mean (B, C, 1, 1) when it covers the image).

    >>> x = torch.arange(5.0).view(1, 1, 1, 5)
    >>> local_mean(x, 3).flatten().tolist()  # windows [0, 3), [0, 3), [1, 4), [2, 5), [2, 5)
    [1.0, 1.0, 2.0, 3.0, 3.0]
    >>> local_mean(x, 3, border="clip").flatten().tolist()  # [0, 2), [0, 3), [1, 4), [2, 5), [3, 5)
    [0.5, 1.0, 2.0, 3.0, 3.5]
    """
    if x.ndim != 4:
        raise ValueError(f"local_mean expects (B, C, H, W), got shape {tuple(x.shape)}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if border not in LOCAL_MEAN_BORDERS:
        raise ValueError(f"border must be one of {LOCAL_MEAN_BORDERS}, got {border!r}")
    height, width = x.shape[-2:]
    mean = x.mean(dim=(2, 3), keepdim=True)
    if border == "shift" and window >= height and window >= width:
        return mean
    centred = (x - mean).contiguous()
    local = _box_mean_1d(_box_mean_1d(centred, window, border, 3), window, border, 2) + mean
    if x.is_contiguous(memory_format=torch.channels_last):  # back to the caller's layout: faster ops after
        return local.contiguous(memory_format=torch.channels_last)
    return local


class SimplifiedChannelAttention(nn.Sequential):
    """Simplified channel attention (NAFNet Eq. 4): ``x * Conv1x1(GlobalAvgPool(x))``.

    A ``Sequential`` of (pool, conv) so that its parameters are named ``1.weight`` / ``1.bias`` as in
    the official code. The average runs over all pixels of each image, or, with ``pool_window`` set
    (TLC, see the module docstring), over each pixel's window: ``x * Conv1x1(local_mean(x, pool_window))``.

    Attributes:
        pool_window: None (default: global average) or the local window in pixels of this module's input.
        pool_border: how windows meet the image border, see :func:`local_mean`.

    >>> sca = SimplifiedChannelAttention(4)
    >>> x = torch.rand(2, 4, 5, 5)
    >>> global_pooled = sca(x)
    >>> global_pooled.shape
    torch.Size([2, 4, 5, 5])
    >>> sca.pool_window = 8  # a window larger than the image averages all of it
    >>> bool(torch.allclose(sca(x), global_pooled))
    True
    """

    def __init__(self, channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1))
        self.pool_window: int | None = None
        self.pool_border = "shift"

    def attention(self, x: Tensor) -> Tensor:
        """The channel weights ``Conv1x1(pool(x))``: (B, C, 1, 1), or (B, C, H, W) with local pooling."""
        if self.pool_window is None:
            return super().forward(x)
        return self[1](local_mean(x, self.pool_window, self.pool_border))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return "" if self.pool_window is None else f"pool_window={self.pool_window}, pool_border={self.pool_border!r}"


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
